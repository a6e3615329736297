"""The agent fetches the model versions its device lists but its repository lacks, from its cloud.

A device's fleet entry lists models, each pinned to a version or not. Before the agent loads them (at
start) and before a reload swaps them (SIGHUP), ``ModelFetcher.ensure`` looks for each listed model:
a pinned version that is not in the repository, or a model with no version at all, is fetched from
the cloud the agent already talks to, with the link's own credentials (TLS, bearer token), through
``fogline.models.fetch`` (hashes checked, staged, renamed into place). An unpinned model that the
repository already holds is left alone: which version serves stays the operator's call (pin it).

At start a model that cannot be fetched stops the agent with one line (systemd restarts it later);
on a reload the version serving keeps serving, the reload says why, and ``retry`` tries again with
growing pauses (5 s doubling to 5 min) until the fetch works, then reloads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogline.agent.link_settings import LinkSettings
from fogline.models.fetch import FetchError, FetchSource, Progress, fetch_version
from fogline.models.repository import ModelRepository

log = logging.getLogger("fogline.agent")

RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0


def missing_models(root: Path | str, refs: Iterable[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """The ``(name, pinned version or None)`` the repository at ``root`` cannot serve: a pinned version
    it lacks, or a model it holds no version of."""
    repo = ModelRepository(Path(root))
    out = []
    for name, version in refs:
        versions = repo.versions(name)
        if (version is None and not versions) or (version is not None and str(version) not in versions):
            out.append((name, None if version is None else str(version)))
    return out


def source_of(settings: LinkSettings) -> FetchSource:
    """Fetch over the cloud link's target with the link's credentials (``ConfigError`` for bad files)."""
    return FetchSource(settings.endpoint, settings.channel_credentials(), settings.call_metadata(),
                       tuple(settings.channel_options()))


@dataclass(frozen=True)
class FetchOutcome:
    """What ``ensure`` did for one model: the version fetched, or why not (one line)."""

    name: str
    version: str | None
    error: str = ""
    retry: bool = False

    def describe(self) -> str:
        what = _what(self.name, self.version)
        return f"fetch of {what} failed: {self.error.removeprefix(what + ' ')}" if self.error else f"{what} fetched"


def _what(name: str, version: str | None) -> str:
    return f"{name} v{version}" if version else f"{name} (newest version)"


class ModelFetcher:
    """Fetches missing versions for one agent and retries failed ones in the background."""

    def __init__(self, source: Callable[[], FetchSource], *, attempts: int = 5,
                 progress: Progress | None = None, quiet: bool = False) -> None:
        #: Built per use, so a reload's new token or certificate files are read again.
        self._source = source
        self.attempts = attempts
        self.progress = progress
        #: No log lines, and stop at the first failure: the caller reports it (the start prints one line).
        self.quiet = quiet
        self._retry: asyncio.Task[None] | None = None
        self.fetched = 0
        self.failures = 0

    def _say(self, level: int, message: str, *args: object) -> None:
        if not self.quiet:
            log.log(level, message, *args)

    async def ensure(self, root: Path | str, refs: Iterable[tuple[str, str | None]]) -> list[FetchOutcome]:
        """Fetch every model ``missing_models`` finds; one outcome per model it tried."""
        outcomes = []
        for name, version in missing_models(root, refs):
            try:
                source = self._source()
                self._say(logging.INFO, "model %s not in %s: fetching it from %s", _what(name, version), root,
                               source.target)
                done = await fetch_version(source, root, name, version, attempts=self.attempts,
                                           progress=self.progress)
            except FetchError as exc:
                self.failures += 1
                outcome = FetchOutcome(name, version, str(exc), exc.retry)
                self._say(logging.ERROR, "model %s", outcome.describe())
            except Exception as exc:  # a bad credentials file (ConfigError), a full disk (OSError)
                self.failures += 1
                outcome = FetchOutcome(name, version, " ".join(str(exc).split()) or type(exc).__name__, True)
                self._say(logging.ERROR, "model %s", outcome.describe())
            else:
                self.fetched += 1
                outcome = FetchOutcome(name, done.version)
                self._say(logging.INFO, "model %s (%d bytes) into %s", outcome.describe(), done.bytes_received, done.path)
            outcomes.append(outcome)
            if outcome.error and self.quiet:
                break
        return outcomes

    def retry(self, again: Callable[[], Awaitable[list[FetchOutcome]]]) -> None:
        """Call ``again`` (a reload that fetches) after growing pauses until none of its fetches fails
        with a retryable error. One retry loop at a time: a newer call replaces the older."""
        self.cancel()
        self._retry = asyncio.create_task(self._retry_loop(again), name="model-fetch-retry")

    async def _retry_loop(self, again: Callable[[], Awaitable[list[FetchOutcome]]]) -> None:
        pause = RETRY_FIRST_S
        while True:
            log.info("model fetch: trying again in %.0f s", pause)
            await asyncio.sleep(pause)
            outcomes = await again()
            if not any(o.error and o.retry for o in outcomes):
                return
            pause = min(pause * 2, RETRY_MAX_S)

    @property
    def retrying(self) -> bool:
        """A failed fetch waits for its next try."""
        return self._retry is not None and not self._retry.done()

    def cancel(self) -> None:
        if self._retry is not None and not self._retry.done():
            self._retry.cancel()
        self._retry = None

    async def close(self) -> None:
        task, self._retry = self._retry, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def fetch_at_start(device: Any, endpoint: str | None, root: Path | str,
                         progress: Progress | None = None) -> list[FetchOutcome]:
    """Before the agent loads its models: fetch the listed ones the repository lacks from ``endpoint``
    (the device's cloud, or the ``--cloud`` flag) with the device's cloud credentials (read only when
    something is missing). Nothing to do without a cloud."""
    if not endpoint:
        return []
    settings = LinkSettings.from_config(device.cloud, device.routing, endpoint=endpoint)
    fetcher = ModelFetcher(lambda: source_of(settings), progress=progress, quiet=True)
    return await fetcher.ensure(root, [(ref.name, ref.version) for ref in device.models])
