"""The floor under the agent benchmark: a v2 server that decodes, answers zeros and does nothing else.

    python -m bench.agent_floor --models DIR [--listen 127.0.0.1:0]

It speaks ``ModelInfer`` and ``ModelStreamInfer`` with the same stack as the agent (``grpc.aio``,
fogline's generated servicer base, ``fogline.codec`` both ways) but runs no model, no router and no
queue: each answer is a zero tensor of the model's output shape. Its round trip is what Python gRPC
and the codec cost by themselves, so ``agent - floor`` is what the agent's own logic adds. The
answers are not predictions; the benchmark never checks them as such.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import numpy as np


def build_servicer(models_dir: Path):
    """A servicer answering every model of ``models_dir`` with zeros shaped like its outputs."""
    from fogline import codec
    from fogline.errors import ModelNotFound, status_of
    from fogline.inference import grpc_service_pb2 as pb
    from fogline.inference import grpc_service_pb2_grpc as pb_grpc
    from fogline.models.repository import ModelRepository, read_manifest, specs_of

    repo = ModelRepository(models_dir)
    outputs = {name: specs_of(read_manifest(repo.resolve(name)), "outputs") for name in repo.names()}

    def answer(request: codec.InferRequest) -> codec.InferResponse:
        specs = outputs.get(request.model_name)
        if specs is None:
            raise ModelNotFound(f"model {request.model_name!r} is not served here")
        rows = next(iter(request.inputs.values())).shape[0] if request.inputs else 1
        tensors = {s.name: np.zeros([rows, *[max(d, 1) for d in s.shape[1:]]], dtype=np.float32) for s in specs}
        return codec.InferResponse(request.model_name, tensors, "0", request.id, {"served_by": "floor"})

    class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            try:
                return codec.response_to_proto(answer(codec.request_from_proto(request)))
            except Exception as exc:
                await context.abort(*status_of(exc))

        async def ModelStreamInfer(self, request_iterator, context):
            async for msg in request_iterator:
                try:
                    reply = codec.response_to_proto(answer(codec.request_from_proto(msg)))
                    yield pb.ModelStreamInferResponse(infer_response=reply)
                except Exception as exc:
                    code, text = status_of(exc)
                    yield pb.ModelStreamInferResponse(error_message=f"[{code.name}] {text}")

    return FloorServicer()


async def serve(models_dir: Path, listen: str) -> int:
    import grpc

    from fogline.inference import grpc_service_pb2_grpc as pb_grpc

    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(build_servicer(models_dir), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        print(f"bench.agent_floor: cannot listen on {listen}", file=sys.stderr)
        return 1
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"bench.agent_floor: serving floor on {listen.rpartition(':')[0]}:{port}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="model repository (only manifests are read)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    args = parser.parse_args(argv)
    return asyncio.run(serve(args.models, args.listen))


if __name__ == "__main__":
    sys.exit(main())
