"""The quantization exploration behind each model's recipe (``python -m edge_models.explore``).

Not used by the build. It takes an existing build (``--models DIR``), quantizes the FP32 ONNX file
with a list of candidate recipes and measures, for each, file size, onnxruntime latency (one thread,
median) at batch 1 and 8, and fidelity. Layer sensitivity is ranked on the *calibration* sentences
(quantize one node alone, measure the cosine it loses) so the fidelity sentences never influence
which nodes stay FP32. Prints markdown tables; ``bench/results/models.md`` keeps the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .build_minilm import ARTIFACTS, encode_batches
from .build_minilm import RECIPE as MINILM_RECIPE
from .edge_runtime import open_session
from .fidelity import embedding_fidelity, load_sentences
from .full_runtime import FullModel
from .onnx_export import torch_threads
from .quantize import Recipe, quantizable_nodes, quantize_onnx
from .smooth import smooth_onnx
from .text import TextEncoder


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


class MinilmLab:
    """Reference embeddings and token feeds for trying recipes on minilm quickly."""

    def __init__(self, version_dir: Path) -> None:
        self.version_dir = Path(version_dir)
        self.fp32_path = self.version_dir / ARTIFACTS["reference_onnx"]
        self.encoder = TextEncoder(self.version_dir / ARTIFACTS["tokenizer"])
        full = FullModel.load(self.version_dir)
        self.sets = {"calibration": load_sentences("calibration.txt"), "fidelity": load_sentences()}
        self.reference: dict[str, np.ndarray] = {}
        with torch_threads(1):
            for key, texts in self.sets.items():
                rows = [full.predict({"text": _as_bytes(texts[i : i + 16])})["embedding"]
                        for i in range(0, len(texts), 16)]  # fmt: skip
                self.reference[key] = np.concatenate(rows)
        self.calibration_feeds = encode_batches(self.encoder, self.sets["calibration"])
        lengths = sorted(self.sets["fidelity"], key=len)
        middle = len(lengths) // 2
        self.latency_feeds = {1: self.encoder.encode(lengths[middle : middle + 1]),
                              8: self.encoder.encode(lengths[middle - 4 : middle + 4])}  # fmt: skip

    def session(self, path: Path) -> Any:  # also used unbound by DigitsLab
        return open_session(path, 1)

    def embed(self, path: Path, key: str) -> np.ndarray:
        session = self.session(path)
        names = [i.name for i in session.get_inputs()]
        texts = self.sets[key]
        out = []
        for i in range(0, len(texts), 16):
            feed = self.encoder.encode(texts[i : i + 16])
            out.append(session.run(None, {n: feed[n] for n in names})[0])
        return np.concatenate(out)

    def fidelity(self, path: Path, key: str = "fidelity") -> dict[str, float]:
        return embedding_fidelity(self.reference[key], self.embed(path, key))

    def latency(self, path: Path, repeats: int = 30) -> dict[int, float]:
        session = self.session(path)
        names = [i.name for i in session.get_inputs()]
        result = {}
        for batch, feed in self.latency_feeds.items():
            feed = {n: feed[n] for n in names}
            result[batch] = median_ms(lambda f=feed: session.run(None, f), repeats)
        return result

    def quantize(self, recipe: Recipe, dst: Path, src: Path | None = None) -> Path:
        feeds = self.calibration_feeds if recipe.needs_calibration else []
        quantize_onnx(src or self.fp32_path, dst, recipe, feeds)
        return dst


def _as_bytes(texts: list[str]) -> np.ndarray:
    return np.array([t.encode() for t in texts], dtype=object)


def sensitivity(lab: MinilmLab, base: Recipe, scratch: Path, src: Path | None = None) -> list[tuple[str, float]]:
    """Cosine lost on the calibration set when each weighted node alone is quantized, worst first."""
    nodes = quantizable_nodes(src or lab.fp32_path, base.op_types)
    losses = []
    for i, node in enumerate(nodes):
        only = Recipe(**{**base.__dict__, "nodes_to_exclude": tuple(n for n in nodes if n != node)})
        path = lab.quantize(only, scratch / f"sens-{i}.onnx", src)
        loss = 1.0 - lab.fidelity(path, "calibration")["cosine_mean"]
        path.unlink()
        losses.append((node, loss))
        print(f"  sensitivity {i + 1}/{len(nodes)} {node}: {loss:.6f}", file=sys.stderr, flush=True)
    return sorted(losses, key=lambda item: -item[1])


def row(lab: MinilmLab, label: str, path: Path, fp32_size: int) -> str:
    fid = lab.fidelity(path)
    lat = lab.latency(path)
    size = path.stat().st_size
    return (f"| {label} | {size / 1e6:.1f} MB ({fp32_size / size:.2f}x) | {lat[1]:.2f} | {lat[8]:.2f} | "
            f"{fid['cosine_mean']:.4f} | {fid['cosine_min']:.4f} | {fid['nn_agreement']:.3f} |")  # fmt: skip


HEADER = ("| recipe | size (vs FP32) | ms b1 | ms b8 | cos mean | cos min | NN agree |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip


class DigitsLab:
    """Held-out images and calibration batches for trying recipes on digits."""

    def __init__(self, version_dir: Path) -> None:
        from .build_digits import CONFIG, calibration_feeds
        from .digits_net import load_digits_split

        self.fp32_path = Path(version_dir) / "model.fp32.onnx"
        self.data = load_digits_split(CONFIG)
        self.calibration_feeds = calibration_feeds(self.data)

    def accuracy(self, path: Path) -> float:
        session = MinilmLab.session(None, path)  # type: ignore[arg-type]
        probs = session.run(None, {"image": self.data.test_x})[0]
        return float((probs.argmax(1) == self.data.test_y).mean())

    def latency(self, path: Path, repeats: int = 300) -> dict[int, float]:
        session = MinilmLab.session(None, path)  # type: ignore[arg-type]
        return {b: median_ms(lambda b=b: session.run(None, {"image": self.data.test_x[:b]}), repeats)
                for b in (1, 8)}  # fmt: skip

    def row(self, label: str, path: Path) -> str:
        size, lat = path.stat().st_size, self.latency(path)
        ratio = self.fp32_path.stat().st_size / size
        return (f"| {label} | {size / 1e3:.0f} kB ({ratio:.2f}x) | {lat[1]:.3f} | {lat[8]:.3f} | "
                f"{100 * self.accuracy(path):.2f}% |")  # fmt: skip


DIGITS_OPS = ("Conv", "Gemm", "MatMul")
DIGITS_CANDIDATES: list[tuple[str, Recipe]] = [
    ("dynamic per-channel (Conv, Gemm)", Recipe(method="dynamic", per_channel=True, op_types=DIGITS_OPS)),
    ("static QDQ per-tensor minmax", Recipe(method="static_qdq", per_channel=False, op_types=DIGITS_OPS)),
    ("static QDQ per-channel minmax", Recipe(method="static_qdq", per_channel=True, op_types=DIGITS_OPS)),
    ("static QDQ per-channel minmax, Relu+MaxPool too",
     Recipe(method="static_qdq", per_channel=True, op_types=(*DIGITS_OPS, "Relu", "MaxPool"))),
    ("static QDQ per-channel entropy, Relu+MaxPool too",
     Recipe(method="static_qdq", per_channel=True, op_types=(*DIGITS_OPS, "Relu", "MaxPool"), calibration="entropy")),
    ("static QDQ per-channel minmax S8 activations, Relu+MaxPool too",
     Recipe(method="static_qdq", per_channel=True, op_types=(*DIGITS_OPS, "Relu", "MaxPool"),
            activation_type="QInt8")),
]


def explore_digits(version_dir: Path) -> None:
    lab = DigitsLab(version_dir)
    print("| recipe | size (vs FP32) | ms b1 | ms b8 | test accuracy |\n| --- | --- | --- | --- | --- |")
    print(lab.row("FP32 ONNX", lab.fp32_path), flush=True)
    with tempfile.TemporaryDirectory(prefix="fogline-explore-") as tmp:
        for label, recipe in DIGITS_CANDIDATES:
            path = Path(tmp) / "q.onnx"
            feeds = lab.calibration_feeds if recipe.needs_calibration else []
            quantize_onnx(lab.fp32_path, path, recipe, feeds)
            print(lab.row(label, path), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_models.explore")
    parser.add_argument("--models", type=Path, required=True, help="a built repository")
    parser.add_argument("--step", choices=["basic", "sensitivity", "digits"], default="basic")
    parser.add_argument("--smooth", type=float, default=None, help="smooth activations first (alpha)")
    parser.add_argument("--ks", default="0,1,2,3,4,6,8", help="numbers of sensitive nodes to keep FP32")
    args = parser.parse_args(argv)
    if args.step == "digits":
        explore_digits(args.models / "digits" / "1")
        return 0
    lab = MinilmLab(args.models / "minilm" / "1")
    fp32_size = lab.fp32_path.stat().st_size
    with tempfile.TemporaryDirectory(prefix="fogline-explore-") as tmp:
        scratch = Path(tmp)
        src = lab.fp32_path
        if args.smooth is not None:
            src = scratch / "smoothed.onnx"
            smooth_onnx(lab.fp32_path, src, lab.calibration_feeds, alpha=args.smooth)
        print(HEADER)
        print(row(lab, "FP32 ONNX", src, fp32_size))
        if args.step == "basic":
            for label, recipe in CANDIDATES:
                path = lab.quantize(recipe, scratch / "q.onnx", src)
                print(row(lab, label, path, fp32_size), flush=True)
        else:
            base = Recipe(method="dynamic", per_channel=True, op_types=("MatMul", "Gather"))
            ranking = sensitivity(lab, base, scratch, src)
            for node, loss in ranking:
                print(f"| {node} | {loss:.6f} |")
            for k in (int(k) for k in args.ks.split(",")):
                recipe = base.with_excluded(n for n, _ in ranking[:k])
                path = lab.quantize(recipe, scratch / "q.onnx", src)
                print(row(lab, f"smooth={args.smooth} dynamic per-channel MatMul+Gather, {k} most sensitive FP32", path, fp32_size), flush=True)
    return 0


CANDIDATES: list[tuple[str, Recipe]] = [
    ("dynamic per-tensor MatMul", Recipe(method="dynamic", per_channel=False, op_types=("MatMul",))),
    ("dynamic per-channel MatMul", Recipe(method="dynamic", per_channel=True, op_types=("MatMul",))),
    ("dynamic per-channel MatMul+Gather", Recipe(method="dynamic", per_channel=True, op_types=("MatMul", "Gather"))),
    ("static QDQ per-channel minmax U8", Recipe(method="static_qdq", per_channel=True, op_types=("MatMul",))),
    ("chosen: smoothing 0.7 + dynamic per-channel, 2 nodes FP32", MINILM_RECIPE),
]

if __name__ == "__main__":
    sys.exit(main())
