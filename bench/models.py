"""Model benchmark: size, latency and fidelity of every model in a repository, on its three runtimes.

    python -m bench.models [--models DIR] [--only NAME] [--out bench/results/models.md] [--repeats 60] [--threads 1]

For each model (its newest version) it measures, in one run: file size of the FP32 ONNX vs the INT8
ONNX (and the torch file); median latency at batch 1 and 8 of torch FP32 (``FullModel``, when the
model has a torch form), onnxruntime FP32 and onnxruntime INT8 (``EdgeModel``), each through
``predict`` as the servers call it (so tokenization is included for a text model, equally for all
three); and fidelity (``fogline.modelbuild.verify``: measured again for a reference build, as the
import recorded it for an import). Everything is read from the manifest and the files: the inputs
come from the input signature (``bench.models_inputs``), the gates from how the model was made
(``bench.models_report``). Rounds are interleaved (each round times every runtime once) so drift in
machine load hits all runtimes alike. Every runtime gets the same thread count (``--threads``: torch's
intra-op threads, onnxruntime's ``intra_op_num_threads``). The torch side runs as the cloud serves it
(``FullModel.predict``: eval mode under ``torch.inference_mode``).

A text model is also timed on realistic batches ("batch 8 real": the whole sentence file in order, cut
into consecutive groups of 8, each padded to its own longest sentence as the edge runtime does; the
latency is the median over groups of each group's median), and its speed gates are judged on them.
The report is written between the ``bench:begin``/``bench:end`` markers of the output file, leaving the
hand-written notes around it untouched; a PNG chart goes next to it. Exit status 1 when a gate fails.

``python -m bench.byom_repo --out DIR`` makes a repository with the reference models and four imports.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.models_inputs import workload
from bench.models_report import BEGIN, END, gate_lines, render, timestamp, write_chart, write_report

__all__ = ["BEGIN", "END", "bench_model", "gate_lines", "main", "time_groups", "time_interleaved", "write_report"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "models.md"
#: Manifest artifacts holding a torch form of the model (what ``FullModel`` runs in torch).
TORCH_ARTIFACTS = ("full_program", "full_torchscript")
SOURCE_KINDS = {"onnx": "ONNX", "torch_export": "torch.export .pt2", "torchscript": "TorchScript .pt"}
FULL_KINDS = {"full_program": "torch.export .pt2", "full_torchscript": "TorchScript .pt"}


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 5) -> dict[str, float]:
    """Median milliseconds of each function, timed in interleaved rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[key].append((time.perf_counter() - start) * 1000.0)
    return {k: statistics.median(v) for k, v in samples.items()}


def time_groups(runtimes: dict[str, Any], feeds: list[dict[str, np.ndarray]], rounds: int) -> dict[str, float]:
    """Median over ``feeds`` of each feed's median milliseconds, per runtime; every round times
    each feed on every runtime, interleaved."""
    for model in runtimes.values():
        for feed in feeds[:3]:
            model.predict(feed)
    samples: dict[str, list[list[float]]] = {k: [[] for _ in feeds] for k in runtimes}
    for _ in range(rounds):
        for index, feed in enumerate(feeds):
            for key, model in runtimes.items():
                start = time.perf_counter()
                model.predict(feed)
                samples[key][index].append((time.perf_counter() - start) * 1000.0)
    return {k: statistics.median(statistics.median(s) for s in per_feed) for k, per_feed in samples.items()}


def bench_model(version_dir: Path, repeats: int, threads: int) -> dict[str, Any]:
    """Sizes, latencies (ms) and fidelity of one model version (see ``bench.models_report``)."""
    from fogline.models.edge_runtime import EdgeModel
    from fogline.models.full_runtime import FullModel
    from fogline.models.repository import read_manifest

    manifest = read_manifest(version_dir)
    artifacts = manifest["artifacts"]
    torch_file = next((artifacts[k] for k in TORCH_ARTIFACTS if k in artifacts), None)
    runtimes: dict[str, Any] = {}
    if torch_file:
        runtimes["torch FP32"] = FullModel.load(version_dir)
    runtimes["ORT FP32"] = EdgeModel.load(version_dir, threads, artifact="reference_onnx")
    runtimes["ORT INT8"] = EdgeModel.load(version_dir, threads)
    load = workload(version_dir, manifest)
    latency: dict[str, dict[str, float]] = {}
    for column, feeds in load.feeds.items():
        if len(feeds) > 1:  # about 30 batches per round: fewer rounds give as many samples
            latency[column] = time_groups(runtimes, feeds, group_rounds(repeats))
            continue
        fns = {k: (lambda m=m, f=feeds[0]: m.predict(f)) for k, m in runtimes.items()}
        latency[column] = time_interleaved(fns, repeats)
    sizes = {"FP32 ONNX": (version_dir / artifacts["reference_onnx"]).stat().st_size,
             "INT8 ONNX": (version_dir / artifacts["edge"]).stat().st_size}  # fmt: skip
    if torch_file:
        sizes["FP32 torch file"] = (version_dir / torch_file).stat().st_size
    fidelity, details = _fidelity(version_dir, manifest)
    kind = "build" if "build" in manifest else "import"
    return {"name": manifest["name"], "version": manifest["version"], "kind": kind, "task": manifest.get("task", "-"),
            "source": source_text(manifest),
            "sizes": sizes, "runtimes": list(runtimes), "latency": latency, "gate_column": load.gate_column,
            "description": load.description, "fidelity": fidelity, "details": details,
            "recipe": manifest.get("quantization", {})}  # fmt: skip


