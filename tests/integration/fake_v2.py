"""A plain v2 server for the cloud-link tests: it knows nothing about fogline.

``PlainV2`` answers like a stock Triton/KServe would: it echoes request ids, reports no
``compute_ms``, signals model errors in ``error_message`` and keeps the stream open. Some model names
make it misbehave on purpose, so the link's failure handling shows:

- ``hang``: never answered;
- ``die``: the stream is aborted with UNAVAILABLE;
- ``boom``: answered with a model error;
- ``reports``: answered with ``compute_ms`` = 80 (as a fogline cloud reports it).

Every other model answers ``y = 2 * x`` as version "7". ``ready_calls`` counts the ``ServerReady`` probes.
"""

from __future__ import annotations

import grpc

from fogline import codec
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc


class PlainV2(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self):
        self.ready_calls = 0

    async def ServerReady(self, request, context):
        self.ready_calls += 1
        return pb.ServerReadyResponse(ready=True)

    async def ModelStreamInfer(self, request_iterator, context):
        async for msg in request_iterator:
            req = codec.request_from_proto(msg)
            if req.model_name == "hang":
                continue
            if req.model_name == "die":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            if req.model_name == "boom":
                yield pb.ModelStreamInferResponse(error_message="model boom failed",
                                                  infer_response=pb.ModelInferResponse(id=msg.id))
                continue
            params = {"compute_ms": 80.0} if req.model_name == "reports" else {}
            out = codec.InferResponse(req.model_name, {"y": req.inputs["x"] * 2}, "7", req.id, params)
            yield pb.ModelStreamInferResponse(infer_response=codec.response_to_proto(out))
