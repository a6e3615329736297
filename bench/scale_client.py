"""The load generator of ``bench.scale``: closed-loop v2 calls to one agent, every request recorded.

    python -m bench.scale_client --port 8500 --model minilm --closed 16 --seconds 12

``--closed C`` callers each keep one ``ModelInfer`` call in flight (the agent routes it; the bench's
fleet says ``cloud_only``, so the edge answers only when no replica could). Prints one JSON object:
``{"records": [[sent, done, code], ...]}`` with ``time.monotonic`` times (the same clock as the driver's,
so its kill and reload times line up) and ``code`` "c" (cloud answered), "e" (edge answered) or "x"
(an error: a lost request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import grpc
import numpy as np

from fogline import codec
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

TEXTS = ["the camera saw a red truck at the gate", "a kiosk asks how to pay for parking",
         "sensor three reports a temperature spike", "the forklift stopped near aisle nine"]


def _inputs(model: str, i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if model == "minilm":
        return {"text": np.array([TEXTS[i % len(TEXTS)].encode()], dtype=object)}
    return {"image": rng.uniform(0, 16, (1, 8, 8)).astype(np.float32)}


async def drive(port: int, model: str, closed: int, seconds: float, deadline_ms: int) -> list[list]:
    records: list[list] = []
    end = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def caller(k: int) -> None:
            rng = np.random.default_rng(k)
            i = k
            while time.monotonic() < end:
                msg = codec.request_to_proto(codec.InferRequest(model, _inputs(model, i, rng),
                                                                parameters={"deadline_ms": deadline_ms}))
                i += closed
                sent = time.monotonic()
                try:
                    reply = await stub.ModelInfer(msg, timeout=30.0)
                    code = "c" if reply.parameters["served_by"].string_param == "cloud" else "e"
                except grpc.aio.AioRpcError:
                    code = "x"
                records.append([sent, time.monotonic(), code])

        await asyncio.gather(*(caller(k) for k in range(closed)))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="minilm", choices=("minilm", "digits"))
    parser.add_argument("--closed", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--deadline-ms", type=int, default=2000)
    args = parser.parse_args(argv)
    records = asyncio.run(drive(args.port, args.model, args.closed, args.seconds, args.deadline_ms))
    json.dump({"records": records}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