def _fidelity(version_dir: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The INT8 fidelity figures, the gate failures and detail lines of one version."""
    from fogline.modelbuild.verify import describe_metrics, verify_version

    check = verify_version(version_dir)  # a reference build is measured again; an import reports its manifest
    metrics = manifest.get("metrics", {})
    gate = manifest.get("gate", {})
    failures = list(check.problems)
    details = []
    if "build" in manifest:
        text = describe_metrics(check.name, check.metrics) if check.metrics else "not measured"
    else:
        text = ", ".join(f"{k} {v:.4g}" for k, v in metrics.get("int8", {}).items())
        if gate.get("accepted_below_gate") and not failures:
            failures.append("imported below its gate with --accept-fidelity: " + "; ".join(gate.get("misses", [])))
        imported = manifest.get("import", {})
        limits = ", ".join(f"{k} {v:g}" for k, v in gate.get("limits", {}).items())
        details.append(f"- judged on {imported.get('evaluation_rows', '?')} rows ({imported.get('evaluation', '?')}), "
                       f"INT8 ONNX against FP32 ONNX; {gate.get('task', manifest.get('task'))} gate: {limits}")
    if "full_vs_source_relative_error" in metrics:
        details.append(f"- served full form vs the source: relative error {metrics['full_vs_source_relative_error']:.2g}; "
                       f"FP32 ONNX vs full form: {metrics.get('fp32_onnx_vs_full_relative_error', 0.0):.2g}")
    details.append(f"- `fogline models verify`: {check.summary()}")
    return {"text": text, "remeasured": "build" in manifest, "failures": failures}, details


def source_text(manifest: dict[str, Any]) -> str:
    """How the version was made: ``fogline models build`` or an import, and of what."""
    kind = manifest.get("import", {}).get("source", {}).get("kind")
    text = SOURCE_KINDS.get(kind, "?")
    full = next((FULL_KINDS[k] for k in FULL_KINDS if k in manifest["artifacts"]), None)
    if kind == "onnx" and full:
        text += f" + {full}"
    return ("`fogline models build`: " if "build" in manifest else "import: ") + text


def group_rounds(repeats: int) -> int:
    return max(5, repeats // 6)


def header(repeats: int, threads: int, load: tuple[float, float]) -> str:
    """The line under the section's start: when, where, with what, how many rounds."""
    import onnxruntime
    import torch

    return (
        f"_Generated by `python -m bench.models` on {timestamp()}; {_cpu_name()}, {os.cpu_count()} cores, {threads} "
        f"thread(s) per runtime (onnxruntime intra-op threads; torch intra-op threads, {torch.get_num_threads()} when "
        f"measured); onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}; medians of {repeats} interleaved rounds (batch 8 real: "
        f"{group_rounds(repeats)} rounds over every group); load average {load[0]:.2f} before, {load[1]:.2f} after "
        "(other engineers share the machine)._"
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None, prog: str = "python -m bench.models") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=None,
                        help="model repository (default: the reference models, built into .cache/bench-models)")
    parser.add_argument("--only", action="append", default=None, metavar="NAME", help="benchmark only this model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report to update")
    parser.add_argument("--repeats", type=int, default=60, help="timed rounds per batch size")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every runtime")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from fogline.models.repository import ModelRepository

    if args.models is None:
        from fogline.modelbuild.build import ensure_models

        root = ensure_models(Path(__file__).resolve().parent.parent / ".cache" / "bench-models", progress=True)
    else:
        root = args.models
    repo = ModelRepository(root)
    names = args.only or repo.names()
    if not names:
        print(f"{root}: no models", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    results = []
    load_before = os.getloadavg()[0]
    for name in names:
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        results.append(bench_model(repo.resolve(name), args.repeats, args.threads))
    section = render(results, header(args.repeats, args.threads, (load_before, os.getloadavg()[0])))
    write_report(args.out, section)
    chart = args.out.with_suffix(".png")
    if write_chart(chart, results):
        print(f"chart: {chart}", file=sys.stderr)
    print(section)
    failed = [text for r in results for text, ok in gate_lines(r) if not ok]
    for text in failed:
        print(f"GATE FAILED: {text}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
