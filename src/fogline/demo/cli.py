"""``fogline demo``: the whole system on loopback, through a network that goes bad and comes back.

It builds the reference models if ``./models`` lacks them, starts the cloud tier (a child process),
the network-condition proxy and an edge agent (in this process), then streams requests from a client
while the network goes good (5 ms) -> slow (300 ms one way) -> down (blackhole) -> good. Every half
second it prints which tier answered and how fast; at the end, a summary table per phase.

    fogline demo [--models DIR] [--seconds-per-phase S] [--rate N] [--tls]

``--tls`` runs the same demo with mutual TLS and bearer tokens on both hops (client -> agent and
agent -> cloud), with a CA, certificates and tokens made for the run (``fogline.demo.pki``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SLO_MS = 100.0


@dataclass
class Sample:
    phase: str
    sent: float
    model: str
    latency_ms: float | None = None
    served_by: str = ""
    reason: str = ""
    fallback: bool = False
    error: str = ""


@dataclass
class Phase:
    name: str
    label: str
    delay_ms: float
    blackhole: bool
    samples: list[Sample] = field(default_factory=list)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="model repository (default $FOGLINE_MODELS or ./models)")
    parser.add_argument("--seconds-per-phase", type=float, default=8.0, help="length of each network phase")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second from the client")
    parser.add_argument("--tls", action="store_true",
                        help="mutual TLS + tokens on every hop (certificates made for the run)")
    return parser


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _line(now: float, phase: Phase, window: list[Sample], rtt: float | None) -> str:
    answered = [s for s in window if s.latency_ms is not None]
    cloud = sum(s.served_by == "cloud" for s in answered)
    edge = sum(s.served_by == "edge" for s in answered)
    bar = "C" * cloud + "e" * edge
    lat = [s.latency_ms for s in answered if s.latency_ms is not None]
    reasons = sorted({s.reason for s in answered})
    rtt_text = f"{rtt:6.0f}" if rtt is not None else "     -"
    return (f"{now:5.1f}s  {phase.label:<22} rtt~{rtt_text} ms  {bar:<12.12} cloud {cloud:2d} edge {edge:2d}  "
            f"p50 {_percentile(lat, 50):5.1f} ms  max {max(lat, default=float('nan')):5.1f} ms  "
            f"{','.join(reasons)}")


async def run_demo(models_dir: Path, seconds: float, rate: float, out=sys.stdout, *, tls: bool = False) -> int:
    import grpc

    from fogline import codec
    from fogline.demo.loopback import CloudProcess, LoopbackRig, device_config
    from fogline.demo.pki import DemoCredentials
    from fogline.inference import grpc_service_pb2_grpc as pb_grpc

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    creds = DemoCredentials() if tls else None
    if creds is not None:
        say(f"mutual TLS + tokens on every hop; CA, certificates and tokens in {creds.folder} (removed at the end)")
    say("starting the cloud tier (full-precision torch models) ...")
    cloud = CloudProcess(models_dir, extra=creds.cloud_args() if creds is not None else None)
    phases = [Phase("good", "good (5 ms)", 5, False), Phase("slow", "slow (300 ms one way)", 300, False),
              Phase("down", "down (blackhole)", 5, True), Phase("back", "good again (5 ms)", 5, False)]
    try:
        await asyncio.to_thread(cloud.start)
        config = device_config(extra_yaml=creds.agent_yaml()) if creds is not None else None
        async with LoopbackRig(models_dir, cloud.port, config=config) as rig:
            security = " over mutual TLS with tokens" if creds is not None else ""
            say(f"cloud on 127.0.0.1:{cloud.port}, network proxy on 127.0.0.1:{rig.proxy.port}, "
                f"agent on 127.0.0.1:{rig.agent_port}{security} (policy latency_aware, slo {SLO_MS:.0f} ms)")
            await rig.wait_cloud_usable(10.0)
            say("streaming digits and minilm requests; C = answered by the cloud, e = by the edge\n")
            target = f"127.0.0.1:{rig.agent_port}"
            channel = grpc.aio.secure_channel(target, creds.client_credentials()) if creds is not None \
                else grpc.aio.insecure_channel(target)
            metadata = creds.client_metadata() if creds is not None else None
            await _stream(rig, phases, seconds, rate, say, grpc, codec, pb_grpc, channel, metadata)
    finally:
        await asyncio.to_thread(cloud.stop)
        if creds is not None:
            creds.close()
    return _summary(phases, say)


async def _stream(rig, phases, seconds, rate, say, grpc, codec, pb_grpc, channel, metadata) -> None:
    rng = np.random.default_rng(0)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    call = stub.ModelStreamInfer(metadata=metadata)
    pending: dict[str, Sample] = {}
    texts = [b"the network is slow today", b"edge devices answer locally", b"the cloud has the full model"]

    async def read() -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            sample = pending.pop(msg.infer_response.id, None)
            if sample is None:
                continue
            sample.latency_ms = (time.perf_counter() - sample.sent) * 1000.0
            if msg.error_message:
                sample.error = msg.error_message
                continue
            params = codec.params_from_proto(msg.infer_response.parameters)
            sample.served_by = str(params.get("served_by", ""))
            sample.reason = str(params.get("route_reason", ""))
            sample.fallback = bool(params.get("fallback", False))

    reader = asyncio.create_task(read())
    start = time.perf_counter()
    n = 0
    try:
        for phase in phases:
            rig.proxy.set_conditions(delay_ms=phase.delay_ms, blackhole=phase.blackhole)
            phase_start = time.perf_counter()
            next_print = phase_start + 0.5
            window: list[Sample] = []
            while time.perf_counter() - phase_start < seconds:
                n += 1
                if n % 2:
                    model, inputs = "digits", {"image": rng.uniform(0, 16, (1, 8, 8)).astype(np.float32)}
                else:
                    model, inputs = "minilm", {"text": np.array([texts[n % 3]], dtype=object)}
                sample = Sample(phase.name, time.perf_counter(), model)
                pending[str(n)] = sample
                phase.samples.append(sample)
                window.append(sample)
                await call.write(codec.request_to_proto(codec.InferRequest(model, inputs, id=str(n))))
                await asyncio.sleep(1.0 / rate)
                if time.perf_counter() >= next_print:
                    rtt = rig.server.link.rtt.smoothed_ms
                    say(_line(time.perf_counter() - start, phase, window, rtt))
                    window = [s for s in window if s.latency_ms is None]
                    next_print += 0.5
        end = time.monotonic() + 5.0
        while pending and time.monotonic() < end:
            await asyncio.sleep(0.05)
        await call.done_writing()
    finally:
        reader.cancel()
        await channel.close()


def _summary(phases: list[Phase], say) -> int:
    say("\nsummary (deadline = slo 100 ms)")
    header = f"{'phase':<22} {'requests':>8} {'cloud':>6} {'edge':>6} {'fallback':>8} {'p50 ms':>7} " \
             f"{'p95 ms':>7} {'max ms':>7} {'late>20ms':>9} {'errors':>6}"
    say(header)
    say("-" * len(header))
    errors_total = 0
    for phase in phases:
        done = [s for s in phase.samples if s.latency_ms is not None and not s.error]
        errors = sum(1 for s in phase.samples if s.error or s.latency_ms is None)
        errors_total += errors
        lat = [s.latency_ms for s in done if s.latency_ms is not None]
        late = sum(1 for v in lat if v > SLO_MS + 20)
        say(f"{phase.label:<22} {len(phase.samples):>8} {sum(s.served_by == 'cloud' for s in done):>6} "
            f"{sum(s.served_by == 'edge' for s in done):>6} {sum(s.fallback for s in done):>8} "
            f"{_percentile(lat, 50):>7.1f} {_percentile(lat, 95):>7.1f} {max(lat, default=float('nan')):>7.1f} "
            f"{late:>9} {errors:>6}")
    say("\nevery request was answered" if errors_total == 0 else f"\n{errors_total} requests failed")
    return 0 if errors_total == 0 else 1


def main(argv: list[str] | None = None, prog: str = "fogline demo") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.seconds_per_phase <= 0 or args.rate <= 0:
        print(f"{prog}: --seconds-per-phase and --rate must be positive", file=sys.stderr)
        return 2
    from fogline.modelbuild.build import ensure_models
    from fogline.models.repository import default_models_dir

    models_dir = Path(args.models) if args.models else default_models_dir()
    print(f"models in {models_dir} (building what is missing; the first build takes a few minutes) ...",
          flush=True)
    try:
        ensure_models(models_dir, progress=True)
        return asyncio.run(run_demo(models_dir, args.seconds_per_phase, args.rate, tls=args.tls))
    except Exception as exc:  # one clear line, whatever broke
        print(f"{prog}: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
