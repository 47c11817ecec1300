"""Ferry's Python client: a small typed helper over the generated gRPC stubs
(``ferry.registry.v1``, ``ferry.inference.v1``, generated from ``proto/`` by
``generate.py``).

    from ferry_client import Ferry
    ferry = Ferry(registry="127.0.0.1:50051", inference="127.0.0.1:50052", token=os.environ["FERRY_REGISTRY_TOKEN"])
    v = ferry.register("model.onnx", "iris", metrics={"accuracy": 0.97})
    ferry.promote("iris", v.version, alias="champion", reason="better accuracy")
    ferry.predict("iris", np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))   # {"label": array([0]), ...}
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

import grpc
import numpy as np

from ferry.inference.v1 import inference_pb2 as ipb
from ferry.inference.v1 import inference_pb2_grpc as igrpc
from ferry.registry.v1 import registry_pb2 as rpb
from ferry.registry.v1 import registry_pb2_grpc as rgrpc

__all__ = ["Ferry", "FerryError", "ModelVersion", "Prediction"]

_CHUNK = 1 << 20
_STAGES = {"none": rpb.STAGE_NONE, "staging": rpb.STAGE_STAGING, "production": rpb.STAGE_PRODUCTION,
           "archived": rpb.STAGE_ARCHIVED}
_DTYPES = {  # numpy kind → (Ferry dtype, Tensor field)
    np.dtype(np.float32): (ipb.DATA_TYPE_FLOAT32, "float_data"),
    np.dtype(np.float64): (ipb.DATA_TYPE_FLOAT64, "double_data"),
    np.dtype(np.int32): (ipb.DATA_TYPE_INT32, "int32_data"),
    np.dtype(np.int64): (ipb.DATA_TYPE_INT64, "int64_data"),
    np.dtype(np.bool_): (ipb.DATA_TYPE_BOOL, "bool_data"),
}
_FIELDS = {ipb.DATA_TYPE_FLOAT32: ("float_data", np.float32), ipb.DATA_TYPE_FLOAT64: ("double_data", np.float64),
           ipb.DATA_TYPE_INT32: ("int32_data", np.int32), ipb.DATA_TYPE_INT64: ("int64_data", np.int64),
           ipb.DATA_TYPE_BOOL: ("bool_data", np.bool_), ipb.DATA_TYPE_STRING: ("string_data", object)}


class FerryError(Exception):
    """A call Ferry refused or could not make: ``code`` is the gRPC status code."""

    def __init__(self, what: str, err: grpc.RpcError):
        self.code: grpc.StatusCode = err.code()
        self.details: str = err.details() or ""
        super().__init__(f"{what}: {self.details} ({self.code.name})")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    stage: str
    aliases: list[str]
    sha256: str
    source: str
    created: Optional[bool] = None

    @staticmethod
    def _of(v: Any, created: Optional[bool] = None) -> "ModelVersion":
        stage = rpb.Stage.Name(v.stage).removeprefix("STAGE_").capitalize() if v.stage else ""
        return ModelVersion(v.name, v.version, stage, list(v.aliases), v.sha256, v.source, created)


@dataclass(frozen=True)
class Prediction:
    """Outputs by name, the version that computed them and the variant that served."""
    outputs: dict[str, np.ndarray]
    version: str
    variant: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _channel(url: str, tls: Optional[grpc.ChannelCredentials]) -> grpc.Channel:
    """``https://host:port`` is TLS (verified with ``tls``); ``host:port`` and ``http://`` are plaintext."""
    if url.startswith("https://"):
        return grpc.secure_channel(url.removeprefix("https://"), tls or grpc.ssl_channel_credentials())
    return grpc.insecure_channel(url.removeprefix("http://").removeprefix("grpc://"))


