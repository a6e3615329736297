"""The agent's v2 (KServe / Triton) gRPC servicer: protobuf in, ``DataPlane`` call, protobuf out.

Every handler is thin: decode with ``fogline.codec``, call the transport-free core, encode the answer.
The calls themselves (Triton's ``ModelStreamInfer`` with answers out of order by id, ``error_message``
as ``"[CODE] message"``, unary statuses, the drain, and the ``waits_alone`` hint that lets the edge run
a lone waiting client's one-row calls on the event loop) are ``fogline.serving.stream``'s, as the
cloud's are.
"""

from __future__ import annotations

from fogline import __version__, codec
from fogline.agent.dataplane import DataPlane
from fogline.inference import grpc_service_pb2 as pb
from fogline.serving.stream import V2Servicer, abort

#: Kept from a client's gRPC deadline for sending the answer back.
TRANSPORT_MARGIN_MS = 5.0


class AgentServicer(V2Servicer):
    """``inference.GRPCInferenceService`` backed by the agent's data plane."""

    def __init__(self, dataplane: DataPlane, *, name: str = "fogline-agent") -> None:
        super().__init__(server="the agent")
        self.dataplane = dataplane
        self.name = name
        self.ready = False

    # ------------------------------------------------------------------ health and metadata
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.ready and not self.drain_event.is_set())

    async def ModelReady(self, request, context):
        ready = self.dataplane.edge.get(request.name, request.version) is not None
        return pb.ModelReadyResponse(ready=ready and self.ready and not self.drain_event.is_set())

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=self.name, version=__version__, extensions=[])

    async def ModelMetadata(self, request, context):
        try:
            runner = self.dataplane.edge.require(request.name, request.version)
        except Exception as exc:
            await abort(context, exc)
        model = runner.model
        return pb.ModelMetadataResponse(
            name=runner.name,
            versions=[runner.version],
            platform="onnxruntime_onnx",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=list(s.shape))
                    for s in model.inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=list(s.shape))
                     for s in model.outputs],
        )

    # ------------------------------------------------------------------ inference
    async def ModelInfer(self, request, context):
        remaining = context.time_remaining()
        time_left_ms = None if remaining is None else remaining * 1000.0 - TRANSPORT_MARGIN_MS

        async def answer(msg: pb.ModelInferRequest) -> pb.ModelInferResponse:
            return codec.response_to_proto(
                await self.dataplane.infer(codec.request_from_proto(msg), time_left_ms=time_left_ms))

        return await self.calls.unary(request, context, answer)

    async def ModelStreamInfer(self, request_iterator, context) -> None:
        await self.calls.stream(request_iterator, context, self._answer)

    async def _answer(self, msg: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return codec.response_to_proto(await self.dataplane.infer(codec.request_from_proto(msg)))
