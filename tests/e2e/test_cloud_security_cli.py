"""``fogline cloud token new`` and ``fogline cloud serve`` with TLS and tokens, reloaded by SIGHUP."""

from __future__ import annotations

import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.models, pytest.mark.slow]


def fogline(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "fogline"
    return [*([str(exe)] if exe.exists() else [sys.executable, "-m", "fogline.cli"]), *args]


def token_new(tokens: Path, device: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        fogline("cloud", "token", "new", device, "--tokens-file", str(tokens), *extra),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_token_new_prints_once_hashes_to_a_private_file_and_refuses_a_duplicate(tmp_path):
    tokens = tmp_path / "tokens"
    done = token_new(tokens, "cam-001")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert len(token) >= 43 and token not in tokens.read_text()
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    again = token_new(tokens, "cam-001")
    assert again.returncode == 2 and "--replace" in again.stderr and not again.stdout
    assert token_new(tokens, "cam-001", "--replace").returncode == 0
    assert len(tokens.read_text().splitlines()) == 1


def test_serve_with_tls_and_tokens_reloads_on_sighup(tmp_path, model_repo):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    tokens = tmp_path / "tokens"
    first = token_new(tokens, "cam-001").stdout.strip()
    second = token_new(tokens, "cam-002").stdout.strip()
    proc = subprocess.Popen(
        fogline("cloud", "serve", "--listen", "127.0.0.1:0", "--models", str(model_repo), "--device", "cpu",
                "--metrics-port", "off", "--torch-threads", "1", "--tls-cert", str(tmp_path / "server.pem"),
                "--tls-key", str(tmp_path / "server.key"), "--tokens-file", str(tokens)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.rstrip()) for x in proc.stdout], daemon=True).start()

    def wait_for(fragment: str) -> str:
        end = time.monotonic() + 90
        while time.monotonic() < end:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert proc.poll() is None, proc.stderr.read()
                continue
            if fragment in line:
                return line
        raise AssertionError(f"no line with {fragment!r}")

    try:
        line = wait_for("serving")
        assert "TLS, tokens for 2 devices" in line
        port = int(line.split(" on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca.cert_pem.bytes()))
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def live(token: str):
            return stub.ServerLive(
                pb.ServerLiveRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )

        assert live(first).live and live(second).live
        tokens.write_text(
            "".join(x for x in tokens.read_text().splitlines(True) if not x.startswith("cam-002"))
        )
        proc.send_signal(signal.SIGHUP)
        wait_for("SIGHUP, reloaded")
        with pytest.raises(grpc.RpcError) as err:
            live(second)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert live(first).live
        tokens.write_text("not a tokens line\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert live(first).live  # the last good set stays
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "tokens not reloaded" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