class Ferry:
    """Both services' clients. ``token`` (default: ``$FERRY_REGISTRY_TOKEN``) is sent to the registry;
    ``api_key`` (default: ``$FERRY_API_KEY``) to the inference service, when it requires keys.
    ``https://`` URLs speak TLS, verified against ``tls_ca`` (default: ``$FERRY_TLS_CA``, else the
    system's roots), presenting ``tls_client_cert``/``tls_client_key`` (default: ``$FERRY_TLS_CLIENT_CERT``
    and ``$FERRY_TLS_CLIENT_KEY``) to services that require a client certificate."""

    def __init__(self, registry: str = "127.0.0.1:50051", inference: str = "127.0.0.1:50052",
                 token: Optional[str] = None, timeout: float = 60.0, api_key: Optional[str] = None,
                 tls_ca: Optional[str] = None, tls_client_cert: Optional[str] = None,
                 tls_client_key: Optional[str] = None):
        env = os.environ.get
        tls = grpc.ssl_channel_credentials(
            root_certificates=_read(tls_ca or env("FERRY_TLS_CA")),
            private_key=_read(tls_client_key or env("FERRY_TLS_CLIENT_KEY")),
            certificate_chain=_read(tls_client_cert or env("FERRY_TLS_CLIENT_CERT")))
        self._registry_channel = _channel(registry, tls)
        self._inference_channel = _channel(inference, tls)
        self.registry = rgrpc.ModelRegistryStub(self._registry_channel)
        self.inference = igrpc.InferenceStub(self._inference_channel)
        token = token if token is not None else os.environ.get("FERRY_REGISTRY_TOKEN")
        self._auth = [("authorization", f"Bearer {token}")] if token else []
        api_key = api_key if api_key is not None else os.environ.get("FERRY_API_KEY")
        self._key = [("x-api-key", api_key)] if api_key else []
        self.timeout = timeout

    def close(self) -> None:
        self._registry_channel.close()
        self._inference_channel.close()

    def __enter__(self) -> "Ferry":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, what: str, fn: Any, request: Any, **kw: Any) -> Any:
        try:
            return fn(request, timeout=self.timeout, metadata=self._auth, **kw)
        except grpc.RpcError as e:  # one line saying what failed, with the code to act on
            raise FerryError(what, e) from None

    # --- the registry -------------------------------------------------------------------------

    def register(self, model: Union[str, os.PathLike, bytes, Any], name: str, *,
                 tags: Optional[Mapping[str, str]] = None, metrics: Optional[Mapping[str, float]] = None,
                 params: Optional[Mapping[str, str]] = None, description: str = "") -> ModelVersion:
        """Registers an ONNX model — a file path, its bytes, or an ``onnx.ModelProto`` — as a new
        version of ``name`` (the same bytes again return the existing version, ``created=False``)."""
        if hasattr(model, "SerializeToString"):
            data = model.SerializeToString()
        elif isinstance(model, (bytes, bytearray)):
            data = bytes(model)
        else:
            with open(model, "rb") as f:
                data = f.read()
        meta = rpb.RegisterModelMetadata(name=name, description=description, tags=dict(tags or {}),
                                         metrics={k: float(v) for k, v in (metrics or {}).items()},
                                         params={k: str(v) for k, v in (params or {}).items()},
                                         expected_sha256=hashlib.sha256(data).hexdigest())

        def stream() -> Iterator[Any]:
            yield rpb.RegisterModelRequest(metadata=meta)
            for i in range(0, len(data), _CHUNK):
                yield rpb.RegisterModelRequest(chunk=data[i:i + _CHUNK])

        r = self._call(f"registering {name!r}", self.registry.RegisterModel, stream())
        return ModelVersion._of(r.version, r.created)

    def promote(self, name: str, version: str, *, alias: Optional[str] = None, stage: Optional[str] = None,
                archive_existing: bool = False, reason: str = "") -> ModelVersion:
        """Points ``alias`` at the version, or moves it to ``stage`` (recorded with ``reason``)."""
        if (alias is None) == (stage is None):
            raise ValueError("promote to an alias or a stage")
        if alias is not None:
            r = self._call(f"pointing {name}@{alias} at {version}", self.registry.SetAlias,
                           rpb.SetAliasRequest(name=name, alias=alias, version=str(version), reason=reason))
        else:
            r = self._call(f"moving {name}/{version} to {stage}", self.registry.TransitionStage,
                           rpb.TransitionStageRequest(name=name, version=str(version), stage=_stage(stage),
                                                      archive_existing_versions=archive_existing, reason=reason))
        return ModelVersion._of(r.version)

    def rollback(self, name: str, *, alias: Optional[str] = None, stage: Optional[str] = None,
                 reason: str = "") -> ModelVersion:
        """Moves an alias or stage back to the version it designated before the last move through Ferry."""
        if (alias is None) == (stage is None):
            raise ValueError("roll back an alias or a stage")
        req = rpb.RollbackRequest(name=name, reason=reason)
        if alias is not None:
            req.alias = alias
        else:
            req.stage = _stage(stage)
        return ModelVersion._of(self._call(f"rolling back {name}", self.registry.Rollback, req).version)

    def resolve(self, name: str, *, alias: Optional[str] = None, stage: Optional[str] = None,
                version: Optional[str] = None) -> Optional[ModelVersion]:
        """The version an alias, stage or number designates now; None when it designates none."""
        req = rpb.ResolveVersionRequest(name=name)
        if alias is not None:
            req.alias = alias
        elif stage is not None:
            req.stage = _stage(stage)
        elif version is not None:
            req.version = str(version)
        try:
            return ModelVersion._of(self._call(f"resolving {name}", self.registry.ResolveVersion, req).version)
        except FerryError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def watch(self, names: Iterable[str] = (), since_revision: int = 0) -> Iterator[Any]:
        """``ModelChanged`` events as they happen (a snapshot first, unless resuming)."""
        req = rpb.WatchModelsRequest(names=list(names), since_revision=since_revision)
        try:
            yield from self.registry.WatchModels(req, metadata=self._auth)
        except grpc.RpcError as e:
            raise FerryError("watching the registry", e) from None

    # --- inference ----------------------------------------------------------------------------

    def predict(self, name: str, inputs: Union[np.ndarray, Mapping[str, np.ndarray]], *, input: str = "input",
                version: str = "", outputs: Iterable[str] = ()) -> Prediction:
        """Runs the served model on numpy arrays (one, named ``input``, or a mapping of names)."""
        named = {input: inputs} if isinstance(inputs, np.ndarray) else dict(inputs)
        tensors = [_tensor(n, np.asarray(a)) for n, a in named.items()]
        req = ipb.PredictRequest(model=name, version=version, inputs=tensors, outputs=list(outputs))
        try:
            resp, call = self.inference.Predict.with_call(req, timeout=self.timeout, metadata=self._key)
        except grpc.RpcError as e:
            raise FerryError(f"predicting with {name!r}", e) from None
        meta = {k: v for k, v in (call.initial_metadata() or ()) if isinstance(v, str)}
        outs = {t.name: _array(t) for t in resp.outputs}
        return Prediction(outs, resp.model_version, resp.variant, meta)


def _stage(stage: str) -> int:
    try:
        return _STAGES[stage.lower()]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}: one of None, Staging, Production, Archived") from None


def _tensor(name: str, a: np.ndarray) -> Any:
    if a.dtype.kind in "US":
        return ipb.Tensor(name=name, dtype=ipb.DATA_TYPE_STRING, shape=list(a.shape), string_data=[str(x) for x in a.ravel()])
    try:
        dtype, fld = _DTYPES[a.dtype]
    except KeyError:
        raise ValueError(f"{name}: dtype {a.dtype} is not one Ferry takes (float32/64, int32/64, bool, str)") from None
    t = ipb.Tensor(name=name, dtype=dtype, shape=list(a.shape))
    getattr(t, fld).extend(a.ravel().tolist())
    return t


def _array(t: Any) -> np.ndarray:
    fld, dtype = _FIELDS[t.dtype]
    return np.asarray(list(getattr(t, fld)), dtype=dtype).reshape(tuple(t.shape))
