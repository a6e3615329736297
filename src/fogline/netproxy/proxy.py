"""A userspace network-condition proxy: delay, jitter, bandwidth cap, blackhole and resets over TCP.

The kernel on the machines fogline is tested on has no ``netem``, so the demo, the tests and the
benchmarks put this proxy between the agent and the cloud instead::

    proxy = NetProxy(target_host="127.0.0.1", target_port=cloud_port)
    await proxy.start()                      # listens on 127.0.0.1:<proxy.port>
    proxy.set_conditions(delay_ms=300)       # RTT grows by 600 ms, for new bytes, immediately
    proxy.set_conditions(blackhole=True)     # connections stay open, nothing gets through
    proxy.reset_connections()                # every open connection ends with a TCP RST
    await proxy.stop()

How bytes move. Each accepted connection gets a connection to the target and two one-way pipes
(client->target "up", target->client "down"). A pipe's reader stamps every chunk it reads with a due
time ``arrival + delay + jitter`` and queues it; the pipe's writer sleeps until the due time, takes
tokens from the direction's bandwidth bucket and writes. Due times never go backwards within a pipe
(``due = max(due, previous due)``), so jitter delays bytes but never reorders them - TCP guarantees
order and so does the proxy. Conditions can change at any moment: new chunks see the new values,
chunks already queued keep their due time. In this default mode the jitter is drawn per chunk, so a
long draw also holds every later chunk of that connection (head-of-line), and no two runs see the
same draws.

Timeline mode (``NetProxy(..., timeline=True, seed=N)``, ``--timeline`` on the command line) makes
the delay a deterministic function of time instead, shared by all connections: jitter is drawn once
per ``jitter_slot_ms`` slot from a generator seeded by (seed, direction, slot index counted from when
the conditions were applied), and bytes entering at time t leave at ``max over s <= t of
(s + d(s))``, d(s) being the base delay plus s's slot jitter: the link behaves like a queue, a spike
stalls it and then drains at real-time speed, and a step from 250 ms down to 5 ms drains over about
245 ms. ``fogline.netproxy.timeline`` holds that function, so the routing benchmark's oracle computes
exactly the delays the proxy applied (given the times the proxy reports for each change).

Blackhole models a dead link: connections stay open and bytes read during it are thrown away (in
both directions, also those still queued when it starts). A byte stream with a hole in it cannot
continue (real TCP would retransmit; the proxy cannot), so when the blackhole lifts, every connection
that lost bytes is reset; connections that lost nothing carry on untouched. New connections made
during a blackhole are accepted (the listening socket cannot drop a SYN) but carry nothing, so a
client's handshake times out as it would on a dead link.

Outside an event loop (a synchronous test, another thread) use ``BackgroundNetProxy``, which runs the
proxy on its own loop in a thread. From another process use the control port of the command line:
``python -m fogline.netproxy.proxy --listen 127.0.0.1:9001 --target 127.0.0.1:8001 --delay-ms 50
--control 127.0.0.1:9002`` (see ``fogline.netproxy.control``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fogline.netproxy.timeline import LinkTimeline

log = logging.getLogger(__name__)

#: Jitter distributions ``set_conditions`` accepts (see ``NetConditions.sample_delay_s``).
JITTER_DISTS = ("uniform", "normal", "pareto")
_READ_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 256  # at most 16 MiB queued per pipe before the reader stops reading (backpressure)
_SHAPED_PIECE = 16 * 1024  # under a bandwidth cap, chunks go out in pieces this big


@dataclass(frozen=True)
class NetConditions:
    """What the link does to bytes, per direction.

    ``delay_ms`` is one-way (a round trip grows by twice it). ``jitter_ms`` adds a random term per
    chunk drawn from ``jitter_dist``: ``uniform`` in [-j, +j]; ``normal`` with standard deviation j;
    ``pareto`` heavy-tailed and never negative (median about 0.6 j, one chunk in a hundred over
    about 20 j, capped at 50 j). The total delay never goes below zero. ``bandwidth_kbps`` caps each
    direction (kilobits per second, None = unlimited). ``blackhole`` forwards nothing.
    ``jitter_slot_ms`` matters only in the proxy's timeline mode (``fogline.netproxy.timeline``): there
    the jitter is drawn once per time slot of this length instead of once per chunk.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter_dist: str = "uniform"
    bandwidth_kbps: float | None = None
    blackhole: bool = False
    jitter_slot_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.jitter_slot_ms < 0:
            raise ValueError(f"delay_ms, jitter_ms and jitter_slot_ms must be >= 0, got {self.delay_ms}, "
                             f"{self.jitter_ms}, {self.jitter_slot_ms}")
        if self.jitter_dist not in JITTER_DISTS:
            raise ValueError(f"jitter_dist must be one of {', '.join(JITTER_DISTS)}, got {self.jitter_dist!r}")
        if self.bandwidth_kbps is not None and self.bandwidth_kbps <= 0:
            raise ValueError(f"bandwidth_kbps must be > 0 or None, got {self.bandwidth_kbps}")

    def sample_delay_s(self, rng: random.Random) -> float:
        """One chunk's one-way delay in seconds: the base delay plus a jitter draw, never negative."""
        extra = 0.0
        j = self.jitter_ms
        if j > 0:
            if self.jitter_dist == "uniform":
                extra = rng.uniform(-j, j)
            elif self.jitter_dist == "normal":
                extra = rng.gauss(0.0, j)
            else:  # pareto, shape 1.5: heavy tail, mean 2 j
                extra = min(j * (rng.paretovariate(1.5) - 1.0), 50.0 * j)
        return max(0.0, self.delay_ms + extra) / 1000.0

    @property
    def max_delay_ms(self) -> float:
        """The largest one-way delay timeline mode draws (``normal`` is clamped at 6 j there)."""
        bound = {"uniform": 1.0, "normal": 6.0, "pareto": 50.0}[self.jitter_dist] * self.jitter_ms
        return self.delay_ms + bound

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TokenBucket:
    """A bandwidth cap: ``rate`` bytes per second with a small burst allowance.

    ``take(n)`` reserves n bytes at once (the balance may go negative) and sleeps until the balance
    has been paid back, so concurrent takers share the rate fairly and each keeps its order.
    """

    def __init__(self, rate_bytes_s: float, burst_bytes: float | None = None) -> None:
        self.rate = float(rate_bytes_s)
        self.burst = float(burst_bytes if burst_bytes is not None else max(4096.0, self.rate * 0.02))
        self._tokens = self.burst
        self._stamp: float | None = None

    async def take(self, n: int) -> None:
        now = asyncio.get_running_loop().time()
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= n
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)


