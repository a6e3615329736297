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

_SERVING = re.compile(r"serving .* on (?P<host>[^ ]+):(?P<port>\d+)")


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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(2)
        return self.proc.returncode

    def __enter__(self) -> CloudProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
