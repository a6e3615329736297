"""Whether the cloud accepts this agent's credentials, and when to ask it again.

A cloud that answers ``UNAUTHENTICATED`` or ``PERMISSION_DENIED`` (a missing, wrong or revoked token,
a client certificate it does not trust at the application layer) will not change its mind on the next
call, nor on the hundredth: retrying at network-fault speed only floods its logs and ours. So such an
answer puts the cloud link into the state ``cloud_unauthenticated`` (``fogline.agent.router_types``):

- every request stays on the edge (route reason ``cloud_unauthenticated``); calls already sent fail
  with ``CloudUnauthenticated`` and are answered by the edge, so none is lost;
- one log line says so when the state begins, and one when the cloud accepts the agent again; the
  retries in between log only at debug level;
- the next attempt comes after ``auth_retry_ms`` (jittered, 30 s by default), or at once when
  ``poke()`` is called (the agent's SIGHUP reload), with the token and certificate files read again;
- every refusal calls ``on_failure`` (the metric ``fogline_agent_cloud_auth_failures_total``).

``LinkAuth`` holds that state for ``fogline.agent.cloud_link.CloudLink``; it does no I/O of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import grpc

from fogline.errors import Unavailable

log = logging.getLogger("fogline.agent.cloud_link")

#: Status codes that mean "not you", not "not now".
AUTH_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class CloudUnauthenticated(Unavailable):
    """The cloud refused this agent's credentials; the edge answers instead."""


def is_auth_error(exc: BaseException) -> bool:
    """A gRPC error saying the caller is not authenticated or not allowed."""
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in AUTH_CODES


class LinkAuth:
    """The credentials' standing with the cloud (see the module docstring)."""

    def __init__(self, endpoint: str, retry_ms: float, *, rng: random.Random | None = None,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        self.retry_ms = retry_ms
        self._rng = rng or random.Random()
        self._on_failure = on_failure
        #: Why the cloud refused the credentials (its status and message); None while not refused.
        self.refused: str | None = None
        self.failures = 0
        self._poked = asyncio.Event()

    def refuse(self, reason: str) -> None:
        """The cloud refused the credentials (again)."""
        self.failures += 1
        if self._on_failure is not None:
            with contextlib.suppress(Exception):
                self._on_failure()
        if self.refused is None:
            log.error("cloud %s refused this agent's credentials (%s): requests stay on the edge "
                      "(route reason cloud_unauthenticated); next try in %.0f s or on reload (SIGHUP)",
                      self.endpoint, reason, self.retry_ms / 1000.0)
        else:
            log.debug("cloud %s still refuses this agent's credentials (%s)", self.endpoint, reason)
        self.refused = reason

    def accept(self) -> None:
        """The cloud accepted the credentials (a call carrying them succeeded)."""
        if self.refused is not None:
            log.warning("cloud %s accepts this agent's credentials again after %d refusal(s)",
                        self.endpoint, self.failures)
        self.refused = None

    def poke(self) -> None:
        """Try the credentials again now, not at the end of the wait (a reload may have fixed them)."""
        self._poked.set()

    async def wait_retry(self) -> None:
        """Wait until the next attempt: ``retry_ms`` +-20 %, or until ``poke()``."""
        delay_s = self.retry_ms * self._rng.uniform(0.8, 1.2) / 1000.0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._poked.wait(), delay_s)
        self._poked.clear()
