"""The agent's one long-lived connection to the cloud tier.

``CloudLink`` keeps a single ``ModelStreamInfer`` stream open to any Open Inference Protocol v2 server
(fogline's cloud, Triton, KServe, MLServer: only standard calls are used) and multiplexes requests over
it by request id. Around that stream it:

- measures the round-trip time: every answer is an in-band sample (elapsed time minus the cloud's
  reported ``compute_ms``, when it reports one); while no answers flow, light ``ServerReady`` probes on
  the same connection keep the estimate fresh, so a device that moved all work to the edge still sees
  the network recover;
- tracks health with a circuit breaker (``fogline.agent.breaker``) and exposes it, with the RTT, as the
  router's ``LinkView`` (``view(model)``);
- fails every pending request at once when the stream breaks or stalls (an answer overdue by
  ``request_timeout_ms``, or probes timing out), with ``LinkLost`` (another replica may take them,
  ``fogline.agent.replica_set``), or when the cloud reports an error, with ``Unavailable``; the data
  plane re-runs them on the edge without waiting;
- reconnects in the background with capped exponential backoff and jitter (paced by the attempts'
  start times, so a slow failed handshake counts towards the wait), over a fresh channel with
  HTTP/2 keepalive;
- checks its credentials (TLS, bearer token) with a ``ServerReady`` call before it calls itself
  connected; a cloud that refuses them (UNAUTHENTICATED / PERMISSION_DENIED, at that check, on the
  stream, a unary call or a probe) puts the link into the state ``cloud_unauthenticated``, with slow
  retries and one log line instead of a stream of errors (``fogline.agent.link_auth``).

The probes and the stall detection live in ``fogline.agent.link_probes`` (a mixin of ``CloudLink``).

Abandoned requests (the data plane stopped waiting and answered from the edge) stay pending until their
answer arrives: that late answer is still a valid RTT sample, which is how the link learns how slow the
network became.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from fogline import codec
from fogline.agent.breaker import BreakerState, CircuitBreaker
from fogline.agent.cloud_models import CloudModels
from fogline.agent.link_auth import CloudUnauthenticated, LinkAuth, is_auth_error
from fogline.agent.link_port import CloudAnswer, LinkLost
from fogline.agent.link_probes import LinkProbes, describe_error
from fogline.agent.link_settings import LinkSettings, backoff_ms
from fogline.agent.router_types import CLOUD_UNAUTHENTICATED, LinkView
from fogline.agent.rtt import RttEstimator, inband_sample_ms
from fogline.errors import ConfigError, InvalidInput, Unavailable
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: The router asked for the link this recently: requests are waiting for it (faster reconnects).
_BUSY_WINDOW_MS = 2000.0


@dataclass
class _Pending:
    future: asyncio.Future[CloudAnswer]
    sent_at: float
    model: str
    client_id: str = ""


@dataclass
class LinkStats:
    connects: int = 0
    disconnects: int = 0
    sent: int = 0
    answered: int = 0
    failed: int = 0
    late: int = 0  # answers that arrived after the data plane stopped waiting
    probes_ok: int = 0
    probes_failed: int = 0
    last_error: str = ""
    history: list[str] = field(default_factory=list)


class CloudLink(LinkProbes):
    """One multiplexed ``ModelStreamInfer`` stream to the cloud, kept alive and measured (a
    ``fogline.agent.link_port.CloudLinkPort``: the data plane uses ``view`` and ``submit``)."""

    def __init__(self, settings: LinkSettings, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, on_auth_failure: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._credentials = settings.channel_credentials()  # read the files now: a bad path fails at start
        self._metadata = settings.call_metadata()
        self._clock = clock
        self._rng = rng or random.Random()
        #: The credentials' standing with the cloud; ``on_auth_failure`` counts every refusal.
        self.auth = LinkAuth(settings.endpoint, settings.auth_retry_ms, rng=self._rng,
                             on_failure=on_auth_failure)
        self._wanted_at = -math.inf  # when the router last asked for the link (view)
        self.rtt = RttEstimator(alpha=settings.rtt_alpha, percentile=settings.rtt_percentile,
                                recent=settings.rtt_recent)
        self.breaker = CircuitBreaker(failure_threshold=settings.failure_threshold,
                                      open_ms=settings.breaker_open_ms)
        self.stats = LinkStats()
        self._pending: dict[str, _Pending] = {}
        self._probes: dict[int, float] = {}
        self._ids = itertools.count(1)
        #: Per-model compute times and errors (``fogline.agent.cloud_models``).
        self.models = CloudModels()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.GRPCInferenceServiceStub | None = None
        self._call: Any = None
        #: The transport in use now ("stream" or "unary"); see ``LinkSettings.mode``.
        self.mode = "unary" if settings.mode == "unary" else "stream"
        self._stream_answered = False
        self._break_code: grpc.StatusCode | None = None
        self._connected = asyncio.Event()
        self._broken: asyncio.Event = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._last_probe_sent = -1e18
        self._state = "connecting"
        self._closing = False
        self._broken_reason = ""

    # ------------------------------------------------------------------ time
    def now_ms(self) -> float:
        return self._clock() * 1000.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start connecting (in the background) and probing. Returns at once."""
        self._tasks = [asyncio.create_task(self._connect_loop(), name="cloud-link"),
                       asyncio.create_task(self._monitor_loop(), name="cloud-link-monitor")]

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def wait_usable(self, timeout_s: float) -> bool:
        """Wait until the router would send traffic (connected, breaker closed, RTT measured)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.view("").usable and self.rtt.smoothed_ms is not None:
                return True
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        self._closing = True
        for task in [*self._tasks, *self._side_tasks]:
            task.cancel()
        for task in [*self._tasks, *self._side_tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_all("the agent is shutting down")
        await self._close_channel()

    # ------------------------------------------------------------------ requests
    def submit(self, request: codec.InferRequest) -> asyncio.Future[CloudAnswer]:
        """Send one request; the future resolves with the answer or fails with ``Unavailable``
        (link down, stream broken or stalled) or the cloud's own error. Never blocks."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CloudAnswer] = loop.create_future()
        if self.auth.refused is not None:
            future.set_exception(CloudUnauthenticated(
                f"cloud {self.settings.endpoint} refused this agent's credentials ({self.auth.refused})"))
            return future
        if not self._connected.is_set() or (self.mode == "stream" and self._call is None):
            future.set_exception(LinkLost(f"cloud link to {self.settings.endpoint} is {self._state}"))
            return future
        wire_id = f"fl-{next(self._ids)}"
        msg = codec.request_to_proto(
            codec.InferRequest(request.model_name, request.inputs, request.model_version, wire_id,
                               {k: v for k, v in request.parameters.items() if k != "route"},
                               list(request.outputs))
        )
        self._pending[wire_id] = _Pending(future, self.now_ms(), request.model_name, request.id)
        self.stats.sent += 1
        if self.mode == "unary":
            task = asyncio.create_task(self._unary(self._stub, msg, wire_id))
        else:
            task = asyncio.create_task(self._write(self._call, msg, wire_id))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return future

    async def _write(self, call: Any, msg: pb.ModelInferRequest, wire_id: str) -> None:
        try:
            async with self._write_lock:
                if call is not self._call:
                    raise Unavailable("the cloud stream was replaced before the request went out")
                await call.write(msg)
        except Exception as exc:  # the stream is gone; the reader will notice too
            entry = self._pending.pop(wire_id, None)
            if entry is not None and not entry.future.done():
                entry.future.set_exception(LinkLost(f"cloud stream write failed: {describe_error(exc)}"))
            self._break(f"write failed: {describe_error(exc)}")

    async def _unary(self, stub: Any, msg: pb.ModelInferRequest, wire_id: str) -> None:
        try:
            reply = await stub.ModelInfer(msg, timeout=self.settings.request_timeout_ms / 1000.0,
                                          metadata=self._metadata)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            entry = self._pending.pop(wire_id, None)
            self.stats.failed += 1
            if is_auth_error(exc):
                self._auth_refused(exc)
                if entry is not None and not entry.future.done():
                    entry.future.set_exception(CloudUnauthenticated(f"cloud call refused: {describe_error(exc)}"))
                return
            link_failure = not isinstance(exc, grpc.aio.AioRpcError) or exc.code() in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
            if link_failure:
                self.breaker.record_failure(self.now_ms())
            elif entry is not None:
                self._model_failed(entry.model)  # the link works; this model on that cloud does not
            if entry is not None and not entry.future.done():
                error = LinkLost if link_failure else Unavailable
                entry.future.set_exception(error(f"cloud call failed: {describe_error(exc)}"))
            if isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.UNAVAILABLE:
                self._break(describe_error(exc))
            return
        entry = self._pending.pop(wire_id, None)
        if entry is not None:
            self._complete(entry, reply)

    # ------------------------------------------------------------------ router view
    def view(self, model: str) -> LinkView:
        now = self.now_ms()
        self._wanted_at = now  # the router is asking: reconnects are paced for a waiting client
        snap = self.rtt.snapshot(now, model)
        compute = self.models.compute_ms(model, now)
        outstanding = 0.0
        # Entries are kept in send order. With two or more waiting, the second oldest counts: one
        # straggler (a jitter spike) is not a slow network, two at once are. O(1) per decision.
        # Calls sent before the freshest answered one are stragglers of an older network state (after
        # a recovery, probes sent into the slow link are still out): they prove nothing and are skipped
        # (a bounded look at the front, so a decision stays O(1)).
        fresh = self.rtt.fresh_sent_at
        fresh = -math.inf if fresh is None else fresh
        waiting = iter(self._pending.values())
        oldest = next(waiting, None)
        for _ in range(8):
            if oldest is None or oldest.sent_at >= fresh:
                break
            oldest = next(waiting, None)
        witness = next(waiting, oldest)
        if witness is not None:
            outstanding = now - witness.sent_at - self.models.compute_ms(witness.model, now)
        for sent in self._probes.values():
            if sent >= fresh:
                outstanding = max(outstanding, now - sent)
        breaker = self.breaker.state(now)
        if self.auth.refused is not None:
            usable, state = False, CLOUD_UNAUTHENTICATED
        elif not self._connected.is_set():
            usable, state = False, self._state
        elif breaker is not BreakerState.CLOSED:
            usable, state = False, "breaker_" + breaker.value
        elif self.models.benched(model, now):
            usable, state = False, "model_failing"
        else:
            usable, state = True, "ready"
        return LinkView(usable=usable, state=state, rtt_ms=snap.smoothed_ms, rtt_high_ms=snap.high_ms,
                        rtt_recent_ms=snap.recent_max_ms, rtt_typical_ms=snap.typical_ms,
                        outstanding_ms=outstanding, cloud_compute_ms=compute)

    def _model_failed(self, model: str) -> None:
        if self.models.failed(model, self.now_ms()):
            log.info("cloud %s: model %r keeps failing there; the edge answers it for a while",
                     self.settings.endpoint, model)

    @property
    def pending_count(self) -> int:
        """Requests sent and not answered yet (abandoned ones included: the cloud still works on them)."""
        return len(self._pending)

    @property
    def connected(self) -> bool:
        """The connection is up (whatever the breaker says)."""
        return self._connected.is_set()

    # ------------------------------------------------------------------ credentials
    def reauthenticate(self) -> None:
        """Try refused credentials again now (the agent's reload, SIGHUP), re-reading their files."""
        self.auth.poke()

    def _auth_refused(self, exc: BaseException) -> None:
        """A call was refused for its credentials: stop using the cloud until they are accepted."""
        first = self.auth.refused is None
        if first or not self._broken.is_set():
            self.auth.refuse(describe_error(exc))
            self._break(f"credentials refused ({describe_error(exc)})")

    async def _check_credentials(self) -> None:
        """One ``ServerReady`` call with the credentials: raises ``CloudUnauthenticated`` when refused.
        Other failures are left to the stream and the probes to judge."""
        try:
            await self._stub.ServerReady(pb.ServerReadyRequest(), metadata=self._metadata,  # type: ignore[union-attr]
                                         timeout=self.settings.connect_timeout_ms / 1000.0)
        except grpc.aio.AioRpcError as exc:
            if is_auth_error(exc):
                raise CloudUnauthenticated(describe_error(exc)) from None

    async def _wait_for_new_credentials(self) -> None:
        """Refused: wait for the retry (or a reload), then read the credential files again."""
        self._state = CLOUD_UNAUTHENTICATED
        await self.auth.wait_retry()
        try:
            self._credentials = self.settings.channel_credentials()
            self._metadata = self.settings.call_metadata()
        except ConfigError as exc:  # keep the last credentials that could be read
            log.warning("cloud %s: %s; retrying with the credentials read before", self.settings.endpoint, exc)

    # ------------------------------------------------------------------ connection loop
    async def _connect_loop(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._closing:
            self._state = "connecting"
            started = self.now_ms()
            attempt_started = loop.time()
            try:
                await self._open()
            except CloudUnauthenticated as exc:
                self.stats.last_error = str(exc)
                self.auth.refuse(str(exc))
                await self._close_channel()
                await self._wait_for_new_credentials()
                attempt = 0
                continue
            except Exception as exc:
                self.stats.last_error = describe_error(exc)
                self.breaker.record_failure(self.now_ms())
                log.info("cloud %s: connect failed (%s)", self.settings.endpoint, self.stats.last_error)
                await self._close_channel()
                self._state = "down"
                await self._pause_before_retry(attempt, attempt_started)
                attempt += 1
                continue
            self.stats.connects += 1
            self.auth.accept()
            self.rtt.restart()
            self._state = "ready"
            self._connected.set()
            log.info("cloud %s: connected (%s)", self.settings.endpoint, self.mode)
            reason = await self._read_until_broken()
            self._connected.clear()
            self._state = "down"
            self.stats.disconnects += 1
            self.stats.last_error = reason
            if self.auth.refused is not None:
                self._fail_all(f"cloud refused the credentials: {reason}", CloudUnauthenticated)
                await self._close_channel()
                await self._wait_for_new_credentials()
                attempt = 0
                continue
            switched = self._maybe_switch_to_unary(reason)
            log.info("cloud %s: connection lost (%s)", self.settings.endpoint, reason)
            self._fail_all(f"cloud stream lost: {reason}")
            await self._close_channel()
            if switched:
                continue  # the server is fine, only its stream is not Triton's: reconnect at once
            self.breaker.trip(self.now_ms())
            # A stream that lived a while resets the backoff; one that dies at once keeps growing it.
            attempt = 0 if self.now_ms() - started > 2 * self.settings.backoff_max_ms else attempt + 1
            await self._pause_before_retry(attempt, attempt_started)

    async def _pause_before_retry(self, attempt: int, attempt_started: float) -> None:
        """Wait until the next connection attempt may start.

        Attempts are paced by their start times: the backoff delay (capped exponential, jittered; the
        cap is ``backoff_busy_max_ms`` while the router is asking for the link, ``backoff_max_ms``
        otherwise) runs from when the last attempt started, so the time a failed handshake or a
        connection that never worked already took counts towards it. A dead link therefore does
        not add a full backoff on top of every timed-out attempt, and when it comes back (the proxy
        or a middlebox resets the stale connection) the next attempt starts within a fraction of a
        second. Every retry still waits a random slice of ``backoff_initial_ms`` at least, so a fleet
        that lost the cloud together spreads out, and attempts never start more often than once per
        backoff delay: a server that accepts and drops at once sees at most ~1000/busy cap attempts
        per second per busy agent (4 with the defaults) and 1 per idle one.
        """
        loop = asyncio.get_running_loop()
        busy = self.now_ms() - self._wanted_at <= _BUSY_WINDOW_MS
        cap = min(self.settings.backoff_busy_max_ms, self.settings.backoff_max_ms) if busy \
            else self.settings.backoff_max_ms
        delay = backoff_ms(attempt, min(self.settings.backoff_initial_ms, cap), cap,
                           self.settings.backoff_jitter, self._rng)
        spent = (loop.time() - attempt_started) * 1000.0
        floor = self._rng.uniform(0.0, min(delay, self.settings.backoff_initial_ms))
        await asyncio.sleep(max(delay - spent, floor) / 1000.0)

    def _maybe_switch_to_unary(self, reason: str) -> bool:
        """In auto mode, a stream that failed to decode (or answered without ids) before it ever gave a
        proper answer belongs to a server without Triton's stream: use unary calls from now on."""
        if self.settings.mode == "auto" and self.mode == "stream" and not self._stream_answered and \
                self._break_code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED):
            self.mode = "unary"
            log.warning("cloud %s: its ModelStreamInfer is not Triton's (%s); using unary ModelInfer",
                        self.settings.endpoint, reason)
            return True
        return False

    async def _open(self) -> None:
        if self._credentials is not None:
            self._channel = grpc.aio.secure_channel(self.settings.endpoint, self._credentials,
                                                    options=self.settings.channel_options())
        else:
            self._channel = grpc.aio.insecure_channel(self.settings.endpoint,
                                                      options=self.settings.channel_options())
        await asyncio.wait_for(self._channel.channel_ready(), self.settings.connect_timeout_ms / 1000.0)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        await self._check_credentials()
        self._call = self._stub.ModelStreamInfer(metadata=self._metadata) if self.mode == "stream" else None
        self._broken = asyncio.Event()
        self._break_code = None

    async def _read_until_broken(self) -> str:
        call = self._call
        if call is None:  # unary mode: watch the connection instead of a stream
            reader = asyncio.create_task(self._watch_channel(self._channel))
        else:
            reader = asyncio.create_task(self._read_loop(call))
        broken = asyncio.create_task(self._broken.wait())
        done, _ = await asyncio.wait({reader, broken}, return_when=asyncio.FIRST_COMPLETED)
        self._call = None
        if reader in done:
            broken.cancel()
            return reader.result()
        reader.cancel()
        if call is not None:
            call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        return self._broken_reason

    async def _read_loop(self, call: Any) -> str:
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    return "the cloud closed the stream"
                if msg is None:  # grpc.aio hands None for a message it could not deserialize
                    self._break_code = grpc.StatusCode.INTERNAL
                    return "the cloud sent a stream message that is not a ModelStreamInferResponse"
                self._on_message(msg)
        except grpc.aio.AioRpcError as exc:
            self._break_code = exc.code()
            if is_auth_error(exc):
                self._auth_refused(exc)
            return describe_error(exc)
        except Exception as exc:
            return describe_error(exc)

    async def _watch_channel(self, channel: Any) -> str:
        while True:
            state = channel.get_state()
            if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
                return f"connection lost ({state.name.lower()})"
            await channel.wait_for_state_change(state)

    def _break(self, reason: str) -> None:
        if not self._broken.is_set():
            self._broken_reason = reason
            self._broken.set()

    async def _close_channel(self) -> None:
        self._call = None
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    # ------------------------------------------------------------------ answers
    def _on_message(self, msg: pb.ModelStreamInferResponse) -> None:
        wire_id = msg.infer_response.id
        entry = self._pending.pop(wire_id, None)
        if entry is None and self._pending:
            # A server that does not echo ids answers in order: match the oldest request.
            entry = self._pending.pop(next(iter(self._pending)))
        if entry is None:
            return
        if msg.error_message and not wire_id and not self._stream_answered and self.settings.mode == "auto":
            # Triton names the request in every stream error; a server that does not is not speaking
            # Triton's stream (MLServer sends bare ModelInferResponse messages that parse this way).
            self._break_code = grpc.StatusCode.UNIMPLEMENTED
            self._break("stream answers carry no request id (not a Triton-style stream)")
        if msg.error_message:
            self.stats.failed += 1
            self._model_failed(entry.model)
            if not entry.future.done():
                entry.future.set_exception(Unavailable(f"cloud error: {msg.error_message}"))
            return
        self._stream_answered = True
        self._complete(entry, msg.infer_response)

    def _complete(self, entry: _Pending, reply: pb.ModelInferResponse) -> None:
        """One answer arrived: decode it, learn from it (RTT, compute time, health), hand it over."""
        now = self.now_ms()
        try:
            response = codec.response_from_proto(reply)
        except InvalidInput as exc:
            if not entry.future.done():
                entry.future.set_exception(Unavailable(f"cloud sent a malformed answer: {exc}"))
            return
        compute = response.parameters.get("compute_ms")
        compute_ms = float(compute) if isinstance(compute, (int, float)) and not isinstance(compute, bool) \
            else None
        self.rtt.observe(inband_sample_ms(entry.sent_at, now, compute_ms), now, entry.sent_at, entry.model)
        self.models.answered(entry.model, compute_ms, now)
        self.breaker.record_success(now)
        self.stats.answered += 1
        response.id = entry.client_id
        if entry.future.done():
            self.stats.late += 1
        else:
            entry.future.set_result(CloudAnswer(response, now - entry.sent_at))

    def _fail_all(self, reason: str, error: type[Unavailable] = LinkLost) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            self.stats.failed += 1
            if not entry.future.done():
                entry.future.set_exception(error(reason))
        self._probes.clear()
