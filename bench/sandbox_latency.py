"""Edge latency of ``fogline agent run`` inside the systemd unit's sandbox vs. outside it.

The sandbox is the unit's restrictions rebuilt by ``tests/e2e/agent_sandbox.sh`` (needs root). Each
round starts one agent per configuration, in turn (so a busy neighbour hits all of them alike), sends
sequential ``route=edge`` requests after a warm-up, and keeps the median client-side latency; the
report is the median over the rounds::

    sudo .venv/bin/python -m bench.sandbox_latency --models .cache/test-models --rounds 5

Nothing here imports torch; it is a measurement script, not part of the runtime.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.routing_procs import Proc
from fogline import codec
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
SANDBOX = REPO / "tests" / "e2e" / "agent_sandbox.sh"
FLEET = """version: 1
cloud: {endpoint: "127.0.0.1:1"}
defaults:
  listen: "127.0.0.1:0"
  models: [digits, minilm]
devices:
  bench: {}
"""
#: name -> procfs options inside the sandbox (None: no sandbox at all).
CONFIGS: dict[str, str | None] = {
    "no sandbox": None,
    "unit (ProtectProc=invisible)": "hidepid=invisible",
    "unit + ProcSubset=pid": "hidepid=invisible,subset=pid",
}
INPUTS = {
    "digits": {"image": np.full((1, 8, 8), 8.0, np.float32)},
    "minilm": {"text": np.array([b"the quick brown fox jumps over the lazy dog"], dtype=object)},
}


def _start(proc_options: str | None, models: Path, fleet: Path) -> tuple[Proc, int]:
    env = dict(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", FOGLINE_LOG_FORMAT="text", HOME="/")
    agent = [sys.executable, "-m", "fogline.cli", "agent", "run", "--device", "bench"]
    if proc_options is None:
        cmd = [*agent, "--config", str(fleet), "--models", str(models)]
    else:
        env["FOGLINE_MODELS"] = "/var/lib/fogline/models"
        cmd = ["unshare", "-m", "--propagation", "private", str(SANDBOX), proc_options, str(models), str(fleet),
               "--", *agent, "--config", "/var/lib/.sandbox-etc/fogline/fleet.yaml"]
    proc, match = Proc.start(f"agent ({proc_options})", cmd, r"serving .* on [^ ]+:(\d+)", timeout_s=120)
    return proc, int(match.group(1))


def _median_ms(port: int, model: str, n: int, warmup: int) -> float:
    request = codec.request_to_proto(codec.InferRequest(model, INPUTS[model], parameters={"route": "edge"}))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        times = []
        for i in range(warmup + n):
            started = time.perf_counter()
            stub.ModelInfer(request, timeout=30)
            if i >= warmup:
                times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (the sandbox mounts in a private mount namespace)")
    results: dict[str, dict[str, list[float]]] = {name: {m: [] for m in INPUTS} for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Path(tmp) / "fleet.yaml"
        fleet.write_text(FLEET)
        for round_ in range(args.rounds):
            for name, proc_options in CONFIGS.items():
                proc, port = _start(proc_options, args.models.resolve(), fleet)
                try:
                    for model in INPUTS:
                        results[name][model].append(_median_ms(port, model, args.requests, warmup=30))
                finally:
                    proc.stop(30)
                print(f"round {round_ + 1}: {name}: " + ", ".join(
                    f"{m} {results[name][m][-1]:.3f} ms" for m in INPUTS), flush=True)
    print(f"\nmedian of {args.rounds} rounds (each the median of {args.requests} sequential edge requests)")
    print("| configuration | " + " | ".join(f"{m} ms" for m in INPUTS) + " |")
    print("| --- | " + " | ".join("---" for _ in INPUTS) + " |")
    for name in CONFIGS:
        print(f"| {name} | " + " | ".join(f"{statistics.median(results[name][m]):.3f}" for m in INPUTS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
