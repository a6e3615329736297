"""Fixtures shared by every test folder.

``model_repo`` builds the reference models once per machine into ``.cache/test-models`` (or
``$FOGLINE_TEST_MODELS``) and reuses them while their hashes still verify; building is
deterministic, so a cached build is the same as a fresh one.

The rest keeps tests independent of how fast or busy the machine is:

- ``cloud``: one ``fogline cloud serve`` child process for the whole session (it binds port 0 and
  reports the port it got), shared by every test that only needs "a real cloud".
- ``free_port`` / ``free_ports``: for the few places that must hand a port *number* to another program
  (MLServer's settings, the agent's metrics endpoint); everything else binds port 0 and reads back the
  port it really got.
- ``until``: wait for a condition (polling, generous timeout) instead of sleeping a fixed time and
  hoping the other side got there; ``async_until`` is the same inside an event loop.
- ``fake_clock``: a clock that moves only when the test moves it, for code that takes ``clock=``.
- ``scrape_metrics``: a Prometheus endpoint's samples, parsed by prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

#: How long a condition may take to come true before a test gives up. Far above what any condition
#: needs on an idle machine: a busy one only makes the wait longer, never the outcome different.
GENEROUS_S = 30.0


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def model_repo() -> Path:
    """A model repository (``DIR/<name>/<version>/``) holding minilm and digits, built if needed."""
    from fogline.modelbuild.build import ensure_models

    root = Path(os.environ.get("FOGLINE_TEST_MODELS", REPO_ROOT / ".cache" / "test-models"))
    ensure_models(root)
    return root


@pytest.fixture(scope="session")
def cloud(model_repo):
    """A ``fogline cloud serve`` child process on a loopback port it picked itself (``cloud.port``).

    Shared by the whole session; a test that kills or reconfigures its cloud starts its own
    ``CloudProcess`` instead."""
    from fogline.demo.loopback import CloudProcess

    with CloudProcess(model_repo) as proc:
        yield proc


def _pick_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (all held open together while picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="session")
def free_ports() -> Callable[[int], list[int]]:
    """``free_ports(n)``: port numbers for a program that cannot bind port 0 and report back.

    Another process may take such a port before the program binds it; callers that can, retry with
    fresh ports when the bind fails (see the MLServer fixture)."""
    return _pick_ports


@pytest.fixture
def free_port() -> int:
    """One port number, for a program that cannot bind port 0 and report back (see ``free_ports``)."""
    return _pick_ports(1)[0]


def _check(condition: Callable[[], object], deadline: float, timeout_s: float, what: str) -> object:
    """``condition()``'s value; an ``AssertionError`` once it is still false past ``deadline``."""
    value = condition()
    if not value and time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what or condition}")
    return value


def _wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := _check(condition, deadline, timeout_s, what)):
        time.sleep(0.005)
    return value


async def _async_wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := _check(condition, deadline, timeout_s, what)):
        await asyncio.sleep(0.001)
    return value


@pytest.fixture
def until():
    """``until(condition, timeout_s=30, what="")``: poll ``condition()`` until it is true; returns it."""

    def until(condition: Callable[[], object], timeout_s: float = GENEROUS_S, what: str = "") -> object:
        return _wait_until(condition, timeout_s, what)

    return until


@pytest.fixture
def async_until():
    """``await async_until(condition, timeout_s=30, what="")``: ``until`` for code on an event loop (the
    loop keeps running other tasks while it waits)."""

    async def async_until(condition: Callable[[], object], timeout_s: float = GENEROUS_S, what: str = "") -> object:
        return await _async_wait_until(condition, timeout_s, what)

    return async_until


class FakeClock:
    """A monotonic clock (seconds) that moves only by ``advance``; safe to read from any thread."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock does not go back"
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def scrape_metrics():
    """``scrape_metrics(port)`` -> ``{(sample name, sorted label items): value}`` from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    def scrape(port: int, host: str = "127.0.0.1") -> dict:
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    return scrape