def _rst_close(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP RST instead of a FIN (SO_LINGER on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One proxied TCP connection: a client side, a target side and the two pipes between them."""

    def __init__(self, proxy: NetProxy, cr: asyncio.StreamReader, cw: asyncio.StreamWriter,
                 tr: asyncio.StreamReader, tw: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client_w, self.target_w = cw, tw
        self.lost_bytes = 0
        self.closed = False
        self._tasks = [
            asyncio.create_task(self._pipe(cr, tw, "up")),
            asyncio.create_task(self._pipe(tr, cw, "down")),
        ]

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.close(rst=False)

    def close(self, *, rst: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.client_w, self.target_w):
            if rst:
                _rst_close(w)
            else:
                w.close()
        for t in self._tasks:
            t.cancel()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        """Move bytes one way: read and stamp (producer), then deliver at the due time (consumer)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)
        loop = asyncio.get_running_loop()
        stats = self.proxy.stats[direction]

        async def produce() -> None:
            last_due = 0.0
            while True:
                data = await reader.read(_READ_CHUNK)
                cond = self.proxy.conditions
                if cond.blackhole:
                    self.lost_bytes += len(data) or 1  # a lost FIN is a hole too
                    stats["dropped_bytes"] += len(data)
                    if not data:
                        return
                    continue
                last_due = max(last_due, self.proxy.due_time(direction, loop.time(), cond))
                await queue.put((last_due, data))
                if not data:
                    return

        async def consume() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.proxy.conditions.blackhole:  # in flight when the link died
                    self.lost_bytes += len(data) or 1
                    stats["dropped_bytes"] += len(data)
                    if not data:
                        return
                    continue
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                bucket = self.proxy.bucket(direction)
                step = _SHAPED_PIECE if bucket is not None else len(data)
                for i in range(0, len(data), step):
                    piece = data[i : i + step]
                    if bucket is not None:
                        await bucket.take(len(piece))
                    writer.write(piece)
                    stats["bytes"] += len(piece)
                    await writer.drain()

        producer = asyncio.create_task(produce())
        consumer = asyncio.create_task(consume())
        try:
            done, _ = await asyncio.wait({producer, consumer}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await asyncio.gather(producer, consumer)
        except (ConnectionError, OSError) as exc:
            # One side failed (reset, broken pipe): the other side learns the same way, with a RST.
            log.debug("netproxy %s pipe failed: %r; resetting the connection", direction, exc)
            self.close(rst=True)
        finally:
            producer.cancel()
            consumer.cancel()


class NetProxy:
    """An asyncio TCP proxy that applies ``NetConditions`` between a client and one target.

    Methods other than ``start``/``stop`` are synchronous and must be called on the proxy's event
    loop (use ``BackgroundNetProxy`` from other threads).
    """

    def __init__(self, listen_host: str = "127.0.0.1", listen_port: int = 0, *, target_host: str,
                 target_port: int, seed: int | None = None, timeline: bool = False) -> None:
        self.listen_host, self.listen_port = listen_host, listen_port
        self.target_host, self.target_port = target_host, target_port
        self.conditions = NetConditions()
        self.rng = random.Random(seed)
        #: Timeline mode: delays are D(t) of ``fogline.netproxy.timeline`` (per time, not per chunk).
        self.timeline: LinkTimeline | None = LinkTimeline(seed or 0) if timeline else None
        #: When the current conditions were applied (``loop.time()`` = ``time.monotonic()``).
        self.applied_at = time.monotonic()
        self.stats: dict[str, dict[str, int]] = {
            d: {"bytes": 0, "dropped_bytes": 0} for d in ("up", "down")
        }
        self.connections_total = 0
        self._conns: set[_Connection] = set()
        self._buckets: dict[str, TokenBucket | None] = {"up": None, "down": None}
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port the proxy listens on (the real one when ``listen_port`` was 0)."""
        if self._server is None:
            raise RuntimeError("NetProxy.port: the proxy is not started")
        return self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.listen_port)
        log.info("netproxy listening on %s -> %s:%d", self.address, self.target_host, self.target_port)

    async def stop(self) -> None:
        """Stop listening and end every open connection (with a RST: the link is gone)."""
        if self._server is not None:
            self._server.close()
            self.reset_connections()  # each handler then finishes on its own
            if self._handlers:
                _, pending = await asyncio.wait(set(self._handlers), timeout=2.0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> NetProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def set_conditions(self, delay_ms: float = 0, jitter_ms: float = 0, bandwidth_kbps: float | None = None,
                       blackhole: bool = False, jitter_dist: str = "uniform",
                       jitter_slot_ms: float = 0) -> NetConditions:
        """Replace the conditions (arguments left out go back to a clean link) and return them."""
        return self.apply(NetConditions(float(delay_ms), float(jitter_ms), jitter_dist,
                                        None if bandwidth_kbps is None else float(bandwidth_kbps),
                                        bool(blackhole), float(jitter_slot_ms)))

    def update_conditions(self, **changes: Any) -> NetConditions:
        """Change only the named fields, e.g. ``update_conditions(blackhole=True)`` keeps the delay."""
        return self.apply(dataclasses.replace(self.conditions, **changes))

    def apply(self, new: NetConditions) -> NetConditions:
        now = time.monotonic()  # the clock of asyncio's loop.time(), shared by every process
        if self.timeline is not None:
            self.timeline.apply(now, new)  # raises before anything changed if ``new`` does not fit
        old, self.conditions = self.conditions, new
        self.applied_at = now
        if new.bandwidth_kbps != old.bandwidth_kbps:
            rate = None if new.bandwidth_kbps is None else new.bandwidth_kbps * 1000.0 / 8.0
            self._buckets = {d: None if rate is None else TokenBucket(rate) for d in ("up", "down")}
        if old.blackhole and not new.blackhole:
            holed = [c for c in self._conns if c.lost_bytes]
            for conn in holed:
                conn.close(rst=True)
            if holed:
                log.info("netproxy: blackhole lifted, reset %d connection(s) that lost bytes", len(holed))
        log.info("netproxy conditions: %s", new)
        return new

    def bucket(self, direction: str) -> TokenBucket | None:
        return self._buckets[direction]

    def due_time(self, direction: str, now: float, conditions: NetConditions) -> float:
        """When bytes read at ``now`` are due on the other side: a per-chunk draw, or D(t) in
        timeline mode (``now`` is ``loop.time()``, the clock the timeline runs on)."""
        if self.timeline is not None:
            return self.timeline.arrival_s(direction, now)
        return now + conditions.sample_delay_s(self.rng)

    def reset_connections(self) -> int:
        """Abort every open connection on both sides with a TCP RST; return how many there were."""
        conns = list(self._conns)
        for conn in conns:
            conn.close(rst=True)
        return len(conns)

    def describe(self) -> dict[str, Any]:
        """Conditions and counters, JSON-ready (what the control port's ``status`` prints)."""
        return {"listen": self.address, "target": f"{self.target_host}:{self.target_port}",
                "conditions": self.conditions.as_dict(), "applied_at": self.applied_at,
                "timeline": self.timeline is not None, "open_connections": self.open_connections,
                "connections_total": self.connections_total, "stats": self.stats}

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            try:
                tr, tw = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError as exc:
                log.info("netproxy: target %s:%d unreachable (%s); resetting client",
                         self.target_host, self.target_port, exc)
                _rst_close(cw)
                return
            for w in (cw, tw):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, cr, cw, tr, tw)
            self._conns.add(conn)
            self.connections_total += 1
            try:
                await conn.wait()
            finally:
                self._conns.discard(conn)
        except asyncio.CancelledError:
            # Only stop() cancels a handler. End quietly: asyncio (3.11) reports a cancelled
            # client_connected_cb task as an "unhandled exception".
            _rst_close(cw)
        finally:
            self._handlers.discard(task)


class BackgroundNetProxy:
    """A ``NetProxy`` on its own event loop in a daemon thread, for synchronous code.

    ``with BackgroundNetProxy(target_host=..., target_port=...) as proxy: proxy.set_conditions(...)``;
    every method waits until the proxy's loop has applied it.
    """

    def __init__(self, listen_host: str = "127.0.0.1", listen_port: int = 0, *, target_host: str,
                 target_port: int, seed: int | None = None, timeline: bool = False) -> None:
        self._args = dict(listen_host=listen_host, listen_port=listen_port, target_host=target_host,
                          target_port=target_port, seed=seed, timeline=timeline)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.proxy: NetProxy | None = None

    def start(self) -> BackgroundNetProxy:
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="netproxy", daemon=True)
        self._thread.start()
        self.proxy = self._call_async(self._make)
        return self

    async def _make(self) -> NetProxy:
        proxy = NetProxy(**self._args)  # type: ignore[arg-type]
        await proxy.start()
        return proxy

    def _call_async(self, fn: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def wrapper() -> Any:
            return fn(*args, **kwargs)

        return self._call_async(wrapper)

    @property
    def port(self) -> int:
        assert self.proxy is not None, "BackgroundNetProxy is not started"
        return self.proxy.port

    @property
    def address(self) -> str:
        assert self.proxy is not None, "BackgroundNetProxy is not started"
        return self.proxy.address

    def set_conditions(self, **kwargs: Any) -> NetConditions:
        return self._call(self.proxy.set_conditions, **kwargs)  # type: ignore[union-attr]

    def update_conditions(self, **kwargs: Any) -> NetConditions:
        return self._call(self.proxy.update_conditions, **kwargs)  # type: ignore[union-attr]

    def reset_connections(self) -> int:
        return self._call(self.proxy.reset_connections)  # type: ignore[union-attr]

    def describe(self) -> dict[str, Any]:
        return self._call(self.proxy.describe)  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None:
            return
        if self.proxy is not None:
            self._call_async(self.proxy.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> BackgroundNetProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None, prog: str = "python -m fogline.netproxy.proxy") -> int:
    from fogline.netproxy.control import main as control_main

    return control_main(argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
