"""fogline.codec: round trips for every datatype and clear errors for malformed tensors."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fogline import codec
from fogline.errors import InvalidInput
from fogline.inference import grpc_service_pb2 as pb

pytestmark = pytest.mark.unit

NUMERIC = [d for d in codec.DATATYPES if d != "BYTES"]

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def numeric_arrays(draw):
    datatype = draw(st.sampled_from(NUMERIC))
    dtype = codec.datatype_to_dtype(datatype)
    array = draw(hnp.arrays(dtype, shapes, elements=hnp.from_dtype(dtype, allow_nan=False)))
    return datatype, array


bytes_arrays = hnp.arrays(object, shapes, elements=st.binary(max_size=40))


@given(numeric_arrays())
def test_numeric_round_trip_is_exact(case):
    datatype, array = case
    got_type, shape, raw = codec.encode_array(array)
    assert got_type == datatype
    back = codec.decode_array(got_type, shape, raw)
    assert back.dtype == array.dtype.newbyteorder("<") or back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@given(bytes_arrays)
def test_bytes_round_trip_is_exact(array):
    datatype, shape, raw = codec.encode_array(array)
    assert datatype == "BYTES"
    back = codec.decode_array(datatype, shape, raw)
    assert back.shape == array.shape
    assert back.ravel().tolist() == array.ravel().tolist()


def test_bytes_wire_format_is_4_byte_little_endian_length_prefix():
    raw = codec.serialize_bytes_tensor(np.array([b"ab", "é"], dtype=object))
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 2) + "é".encode()


@given(numeric_arrays(), bytes_arrays, st.text(max_size=20), st.integers(1, 10**6))
@settings(max_examples=50)
def test_request_and_response_round_trip(numeric, text, request_id, deadline):
    _, array = numeric
    req = codec.InferRequest(
        model_name="m",
        model_version="2",
        id=request_id,
        inputs={"a": array, "b": text},
        parameters={"deadline_ms": deadline, "route": "edge", "flag": True, "w": 0.5},
        outputs=["y"],
    )
    back = codec.request_from_proto(
        pb.ModelInferRequest.FromString(codec.request_to_proto(req).SerializeToString())
    )
    assert (back.model_name, back.model_version, back.id, back.outputs) == ("m", "2", request_id, ["y"])
    assert back.parameters == req.parameters
    np.testing.assert_array_equal(back.inputs["a"], array)
    assert back.inputs["b"].ravel().tolist() == text.ravel().tolist()

    resp = codec.InferResponse("m", {"y": array}, "2", request_id, {"served_by": "edge", "fallback": False})
    back_resp = codec.response_from_proto(codec.response_to_proto(resp))
    assert back_resp.parameters == {"served_by": "edge", "fallback": False}
    np.testing.assert_array_equal(back_resp.outputs["y"], array)


@given(
    st.text(max_size=8),
    st.lists(st.integers(-(2**40), 2**40), max_size=5),
    st.binary(max_size=200),
)
@settings(max_examples=300)
def test_garbage_tensor_raises_only_invalid_input(datatype, shape, raw):
    try:
        codec.decode_array(datatype, shape, raw, max_bytes=1 << 20)
    except InvalidInput as exc:
        assert str(exc)  # a message a person can act on


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_garbage_request_bytes_raise_only_invalid_input_or_decode_error(blob):
    try:
        msg = pb.ModelInferRequest.FromString(blob)
    except Exception:  # protobuf's own DecodeError: not a tensor problem
        return
    try:
        codec.request_from_proto(msg, max_tensor_bytes=1 << 20)
    except InvalidInput:
        pass


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "needle"),
    [
        ("FP32", [2, 3], b"\0" * 20, "needs 24 bytes, got 20"),
        ("FP33", [1], b"\0" * 4, "unknown datatype 'FP33'"),
        ("INT64", [-1, 2], b"", "negative dimension"),
        ("UINT8", [1 << 30], b"", "over the 1024-byte limit"),
        ("UINT8", [2000], b"\0" * 2000, "exceeds the 1024-byte limit"),
        ("BYTES", [2], struct.pack("<I", 1) + b"a", "ends after 1 of 2"),
        ("BYTES", [1], struct.pack("<I", 9) + b"a", "claims 9 bytes"),
        ("BYTES", [1], struct.pack("<I", 1) + b"ab", "trailing bytes"),
        ("BF16", [1], b"\0\0", "unknown datatype"),
    ],
)
def test_malformed_tensor_messages(datatype, shape, raw, needle):
    with pytest.raises(InvalidInput, match=needle.replace("(", r"\(")):
        codec.decode_array(datatype, shape, raw, name="x", max_bytes=1024)


def test_request_structure_errors():
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.add(name="a", datatype="FP32", shape=[1])
    msg.inputs.add(name="a", datatype="FP32", shape=[1])
    msg.raw_input_contents.extend([b"\0" * 4])
    with pytest.raises(InvalidInput, match="2 inputs but 1 raw_input_contents"):
        codec.request_from_proto(msg)
    msg.raw_input_contents.append(b"\0" * 4)
    with pytest.raises(InvalidInput, match="appears twice"):
        codec.request_from_proto(msg)
    with pytest.raises(InvalidInput, match="model_name is empty"):
        codec.request_from_proto(pb.ModelInferRequest())
    empty = pb.ModelInferRequest(model_name="m")
    empty.inputs.add(name="a", datatype="FP32", shape=[1])
    with pytest.raises(InvalidInput, match="carries no data"):
        codec.request_from_proto(empty)


def test_typed_contents_are_accepted():
    msg = pb.ModelInferRequest(model_name="m")
    t = msg.inputs.add(name="x", datatype="FP32", shape=[2, 2])
    t.contents.fp32_contents.extend([1, 2, 3, 4])
    s = msg.inputs.add(name="s", datatype="BYTES", shape=[1])
    s.contents.bytes_contents.append(b"hi")
    req = codec.request_from_proto(msg)
    np.testing.assert_array_equal(req.inputs["x"], np.array([[1, 2], [3, 4]], dtype=np.float32))
    assert req.inputs["s"].tolist() == [b"hi"]
    t.contents.fp32_contents.append(5)
    with pytest.raises(InvalidInput, match="needs 4 values, got 5"):
        codec.request_from_proto(msg)


@pytest.mark.parametrize(
    ("params", "route", "deadline"),
    [
        ({}, "auto", None),
        ({"route": "cloud", "deadline_ms": 40}, "cloud", 40),
        ({"route": "edge"}, "edge", None),
    ],
)
def test_route_and_deadline_parameters(params, route, deadline):
    assert codec.route_of(params) == route
    assert codec.deadline_ms_of(params) == deadline


@pytest.mark.parametrize("params", [{"route": "moon"}, {"deadline_ms": -5}, {"deadline_ms": "soon"}])
def test_bad_parameters(params):
    with pytest.raises(InvalidInput):
        codec.route_of(params)
        codec.deadline_ms_of(params)
