"""Regenerate the committed Python stubs from the .proto sources.

    python scripts/gen_proto.py            # rewrite src/fogline/inference/*_pb2*.py
    python scripts/gen_proto.py --out DIR  # write elsewhere (the staleness test uses this)

The sources live under proto/fogline/... and protoc runs with proto/ as its include root, so the
generated modules (written under src/) import each other as ``fogline.inference.*`` and never as a
top-level ``proto``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "src"


def proto_sources() -> list[Path]:
    return sorted(PROTO_ROOT.glob("fogline/**/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over every source; return the files written."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency, imported only when regenerating

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    written: list[Path] = []
    for src in proto_sources():
        rel = src.relative_to(PROTO_ROOT).as_posix()
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            rel,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {rel}")
        stem = rel[: -len(".proto")]
        written += [out_dir / f"{stem}_pb2.py", out_dir / f"{stem}_pb2.pyi", out_dir / f"{stem}_pb2_grpc.py"]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_ROOT, help="output root (default: src/)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path.relative_to(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
