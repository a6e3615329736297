"""The load generator of ``bench.cloud_peer``: an unmodified ``tritonclient.grpc.aio`` client.

It runs in a process of its own because tritonclient registers the same protobuf messages as
fogline's stubs: this module must never import ``fogline.inference`` (nor anything that does).

    python -m bench.cloud_peer_client --port 8001 --texts texts.json --closed 32 --seconds 5
    python -m bench.cloud_peer_client --port 8001 --texts texts.json --rate 120 --seconds 5

Closed loop (``--closed C``): C tasks, each with one ``infer`` call in flight, one sentence each.
Open loop (``--rate R``): Poisson arrivals at R requests/s, each an ``infer`` call started at its
arrival time whatever is outstanding; latency counts from the scheduled arrival, so a client that
falls behind does not hide the server's queue (no coordinated omission).

Prints one JSON object: ``{"latencies_ms", "errors", "error_sample", "seconds", "window"}``;
``window`` is the measured interval on ``time.monotonic`` (the same clock as the server's trace).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np


def _inputs(texts: list[str]):
    import tritonclient.grpc.aio as grpcclient

    prepared = []
    for text in texts:
        tensor = grpcclient.InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
        prepared.append(tensor)
    return prepared


async def _one(client, prepared, i: int, t0: float, out: dict) -> None:
    try:
        result = await client.infer("minilm", [prepared[i % len(prepared)]], client_timeout=30)
        if result.as_numpy("embedding").shape != (1, 384):
            raise RuntimeError(f"unexpected embedding shape {result.as_numpy('embedding').shape}")
    except Exception as exc:  # every failure is counted, one is shown
        out["errors"] += 1
        out["error_sample"] = out["error_sample"] or f"{type(exc).__name__}: {exc}"[:300]
        return
    t1 = time.monotonic()
    if out["from"] <= t0 and t1 <= out["to"]:
        out["latencies_ms"].append((t1 - t0) * 1e3)


async def drive(port: int, texts: list[str], seconds: float, warmup: float, closed: int, rate: float,
                seed: int) -> dict:
    import tritonclient.grpc.aio as grpcclient

    prepared = _inputs(texts)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    start = time.monotonic()
    out: dict = {"latencies_ms": [], "errors": 0, "error_sample": "", "from": start + warmup,
                 "to": start + warmup + seconds}
    stop_at = out["to"]
    rng = np.random.default_rng(seed)
    try:
        if closed:
            async def caller(k: int) -> None:
                i = k * 7919
                while True:
                    t0 = time.monotonic()
                    if t0 >= stop_at:
                        return
                    await _one(client, prepared, i, t0, out)
                    i += 1

            await asyncio.gather(*(caller(k) for k in range(closed)))
        else:
            tasks = set()
            at, i = start, 0
            while at < stop_at:
                at += rng.exponential(1.0 / rate)
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(_one(client, prepared, i, at, out))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.gather(*tasks)
    finally:
        await client.close()
    return {"latencies_ms": out["latencies_ms"], "errors": out["errors"], "error_sample": out["error_sample"],
            "seconds": seconds, "window": [out["from"], out["to"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud_peer_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--texts", type=Path, required=True, help="JSON list of sentences")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--closed", type=int, help="closed loop with this many callers")
    mode.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    texts = json.loads(args.texts.read_text())
    result = asyncio.run(drive(args.port, texts, args.seconds, args.warmup, args.closed or 0, args.rate or 0.0,
                               args.seed))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
