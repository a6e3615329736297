"""``fogline models``: build and verify the reference models; import a user's own.

    fogline models build [--out DIR] [--only NAME] [--gate MODEL.GATE=VALUE] [--accept-fidelity]
    fogline models verify [DIR] [--only NAME] [--hashes-only] [--edge]
    fogline models pull NAME[:VERSION] --from CLOUD | --config FLEET --device ID   (fogline.agent.pull)
    fogline models import NAME --from MODEL.onnx|.pt2|.pt [--version V] [--task T] [--calibration F.npz]
        [--eval F.npz] [--quantization auto|dynamic|static] [--tokenizer DIR] [--output-names A,B]
        [--gate NAME=VALUE] [--models DIR] [--accept-fidelity]

DIR defaults to ``$FOGLINE_MODELS`` or ``./models``. A build measures each model's fidelity and
checks it against the release gates (``--gate`` makes one stricter, never looser): a model that misses
one is not written (the version in place, if any, stays), one line per model names the measured
figures and the gates, and the exit status is 1. ``--accept-fidelity`` writes it anyway, warns, and
records ``gate.accepted_below_gate`` in its manifest. Exit codes: 0 success, 1 failure (a build error,
a model below its gate, a corrupt or missing file), 2 usage.

``import`` (``fogline.modelbuild.importer``) exits 2 with one line when the model or its data cannot be
imported as given (nothing is written), 1 with the table of quantization tries when none met the
fidelity gate (``--accept-fidelity`` writes the best one anyway).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fogline.modelbuild.fidelity import parse_gate
from fogline.models.repository import default_models_dir

MODEL_NAMES = ("minilm", "digits")


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Build and verify fogline's reference models.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    build = sub.add_parser("build", help="build the models (deterministic; about a minute on 2 cores)")
    build.add_argument("--out", type=Path, default=None, help="repository directory (default: $FOGLINE_MODELS or ./models)")
    build.add_argument("--only", choices=MODEL_NAMES, action="append", help="build only this model (repeatable)")
    build.add_argument("--quiet", action="store_true", help="no progress lines")
    build.add_argument("--gate", type=_gate, action="append", default=[], metavar="MODEL.GATE=VALUE",
                       help="a stricter fidelity gate for this build, e.g. digits.accuracy_drop_points_max=0.5 "
                            "(repeatable)")
    build.add_argument("--accept-fidelity", action="store_true",
                       help="write a model that misses its fidelity gate anyway (warns; recorded in its manifest)")
    verify = sub.add_parser("verify", help="re-check hashes and re-measure fidelity against the gates")
    verify.add_argument("dir", nargs="?", type=Path, default=None, help="repository directory")
    verify.add_argument("--only", action="append", metavar="NAME",
                        help="verify only this model (any in the repository; repeatable)")
    verify.add_argument("--hashes-only", action="store_true", help="skip the fidelity measurement")
    verify.add_argument("--edge", action="store_true",
                        help="an edge device's copy: check only the files the agent reads (implies --hashes-only)")
    _import_parser(sub)
    sub.add_parser("pull", help="fetch a version's edge files from a fogline cloud (no torch needed; "
                                "'fogline models pull --help')")
    return parser


def _import_parser(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser("import", help="import your own ONNX / torch model: INT8 edge form, fidelity gate, manifest")
    imp.add_argument("name", help="model name in the repository")
    imp.add_argument("--from", dest="source", type=Path, required=True, metavar="PATH",
                     help="an ONNX file (.onnx), a torch.export program (.pt2) or a TorchScript file (.pt)")
    imp.add_argument("--version", default=None, help="version to write (default: the next free one)")
    imp.add_argument("--task", default="generic", choices=("classification", "embedding", "generic"),
                     help="how the INT8 form is judged (default generic: relative error)")
    imp.add_argument("--calibration", type=Path, default=None, metavar="F.npz",
                     help="rows keyed by input name (optional 'labels'): static ranges and the default eval rows")
    imp.add_argument("--eval", type=Path, default=None, metavar="F.npz", help="rows the fidelity gate is measured on")
    imp.add_argument("--quantization", default="auto", choices=("auto", "dynamic", "static"),
                     help="auto: static QDQ for convolutional graphs, dynamic for MatMul/Gemm-dominated ones")
    imp.add_argument("--tokenizer", type=Path, default=None, metavar="DIR",
                     help="a Hugging Face tokenizer.json (or its directory): the model's token-id inputs become one "
                          "BYTES 'text' input; calibration/eval files then hold 'text' (sentences)")
    imp.add_argument("--scores-output", default=None, metavar="NAME",
                     help="classification: the probability/logit output (default: the first float [N,C] output)")
    imp.add_argument("--output-names", default=None, metavar="A,B",
                     help="names for a torch source's outputs, in the order forward() returns them "
                          "(default: output, or output_0, output_1...)")
    imp.add_argument("--gate", action="append", default=[], metavar="NAME=VALUE",
                     help="replace a default fidelity limit, e.g. top1_agreement_min=0.95 (repeatable)")
    imp.add_argument("--models", type=Path, default=None, metavar="DIR",
                     help="repository directory (default: $FOGLINE_MODELS or ./models)")
    imp.add_argument("--accept-fidelity", action="store_true",
                     help="write the best try even when no recipe meets the gate (recorded in the manifest)")
    imp.add_argument("--quiet", action="store_true", help="no progress lines")


def _gate(text: str) -> tuple[str, str, float]:
    try:
        return parse_gate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _offline() -> None:
    # Everything the build needs ships in installed packages; never let a library reach the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _build(args: argparse.Namespace, prog: str) -> int:
    from fogline.modelbuild.build import FidelityGateMissed, build_models
    from fogline.modelbuild.fidelity import effective_gates

    out = args.out or default_models_dir()
    misses: dict[str, str] = {}
    try:
        built = build_models(out, names=args.only, progress=not args.quiet, gates=effective_gates(args.gate),
                             accept_fidelity=args.accept_fidelity)
    except FidelityGateMissed as exc:
        built, misses = exc.built, exc.misses
    except Exception as exc:
        print(f"{prog} build: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for name, path in built.items():
        print(f"built {name} -> {path}")
    for line in misses.values():
        print(line, file=sys.stderr)
    if misses:
        print(f"{prog} build: {', '.join(misses)} not written (below the fidelity gate); "
              "--accept-fidelity writes them anyway", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace, prog: str) -> int:
    from fogline.modelbuild.verify import verify_repository

    root = args.dir or default_models_dir()
    if not root.is_dir():
        print(f"{prog} verify: {root}: no such directory; build with 'fogline models build --out {root}'",
              file=sys.stderr)
        return 1
    results = verify_repository(root, names=args.only, remeasure=not args.hashes_only, edge_only=args.edge)
    if not results:
        print(f"{prog} verify: {root}: no models found; build with 'fogline models build --out {root}'",
              file=sys.stderr)
        return 1
    for result in results:
        print(result.summary(), file=sys.stdout if result.ok else sys.stderr)
    return 0 if all(r.ok for r in results) else 1


def main(argv: list[str] | None = None, prog: str = "fogline models") -> int:
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    if args.action is None:
        parser.print_usage(sys.stderr)
        return 2
    _offline()
    if args.action == "import":
        return _import(args, prog)
    return _build(args, prog) if args.action == "build" else _verify(args, prog)


def _import(args: argparse.Namespace, prog: str) -> int:
    from fogline.modelbuild import output_names, timing
    from fogline.modelbuild.import_errors import FidelityRefused, ImportRefused
    from fogline.modelbuild.importer import ImportOptions, import_model, tries_table

    options = ImportOptions(
        name=args.name, source=args.source, models_dir=args.models or default_models_dir(), version=args.version,
        task=args.task, calibration=args.calibration, eval=args.eval, quantization=args.quantization,
        tokenizer=args.tokenizer, gates=tuple(args.gate), accept_fidelity=args.accept_fidelity,
        scores_output=args.scores_output, progress=not args.quiet,
        output_names=None if args.output_names is None else output_names.parse(args.output_names),
    )
    try:
        result = import_model(options)
    except ImportRefused as exc:
        print(f"{prog} import: {exc}", file=sys.stderr)
        return 2
    except FidelityRefused as exc:
        print(tries_table(exc.tries), file=sys.stderr)
        print(f"{prog} import: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unforeseen failure is still one line, never a traceback
        print(f"{prog} import: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    m = result.manifest
    print(f"imported {m['name']} version {m['version']} -> {result.path} "
          f"(INT8 {m['sizes']['int8_onnx_bytes']} bytes, FP32 ONNX {m['sizes']['fp32_onnx_bytes']} bytes; "
          f"{m['quantization']['method']}; {'; '.join(f'{k} {v:g}' for k, v in m['metrics']['int8'].items())})")
    warning = timing.slower_warning(m["name"], m.get("latency"), m["quantization"]["method"])
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
