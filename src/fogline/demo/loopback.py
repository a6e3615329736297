"""Running a whole fogline setup on one machine: a cloud process, a network proxy and an agent.

The demo and the integration tests both need "a real cloud over a real (shaped) network"; this module
is that setup, once. ``CloudProcess`` starts ``fogline cloud serve`` in a child process (so torch stays
out of the agent's process) and reads the port it bound from its first line of output.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

_SERVING = re.compile(r"serving .* on (?P<host>[^ ]+):(?P<port>\d+)")


def stop_process(proc: subprocess.Popen, timeout_s: float = 15.0, kill_wait_s: float = 10.0) -> int | None:
    """SIGTERM (a fogline server's drain path), wait ``timeout_s``, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(kill_wait_s)
    return proc.returncode


class CloudProcess:
    """``fogline cloud serve`` as a child process on a free loopback port."""

    def __init__(self, models_dir: str | Path, *, torch_threads: int = 1, extra: list[str] | None = None,
                 listen: str = "127.0.0.1:0") -> None:
        self.models_dir = Path(models_dir)
        self.torch_threads = torch_threads
        self.extra = list(extra or [])
        self.listen = listen
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.output: deque[str] = deque(maxlen=200)
        self._reader: threading.Thread | None = None

    def start(self, timeout_s: float = 120.0) -> int:
        """Start and wait until it prints where it serves; returns the port."""
        env = dict(os.environ, OMP_NUM_THREADS=str(self.torch_threads), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "fogline.cli", "cloud", "serve", "--listen", self.listen,
               "--models", str(self.models_dir), "--metrics-port", "off",
               "--torch-threads", str(self.torch_threads), "--device", "cpu", *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        found = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
                match = _SERVING.search(line)
                if match and self.port is None:
                    self.port = int(match.group("port"))
                    found.set()

        self._reader = threading.Thread(target=read, daemon=True, name="cloud-output")
        self._reader.start()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not found.is_set():
            if self.proc.poll() is not None:
                break
            found.wait(0.1)
        if self.port is None:
            self.stop()
            tail = "\n".join(list(self.output)[-15:])
            raise RuntimeError(f"the cloud server did not start:\n{tail}")
        return self.port

    def kill(self) -> None:
        """SIGKILL: the cloud dies without a word, as a crashed host would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait for the drain, SIGKILL if it does not finish; returns the exit status."""
        if self.proc is None:
            return None
        stop_process(self.proc, timeout_s)
        if self._reader is not None:
            self._reader.join(2)
        return self.proc.returncode

    def __enter__(self) -> CloudProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def device_config(models: tuple[str, ...] = ("digits", "minilm"), *, policy: str = "latency_aware",
                  slo_ms: int = 100, rtt_threshold_ms: int = 150, rtt_recover_ms: int = 100,
                  probe_interval_ms: int = 200, models_dir: str | Path | None = None,
                  extra_yaml: str = "") -> Any:
    """A one-device fleet built through the real fleet loader (``fogline.fleet``)."""
    from fogline.fleet import parse_fleet

    text = "\n".join([
        "version: 1",
        'cloud: {endpoint: "127.0.0.1:1"}',
        "defaults:",
        '  listen: "127.0.0.1:0"',
        f"  models: [{', '.join(models)}]",
        *([f'  models_dir: "{models_dir}"'] if models_dir else []),
        f"  routing: {{policy: {policy}, slo_ms: {slo_ms}, rtt_threshold_ms: {rtt_threshold_ms}, "
        f"rtt_recover_ms: {rtt_recover_ms}, probe_interval_ms: {probe_interval_ms}}}",
        *([extra_yaml] if extra_yaml else []),
        "devices:",
        "  loopback: {}",
    ])
    return parse_fleet(text, source="<loopback>").device("loopback")


class LoopbackRig:
    """Network proxy + agent in this event loop, in front of a cloud listening on ``cloud_port``.

        async with LoopbackRig(models_dir, cloud_port) as rig:
            rig.proxy.set_conditions(delay_ms=300)
            ... talk to 127.0.0.1:rig.agent_port ...
    """

    def __init__(self, models_dir: str | Path, cloud_port: int, *, config: Any = None, delay_ms: float = 5.0,
                 link_overrides: dict[str, Any] | None = None, edge: Any = None) -> None:
        self.models_dir = Path(models_dir)
        self.cloud_port = cloud_port
        self.config = config if config is not None else device_config()
        self.delay_ms = delay_ms
        self.link_overrides = link_overrides
        self.edge = edge
        self.proxy: Any = None
        self.server: Any = None
        self.agent_port = 0

    async def __aenter__(self) -> LoopbackRig:
        from fogline.agent.server import create_server
        from fogline.netproxy.proxy import NetProxy

        self.proxy = NetProxy("127.0.0.1", 0, target_host="127.0.0.1", target_port=self.cloud_port)
        await self.proxy.start()
        self.proxy.set_conditions(delay_ms=self.delay_ms)
        self.server, self.agent_port = create_server(
            self.config, listen="127.0.0.1:0", cloud=f"127.0.0.1:{self.proxy.port}", models_dir=self.models_dir,
            link_overrides=self.link_overrides, edge=self.edge)
        await self.server.start()
        return self

    async def wait_cloud_usable(self, timeout_s: float = 10.0) -> bool:
        return await self.server.link.wait_usable(timeout_s)

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.stop(2.0)
        if self.proxy is not None:
            await self.proxy.stop()
