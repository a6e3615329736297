"""An MLServer runtime serving fogline's full-precision models, so MLServer can be the agent's cloud.

MLServer (Seldon's v2 inference server) loads a model through a runtime class named in the model's
``model-settings.json``; this is that class for fogline's reference models::

    {"name": "digits", "implementation": "fogline.cloud.mlserver_runtime.FoglineFullModel",
     "parameters": {"uri": "/srv/models/digits/1", "version": "1", "extra": {"torch_threads": 1}}}

``fogline.cloud.mlserver_repo`` writes those files from a fogline model repository; ``scripts/setup_mlserver.sh``
makes MLServer's own virtual environment (its dependencies pin other versions than fogline's).
This is the only module that imports ``mlserver``; nothing imports it except MLServer itself.

What a v2 client sees: tensors decode as fogline's codec writes them (raw contents, BYTES with a
4-byte length prefix per element); the answer has the manifest's output name, FP32, and the
parameters ``served_by="cloud"``, ``model_version``, ``compute_us`` / ``compute_ms`` (integers:
MLServer's InferParameter has no double) so the agent can subtract compute time from its RTT.
Bad tensors come back as INVALID_ARGUMENT with fogline's message; unknown models as NOT_FOUND
(MLServer's own check).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, Parameters, RequestInput, ResponseOutput

from fogline.errors import FoglineError, InvalidInput, ModelNotFound

_NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


def decode_input(tensor: RequestInput) -> np.ndarray:
    """One MLServer request input as the numpy array fogline's models take (BYTES -> object array)."""
    data = getattr(tensor.data, "root", tensor.data)
    shape = [int(d) for d in tensor.shape]
    count = int(np.prod(shape)) if shape else 1
    if tensor.datatype == "BYTES":
        items = data if isinstance(data, list) else [data]
        values = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in items]
        if len(values) != count:
            raise InvalidInput(f"input {tensor.name!r}: shape {shape} needs {count} elements, got {len(values)}")
        out = np.empty(count, dtype=object)
        out[:] = values
        return out.reshape(shape)
    dtype = _NUMERIC.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(f"input {tensor.name!r}: unsupported datatype {tensor.datatype!r}")
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"input {tensor.name!r}: data is not {tensor.datatype} ({exc})") from None
    if array.size != count:
        raise InvalidInput(f"input {tensor.name!r}: shape {shape} needs {count} elements, got {array.size}")
    return array.reshape(shape)


def encode_output(name: str, array: np.ndarray) -> ResponseOutput:
    """A float32 numpy output as an MLServer response output (sent raw when the request was raw)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return ResponseOutput(name=name, datatype="FP32", shape=list(array.shape), data=array.ravel().tolist())


class FoglineFullModel(MLModel):
    """A fogline full model (``fogline.models.full_runtime.FullModel``) as an MLServer model.

    Settings: ``parameters.uri`` is the model version directory (``DIR/<name>/<version>``);
    ``parameters.extra`` may set ``device`` (default ``cpu``) and ``torch_threads`` (default 1).
    The torch call runs in a worker thread so MLServer's event loop keeps serving.
    """

    async def load(self) -> bool:
        from fogline.models.full_runtime import FullModel

        params = self.settings.parameters
        uri = getattr(params, "uri", None)
        if not uri:
            raise MLServerError(f"model {self.name!r}: parameters.uri must name a fogline model version dir")
        extra = dict(getattr(params, "extra", None) or {})
        threads = int(extra.get("torch_threads", 1))
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self._full = await asyncio.to_thread(FullModel.load, Path(uri), str(extra.get("device", "cpu")))
        if self._full.name != self.name:
            raise MLServerError(f"model {self.name!r}: {uri} holds model {self._full.name!r}", 500)
        self._lock = asyncio.Lock()  # one torch call at a time; torch parallelises inside it
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        try:
            inputs = {tensor.name: decode_input(tensor) for tensor in payload.inputs}
            async with self._lock:
                start = time.perf_counter()
                outputs = await asyncio.to_thread(self._full.predict, inputs)
                compute_s = time.perf_counter() - start
        except FoglineError as exc:
            raise MLServerError(str(exc), status_code=_http_status(exc)) from None
        wanted = [o.name for o in payload.outputs or []]
        unknown = [name for name in wanted if name not in outputs]
        if unknown:
            raise MLServerError(f"model {self.name!r} has no output {unknown[0]!r}; it has {sorted(outputs)}")
        version = self._full.version
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=version,
            outputs=[encode_output(n, a) for n, a in outputs.items() if not wanted or n in wanted],
            parameters=Parameters(served_by="cloud", model_version=version,
                                  compute_us=int(compute_s * 1e6), compute_ms=round(compute_s * 1e3)),
        )


def _http_status(exc: FoglineError) -> int:
    """MLServer turns HTTP-style codes into gRPC ones (400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND)."""
    if isinstance(exc, InvalidInput):
        return 400
    return 404 if isinstance(exc, ModelNotFound) else 500
