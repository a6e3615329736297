"""``fogline`` commands run as child processes, as a user runs them, for the e2e tests.

``Child`` starts ``python -m fogline.cli ARGS`` with both pipes read by threads (``Lines``), so the child
never blocks on a full pipe and a test waits for the line it expects instead of sleeping;
``start_agent`` is ``fogline agent run`` up to its ``serving ... on HOST:PORT`` line.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fogline.demo.loopback import stop_process

REPO = Path(__file__).resolve().parents[2]
SERVING = r"serving .* on [^ ]+:(\d+)"


class Lines:
    """Every line of a child's pipe (without its newline), read by a thread."""

    def __init__(self, pipe) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe) -> None:
        for line in pipe:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next_matching(self, test: Callable[[str], object], timeout_s: float = 90.0) -> str:
        """The next line for which ``test`` is true; fails once the pipe closes or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:  # the pipe closed: the child exited
                break
            if test(line):
                return line
        raise AssertionError("no matching line; saw:\n" + "\n".join(self.lines))

    def wait_for(self, pattern: str, timeout_s: float = 90.0) -> re.Match[str]:
        """The match of the next line that matches ``pattern`` (``re.search``)."""
        regex = re.compile(pattern)
        match = regex.search(self.next_matching(regex.search, timeout_s))
        assert match is not None
        return match

    def text(self, timeout_s: float = 30.0) -> str:
        """All of it, once the pipe has closed (the child exited)."""
        self._thread.join(timeout_s)
        return "\n".join(self.lines)


class Child:
    """``python -m fogline.cli *args`` in the checkout; killed on leaving a ``with`` block if still running."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fogline.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        self.out, self.err = Lines(self.proc.stdout), Lines(self.proc.stderr)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, as systemd stops it (SIGKILL if it has not exited after ``timeout_s``)."""
        return stop_process(self.proc, timeout_s)

    def kill(self) -> None:
        """SIGKILL, if it is still running: what a test that failed half-way leaves behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def start_agent(*args: str, env: dict[str, str], timeout_s: float = 90.0) -> tuple[Child, int]:
    """``fogline agent run *args``, once it serves; returns it and the port it serves on."""
    agent = Child("agent", "run", *args, env=env)
    try:
        port = int(agent.out.wait_for(SERVING, timeout_s).group(1))
    except AssertionError as exc:
        agent.kill()
        raise AssertionError(f"agent did not start: {agent.err.text()}") from exc
    return agent, port
