"""``fogline models``: build and verify the reference models.

    fogline models build [--out DIR] [--only NAME]   build (or rebuild) into DIR/<name>/1
    fogline models verify [DIR] [--only NAME] [--hashes-only]

DIR defaults to ``$FOGLINE_MODELS`` or ``./models``. Exit codes: 0 success, 1 failure (a build
error, a corrupt or missing file, fidelity below its gate), 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .repository import default_models_dir

MODEL_NAMES = ("minilm", "digits")


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Build and verify fogline's reference models.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    build = sub.add_parser("build", help="build the models (deterministic; about a minute on 2 cores)")
    build.add_argument("--out", type=Path, default=None, help="repository directory (default: $FOGLINE_MODELS or ./models)")
    build.add_argument("--only", choices=MODEL_NAMES, action="append", help="build only this model (repeatable)")
    build.add_argument("--quiet", action="store_true", help="no progress lines")
    verify = sub.add_parser("verify", help="re-check hashes and re-measure fidelity against the gates")
    verify.add_argument("dir", nargs="?", type=Path, default=None, help="repository directory")
    verify.add_argument("--only", choices=MODEL_NAMES, action="append", help="verify only this model")
    verify.add_argument("--hashes-only", action="store_true", help="skip the fidelity measurement")
    return parser


def _offline() -> None:
    # Everything the build needs ships in installed packages; never let a library reach the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _build(args: argparse.Namespace, prog: str) -> int:
    from .build import build_models

    out = args.out or default_models_dir()
    try:
        built = build_models(out, names=args.only, progress=not args.quiet)
    except Exception as exc:
        print(f"{prog} build: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for name, path in built.items():
        print(f"built {name} -> {path}")
    return 0


def _verify(args: argparse.Namespace, prog: str) -> int:
    from .verify import verify_repository

    root = args.dir or default_models_dir()
    if not root.is_dir():
        print(f"{prog} verify: {root}: no such directory; build with 'fogline models build --out {root}'",
              file=sys.stderr)
        return 1
    results = verify_repository(root, names=args.only, remeasure=not args.hashes_only)
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
    return _build(args, prog) if args.action == "build" else _verify(args, prog)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
