"""What TLS and tokens cost the cloud: throughput at c=32 and p50 at c=1, plaintext vs secured.

Two ``fogline cloud serve`` subprocesses on the same models run side by side in one run: one in
plaintext without tokens, one with mutual TLS (certificates made for the run with ``trustme``) and a
tokens file. A closed loop of ``minilm`` requests over ``ModelStreamInfer`` (as ``bench.cloud`` does,
one request in flight per stream) measures each, in short rounds interleaved between the two so that
a burst of load elsewhere on the machine hits both. Writes ``bench/results/tls.md``.

    python -m bench.tls [--rounds 5] [--seconds 6] [--models DIR] [--out bench/results/tls.md]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.cloud import Run, ServerProcess, order, save_report, sentences

GOAL_RATIO = 0.90  # TLS throughput at c=32 at least 90% of plaintext


class Pki:
    """A server CA and certificate, a client CA and certificate, and one device token, in ``root``."""

    def __init__(self, root: Path) -> None:
        import trustme

        from fogline.security import add_token

        ca, client_ca = trustme.CA(), trustme.CA()
        server, client = ca.issue_cert("localhost", "127.0.0.1"), client_ca.issue_cert("bench-device")
        self.ca = ca.cert_pem.bytes()
        self.client_key = client.private_key_pem.bytes()
        self.client_chain = b"".join(blob.bytes() for blob in client.cert_chain_pems)
        (root / "server.pem").write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        server.private_key_pem.write_to_path(str(root / "server.key"))
        client_ca.cert_pem.write_to_path(str(root / "clients-ca.pem"))
        self.tokens_file = root / "tokens"
        self.token = add_token(self.tokens_file, "bench-device")
        self.flags = ("--tls-cert", str(root / "server.pem"), "--tls-key", str(root / "server.key"),
                      "--tls-client-ca", str(root / "clients-ca.pem"), "--tokens-file", str(self.tokens_file))  # fmt: skip


async def closed_loop(port: int, concurrency: int, seconds: float, texts: list[str], pki: Pki | None):
    """``concurrency`` streams with one request in flight each; (answered, seconds, latencies ms, errors)."""
    import grpc

    from fogline import codec
    from fogline.inference import grpc_service_pb2 as pb

    messages = [
        codec.request_to_proto(
            codec.InferRequest("minilm", {"text": np.array([t.encode()], dtype=object)})
        ).SerializeToString()
        for t in texts
    ]
    if pki is None:
        channel, metadata = grpc.aio.insecure_channel(f"127.0.0.1:{port}"), None
    else:
        creds = grpc.ssl_channel_credentials(
            pki.ca, private_key=pki.client_key, certificate_chain=pki.client_chain
        )
        channel, metadata = (
            grpc.aio.secure_channel(f"localhost:{port}", creds),
            (("authorization", f"Bearer {pki.token}"),),
        )
    latencies: list[float] = []
    errors = 0
    async with channel:
        open_stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=None,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        stop_at = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            call = open_stream(metadata=metadata)
            sequence = order(len(messages))
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await call.write(messages[sequence.take(1)[0]])
                reply = await call.read()
                if reply.error_message:
                    errors += 1
                else:
                    latencies.append((time.perf_counter() - t0) * 1e3)
            await call.done_writing()

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(latencies), seconds, latencies, errors


def measure(models: Path, device: str, rounds: int, seconds: float) -> dict[tuple[str, int], Run]:
    texts = sentences()
    runs = {(mode, c): Run(f"{mode}, c={c}") for mode in ("plaintext", "mTLS + token") for c in (1, 32)}
    with tempfile.TemporaryDirectory() as tmp:
        pki = Pki(Path(tmp))
        servers = {mode: ServerProcess(models, device, grace_s=2, extra=flags)
                   for mode, flags in (("plaintext", ()), ("mTLS + token", tuple(pki.flags)))}
        try:
            for mode, server in servers.items():  # warm-up, not recorded
                for c in (1, 32):
                    asyncio.run(
                        closed_loop(server.port, c, seconds / 2, texts, pki if mode != "plaintext" else None)
                    )
            for r in range(rounds):
                order_of_modes = list(servers) if r % 2 == 0 else list(reversed(servers))
                for c in (32, 1):
                    for mode in order_of_modes:
                        done, secs, lat, errors = asyncio.run(
                            closed_loop(
                                servers[mode].port, c, seconds, texts, pki if mode != "plaintext" else None
                            )
                        )
                        runs[mode, c].add(done, secs, lat, [], errors)
                print(f"round {r + 1}/{rounds}: " + ", ".join(f"{run.label} {run.rates[-1]:.0f}/s"
                      for run in runs.values()), flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
    return runs


def write_report(out: Path, device: str, rounds: int, seconds: float, runs: dict, command: str) -> str:
    plain32, tls32 = runs["plaintext", 32], runs["mTLS + token", 32]
    plain1, tls1 = runs["plaintext", 1], runs["mTLS + token", 1]
    ratio = tls32.throughput / plain32.throughput if plain32.throughput else float("nan")
    verdict = "PASS" if ratio >= GOAL_RATIO else "FAIL"
    lines = [
        "# Cost of TLS on the cloud tier",
        "",
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()} ({platform.processor() or platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} usable cores), device {device}; {rounds} rounds of {seconds:g} s "
        "per configuration, interleaved; minilm, one sentence per request, closed loop over ModelStreamInfer "
        "(one request in flight per stream); client and both servers share the machine.",
        "",
        "| configuration | c=32 throughput (req/s, median of rounds) | c=32 p50 / p99 (ms) | c=1 p50 / p99 (ms) | errors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, c32, c1 in (
        ("plaintext, no tokens", plain32, plain1),
        ("mutual TLS + bearer token", tls32, tls1),
    ):
        lines.append(
            f"| {mode} | {c32.throughput:.0f} | {c32.p(50):.2f} / {c32.p(99):.2f} | "
            f"{c1.p(50):.2f} / {c1.p(99):.2f} | {c32.errors + c1.errors} |"
        )
    lines += [
        "",
        f"- c=32 throughput, TLS / plaintext: **{ratio:.1%}** (goal >= {GOAL_RATIO:.0%}): **{verdict}**",
        f"- c=1 p50, TLS - plaintext: **{tls1.p(50) - plain1.p(50):+.2f} ms**",
        f"- per-round c=32 rates: plaintext {', '.join(f'{x:.0f}' for x in plain32.rates)}; "
        f"TLS {', '.join(f'{x:.0f}' for x in tls32.rates)}",
        "",
    ]
    return save_report(out, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path(".cache/test-models"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tls.md"))
    args = parser.parse_args(argv)
    runs = measure(args.models, args.device, args.rounds, args.seconds)
    command = "python -m bench.tls " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_report(args.out, args.device, args.rounds, args.seconds, runs, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
