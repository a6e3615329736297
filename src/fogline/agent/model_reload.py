"""Hot swap of the agent's edge models on a reload (SIGHUP), and their release once drained.

``ModelReloader.reload(models_dir, refs)`` reads the repository again for every ``(name, pinned
version or None)`` the device lists. A model whose wanted version (the pinned one, else the newest)
is not the one serving is loaded beside it, checked (``fogline.serving.model_checks``: hashes, load,
manifest, signature, a warm-up inference on a sample input, output shapes and datatypes, no NaN),
warmed up as a runner, then swapped in with one dict assignment (``EdgePool.swap``): the next request
gets the new version, requests already holding the old runner finish on it, and the old runner is
stopped once it has drained (``EdgeRunner.drained``). Streams never notice: they look the runner up
per request. A model the device lists for the first time is loaded the same way; one it no longer
lists stops being served (then drains).

A version that fails any check is refused with one log line naming the model, the version, the
reason and what to do, and the ``model_load_failures_total{model,version,reason}`` metric; the
version serving keeps serving. Rollback is pinning the previous version and reloading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fogline.agent.edge_pool import EdgePool, EdgeRunner
from fogline.errors import ModelNotFound
from fogline.models.distribution import EDGE_ROLES  # the files a swap checks (a device may hold no others)
from fogline.models.repository import ModelRepository
from fogline.serving.model_checks import ModelChange, VersionRefused, load_checked, wanted_version

log = logging.getLogger(__name__)

#: A swapped-out runner still busy after this long is stopped anyway (its stragglers get cancelled).
DRAIN_TIMEOUT_S = 60.0


class ModelReloader:
    """Swaps the edge pool's runners to the versions a reload asks for; releases the old ones."""

    def __init__(self, pool: EdgePool, metrics: Any = None, *, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        self.pool = pool
        self.metrics = metrics
        self.drain_timeout_s = drain_timeout_s
        self._retiring: dict[asyncio.Task[None], EdgeRunner] = {}
        if metrics is not None:
            for name, runner in pool.runners.items():
                metrics.set_model_version(name, runner.version)

    async def reload(self, models_dir: Path | str, refs: Iterable[tuple[str, str | None]]) -> list[ModelChange]:
        """Bring every listed model to its wanted version; returns what changed or was refused."""
        repo = ModelRepository(Path(models_dir))
        refs = list(refs)
        changes = [change for name, pinned in refs if (change := await self._one(repo, name, pinned))]
        listed = {name for name, _ in refs}
        for name in [n for n in self.pool.runners if n not in listed]:
            old = self.pool.swap(name, None)
            if old is not None:
                self._retire(old)
                if self.metrics is not None:
                    self.metrics.set_model_version(name, None, old.version)
                changes.append(ModelChange(name, old.version, None))
        for change in changes:
            (log.error if change.refused else log.info)("model reload: %s", change.describe(),
                                                        extra={"model": change.name, "version": change.after})
        return changes

    async def _one(self, repo: ModelRepository, name: str, pinned: str | None) -> ModelChange | None:
        current = self.pool.runners.get(name)
        before = current.version if current is not None else None
        try:
            version = wanted_version(repo, name, pinned)
        except ModelNotFound as exc:
            return self._refused(name, before, pinned or "newest", "missing", str(exc))
        if version == before:
            return None
        began = time.perf_counter()
        from fogline.models.edge_runtime import EdgeModel

        threads = self.pool.intra_op_threads

        def load(version_dir: Path) -> Any:
            return EdgeModel.load(version_dir, intra_op_threads=threads)

        serving = current.model if current is not None else None
        try:
            model = await asyncio.to_thread(load_checked, repo.root / name / version, load, serving,
                                            roles=EDGE_ROLES)
        except VersionRefused as exc:
            return self._refused(name, before, version, exc.reason, str(exc))
        runner = self.pool.new_runner(model, like=current)
        try:
            await runner.start(warmup=True)
        except Exception as exc:  # the runner's own warm-up: the model passed its checks, but be safe
            await runner.stop()
            return self._refused(name, before, version, "warmup", " ".join(str(exc).split()))
        old = self.pool.swap(name, runner)
        if old is not None:
            self._retire(old)
        if self.metrics is not None:
            self.metrics.set_model_version(name, version, before)
        return ModelChange(name, before, version, load_ms=(time.perf_counter() - began) * 1000.0)

    def _refused(self, name: str, before: str | None, version: str, reason: str, message: str) -> ModelChange:
        if self.metrics is not None:
            self.metrics.observe_model_refused(name, version, reason)
        return ModelChange(name, before, before, refused=version, reason=reason, message=message)

    # ------------------------------------------------------------------ releasing old versions
    def _retire(self, runner: EdgeRunner) -> None:
        task = asyncio.create_task(self._drain(runner), name=f"retire-{runner.name}-{runner.version}")
        self._retiring[task] = runner
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def _drain(self, runner: EdgeRunner) -> None:
        waited = 0.0
        while not runner.drained and waited < self.drain_timeout_s:
            await asyncio.sleep(0.01)
            waited += 0.01
        if not runner.drained:
            log.warning("model %s v%s still busy after %.0f s; stopping it", runner.name, runner.version, waited)
        await runner.stop()
        log.info("model %s v%s released", runner.name, runner.version)

    @property
    def retiring(self) -> list[EdgeRunner]:
        """Swapped-out runners still finishing their requests."""
        return list(self._retiring.values())

    async def wait_released(self) -> None:
        """Until every swapped-out runner has drained and stopped."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def close(self) -> None:
        """Stop every swapped-out runner now (the agent stops)."""
        for task, runner in list(self._retiring.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await runner.stop()
