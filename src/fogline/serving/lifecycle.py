"""Running a server until a signal: SIGTERM/SIGINT drain it, SIGHUP reloads.

``run_until_signal(server, grace=...)`` blocks until the server has stopped. It takes the signals
first, then calls ``on_ready()`` (print the "serving" line, tell systemd READY=1), so a signal that
follows the announcement always finds its handler:

- SIGTERM or SIGINT (the first one; later ones are ignored): ``on_stop(signal name)`` runs first (a
  line for the operator; the agent's ``sd_notify`` STOPPING=1), then ``server.stop(grace)`` drains:
  no new work, everything in flight answered within ``grace`` seconds, then the server stops.
- SIGHUP: ``on_reload()`` (may be a coroutine function: it then runs as a task). A SIGHUP while the
  server stops, or while the previous reload still runs, is ignored with a log line.

The server is anything with ``async stop(grace)`` and ``async wait_for_termination()``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    async def stop(self, grace: float) -> None: ...

    async def wait_for_termination(self) -> None: ...


async def run_until_signal(server: Stoppable, *, grace: float, on_ready: Callable[[], None] | None = None,
                           on_stop: Callable[[str], None] | None = None,
                           on_reload: Callable[[], Any] | None = None) -> None:
    """Serve until SIGTERM/SIGINT has drained ``server``; SIGHUP calls ``on_reload`` (see the module)."""
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    reloads: list[asyncio.Task[Any]] = []

    def stop(signum: int) -> None:
        if stopping:
            return
        if on_stop is not None:
            on_stop(signal.Signals(signum).name)
        stopping.append(loop.create_task(server.stop(grace), name="drain"))

    def reload() -> None:
        if stopping or any(not task.done() for task in reloads):
            log.warning("SIGHUP ignored (%s)", "stopping" if stopping else "a reload is running")
            return
        if on_reload is None:
            return
        result = on_reload()
        if inspect.isawaitable(result):
            reloads[:] = [loop.create_task(result, name="reload")]

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        if on_ready is not None:
            on_ready()
        await server.wait_for_termination()
        if stopping:
            await stopping[0]
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        for task in reloads:
            task.cancel()
