"""Tell systemd how the agent is doing: the ``sd_notify`` protocol, with no dependency on libsystemd.

Under a unit with ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` (a unix datagram socket path, or an
abstract one written ``@name``) and waits for ``READY=1`` before it calls the service started. With
``WatchdogSec=`` it also sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and restarts the service when
no ``WATCHDOG=1`` arrives within that time. Each message is one datagram of ``KEY=VALUE`` lines.

    notifier = Notifier.from_environment()     # a no-op object when not started by systemd
    notifier.ready("serving 2 models on 127.0.0.1:8500")
    dog = Watchdog(notifier, healthy=lambda: loop_is_responsive)   # pings at half WATCHDOG_USEC
    dog.start()                                # an asyncio task; does nothing without a watchdog
    ...
    notifier.reloading(); ...; notifier.ready()   # around a SIGHUP reload
    notifier.stopping(); await dog.stop()

Nothing here raises because systemd is absent or gone: a daemon must not crash over its status line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from fogline.agent.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def _socket_address(raw: str | None) -> str | bytes | None:
    """``NOTIFY_SOCKET`` as an address ``socket.sendto`` accepts (abstract ``@x`` -> ``b"\\0x"``)."""
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    log.warning("sdnotify: ignoring NOTIFY_SOCKET=%r (neither a path nor an abstract @name)", raw)
    return None


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd asked for, in seconds, or None when there is none for us.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for; any other process
    (a child, a test runner) must not ping.
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("sdnotify: ignoring WATCHDOG_USEC=%r (not an integer)", raw)
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Sends sd_notify messages; every method is a cheap no-op when ``enabled`` is False."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(_socket_address(env.get("NOTIFY_SOCKET")))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"KEY=VALUE"`` each) in one datagram; True when it was sent."""
        if self.address is None or not fields:
            return False
        for field in fields:
            if "=" not in field or "\n" in field:
                raise ValueError(f"sd_notify field must be one KEY=VALUE line, got {field!r}")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            log.warning("sdnotify: could not send %s: %s", fields[0], exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        """The service is up and serving (``READY=1``), with the main PID and an optional status line."""
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def reloading(self, status: str | None = None) -> bool:
        """A reload started (``RELOADING=1``); send ``ready()`` when it is done. Needed for
        ``Type=notify-reload`` and shown by ``systemctl status`` otherwise."""
        fields = ["RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began (``STOPPING=1``): systemd stops expecting watchdog pings."""
        fields = ["STOPPING=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        """A free-form status line for ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """One keep-alive ping (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class Watchdog:
    """Pings systemd's watchdog at half of ``WATCHDOG_USEC`` from an asyncio task.

    The ping runs on the event loop, so a wedged loop stops pinging and systemd restarts the agent,
    which is the point. ``healthy`` (optional) is asked before each ping; returning False skips the
    ping (for example when the server stopped accepting work), and the restart follows.
    """

    def __init__(self, notifier: Notifier, *, timeout_s: float | None = None,
                 healthy: Callable[[], bool] | None = None) -> None:
        self.notifier = notifier
        self.timeout_s = watchdog_interval_s() if timeout_s is None else timeout_s
        self.healthy = healthy
        self.pings = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def interval_s(self) -> float | None:
        """Seconds between pings (half the timeout), or None when no watchdog is wanted."""
        if not self.notifier.enabled or not self.timeout_s:
            return None
        return self.timeout_s / 2

    def start(self) -> asyncio.Task[None] | None:
        """Start pinging (from inside a running loop); returns the task, or None when not needed."""
        if self.interval_s is None or self._task is not None:
            return self._task
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sd-watchdog")
        log.info("sdnotify: watchdog enabled, pinging every %.3g s", self.interval_s)
        return self._task

    async def _run(self) -> None:
        interval = self.interval_s
        assert interval is not None
        while True:
            ok = True
            if self.healthy is not None:
                try:
                    ok = bool(self.healthy())
                except Exception:
                    log.exception("sdnotify: health check raised; skipping the watchdog ping")
                    ok = False
            if ok and self.notifier.watchdog():
                self.pings += 1
            elif not ok:
                log.warning("sdnotify: unhealthy, watchdog ping skipped")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
