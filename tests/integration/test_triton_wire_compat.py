"""Wire compatibility with an unmodified Triton client (tritonclient.grpc).

tritonclient and fogline both register ``inference.*`` messages in protobuf's default pool, so the
Triton side always runs in its own Python process; the two sides exchange serialized protobuf bytes.
"""

from __future__ import annotations

import base64
import importlib.util
import json

import numpy as np
import pytest
from cloud_thread import run_python

from fogline import codec
from fogline.inference import grpc_service_pb2 as pb

pytestmark = [
    pytest.mark.integration,
    # find_spec only: importing tritonclient here would clash with fogline's stubs in protobuf's pool.
    pytest.mark.skipif(
        importlib.util.find_spec("tritonclient") is None, reason="tritonclient (dev extra) missing"
    ),
]


def test_message_descriptors_match_tritonclient():
    theirs = json.loads(
        run_python(
            """
            import json
            from tritonclient.grpc import service_pb2 as s
            def fields(d):
                out = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
                for n in d.nested_types:
                    out[n.name] = fields(n)
                return out
            names = ["ServerLiveRequest", "ServerLiveResponse", "ServerReadyResponse", "ModelReadyRequest",
                     "ModelReadyResponse", "ServerMetadataResponse", "ModelMetadataRequest", "ModelMetadataResponse",
                     "InferParameter", "InferTensorContents", "ModelInferRequest", "ModelInferResponse",
                     "ModelStreamInferResponse"]
            svc = s.DESCRIPTOR.services_by_name["GRPCInferenceService"]
            methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in svc.methods}
            print(json.dumps({"messages": {n: fields(s.DESCRIPTOR.message_types_by_name[n]) for n in names},
                              "methods": methods}))
            """
        )
    )

    def fields(d):
        out = {f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
        for n in d.nested_types:
            out[n.name] = fields(n)
        return out

    for name, expected in theirs["messages"].items():
        assert fields(pb.DESCRIPTOR.message_types_by_name[name]) == expected, name
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        assert theirs["methods"][method.name] == [method.input_type.full_name, method.output_type.full_name]


def test_tritonclient_request_decodes_and_fogline_response_reads_back():
    """InferInput built with tritonclient's helpers -> fogline decode -> fogline encode -> InferResult."""
    request_b64 = run_python(
        """
        import base64
        import numpy as np
        import tritonclient.grpc as grpcclient
        from tritonclient.grpc._utils import _get_inference_request
        inputs = []
        for name, dtype, array in [
            ("f", "FP32", np.arange(6, dtype=np.float32).reshape(2, 3) / 7),
            ("i", "INT64", np.array([[-(2**40), 5]], dtype=np.int64)),
            ("u", "UINT8", np.array([0, 7, 255], dtype=np.uint8)),
            ("s", "BYTES", np.array([b"hello", "w\\u00f6rld".encode(), b""], dtype=object)),
        ]:
            inp = grpcclient.InferInput(name, list(array.shape), dtype)
            inp.set_data_from_numpy(array)
            inputs.append(inp)
        req = _get_inference_request(model_name="m", inputs=inputs, model_version="", request_id="r1",
            outputs=None, sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
            parameters={"route": "edge", "deadline_ms": 50})
        print(base64.b64encode(req.SerializeToString()).decode())
        """
    )
    req = codec.request_from_proto(pb.ModelInferRequest.FromString(base64.b64decode(request_b64)))
    assert req.id == "r1"
    assert codec.route_of(req.parameters) == "edge" and codec.deadline_ms_of(req.parameters) == 50
    np.testing.assert_array_equal(req.inputs["f"], np.arange(6, dtype=np.float32).reshape(2, 3) / 7)
    np.testing.assert_array_equal(req.inputs["i"], np.array([[-(2**40), 5]], dtype=np.int64))
    np.testing.assert_array_equal(req.inputs["u"], np.array([0, 7, 255], dtype=np.uint8))
    assert req.inputs["s"].tolist() == [b"hello", "wörld".encode(), b""]

    response = codec.InferResponse("m", dict(req.inputs), "1", "r1", {"served_by": "edge", "fallback": False})
    payload = base64.b64encode(codec.response_to_proto(response).SerializeToString()).decode()
    read_back = json.loads(
        run_python(
            """
            import base64, json, sys
            import tritonclient.grpc as grpcclient
            from tritonclient.grpc import service_pb2
            msg = service_pb2.ModelInferResponse.FromString(base64.b64decode(sys.stdin.read()))
            result = grpcclient.InferResult(msg)
            out = {}
            for name in ["f", "i", "u", "s"]:
                a = result.as_numpy(name)
                out[name] = {"dtype": str(a.dtype), "shape": list(a.shape),
                             "values": [v.decode() if isinstance(v, bytes) else v for v in a.ravel().tolist()]}
            out["params"] = {k: str(v) for k, v in msg.parameters.items()}
            print(json.dumps(out))
            """,
            stdin=payload,
        )
    )
    assert read_back["f"]["dtype"] == "float32" and read_back["f"]["shape"] == [2, 3]
    np.testing.assert_array_equal(
        np.array(read_back["f"]["values"], dtype=np.float32), req.inputs["f"].ravel()
    )
    assert read_back["i"] == {"dtype": "int64", "shape": [1, 2], "values": [-(2**40), 5]}
    assert read_back["u"] == {"dtype": "uint8", "shape": [3], "values": [0, 7, 255]}
    assert read_back["s"]["shape"] == [3] and read_back["s"]["values"] == ["hello", "wörld", ""]
    assert "string_param" in read_back["params"]["served_by"]
