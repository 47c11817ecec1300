# syntax=docker/dockerfile:1
# One Dockerfile, one target per service:
#   docker build --target registry  -t ferry-registry .
#   docker build --target inference -t ferry-inference .

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY crates crates
COPY services services
COPY cli cli
COPY tools tools
COPY e2e e2e
RUN cargo build --release --locked --bins

# ONNX Runtime's shared library, taken from the PyPI onnxruntime wheel.
FROM python:3.11-slim-bookworm AS onnxruntime
RUN pip download --no-deps --only-binary=:all: --dest /wheel onnxruntime==1.31.1 \
 && python -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]); [z.extract(n,'/ort') for n in z.namelist() if '/capi/libonnxruntime.so' in n]" \
 && mkdir -p /out && cp /ort/onnxruntime/capi/libonnxruntime.so.* /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=20230311+deb12u1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/ferry --create-home ferry
USER 10001:10001
WORKDIR /var/lib/ferry

FROM runtime AS registry
COPY --from=build /src/target/release/ferry-registry /usr/local/bin/ferry-registry
COPY --from=build /src/target/release/ferryctl /usr/local/bin/ferryctl
ENV FERRY_REGISTRY_GRPC_ADDR=0.0.0.0:50051 \
    FERRY_REGISTRY_HTTP_ADDR=0.0.0.0:8081
EXPOSE 50051 8081
ENTRYPOINT ["/usr/local/bin/ferry-registry"]

FROM runtime AS inference
COPY --from=onnxruntime /out/ /usr/local/lib/onnxruntime/
COPY --from=build /src/target/release/ferry-inference /usr/local/bin/ferry-inference
ENV ORT_DYLIB_PATH=/usr/local/lib/onnxruntime/libonnxruntime.so.1.31.1 \
    FERRY_INFERENCE_GRPC_ADDR=0.0.0.0:50052 \
    FERRY_INFERENCE_HTTP_ADDR=0.0.0.0:8080 \
    FERRY_INFERENCE_METRICS_ADDR=0.0.0.0:9091 \
    FERRY_MODEL_DIR=/var/lib/ferry/models
EXPOSE 50052 8080 9091
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s CMD ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"]
ENTRYPOINT ["/usr/local/bin/ferry-inference"]
