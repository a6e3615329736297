"""``python -m fogline.netproxy.proxy`` as an operator runs it: start, change it over the control port, stop."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from fogline.netproxy.control import main as netproxy_main
from fogline.netproxy.control import send_command

pytestmark = pytest.mark.e2e


def _echo_once_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:  # the proxy resets the connection at the end of the test
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, thread


def _rtt_ms(sock: socket.socket) -> float:
    t0 = time.perf_counter()
    sock.sendall(b"p")
    assert sock.recv(1) == b"p"
    return (time.perf_counter() - t0) * 1000


def test_cli_proxy_is_controlled_from_another_process(repo_root):
    srv, thread = _echo_once_server()
    assert thread.is_alive()
    target = srv.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogline.netproxy.proxy", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{target}",
         "--delay-ms", "40", "--control", "127.0.0.1:0"],
        cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+) -> .*control on (127\.0\.0\.1:\d+)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        port, control = int(m.group(1)), m.group(2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert 75 <= min(_rtt_ms(sock) for _ in range(3)) < 400
            assert send_command(control, "update delay_ms=0")["conditions"]["delay_ms"] == 0
            _rtt_ms(sock)
            assert min(_rtt_ms(sock) for _ in range(3)) < 60
            status = send_command(control, "status")
            assert status["open_connections"] == 1 and status["stats"]["up"]["bytes"] >= 7
            # the 'ctl' sub-command prints the JSON reply and exits 0, or 1 on a refused command
            assert netproxy_main(["ctl", control, "reset"]) == 0
            assert netproxy_main(["ctl", control, "update", "delay_ms=-5"]) == 1
            with pytest.raises(ConnectionError):
                sock.sendall(b"p")
                if sock.recv(1) == b"":
                    raise ConnectionResetError
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        srv.close()


def test_cli_usage_errors_exit_2(repo_root):
    proc = subprocess.run([sys.executable, "-m", "fogline.netproxy.proxy", "--listen", "nowhere"], cwd=repo_root,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "HOST:PORT" in proc.stderr
    assert netproxy_main(["ctl", "127.0.0.1:1", "status"]) == 1  # nothing listens there
