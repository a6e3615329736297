"""The markdown (and chart) ``bench.models`` writes, from one result per model version.

A result is a plain dict (``bench.models.bench_model`` makes it): ``name``, ``version``, ``kind``
(``build``: made by ``fogline models build``, held to the release gates; ``import``: a user's model, held
to the fidelity gate it was imported with), ``source``, ``task``, ``sizes`` (label -> bytes),
``runtimes`` (the runtimes timed), ``latency`` (column -> runtime -> median ms), ``gate_column``,
``description`` (what the inputs were), ``fidelity`` (``text``, ``remeasured``, ``failures``),
``details`` (extra lines) and ``recipe``.

The release gates (INT8 file >= 3x smaller than FP32 ONNX, >= 1.8x faster than ORT FP32 and >= 2.5x
faster than torch FP32 at batch 8) were set for the reference models; an import is judged only by its
own fidelity gate, and its sizes and speed-ups are reported as measured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
RUNTIMES = ("torch FP32", "ORT FP32", "ORT INT8")
GATES = {"size_ratio_min": 3.0, "speedup_vs_ort_fp32_b8_min": 1.8, "speedup_vs_torch_b8_min": 2.5}


def gate_lines(result: dict[str, Any]) -> list[tuple[str, bool]]:
    """``(description, passed)`` for every gate of one model."""
    fidelity = result["fidelity"]
    failures = fidelity["failures"]
    verdict = ("fidelity gates: " + ("; ".join(failures) if failures else "all met"), not failures)
    if result["kind"] != "build":
        return [verdict]
    sizes, batch = result["sizes"], result["gate_column"]
    lat = result["latency"][batch]
    ratio = sizes["FP32 ONNX"] / sizes["INT8 ONNX"]
    vs_ort = lat["ORT FP32"] / lat["ORT INT8"]
    lines = [
        (f"INT8 file {ratio:.2f}x smaller than FP32 ONNX (gate >= {GATES['size_ratio_min']}x)",
         ratio >= GATES["size_ratio_min"]),
        (f"ORT INT8 batch {batch} {vs_ort:.2f}x faster than ORT FP32 (gate >= {GATES['speedup_vs_ort_fp32_b8_min']}x)",
         vs_ort >= GATES["speedup_vs_ort_fp32_b8_min"]),
    ]  # fmt: skip
    if "torch FP32" in lat:
        vs_torch = lat["torch FP32"] / lat["ORT INT8"]
        lines.append((f"ORT INT8 batch {batch} {vs_torch:.2f}x faster than torch FP32 "
                      f"(gate >= {GATES['speedup_vs_torch_b8_min']}x)", vs_torch >= GATES["speedup_vs_torch_b8_min"]))
    return [*lines, verdict]


def render(results: list[dict[str, Any]], header: str) -> str:
    """The generated markdown section: ``header``, a summary row per model, then one section per model."""
    out = [BEGIN, header, "", *summary_table(results), ""]
    for r in results:
        out += model_section(r)
    out.append(END)
    return "\n".join(out)


def summary_table(results: list[dict[str, Any]]) -> list[str]:
    """One row per model: sizes, batch 1 / batch 8 medians per runtime, INT8 fidelity, gate verdict."""
    lines = [
        "| model | source | FP32 ONNX | INT8 ONNX | torch FP32 ms, b1 / b8 | ORT FP32 ms, b1 / b8 | ORT INT8 ms, b1 / b8 "
        "| INT8 fidelity vs FP32 | gates |",
        "| --- " * 9 + "|",
    ]
    for r in results:
        sizes = r["sizes"]
        ratio = sizes["FP32 ONNX"] / sizes["INT8 ONNX"]
        cells = []
        for rt in RUNTIMES:
            values = [r["latency"].get(col, {}).get(rt) for col in ("1", "8")]
            cells.append(" / ".join(_ms(v) for v in values) if any(v is not None for v in values) else "n/a")
        verdict = "PASS" if all(ok for _, ok in gate_lines(r)) else "**FAIL**"
        what = "release" if r["kind"] == "build" else "import"
        lines.append(f"| `{r['name']}` v{r['version']} | {r['source']} | {_mb(sizes['FP32 ONNX'])} | "
                     f"{_mb(sizes['INT8 ONNX'])} ({ratio:.2f}x) | {' | '.join(cells)} | {r['fidelity']['text']} | "
                     f"{verdict} ({what}) |")
    return lines


def model_section(r: dict[str, Any]) -> list[str]:
    out = [f"### {r['name']} (version {r['version']}; {r['source']}; task {r['task']})", "",
           "| file | size |", "| --- | --- |"]  # fmt: skip
    out += [f"| {k} | {_mb(v)} |" for k, v in r["sizes"].items()]
    columns = list(r["latency"])
    eights = [c for c in columns if c.startswith("8")]
    out += ["", "| runtime | " + " | ".join(f"batch {c} (ms)" for c in columns) + " | "
            + " | ".join(f"ORT INT8 speed-up, batch {c}" for c in eights) + " |",
            "| --- " * (len(columns) + len(eights) + 1) + "|"]  # fmt: skip
    for rt in RUNTIMES:
        if rt not in r["runtimes"]:
            continue
        cells = " | ".join(f"{r['latency'][c][rt]:.3f}" for c in columns)
        ups = " | ".join(f"{r['latency'][c][rt] / r['latency'][c]['ORT INT8']:.2f}x" for c in eights)
        out.append(f"| {rt} | {cells} | {ups} |")
    if "torch FP32" not in r["runtimes"]:
        out.append("\nNo torch form: the cloud serves the FP32 ONNX in onnxruntime (the ORT FP32 row).")
    fidelity = r["fidelity"]
    when = "measured again now" if fidelity["remeasured"] else "as measured at import, from the manifest"
    out += ["", r["description"], "", f"- INT8 fidelity ({when}): {fidelity['text']}", *r["details"],
            f"- recipe: `{_recipe_text(r['recipe'])}`", "", "Gates:", ""]  # fmt: skip
    out += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in gate_lines(r)]
    return [*out, ""]


def _recipe_text(recipe: dict[str, Any]) -> str:
    keep = {k: v for k, v in recipe.items() if k not in ("nodes_to_exclude", "note", "tool", "tries", "chosen_by")}
    excluded = len(recipe.get("nodes_to_exclude", []))
    return f"{keep}, {excluded} node(s) kept FP32"


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def write_report(out: Path, section: str) -> None:
    """Replace the generated section of ``out`` (or append one), keeping the rest of the file."""
    text = out.read_text(encoding="utf-8") if out.exists() else "# Models: size, speed, fidelity\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def write_chart(path: Path, results: list[dict[str, Any]]) -> bool:
    """Bars of the gate-column latency per runtime, one panel per model; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cols = min(3, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    colours = {"torch FP32": "#888888", "ORT FP32": "#4477aa", "ORT INT8": "#228833"}
    for ax, r in zip(axes.flat, results, strict=False):
        batch = r["gate_column"]
        shown = [rt for rt in RUNTIMES if rt in r["runtimes"]]
        ax.bar(shown, [r["latency"][batch][rt] for rt in shown], color=[colours[rt] for rt in shown])
        ax.set_title(f"{r['name']}: batch {batch}", fontsize=10)
        ax.set_ylabel("ms (median)")
    for ax in list(axes.flat)[len(results):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
