"""fogline's cloud tier against a peer, MLServer, side by side: same model, same limits, same client.

    python -m bench.cloud_peer                        # 3 runs; writes bench/results/cloud-peer.md
    python -m bench.cloud_peer --server-cpus 2,3 --client-cpus 4-7   # pinned (taskset)
    python -m bench.cloud_peer --quick --out /tmp/peer.md             # a tiny run (the test's)

Both servers serve ``minilm`` FP32 (fogline's full model; in MLServer through
``fogline.cloud.mlserver_runtime``, its own virtual environment ``.venv-mlserver``, adaptive batching
with ``max_batch_size`` 32 and ``max_batch_time`` 5 ms, torch using every core of the server's
set). fogline runs ``fogline cloud serve --max-batch-size 32 --max-queue-delay-us 5000``. One
server is driven at a time by an unmodified ``tritonclient.grpc.aio`` client in its own process
(``bench.cloud_peer_client``): closed loop at concurrency 1, 8 and 32, then open loop (Poisson
arrivals) at 50% and 80% of the peer's capacity (MLServer's best closed-loop throughput in that
run). Each run measures every row of both servers, interleaved; the report gives the median over
the runs of each figure.

Gates (issue 20): c=32 throughput >= 1.3x MLServer's, c=32 p99 <= MLServer's, c=1 p50 no worse,
open loop at 80% of the peer's capacity: fogline's p99 < 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MLSERVER_VENV = REPO / ".venv-mlserver"
CLOSED = (1, 8, 32)
OPEN = (0.5, 0.8)
SERVERS = ("mlserver", "fogline")


@dataclass
class Row:
    """One server at one load, over the runs: a throughput and latency figures per run."""

    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    errors: int = 0
    error_sample: str = ""
    offered: list[float] = field(default_factory=list)

    def add(self, result: dict, offered: float = 0.0) -> None:
        lat = np.array(result["latencies_ms"] or [float("nan")])
        self.rates.append(len(result["latencies_ms"]) / result["seconds"])
        self.p50.append(float(np.percentile(lat, 50)))
        self.p99.append(float(np.percentile(lat, 99)))
        self.mean.append(float(lat.mean()))
        self.errors += result["errors"]
        self.error_sample = self.error_sample or result["error_sample"]
        self.offered.append(offered)

    @staticmethod
    def med(values: list[float]) -> float:
        return float(np.median(values)) if values else float("nan")


# ------------------------------------------------------------------------------------ servers


def _taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def _cores(cpus: str | None) -> int:
    if not cpus:
        return len(os.sched_getaffinity(0))
    count = 0
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class Server:
    """A server child process; ``port`` once it answers."""

    def __init__(self, name: str, cmd: list[str], env: dict, log: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                         start_new_session=True)
        self.port = 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlserver(models: Path, work: Path, cpus: str | None, python: Path | None, device: str = "cpu") -> Server:
    """MLServer serving minilm with adaptive batching (32 requests, 5 ms), torch on every server core
    (or on the GPU with ``device="cuda"``: fogline's MLServer runtime takes the device like the cloud)."""
    from fogline.cloud.mlserver_repo import write_repository

    folder = work / "mlserver-repo"
    grpc_port, http_port, metrics_port = _free_port(), _free_port(), _free_port()
    settings = write_repository(models, folder, names=["minilm"], torch_threads=_cores(cpus), device=device,
                                grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)[0]
    doc = json.loads(settings.read_text())
    doc.update(max_batch_size=32, max_batch_time=0.005)
    settings.write_text(json.dumps(doc, indent=2))
    if python is not None:  # an environment of MLServer's beside fogline's (the device machine)
        cmd = [str(python), "-c", "from mlserver.cli.main import main; main()", "start", str(folder)]
    else:
        cmd = [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": str(_cores(cpus)), "PYTHONPATH": str(REPO / "src")}
    env.pop("VIRTUAL_ENV", None)
    server = Server("mlserver", [*_taskset(cpus), *cmd], env, work / "mlserver.log", cwd=folder)
    server.port = grpc_port
    return server


def start_fogline(models: Path, work: Path, cpus: str | None, trace: Path | None, device: str = "cpu") -> Server:
    cmd = [sys.executable, "-m", "fogline.cli", "cloud", "serve", "--listen", "127.0.0.1:0", "--models", str(models),
           "--device", device, "--metrics-port", "off", "--max-batch-size", "32", "--max-queue-delay-us", "5000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if trace is not None:
        env["FOGLINE_BATCH_TRACE"] = str(trace)
    server = Server("fogline", [*_taskset(cpus), *cmd], env, work / "fogline.log")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.proc.poll() is None:
        for line in server.log.read_text(errors="replace").splitlines():
            if " serving " in line and " on " in line:
                server.port = int(line.split(" on ", 1)[1].split()[0].split(":")[-1].strip('",'))
                return server
        time.sleep(0.2)
    raise RuntimeError(f"fogline cloud serve did not start:\n{server.tail()}")


def wait_answering(server: Server, texts: Path, cpus: str | None, timeout_s: float = 240) -> None:
    """Until one request gets an answer (MLServer loads its models after it binds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.tail()}")
        result = drive(server.port, texts, cpus, closed=1, seconds=0.2, warmup=0)
        if result["latencies_ms"] and not result["errors"]:
            return
        time.sleep(1)
    raise RuntimeError(f"{server.name} did not answer in {timeout_s:.0f} s:\n{server.tail()}")


def drive(port: int, texts: Path, cpus: str | None, *, closed: int = 0, rate: float = 0.0, seconds: float,
          warmup: float, seed: int = 0) -> dict:
    """One client process (tritonclient must not share a process with fogline's stubs)."""
    mode = ["--closed", str(closed)] if closed else ["--rate", f"{rate:.3f}"]
    cmd = [*_taskset(cpus), sys.executable, "-m", "bench.cloud_peer_client", "--port", str(port), "--texts",
           str(texts), "--seconds", str(seconds), "--warmup", str(warmup), "--seed", str(seed), *mode]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds + warmup + 120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise RuntimeError(f"the client failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


# ------------------------------------------------------------------------------------ measuring


def measure(args: argparse.Namespace, work: Path) -> tuple[dict, dict]:
    """Every row of both servers, ``args.runs`` times, interleaved; returns (rows, trace summary)."""
    from fogline.modelbuild.fidelity import load_sentences

    texts = work / "texts.json"
    texts.write_text(json.dumps(load_sentences()))
    trace = work / "trace.jsonl" if args.trace else None
    rows: dict[tuple[str, str], Row] = {}
    windows: list[tuple[str, list[float]]] = []
    servers: dict[str, Server] = {}
    try:
        servers["mlserver"] = start_mlserver(args.models, work, args.server_cpus, args.mlserver_python, args.device)
        servers["fogline"] = start_fogline(args.models, work, args.server_cpus, trace, args.device)
        for server in servers.values():
            wait_answering(server, texts, args.client_cpus)
            for c in CLOSED:  # warm-up, not recorded
                drive(server.port, texts, args.client_cpus, closed=c, seconds=args.warmup, warmup=0)
        for run in range(args.runs):
            for name in SERVERS:
                port = servers[name].port
                for c in CLOSED:
                    result = drive(port, texts, args.client_cpus, closed=c, seconds=args.seconds,
                                   warmup=args.warmup, seed=run)
                    rows.setdefault((name, f"c={c}"), Row()).add(result)
                    if name == "fogline":
                        windows.append((f"c={c}", result["window"]))
            capacity = max(rows["mlserver", f"c={c}"].rates[-1] for c in CLOSED)
            for name in SERVERS:
                for share in OPEN:
                    result = drive(servers[name].port, texts, args.client_cpus, rate=share * capacity,
                                   seconds=args.seconds, warmup=args.warmup, seed=run)
                    rows.setdefault((name, f"open {share:.0%}"), Row()).add(result, share * capacity)
                    if name == "fogline":
                        windows.append((f"open {share:.0%}", result["window"]))
            print(f"run {run + 1}/{args.runs}: " + ", ".join(
                f"{n} {k} {r.rates[-1]:.0f}/s p99 {r.p99[-1]:.0f}" for (n, k), r in rows.items()), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return rows, summarize_trace(trace, windows) if trace else {}


def summarize_trace(trace: Path, windows: list[tuple[str, list[float]]]) -> dict:
    """Per load, from fogline's batch trace: batches waited through, queue and compute times, batch rows."""
    if not trace.exists():
        return {}
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    summary = {}
    for label in dict.fromkeys(lbl for lbl, _ in windows):
        spans = [w for lbl, w in windows if lbl == label]
        mine = [r for r in records if r["model"] == "minilm" and any(lo <= r["enq"] <= hi for lo, hi in spans)]
        if not mine:
            continue
        queue = np.array([(r["start"] - r["enq"]) * 1e3 for r in mine])
        compute = np.array([(r["end"] - r["start"]) * 1e3 for r in mine])
        batches = {(r["batch"], r["worker"]): r["rows"] for r in mine}
        summary[label] = {
            "ahead_max": max(r["ahead"] for r in mine),
            "ahead_1": sum(r["ahead"] == 1 for r in mine) / len(mine),
            "queue_p50": float(np.percentile(queue, 50)), "queue_p99": float(np.percentile(queue, 99)),
            "compute_p50": float(np.percentile(compute, 50)), "compute_p99": float(np.percentile(compute, 99)),
            "rows_mean": float(np.mean(list(batches.values()))), "rows_max": max(batches.values()),
        }
    return summary


# ------------------------------------------------------------------------------------ report


def gates(rows: dict) -> list[tuple[str, bool]]:
    def m(name: str, key: str, attr: str) -> float:
        return Row.med(getattr(rows[name, key], attr))

    peer = m("mlserver", "c=32", "rates")
    ratio = m("fogline", "c=32", "rates") / peer if peer else float("nan")
    return [
        (f"c=32 throughput: fogline / MLServer = **{ratio:.2f}x** (gate >= 1.3x)", ratio >= 1.3),
        (f"c=32 p99: fogline {m('fogline', 'c=32', 'p99'):.1f} ms vs MLServer {m('mlserver', 'c=32', 'p99'):.1f} ms "
         "(gate: at or below)", m("fogline", "c=32", "p99") <= m("mlserver", "c=32", "p99")),
        (f"c=1 p50: fogline {m('fogline', 'c=1', 'p50'):.2f} ms vs MLServer {m('mlserver', 'c=1', 'p50'):.2f} ms "
         "(gate: no worse)", m("fogline", "c=1", "p50") <= m("mlserver", "c=1", "p50")),
        (f"open loop at 80% of MLServer's capacity: fogline p99 **{m('fogline', 'open 80%', 'p99'):.1f} ms** "
         "(gate < 200 ms)", m("fogline", "open 80%", "p99") < 200),
        (f"errors: {sum(r.errors for r in rows.values())} (gate: none)", all(r.errors == 0 for r in rows.values())),
    ]


def write_report(out: Path, args: argparse.Namespace, rows: dict, trace: dict, command: str) -> bool:
    verdicts = gates(rows)
    ok = all(passed for _, passed in verdicts)
    lines = [
        f"# Cloud tier vs MLServer (minilm FP32, {'GPU' if getattr(args, 'device', 'cpu') == 'cuda' else 'CPU'})",
        "",
        f"`{command}` — {args.runs} run(s); each run measures every row of both servers ({args.seconds:g} s "
        f"after {args.warmup:g} s of warm-up), MLServer first. Figures: the median over the runs.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; servers on "
        f"{args.server_cpus or 'any CPU'} ({_cores(args.server_cpus)} cores), client on {args.client_cpus or 'any CPU'}. "
        f"Python {platform.python_version()}. Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        *([f"Note: {args.note}"] if args.note else []),
        "",
        "MLServer 1.7.1: adaptive batching (max_batch_size 32, max_batch_time 5 ms), the model through "
        "`fogline.cloud.mlserver_runtime` (one torch call at a time, every server core). fogline: "
        "`fogline cloud serve --max-batch-size 32 --max-queue-delay-us 5000` (compute pool defaults: "
        "one worker per core). Client: unmodified `tritonclient.grpc.aio`, unary `infer`, one sentence per request.",
        "",
        "| load | server | throughput (req/s) | p50 ms | p99 ms | p99/mean | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in [f"c={c}" for c in CLOSED] + [f"open {s:.0%}" for s in OPEN]:
        for name in SERVERS:
            row = rows[name, key]
            load = key if not row.offered[0] else f"{key} ({Row.med(row.offered):.0f}/s offered)"
            lines.append(f"| {load} | {name} | {Row.med(row.rates):.1f} | {Row.med(row.p50):.1f} | "
                         f"{Row.med(row.p99):.1f} | {Row.med(row.p99) / Row.med(row.mean):.2f} | {row.errors} |")
    lines += ["", "## Gates", ""]
    lines += [f"- {text}: {'pass' if passed else 'FAIL'}" for text, passed in verdicts]
    lines += ["", f"Overall: **{'PASS' if ok else 'FAIL'}**", ""]
    if trace:
        lines += ["## fogline's batches (FOGLINE_BATCH_TRACE)", "",
                  "| load | batches waited through (max) | share passed over once | queue p50 / p99 ms | "
                  "compute p50 / p99 ms | rows per batch (mean / max) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for label, t in trace.items():
            lines.append(f"| {label} | {t['ahead_max']} | {t['ahead_1']:.1%} | {t['queue_p50']:.1f} / "
                         f"{t['queue_p99']:.1f} | {t['compute_p50']:.1f} / {t['compute_p99']:.1f} | "
                         f"{t['rows_mean']:.1f} / {t['rows_max']} |")
        lines.append("")
    errors = [f"- {n} {k}: {r.error_sample}" for (n, k), r in rows.items() if r.error_sample]
    if errors:
        lines += ["## Errors (one sample per row)", "", *errors, ""]
    if args.explain and args.explain.exists():
        lines += [args.explain.read_text().rstrip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}: {'PASS' if ok else 'FAIL'}")
    return ok


def build_parser(prog: str = "python -m bench.cloud_peer") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=None, help="model repository (default ./models)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per row and run")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each row")
    parser.add_argument("--server-cpus", help="taskset CPU list for both servers, e.g. 2,3")
    parser.add_argument("--client-cpus", help="taskset CPU list for the client, e.g. 4-7")
    parser.add_argument("--mlserver-python", type=Path, help="a python that imports mlserver (default: .venv-mlserver)")
    parser.add_argument("--no-trace", dest="trace", action="store_false", help="run fogline without its batch trace")
    parser.add_argument("--explain", type=Path, default=RESULTS / "cloud-peer-tail.md",
                        help="a hand-written section appended to the report (default bench/results/cloud-peer-tail.md)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where both servers run the model (cuda: the GPU host's comparison)")
    parser.add_argument("--note", default="")
    parser.add_argument("--quick", action="store_true", help="one short run (for the test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cloud-peer.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.warmup = 1, 1.0, 0.3
    from fogline.models.repository import default_models_dir

    args.models = (args.models or default_models_dir()).resolve()
    work = Path(tempfile.mkdtemp(prefix="cloud-peer-"))
    command = " ".join(["python -m bench.cloud_peer", *(argv if argv is not None else sys.argv[1:])])
    try:
        rows, trace = measure(args, work)
        write_report(args.out, args, rows, trace, command)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
