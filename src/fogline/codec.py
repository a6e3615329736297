"""numpy arrays <-> Open Inference Protocol v2 tensors, and request/response objects.

The rest of fogline never touches protobuf tensors directly: servicers call
``request_from_proto`` / ``response_to_proto`` (and the reverse pair on the client side) and work with
``InferRequest`` / ``InferResponse``, which hold plain numpy arrays.

Wire rules (v2 protocol):
- tensors travel as raw little-endian row-major bytes (``raw_input_contents`` /
  ``raw_output_contents``), one entry per tensor in the order of the tensor list; typed
  ``contents`` are accepted on input too;
- BYTES tensors hold one 4-byte little-endian length prefix per element, then its bytes; in numpy
  they are ``object`` arrays of ``bytes``;
- everything that comes off the wire is validated before anyone uses it, and every problem
  becomes an ``InvalidInput`` whose message names the tensor and says what was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, MutableMapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fogline.errors import InvalidInput
from fogline.inference import grpc_service_pb2 as pb

ParamValue = bool | int | float | str

#: The largest gRPC message fogline sends or accepts (64 MiB): both servers, the cloud link and the
#: fleet's ``cloud.serving.max_message_bytes`` default read it from here.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Default cap on one tensor's payload: no tensor can be larger than the message carrying it.
DEFAULT_MAX_TENSOR_BYTES = MAX_MESSAGE_BYTES

# v2 datatype name -> numpy dtype (little-endian). BF16 has no numpy dtype and is refused.
_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
DATATYPES: tuple[str, ...] = tuple(_DATATYPES)

# Which field of InferTensorContents carries each datatype.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


# --------------------------------------------------------------------------- datatypes


def datatype_to_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a v2 datatype name, or ``InvalidInput`` naming the valid ones."""
    try:
        return _DATATYPES[datatype]
    except KeyError:
        raise InvalidInput(f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}") from None


def dtype_to_datatype(dtype: np.dtype) -> str:
    """The v2 datatype name for a numpy dtype (strings and bytes map to BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for name, candidate in _DATATYPES.items():
        if name != "BYTES" and candidate.kind == dtype.kind and candidate.itemsize == dtype.itemsize:
            return name
    raise InvalidInput(f"numpy dtype {dtype} has no v2 datatype")


# --------------------------------------------------------------------------- BYTES


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Row-major elements, each as a 4-byte little-endian length then the bytes (str is UTF-8)."""
    parts: list[bytes] = []
    for item in np.asarray(array, dtype=object).ravel(order="C"):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes, count: int, *, name: str = "tensor") -> np.ndarray:
    """Parse exactly ``count`` length-prefixed elements that fill ``buffer``; a 1-D object array."""
    view = memoryview(buffer)
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(
                f"input {name!r}: BYTES data ends after {i} of {count} elements "
                "(each element needs a 4-byte little-endian length prefix)"
            )
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                f"input {name!r}: BYTES element {i} claims {length} bytes but only "
                f"{len(view) - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(
            f"input {name!r}: {len(view) - offset} trailing bytes after {count} BYTES elements "
            "(shape and data disagree)"
        )
    return out


# --------------------------------------------------------------------------- tensors


def element_count(shape: list[int] | tuple[int, ...], *, name: str = "tensor") -> int:
    """Product of ``shape`` after checking every dimension is a non-negative integer."""
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return math.prod(int(d) for d in shape)


def encode_array(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """``(datatype, shape, raw)`` for an array: little-endian, row-major."""
    array = np.asarray(array)
    datatype = dtype_to_datatype(array.dtype)
    shape = [int(d) for d in array.shape]
    if datatype == "BYTES":
        return datatype, shape, serialize_bytes_tensor(array)
    target = _DATATYPES[datatype]
    return datatype, shape, np.ascontiguousarray(array, dtype=target).tobytes(order="C")


def decode_array(
    datatype: str,
    shape: list[int] | tuple[int, ...],
    raw: bytes,
    *,
    name: str = "tensor",
    max_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
) -> np.ndarray:
    """Validate and decode one raw tensor. Raises ``InvalidInput`` with a specific reason."""
    dtype = datatype_to_dtype(datatype)
    shape = [int(d) for d in shape]
    count = element_count(shape, name=name)
    if len(raw) > max_bytes:
        raise InvalidInput(f"input {name!r}: {len(raw)} bytes exceeds the {max_bytes}-byte limit per tensor")
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count, name=name).reshape(shape)
    expected = count * dtype.itemsize
    if expected > max_bytes:
        raise InvalidInput(
            f"input {name!r}: shape {shape} of {datatype} needs {expected} bytes, "
            f"over the {max_bytes}-byte limit per tensor"
        )
    if len(raw) != expected:
        raise InvalidInput(
            f"input {name!r}: shape {shape} of {datatype} needs {expected} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _decode_contents(
    datatype: str, shape: list[int], contents: pb.InferTensorContents, *, name: str, max_bytes: int
) -> np.ndarray:
    dtype = datatype_to_dtype(datatype)
    count = element_count(shape, name=name)
    field_name = _CONTENTS_FIELD.get(datatype)
    if field_name is None:
        raise InvalidInput(f"input {name!r}: {datatype} can only be sent as raw contents")
    values = getattr(contents, field_name)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} needs {count} values, got {len(values)}")
    if datatype == "BYTES":
        if sum(len(v) for v in values) > max_bytes:
            raise InvalidInput(f"input {name!r}: exceeds the {max_bytes}-byte limit per tensor")
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    if count * dtype.itemsize > max_bytes:
        raise InvalidInput(f"input {name!r}: exceeds the {max_bytes}-byte limit per tensor")
    return np.asarray(values, dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------- parameters


def params_from_proto(params: Mapping[str, pb.InferParameter]) -> dict[str, ParamValue]:
    out: dict[str, ParamValue] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def params_to_proto(params: Mapping[str, ParamValue], target: MutableMapping[str, pb.InferParameter]) -> None:
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, bool):  # before int: bool is an int in Python
            slot.bool_param = value
        elif isinstance(value, (int, np.integer)):
            slot.int64_param = int(value)
        elif isinstance(value, (float, np.floating)):
            slot.double_param = float(value)
        elif isinstance(value, str):
            slot.string_param = value
        else:
            raise InvalidInput(f"parameter {key!r}: unsupported type {type(value).__name__}")


