"""Hot swap of the cloud's full models on a reload (SIGHUP), the agent's way (``fogline.agent.model_reload``).

``reload_models(dataplane, root, device)`` reads the repository again. Every model whose newest version
is not the one serving (or that is new) is loaded beside it (torch, off the event loop), checked
(``fogline.serving.model_checks``: every file's hash, load, manifest, signature, a warm-up inference on
a sample input, output shapes and datatypes, no NaN) and swapped in with one dict assignment
(``DataPlane.swap``): requests already queued or batched on the old version's batcher finish there,
the next ones get the new version, open streams carry on, and the old batcher closes once idle. A
version that fails a check is refused with one log line and
``fogline_cloud_model_load_failures_total{model,version,reason}``; the version serving stays. A model
removed from the repository keeps serving until a restart (agents may still ask for it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from fogline.cloud.dataplane import DataPlane
from fogline.models.repository import ModelRepository
from fogline.serving.model_checks import ModelChange, VersionRefused, load_checked, wanted_version

log = logging.getLogger("fogline.cloud")


async def reload_models(dataplane: DataPlane, root: Path | str, device: str) -> list[ModelChange]:
    """Bring every model of the repository at ``root`` to its newest version; what changed or was refused."""
    repo = ModelRepository(Path(root))
    changes = []
    for name in repo.names():
        served = dataplane.models.get(name)
        before = served.version if served is not None else None
        version = wanted_version(repo, name, None)
        if version == before:
            continue
        changes.append(await _swap_one(dataplane, repo.root / name / version, device, served))
    for change in changes:
        (log.error if change.refused else log.info)("model reload: %s", change.describe(),
                                                    extra={"model": change.name, "version": change.after})
    return changes


async def _swap_one(dataplane: DataPlane, version_dir: Path, device: str, served: Any) -> ModelChange:
    name, version = version_dir.parent.name, version_dir.name
    before = served.version if served is not None else None
    began = time.perf_counter()

    def load(path: Path) -> Any:
        from fogline.models.full_runtime import FullModel

        return FullModel.load(path, device=device)

    try:
        model = await asyncio.to_thread(load_checked, version_dir, load, served.model if served else None)
    except VersionRefused as exc:
        dataplane.metrics.model_load_failures.labels(name, version, exc.reason).inc()
        return ModelChange(name, before, before, refused=version, reason=exc.reason, message=str(exc))
    dataplane.swap(model)
    if before is not None:
        dataplane.metrics.model_swaps.labels(name).inc()
    return ModelChange(name, before, version, load_ms=(time.perf_counter() - began) * 1000.0)
