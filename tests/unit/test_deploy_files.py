"""The deployment files agree with the code: the units, the image and the manifest start the CLI with
flags it accepts, on the ports the probes and services use, with the hardening the docs promise."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from fogline.cloud.cli import build_parser

pytestmark = pytest.mark.unit


def _unit(path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}} (comments and blank lines skipped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path}: {raw!r} outside a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _cloud_args(argv: list[str]):
    return build_parser("fogline cloud").parse_args(["serve", *argv])


def test_agent_unit_is_a_hardened_notify_service(repo_root):
    svc = _unit(repo_root / "deploy/systemd/fogline-agent.service")["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert re.fullmatch(r"\d+s", one["WatchdogSec"])
    assert one["Restart"] == "on-failure"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert shlex.split(one["ExecStart"])[1:5] == ["agent", "run", "--config", "/etc/fogline/fleet.yaml"]
    for key, value in {"DynamicUser": "yes", "ProtectSystem": "strict", "StateDirectory": "fogline",
                       "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes"}.items():
        assert one[key] == value, key
    assert one["CapabilityBoundingSet"] == ""
    assert "AF_UNIX" in one["RestrictAddressFamilies"]  # sd_notify needs it
    assert "FOGLINE_LOG_FORMAT=json" in svc["Environment"]
    # ProtectSystem=strict leaves /run read-only: the unix-socket listener needs its runtime directory.
    assert one["RuntimeDirectory"] == "fogline"



def test_agent_unit_keeps_the_proc_files_the_agent_reads(repo_root):
    # ProcSubset=pid hides /proc/stat (the CPU load signal) and /proc/cpuinfo (onnxruntime's CPU
    # feature detection); tests/e2e/test_agent_sandbox.py shows what the agent does without them.
    svc = _unit(repo_root / "deploy/systemd/fogline-agent.service")["Service"]
    assert svc.get("ProcSubset", ["all"])[-1] == "all", "ProcSubset=pid hides /proc/stat and /proc/cpuinfo"
    assert svc["ProtectProc"][-1] == "invisible"  # other processes stay hidden: the agent lives with it
    assert svc["Environment"].count("FOGLINE_MODELS=/var/lib/fogline/models") == 1  # the StateDirectory


def _syscall_group(name: str) -> set[str]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            names |= _syscall_group(word) if word.startswith("@") else {word}
    return names


def unit_syscall_allow_list(unit: dict[str, list[str]]) -> set[str]:
    """The system calls a unit's SystemCallFilter= lines allow, applied in order as systemd does (the
    first line is an allow-list here; "~" lines take away, later plain lines give back)."""
    allowed: set[str] = set()
    for value in unit["SystemCallFilter"]:
        deny = value.startswith("~")
        for word in value.lstrip("~").split():
            names = _syscall_group(word) if word.startswith("@") else {word}
            allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_agent_unit_allows_the_system_calls_its_libraries_make(repo_root):
    svc = _unit(repo_root / "deploy/systemd/fogline-agent.service")["Service"]
    assert not svc["SystemCallFilter"][0].startswith("~")
    allowed = unit_syscall_allow_list(svc)
    # seen with strace on every start: numpy's OpenBLAS (mbind), onnxruntime's thread pool (affinity)
    assert {"mbind", "sched_setaffinity", "sched_getaffinity", "mmap", "futex"} <= allowed
    assert not {"mount", "setrlimit", "setpriority", "reboot"} & allowed  # the deny-list still bites
    assert svc["SystemCallErrorNumber"][-1] == "EPERM"

def test_cloud_unit_starts_the_cloud_with_valid_flags(repo_root):
    svc = {k: v[-1] for k, v in _unit(repo_root / "deploy/systemd/fogline-cloud.service")["Service"].items()}
    argv = shlex.split(svc["ExecStart"].replace("$FOGLINE_CLOUD_ARGS", ""))
    assert argv[1:3] == ["cloud", "serve"]
    args = _cloud_args(argv[3:])
    assert args.listen == "0.0.0.0:8001" and args.metrics_port == 8002
    assert svc["DynamicUser"] == "yes" and svc["ProtectSystem"] == "strict"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", ["fogline-agent.service", "fogline-cloud.service"])
def test_systemd_analyze_verify_accepts_the_units(repo_root, tmp_path, name):
    # verify insists that ExecStart exists; point it at /bin/true, keep everything else
    text = (repo_root / "deploy/systemd" / name).read_text().replace("/opt/fogline/bin/fogline", "/bin/true")
    (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_dockerfile_cmd_is_valid_and_torch_is_pinned_to_cpu(repo_root):
    text = (repo_root / "deploy/docker/Dockerfile.cloud").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    entry = yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entry == ["fogline", "cloud", "serve"]
    args = _cloud_args(cmd)
    exposed = set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())
    assert {args.listen.rsplit(":", 1)[1], str(args.metrics_port)} == exposed
    assert re.search(r"^USER \d+$", text, re.M), "the runtime must not run as root"


# The Kubernetes and KServe files: tests/unit/test_k8s_manifests.py
