"""Watching the cloud link between answers: ``ServerReady`` probes and stall detection.

``LinkProbes`` is the part of ``fogline.agent.cloud_link.CloudLink`` that runs in its monitor task, kept in a
module of its own. Every tick (a fraction of ``probe_interval_ms``) it

- breaks the stream when the oldest pending request has waited longer than ``request_timeout_ms``
  (a stalled stream: every pending request then fails over to the edge at once);
- sends a light ``ServerReady`` probe on the same connection when nothing measured the RTT for
  ``probe_interval_ms`` (``idle_probe_interval_ms`` while no request is out to the cloud) (so a device whose work all went to the edge still sees the network recover);
  a probe's round trip is an RTT sample, a failed probe counts against the circuit breaker, and an
  open breaker breaks the stream; a probe refused for its credentials (a token revoked while the
  stream was open) is no network fault: it puts the link into ``cloud_unauthenticated``.

It is a mixin: it reads the link's settings, RTT estimator, breaker, stats and pending requests, and
calls its ``_break``; ``CloudLink`` provides all of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import grpc

from fogline.agent.breaker import BreakerState
from fogline.agent.link_auth import is_auth_error
from fogline.errors import FoglineError
from fogline.inference import grpc_service_pb2 as pb

if TYPE_CHECKING:
    from fogline.agent.breaker import CircuitBreaker
    from fogline.agent.link_settings import LinkSettings
    from fogline.agent.rtt import RttEstimator

log = logging.getLogger("fogline.agent.cloud_link")


class LinkProbes:
    """Probing and stall detection for ``CloudLink`` (see the module docstring)."""

    settings: LinkSettings
    rtt: RttEstimator
    breaker: CircuitBreaker
    stats: Any
    _pending: dict[str, Any]
    _probes: dict[int, float]
    _ids: Any
    _stub: Any
    _metadata: Any
    _connected: asyncio.Event
    _closing: bool
    _last_probe_sent: float
    _side_tasks: set[asyncio.Task[Any]]

    def now_ms(self) -> float:  # provided by the link
        raise NotImplementedError

    def _break(self, reason: str) -> None:  # provided by the link
        raise NotImplementedError

    def _auth_refused(self, exc: BaseException) -> None:  # provided by the link
        raise NotImplementedError

    async def _monitor_loop(self) -> None:
        fast = min(self.settings.probe_interval_ms, self.settings.idle_probe_interval_ms)
        tick = max(0.01, min(fast, 100.0) / 2000.0)
        while not self._closing:
            await asyncio.sleep(tick)
            if not self._connected.is_set():
                continue
            now = self.now_ms()
            oldest = next(iter(self._pending.values()), None)
            if oldest is not None and now - oldest.sent_at > self.settings.request_timeout_ms:
                self._break(f"no answer for {self.settings.request_timeout_ms:.0f} ms (stream stalled)")
                continue
            # With requests out, their answers measure the link and probes only fill gaps; without,
            # probes are paced by their own send times (answers of older probes still trickling in
            # from a slow link must not hold back the fresh ones that show a recovery).
            last = self._last_probe_sent
            if self._pending:
                last = max(last, self.rtt.last_sample_at or -1e18)
            # No request out to the cloud: the router keeps work local, and only probes can show the
            # network recovering, so they come faster (bounded by max_probes_in_flight per RTT).
            interval = self.settings.probe_interval_ms if self._pending else fast
            if now - last >= interval and \
                    len(self._probes) < self.settings.max_probes_in_flight:
                self._last_probe_sent = now
                task = asyncio.create_task(self._probe())
                self._side_tasks.add(task)
                task.add_done_callback(self._side_tasks.discard)

    def probe_timeout_ms(self) -> float:
        """How long a probe may take before it counts as failed: the configured floor, or three times
        the smoothed RTT on a slow but working link (so slowness alone does not read as an outage)."""
        rtt = self.rtt.smoothed_ms or 0.0
        return min(max(self.settings.probe_timeout_ms, 3.0 * rtt), max(self.settings.probe_timeout_ms,
                                                                     self.settings.request_timeout_ms))

    async def _probe(self) -> None:
        stub = self._stub
        if stub is None:
            return
        probe_id = next(self._ids)
        sent = self.now_ms()
        self._probes[probe_id] = sent
        try:
            reply = await stub.ServerReady(pb.ServerReadyRequest(), timeout=self.probe_timeout_ms() / 1000.0,
                                           metadata=self._metadata)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._probes.pop(probe_id, None) is None:
                return  # the stream this probe belonged to is already gone
            if is_auth_error(exc):  # not the network: the credentials (a token revoked meanwhile)
                self.stats.probes_failed += 1
                self._auth_refused(exc)
                return
            now = self.now_ms()
            self.stats.probes_failed += 1
            reason = f"probe failed: {describe_error(exc)}"
            if reason != self.stats.last_error:
                log.info("cloud %s: %s", self.settings.endpoint, reason)
                self.stats.last_error = reason
            self.breaker.record_failure(now)
            if self.breaker.state(now) is not BreakerState.CLOSED:
                self._break(f"probes failing ({describe_error(exc)})")
            return
        if self._probes.pop(probe_id, None) is None:
            return
        now = self.now_ms()
        self.rtt.observe(max(0.0, now - sent), now, sent)
        if reply.ready:
            self.stats.probes_ok += 1
            self.breaker.record_success(now)
        else:
            self.stats.probes_failed += 1
            self.breaker.record_failure(now)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, FoglineError):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
