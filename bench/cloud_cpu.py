"""Where the CPU goes while the cloud tier serves ``minilm``: each server thread, the client, idle.

    python -m bench.cloud_cpu [--models DIR] [--concurrency 32] [--seconds 10] [--out PATH]

Starts ``fogline cloud serve`` as ``bench.cloud`` does (max batch 8, compute pool defaults), warms it
up, then runs ``bench.cloud``'s closed-loop streaming client for ``--seconds`` and reads the CPU time
of every server thread (``/proc``, so Linux only), of the client process and of the CPUs this process may run on
(its affinity: pin it with ``taskset`` and the server inherits it) over exactly that window. It explains the gap between served throughput and the in-process ceiling:
on a CPU the model's compute threads can only have what the event loop, gRPC's own threads and the
client leave them.

Thread names: the main thread runs the event loop; gRPC's C-core names its threads (``event_engine``,
``grpc_global_tim``...); Python threads keep the process's name (``python``) and are ranked by CPU: under load
the compute workers are the busiest of them (gRPC's aio poller is a Python thread too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cloud import RESULTS, ServerProcess, closed_loop, save_report, sentences


@dataclass(frozen=True)
class ThreadCpu:
    label: str
    seconds: float  # CPU seconds in the window


def _ticks_to_s(ticks: int) -> float:
    return ticks / os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """``{thread id: (kernel name, user + system CPU seconds)}`` of every thread of ``pid`` (/proc)."""
    out: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0], utime fields[11]
        out[int(tid)] = (name, _ticks_to_s(int(fields[11]) + int(fields[12])))
    return out


def cpu_times(cpus: set[int]) -> dict[str, float]:
    """Seconds the given CPUs spent busy, idle and stolen (``/proc/stat``)."""
    totals = {"busy": 0.0, "idle": 0.0, "steal": 0.0}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
        totals["busy"] += _ticks_to_s(user + nice + system + irq + softirq)
        totals["idle"] += _ticks_to_s(idle + iowait)
        totals["steal"] += _ticks_to_s(steal)
    return totals


def label_threads(pid: int, before: dict, after: dict) -> list[ThreadCpu]:
    """Per-thread CPU over the window, labelled: main, Python threads by rank, C-core threads by name."""
    used = {tid: after[tid][1] - before.get(tid, (None, 0.0))[1] for tid in after}
    rows = [ThreadCpu("main thread (event loop, gRPC callbacks)", used.pop(pid, 0.0))]
    unnamed = after[pid][0] if pid in after else "python"  # Python threads keep the process's name
    python = sorted((tid for tid in used if after[tid][0] == unnamed), key=lambda t: -used[t])
    for rank, tid in enumerate(python):
        role = "compute worker?" if rank < 2 else "other: gRPC's aio poller, ..."
        rows.append(ThreadCpu(f"Python thread #{rank + 1} ({role})", used[tid]))
    by_name: dict[str, float] = {}
    for tid, seconds in used.items():
        if after[tid][0] != unnamed:
            by_name[after[tid][0]] = by_name.get(after[tid][0], 0.0) + seconds
    rows += [ThreadCpu(f"{name} (gRPC C-core)", s) for name, s in sorted(by_name.items(), key=lambda kv: -kv[1])]
    return [row for row in rows if row.seconds > 0.0]


def measure(models: Path, concurrency: int, seconds: float) -> dict:
    texts = sentences()
    cpus = os.sched_getaffinity(0)
    server = ServerProcess(models, "cpu", 8)
    try:
        asyncio.run(closed_loop(server.port, concurrency, 3.0, 0.0, texts))  # warm-up, not recorded
        machine0, client0, threads0 = cpu_times(cpus), os.times(), thread_times(server.proc.pid)
        began = time.perf_counter()
        answered, _, latencies, batches, errors = asyncio.run(closed_loop(server.port, concurrency, seconds, 0.0, texts))
        wall = time.perf_counter() - began
        machine1, client1, threads1 = cpu_times(cpus), os.times(), thread_times(server.proc.pid)
    finally:
        server.stop()
    return {
        "concurrency": concurrency,
        "wall": wall,
        "answered": answered,
        "errors": errors,
        "mean_batch": sum(batches) / len(batches) if batches else float("nan"),
        "p50_ms": sorted(latencies)[len(latencies) // 2] if latencies else float("nan"),
        "threads": label_threads(server.proc.pid, threads0, threads1),
        "cores": len(cpus),
        "client": (client1.user + client1.system) - (client0.user + client0.system),
        "machine_busy": machine1["busy"] - machine0["busy"],
        "machine_idle": machine1["idle"] - machine0["idle"],
        "steal": machine1["steal"] - machine0["steal"],
    }


def report(result: dict, out: Path) -> str:
    wall, answered = result["wall"], max(1, result["answered"])
    cores = result["cores"]

    def row(label: str, seconds: float) -> str:
        return f"| {label} | {seconds / wall * 100:.1f}% | {seconds / answered * 1e3:.3f} |"

    server_total = sum(t.seconds for t in result["threads"])
    lines = [
        "# Cloud tier: where the CPU goes while serving",
        "",
        f"`python -m bench.cloud_cpu {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {cores} CPU cores (this process's affinity). Model `minilm`, one sentence per "
        f"request, concurrency {result['concurrency']} over streaming gRPC (max batch 8), {wall:.1f} s window: "
        f"{result['answered'] / wall:.1f} answers/s, p50 {result['p50_ms']:.1f} ms, mean batch {result['mean_batch']:.1f} rows, "
        f"{result['errors']} errors.",
        "",
        "| who | CPU, % of one core | CPU ms per request |",
        "| --- | ---: | ---: |",
        *(row(t.label, t.seconds) for t in result["threads"]),
        row("**server, all threads**", server_total),
        row("benchmark client (its process)", result["client"]),
        row("these cores, busy (anyone)", result["machine_busy"]),
        row("these cores, idle", result["machine_idle"]),
        *([row("stolen by the hypervisor", result["steal"])] if result["steal"] > 0 else []),
        "",
        f"The cores have {cores * 100}% of one core between them. What the compute workers do not get is what the event",
        "loop, gRPC's threads and the client take, plus idle time: a compute worker that waits for the GIL",
        "(held by the event loop or the other worker between two torch operators) sleeps.",
        "",
    ]
    return save_report(out, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("FOGLINE_TEST_MODELS", ".cache/test-models")),
                        help="model repository (default $FOGLINE_TEST_MODELS or .cache/test-models)")
    parser.add_argument("--concurrency", type=int, default=32, help="streams, one request in flight each")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--out", type=Path, default=RESULTS / "cloud-cpu-split.md", help="markdown report path")
    args = parser.parse_args(argv)
    if not Path("/proc/self/task").is_dir():
        print("bench.cloud_cpu: needs Linux /proc", file=sys.stderr)
        return 2
    if args.concurrency < 1 or args.seconds <= 0:
        print("bench.cloud_cpu: --concurrency must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    if not (args.models / "minilm").is_dir():
        print(f"bench.cloud_cpu: no minilm in {args.models}; build it with `make models`", file=sys.stderr)
        return 2
    print(report(measure(args.models, args.concurrency, args.seconds), args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
