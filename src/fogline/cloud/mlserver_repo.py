"""Write an MLServer model repository that serves a fogline model repository (no mlserver import).

MLServer finds models by ``model-settings.json`` files under the folder it is started on, and reads
server settings from ``settings.json`` there. This turns ``DIR/<name>/<version>/`` (fogline's
layout) into such a folder, each model pointing at ``fogline.cloud.mlserver_runtime.FoglineFullModel``::

    python -m fogline.cloud.mlserver_repo --models .cache/test-models --out /tmp/mls --grpc-port 8081
    .venv-mlserver/bin/mlserver start /tmp/mls      # then: fogline agent ... --cloud 127.0.0.1:8081

Only the newest version of each model is served, under its version string, with the manifest's
input and output signature as MLServer metadata. ``parallel_workers`` is 0 by default: the model
runs in MLServer's main process (its worker pool would load every model once per worker).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fogline.errors import FoglineError
from fogline.models.repository import ModelRepository, specs_of

RUNTIME = "fogline.cloud.mlserver_runtime.FoglineFullModel"


def model_settings(version_dir: Path, manifest: dict[str, Any], *, torch_threads: int = 1,
                   device: str = "cpu") -> dict[str, Any]:
    """The ``model-settings.json`` document for one fogline model version."""

    def meta(key: str) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs_of(manifest, key)]

    return {
        "name": manifest["name"],
        "implementation": RUNTIME,
        "platform": "fogline-torch",
        "versions": [str(manifest["version"])],
        "inputs": meta("inputs"),
        "outputs": meta("outputs"),
        "parameters": {
            "uri": str(Path(version_dir).resolve()),
            "version": str(manifest["version"]),
            "extra": {"torch_threads": torch_threads, "device": device},
        },
    }


def server_settings(*, host: str = "127.0.0.1", grpc_port: int = 8081, http_port: int = 8080,
                    metrics_port: int = 8082, parallel_workers: int = 0) -> dict[str, Any]:
    """MLServer's ``settings.json``: where it listens; models load at startup."""
    return {"host": host, "grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port,
            "parallel_workers": parallel_workers, "load_models_at_startup": True, "debug": False}


def write_repository(models_root: Path | str, out_dir: Path | str, *, names: list[str] | None = None,
                     torch_threads: int = 1, device: str = "cpu", **server: Any) -> list[Path]:
    """Write ``out_dir/settings.json`` and ``out_dir/<name>/model-settings.json`` for each model.

    Raises ``ModelNotFound`` / ``ConfigError`` when the fogline repository lacks a model or a
    manifest. Returns the model-settings files written.
    """
    repo = ModelRepository(Path(models_root))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(server_settings(**server), indent=2) + "\n")
    written = []
    for name in names or repo.names():
        version_dir = repo.resolve(name)
        doc = model_settings(version_dir, repo.manifest(name), torch_threads=torch_threads, device=device)
        path = out / name / "model-settings.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None, prog: str = "python -m fogline.cloud.mlserver_repo") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="write an MLServer repository for fogline's models")
    parser.add_argument("--models", type=Path, default=None, help="fogline model repository (default ./models)")
    parser.add_argument("--out", type=Path, required=True, help="folder to start MLServer on")
    parser.add_argument("--only", action="append", help="serve only this model (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=8081)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--metrics-port", type=int, default=8082)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        written = write_repository(args.models or Path("models"), args.out, names=args.only,
                                   torch_threads=args.torch_threads, host=args.host, grpc_port=args.grpc_port,
                                   http_port=args.http_port, metrics_port=args.metrics_port)
    except FoglineError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    print(f"{prog}: wrote {len(written)} model(s) to {args.out}; start with: mlserver start {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
