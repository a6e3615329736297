"""sd_notify messages arrive on a unix datagram socket the test listens on, like systemd's."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid

import pytest

from fogline.agent.sdnotify import Notifier, Watchdog, watchdog_interval_s

pytestmark = pytest.mark.integration


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_reloading_stopping_reach_the_socket(listener):
    path, sock = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving 2 models\non :8500")
    assert _recv(sock) == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "serving 2 models on :8500"}
    assert notifier.reloading("reloading fleet.yaml")
    msg = _recv(sock)
    assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) > 0
    assert notifier.status("rtt 12 ms")
    assert _recv(sock) == {"STATUS": "rtt 12 ms"}
    assert notifier.stopping()
    assert _recv(sock) == {"STOPPING": "1"}
    with pytest.raises(ValueError):
        notifier.notify("no equals sign")
    notifier.close()


def test_abstract_socket_address():
    name = f"fogline-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        assert Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_not_under_systemd_everything_is_a_no_op(tmp_path):
    notifier = Notifier.from_environment({})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "relative/path"}).enabled
    # a socket that went away is logged, never raised
    assert not Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready()


def test_watchdog_interval_reads_usec_and_respects_pid():
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000"}) == 4.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "2"}, pid=2) == 4.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_pings_at_half_the_timeout_and_stops_when_unhealthy(listener):
    path, sock = listener
    sock.setblocking(False)

    async def body() -> tuple[int, int]:
        healthy = {"ok": True}
        dog = Watchdog(Notifier(path), timeout_s=0.2, healthy=lambda: healthy["ok"])
        assert dog.interval_s == pytest.approx(0.1)
        dog.start()
        began = asyncio.get_running_loop().time()
        while dog.pings < 3:  # pings at 0, .1, .2: however slowly the machine gets there
            await asyncio.sleep(0.01)
        elapsed = asyncio.get_running_loop().time() - began
        assert elapsed >= 0.19, f"3 pings after {elapsed:.3f} s: more often than every 0.1 s"
        first = dog.pings
        healthy["ok"] = False
        await asyncio.sleep(0.35)
        second = dog.pings
        await dog.stop()
        return first, second

    first, second = asyncio.run(asyncio.wait_for(body(), 10))
    assert first >= 3, first
    assert second - first <= 1  # at most one ping raced the flip
    received = 0
    while True:
        try:
            assert sock.recv(100) == b"WATCHDOG=1"
            received += 1
        except BlockingIOError:
            break
    assert received == second


def test_watchdog_without_systemd_starts_nothing():
    async def body():
        dog = Watchdog(Notifier(None), timeout_s=1.0)
        assert dog.interval_s is None and dog.start() is None
        await dog.stop()

    asyncio.run(body())


def test_a_child_process_reaches_the_socket_from_its_environment(listener, repo_root):
    """What systemd does: the variable in the environment, the service a separate process."""
    path, sock = listener
    code = "from fogline.agent.sdnotify import Notifier; Notifier.from_environment().ready('up')"
    env = {**os.environ, "NOTIFY_SOCKET": path}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert _recv(sock) == {"READY": "1", "MAINPID": str(proc.pid), "STATUS": "up"}
