"""The reference models are imports of shipped sources: ``fogline models build`` makes each FP32 source
(``build_digits`` trains the CNN, ``build_minilm`` loads the packaged all-MiniLM weights), exports it
(ONNX for the edge, TorchScript for the cloud) with calibration and evaluation files, and hands them to
``fogline.modelbuild.importer.import_model``, the code ``fogline models import`` runs, with the model's
chosen recipe as the first try. ``import_shipped`` runs that import into a scratch repository and moves
the finished version's files into the build's version directory; the build then adds its own
measurement and release gate (``fogline.modelbuild.build``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fogline.modelbuild.importer import ImportOptions, import_model


def import_shipped(out: Path, **options: Any) -> dict[str, Any]:
    """Import with ``ImportOptions(**options)`` and move the version's files into ``out`` (an empty
    directory); return its manifest without the file table (the build writes the final one over it). The
    import's own gate goes to ``import.gate``: the build records the release gate under ``gate``; the
    timings are left out so that equal builds give equal manifests."""
    with tempfile.TemporaryDirectory(prefix="fogline-shipped-") as scratch:
        result = import_model(ImportOptions(models_dir=Path(scratch), version="1", progress=False,
                                            accept_fidelity=True, **options))
        for item in result.path.iterdir():  # the manifest too: the build measures through the runtimes
            shutil.move(str(item), str(out / item.name))
    # Equal builds give equal bytes: no timings (``bench/models.py`` measures them) and no scratch paths.
    manifest = {k: v for k, v in result.manifest.items() if k not in ("files", "format", "latency_ms", "latency")}
    record = dict(manifest["import"], gate=manifest.pop("gate"))
    for key in ("evaluation", "calibration"):
        if record.get(key) and Path(record[key]).is_absolute():
            record[key] = f"shipped source: {Path(record[key]).name}"
    manifest["import"] = record
    return manifest
