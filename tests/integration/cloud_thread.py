"""A cloud server run in-process for the cloud tier's integration tests, and what they read from it.

``CloudThread`` runs ``fogline.cloud.server.create_server`` on its own event loop in a daemon thread, so
a test can talk to it with plain synchronous gRPC clients; ``metric`` sums samples of its Prometheus
text; ``run_python`` runs a script in a fresh interpreter (where tritonclient lives apart from
fogline's stubs) and returns what it printed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import urllib.request

from fogline.cloud.server import create_server
from fogline.cloud.settings import ServingSettings


class CloudThread:
    """A cloud server on its own event loop in a daemon thread.

    ``address`` is ``host:port`` (a TLS client names a host its certificate holds); ``stop`` gives the
    calls in flight ``stop_grace_s``."""

    def __init__(self, settings: ServingSettings, models, *, host: str = "127.0.0.1",
                 stop_grace_s: float = 1.0, repo=None) -> None:
        """``models`` (loaded) or, with ``models=None``, the repository ``repo`` (which SIGHUP's
        ``reload_models`` re-reads)."""
        self.loop = asyncio.new_event_loop()
        self._stop_grace_s = stop_grace_s
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)

            async def boot():
                self.server, self.port = create_server(settings, repo, models=models)
                await self.server.start()

            self.loop.run_until_complete(boot())
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert ready.wait(60), "the server did not start"
        self.address = f"{host}:{self.port}"

    def reload(self) -> list[Exception]:
        """What SIGHUP does, run on the server's loop."""

        async def go():
            return self.server.reload()

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def on_loop(self, coroutine):
        """A future (of the caller's event loop) for ``coroutine`` run on the server's loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.read().decode()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(self._stop_grace_s), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


def run_python(script: str, *args: str, stdin: str = "", timeout_s: float = 120) -> str:
    """What ``script`` (dedented) printed, run by this interpreter with ``args``; fails on a non-zero exit."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr
    return done.stdout
