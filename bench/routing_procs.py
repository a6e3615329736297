"""The systems under test as separate processes: cloud, network proxy and agent, started by their CLIs.

Each runs in its own Python process (``python -m fogline.cli cloud serve ...``, ``python -m
fogline.netproxy.proxy ...``, ``python -m fogline.cli agent run ...``), exactly as a user starts them, so the
benchmark's own event loop never shares an interpreter with what it measures. Every server is bound
to port 0 and announces its address on its first stdout line, which ``Proc.wait_for`` parses.

The proxy is changed while it runs through its control port (``ProxyControl``), one JSON reply per
command. ``write_fleet`` writes the per-run fleet file that sets the routing policy of the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fogline.demo.loopback import stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVICE_ID = "bench-device"


class StartError(RuntimeError):
    """A process exited or stayed silent instead of announcing its address."""


class Proc:
    """A child process whose stdout is read line by line in a thread; stderr goes to a temp file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self._stderr = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 (closed in stop())
        self.lines: list[str] = []
        self._cond = threading.Condition()
        child_env = dict(os.environ)
        paths = [str(REPO_ROOT), child_env.get("PYTHONPATH", "")]  # bench/ lives in the checkout
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        child_env.setdefault("OMP_NUM_THREADS", "1")
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.update(env or {})
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL,
            env=child_env, cwd=str(REPO_ROOT),
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def stderr_tail(self, lines: int = 5) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first stdout line matching ``pattern``; ``StartError`` if the process exits or times out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                if self.popen.poll() is not None and not self._reader.is_alive():
                    why = self.stderr_tail(3) or (self.lines[-1] if self.lines else "no output")
                    raise StartError(f"{self.name} exited with code {self.popen.returncode}: {why}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StartError(f"{self.name} did not announce its address within {timeout_s:g} s")
                self._cond.wait(min(left, 0.2))

    @classmethod
    def start(cls, name: str, argv: list[str], announcement: str, timeout_s: float) -> tuple[Proc, re.Match[str]]:
        """Start ``argv`` and wait for its ``announcement`` line (a regex); stopped again if it never comes."""
        proc = cls(name, argv)
        try:
            return proc, proc.wait_for(announcement, timeout_s)
        except StartError:
            proc.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (the drain path), then SIGKILL after ``timeout_s``; returns the exit code."""
        stop_process(self.popen, timeout_s, kill_wait_s=5)
        self._reader.join(2)
        self._stderr.close()
        return self.popen.returncode


_ADDRESS = r"(\d+\.\d+\.\d+\.\d+):(\d+)"


def start_cloud(models_dir: Path, *, torch_threads: int = 1, timeout_s: float = 120.0) -> tuple[Proc, int]:
    argv = [sys.executable, "-m", "fogline.cli", "cloud", "serve", "--listen", "127.0.0.1:0",
            "--models", str(models_dir), "--device", "cpu", "--metrics-port", "off",
            "--torch-threads", str(torch_threads)]
    proc, match = Proc.start("cloud", argv, rf"serving .* on {_ADDRESS}", timeout_s)
    return proc, int(match.group(2))


def start_proxy(target_port: int, *, seed: int, timeline: bool = True,
                timeout_s: float = 30.0) -> tuple[Proc, int, int]:
    """The network proxy in front of the cloud; returns the process, its port and its control port.

    ``timeline`` (the benchmark's choice): delays are the deterministic D(t) of
    ``fogline.netproxy.timeline``, so the oracle can recompute them exactly."""
    argv = [sys.executable, "-m", "fogline.netproxy.proxy", "--listen", "127.0.0.1:0", "--target",
            f"127.0.0.1:{target_port}", "--control", "127.0.0.1:0", "--seed", str(seed)]
    if timeline:
        argv.append("--timeline")
    proc, match = Proc.start("netproxy", argv, rf"listening on {_ADDRESS} .*control on {_ADDRESS}", timeout_s)
    return proc, int(match.group(2)), int(match.group(4))


def fleet_file(path: Path, *, models: list[str], routing: Mapping[str, Any], cloud: Mapping[str, Any] | None = None,
               defaults: Mapping[str, Any] | None = None, device: str = DEVICE_ID) -> Path:
    """Write the one-device fleet file the benchmarks start agents with (``device``, listening on a
    port of its own, quiet logs, no metrics endpoint) and return ``path``; ``defaults`` adds keys."""
    fleet: dict[str, Any] = {"version": 1}
    if cloud is not None:
        fleet["cloud"] = dict(cloud)
    fleet["defaults"] = {"listen": "127.0.0.1:0", "models": list(models), "routing": dict(routing),
                         "logging": {"level": "WARNING", "format": "text"}, "metrics": {"port": 0},
                         **(defaults or {})}
    fleet["devices"] = {device: {}}
    path.write_text(yaml.safe_dump(fleet, sort_keys=False), encoding="utf-8")
    return path


def cloud_answers(metrics_port: int) -> dict[str, float]:
    """Requests a ``fogline cloud serve`` answered so far, per model (its ``nv_inference_request_success``
    counter, from its ``/metrics``); ``OSError`` when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nv_inference_request_success_total":
                model = sample.labels.get("model", "")
                out[model] = out.get(model, 0.0) + sample.value
    return out


def write_fleet(directory: Path, policy: str, *, cloud_port: int, slo_ms: float,
                routing_extra: Mapping[str, Any] | None = None) -> Path:
    """A one-device fleet file for this run: the device's routing policy is what the run measures."""
    routing: dict[str, Any] = {"policy": policy, "slo_ms": int(slo_ms), "rtt_threshold_ms": 150,
                               "rtt_recover_ms": 100}
    routing.update(routing_extra or {})
    return fleet_file(directory / f"fleet-{policy}.yaml", models=["minilm", "digits"], routing=routing,
                      cloud={"endpoint": f"127.0.0.1:{cloud_port}"})


def start_agent(fleet: Path, *, cloud_port: int, models_dir: Path, timeout_s: float = 90.0) -> tuple[Proc, int]:
    """``fogline agent run`` for the fleet's device, pointed at ``cloud_port`` (the proxy)."""
    argv = [sys.executable, "-m", "fogline.cli", "agent", "run", "--config", str(fleet), "--device",
            DEVICE_ID, "--listen", "127.0.0.1:0", "--cloud", f"127.0.0.1:{cloud_port}",
            "--models", str(models_dir), "--grace-s", "5"]
    proc, match = Proc.start("agent", argv, rf"serving .* on {_ADDRESS}", timeout_s)
    return proc, int(match.group(2))


class ProxyControl:
    """A persistent connection to the proxy's control port (``fogline.netproxy.control`` protocol)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def command(self, line: str) -> dict[str, Any]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        self._writer.write(line.encode() + b"\n")
        await self._writer.drain()
        reply = json.loads(await asyncio.wait_for(self._reader.readline(), 5.0))
        if "error" in reply:
            raise RuntimeError(f"netproxy control: {reply['error']}")
        return reply

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            self._writer = None


def conditions_command(conditions: Any) -> str:
    """The control-port ``set`` command for a ``NetConditions``."""
    bw = "none" if conditions.bandwidth_kbps is None else f"{conditions.bandwidth_kbps:g}"
    return (f"set delay_ms={conditions.delay_ms:g} jitter_ms={conditions.jitter_ms:g} "
            f"jitter_dist={conditions.jitter_dist} bandwidth_kbps={bw} "
            f"blackhole={'on' if conditions.blackhole else 'off'} jitter_slot_ms={conditions.jitter_slot_ms:g}")
