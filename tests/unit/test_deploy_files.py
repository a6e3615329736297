"""The deployment files agree with the code: the units, the image and the manifest start the CLI with
flags it accepts, on the ports the probes and services use, with the hardening the docs promise."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from cloud.cli import build_parser

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


def test_k8s_manifest_is_consistent(repo_root):
    docs = {d["kind"]: d for d in yaml.safe_load_all((repo_root / "deploy/k8s/cloud.yaml").read_text())}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(docs)
    dep, svc, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = dep["spec"]["template"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = _cloud_args(container["args"])
    assert int(args.listen.rsplit(":", 1)[1]) == ports["grpc"] and args.metrics_port == ports["metrics"]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert container["resources"]["requests"]["cpu"]  # a CPU utilization target needs a request
    drain = args.grace_s or 10
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain + container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