ROUTES = ("auto", "edge", "cloud")


def route_of(params: Mapping[str, ParamValue]) -> str:
    """The request's ``route`` parameter ("auto" when absent), validated."""
    route = params.get("route", "auto")
    if route not in ROUTES:
        raise InvalidInput(f"parameter 'route' must be one of {', '.join(ROUTES)}, got {route!r}")
    return str(route)


def deadline_ms_of(params: Mapping[str, ParamValue]) -> int | None:
    """The request's ``deadline_ms`` parameter (a positive integer), or None when absent."""
    if "deadline_ms" not in params:
        return None
    value = params["deadline_ms"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidInput(f"parameter 'deadline_ms' must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- requests and responses


@dataclass
class InferRequest:
    """One inference request, transport-free."""

    model_name: str
    inputs: dict[str, np.ndarray]
    model_version: str = ""
    id: str = ""
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    #: Output names the caller asked for; empty means all.
    outputs: list[str] = field(default_factory=list)


@dataclass
class InferResponse:
    """One inference response, transport-free."""

    model_name: str
    outputs: dict[str, np.ndarray]
    model_version: str = ""
    id: str = ""
    parameters: dict[str, ParamValue] = field(default_factory=dict)


def request_from_proto(
    request: pb.ModelInferRequest, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
) -> InferRequest:
    """Decode and validate a ``ModelInferRequest``; raises ``InvalidInput`` on any malformed tensor."""
    if not request.model_name:
        raise InvalidInput("model_name is empty")
    raw = request.raw_input_contents
    _check_raw_count(request.inputs, raw, "input")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput(f"input #{i} has no name")
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears twice")
        if not raw and not tensor.HasField("contents"):
            raise InvalidInput(f"input {name!r} carries no data (neither raw nor typed contents)")
        inputs[name] = _decode_tensor(tensor, raw, i, max_tensor_bytes)
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        parameters=params_from_proto(request.parameters),
        outputs=[o.name for o in request.outputs],
    )


def request_to_proto(request: InferRequest) -> pb.ModelInferRequest:
    """Encode an ``InferRequest`` with raw contents (what fogline sends to a cloud)."""
    msg = pb.ModelInferRequest(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    params_to_proto(request.parameters, msg.parameters)
    _add_raw_tensors(request.inputs, msg.inputs, msg.raw_input_contents)
    for name in request.outputs:
        msg.outputs.add(name=name)
    return msg


def response_to_proto(response: InferResponse) -> pb.ModelInferResponse:
    """Encode an ``InferResponse`` with raw output contents."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    params_to_proto(response.parameters, msg.parameters)
    _add_raw_tensors(response.outputs, msg.outputs, msg.raw_output_contents)
    return msg


def response_from_proto(
    response: pb.ModelInferResponse, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
) -> InferResponse:
    """Decode a ``ModelInferResponse`` (raw or typed contents), validating every tensor."""
    raw = response.raw_output_contents
    _check_raw_count(response.outputs, raw, "output")
    outputs = {tensor.name: _decode_tensor(tensor, raw, i, max_tensor_bytes)
               for i, tensor in enumerate(response.outputs)}
    return InferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=outputs,
        parameters=params_from_proto(response.parameters),
    )


def _check_raw_count(tensors: Sized, raw: Sized, kind: str) -> None:
    """Raw contents, when a message carries them, come one entry per tensor (``kind``: input or output)."""
    if len(raw) and len(raw) != len(tensors):
        raise InvalidInput(f"{len(tensors)} {kind}s but {len(raw)} raw_{kind}_contents entries; they must match")


def _decode_tensor(tensor: Any, raw: Sequence[bytes], index: int, max_bytes: int) -> np.ndarray:
    """The ``index``-th tensor of a request or response: from its raw contents when the message
    carries them, from its typed contents otherwise."""
    shape = list(tensor.shape)
    if raw:
        return decode_array(tensor.datatype, shape, raw[index], name=tensor.name, max_bytes=max_bytes)
    return _decode_contents(tensor.datatype, shape, tensor.contents, name=tensor.name, max_bytes=max_bytes)


def _add_raw_tensors(arrays: Mapping[str, np.ndarray], tensors: Any, raw_contents: Any) -> None:
    """Append ``arrays`` to a message's tensor list and its raw contents, in the same order."""
    for name, array in arrays.items():
        datatype, shape, raw = encode_array(array)
        tensors.add(name=name, datatype=datatype, shape=shape)
        raw_contents.append(raw)
