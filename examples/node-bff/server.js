// A backend-for-frontend calling Ferry over gRPC, as a product team would:
// stubs loaded from proto/ at start-up, a deadline on every call, retries on
// UNAVAILABLE (a replica restarting, a rollout) with backoff, HTTP/2
// keep-alive, and gRPC codes mapped to HTTP statuses the browser can act on.
// It exposes the seed's REST shape: POST /predict {"data": [...]} →
// {"modelVersion": "7", "variant": "...", "prediction": [...]}.
//
//   FERRY_INFERENCE_URL=127.0.0.1:50052 PORT=3000 node server.js

'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const fastify = require('fastify');

const PROTO_ROOT = path.resolve(__dirname, '../../proto');
const TARGET = (process.env.FERRY_INFERENCE_URL || '127.0.0.1:50052').replace(/^https?:\/\//, '');
const PORT = Number(process.env.PORT || 3000);
const MODEL = process.env.FERRY_MODEL || 'iris';
const DEADLINE_MS = Number(process.env.FERRY_DEADLINE_MS || 1000);

const definition = protoLoader.loadSync('ferry/inference/v1/inference.proto', {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
});
const { Inference } = grpc.loadPackageDefinition(definition).ferry.inference.v1;

// Retries are the channel's job: only UNAVAILABLE (nothing was computed), a
// few times, with backoff, all inside the caller's deadline.
const serviceConfig = {
  methodConfig: [{
    name: [{ service: 'ferry.inference.v1.Inference' }],
    retryPolicy: {
      maxAttempts: 4,
      initialBackoff: '0.05s',
      maxBackoff: '0.5s',
      backoffMultiplier: 2,
      retryableStatusCodes: ['UNAVAILABLE'],
    },
  }],
};
const client = new Inference(TARGET, grpc.credentials.createInsecure(), {
  'grpc.service_config': JSON.stringify(serviceConfig),
  'grpc.enable_retries': 1,
  'grpc.keepalive_time_ms': 30000,
  'grpc.keepalive_timeout_ms': 10000,
  'grpc.keepalive_permit_without_calls': 1,
});

// gRPC code → HTTP status: what the browser can act on.
const STATUS = {
  [grpc.status.INVALID_ARGUMENT]: 400,
  [grpc.status.NOT_FOUND]: 404,
  [grpc.status.FAILED_PRECONDITION]: 409,
  [grpc.status.RESOURCE_EXHAUSTED]: 429,
  [grpc.status.UNAVAILABLE]: 503,
  [grpc.status.DEADLINE_EXCEEDED]: 504,
};

function predict(row, headers) {
  const metadata = new grpc.Metadata();
  // Pass routing keys through: a tester's variant, a user's sticky key.
  for (const h of ['x-ferry-variant', 'x-user-id', 'x-request-id']) {
    if (headers[h]) metadata.set(h, String(headers[h]));
  }
  const request = {
    model: MODEL,
    inputs: [{ name: 'input', dtype: 'DATA_TYPE_FLOAT32', shape: [1, row.length], float_data: row }],
  };
  return new Promise((resolve, reject) => {
    client.Predict(request, metadata, { deadline: Date.now() + DEADLINE_MS }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

function build() {
  const app = fastify({ logger: false });
  app.get('/healthz', async () => 'ok');
  app.post('/predict', async (req, reply) => {
    const data = req.body && req.body.data;
    if (!Array.isArray(data) || data.length === 0 || !data.every((x) => typeof x === 'number' && Number.isFinite(x))) {
      return reply.code(400).send({ error: 'body must be {"data": [numbers]}' });
    }
    try {
      const resp = await predict(data, req.headers);
      // The first float output, as the seed's REST endpoint answers.
      const out = resp.outputs.find((t) => t.dtype === 'DATA_TYPE_FLOAT32') || resp.outputs[0];
      if (resp.variant) reply.header('x-ferry-variant', resp.variant);
      return { modelVersion: resp.model_version, variant: resp.variant, prediction: out ? out.float_data : [] };
    } catch (err) {
      return reply.code(STATUS[err.code] || 502).send({ error: err.details || err.message, code: grpc.status[err.code] });
    }
  });
  return app;
}

if (require.main === module) {
  build()
    .listen({ port: PORT, host: '127.0.0.1' })
    .then((addr) => console.log(`node-bff listening on ${addr}, Ferry at ${TARGET}`))
    .catch((e) => {
      console.error(e);
      process.exit(1);
    });
}

module.exports = { build };
