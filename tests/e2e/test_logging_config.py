"""The fleet file's ``logging`` block and ``labels`` as a user sees them: JSON or text lines on stderr,
per-logger levels, applied again on SIGHUP, and the device's labels on its log lines and its metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from children import REPO, Child, start_agent

pytestmark = [pytest.mark.e2e, pytest.mark.models, pytest.mark.slow]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGLINE_LOG_")}  # the fleet file decides
    return dict(env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _json(line: str) -> dict | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _logged(logger: str, prefix: str):
    def test(line: str) -> bool:
        doc = _json(line)
        return bool(doc) and doc["logger"] == logger and doc["msg"].startswith(prefix)

    return test


def agent_fleet(metrics_port: int, levels: str, labels: str) -> str:
    return "\n".join([
        "version: 1",
        "defaults:",
        '  listen: "127.0.0.1:0"',
        "  models: [digits]",
        "  routing: {policy: edge_only}",
        f"  metrics: {{port: {metrics_port}, host: 127.0.0.1}}",
        "  logging: {format: text, level: INFO}",
        "devices:",
        "  cam-001:",
        f"    logging: {{format: json, level: WARNING, levels: {levels}}}",
        f"    labels: {labels}",
        "",
    ])  # fmt: skip


def test_agent_logs_and_metrics_follow_the_fleet_file_and_its_reloads(model_repo, tmp_path, free_port,
                                                                     scrape_metrics):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(agent_fleet(free_port, "{fogline.serving.metrics_endpoint: INFO}", '{site: plant-3, "rack id": r7}'))
    agent, _ = start_agent("--config", str(fleet), "--device", "cam-001", "--models", str(model_repo), "--cloud", "",
                           env=_env())
    proc, out, err = agent.proc, agent.out, agent.err
    try:
        # Root WARNING, but fogline.serving.metrics_endpoint at INFO: its line shows, as JSON with the device and labels.
        first = _json(err.next_matching(_logged("fogline.serving.metrics_endpoint", "metrics on")))
        assert first["level"] == "info" and first["device"] == "cam-001"
        assert first["labels"] == {"site": "plant-3", "rack id": "r7"}
        samples = scrape_metrics(free_port)
        info = [key for key in samples if key[0] == "fogline_agent_device_info"]
        assert info == [("fogline_agent_device_info", (("device", "cam-001"), ("group", ""),
                                                       ("label_rack_id", "r7"), ("label_site", "plant-3")))]

        # Reload: the 'agent' logger goes to INFO, so the reload's own line shows, with the new labels.
        fleet.write_text(agent_fleet(free_port, "{agent: info}", "{site: plant-4}"))
        proc.send_signal(signal.SIGHUP)
        out.next_matching(lambda line: "config reloaded" in line)
        reloaded_line = err.next_matching(_logged("agent", "config reloaded"))
        reloaded = _json(reloaded_line)
        assert reloaded["labels"] == {"site": "plant-4"} and reloaded["device"] == "cam-001"
        info = [key for key in scrape_metrics(free_port) if key[0] == "fogline_agent_device_info"]
        assert info == [("fogline_agent_device_info", (("device", "cam-001"), ("group", ""),
                                                       ("label_site", "plant-4")))]

        # Reload without the per-logger level: 'agent' follows the WARNING root again, so this reload's
        # INFO line is not written; the next reload's ERROR line (a broken file) is.
        fleet.write_text(agent_fleet(free_port, "{}", "{site: plant-4}"))
        proc.send_signal(signal.SIGHUP)
        out.next_matching(lambda line: "config reloaded" in line)
        fleet.write_text("version: 1\ndevices: {cam-001: {logging: {level: chatty}}}\n")
        proc.send_signal(signal.SIGHUP)
        out.next_matching(lambda line: "config refused" in line)
        refused = _json(err.next_matching(_logged("agent", "config reload refused")))
        assert refused["level"] == "error" and "logging.level" in refused["msg"]
        between = err.lines[err.lines.index(reloaded_line) + 1:]
        assert not any(_logged("agent", "config reloaded")(line) for line in between), between
        assert all(_json(line) for line in err.lines), err.lines  # every stderr line is JSON
    finally:
        agent.stop()
    assert proc.returncode == 0, "\n".join(err.lines)


def test_cloud_logs_as_its_fleet_section_says_and_again_on_sighup(model_repo, tmp_path):
    fleet = tmp_path / "fleet.yaml"
    serving = "{listen: '127.0.0.1:0', device: cpu, metrics_port: null, logging: %s}"
    fleet.write_text("version: 1\ncloud:\n  serving: "
                     + serving % "{format: json, level: WARNING, levels: {fogline.cloud: INFO}}" + "\n")
    cloud = Child("cloud", "serve", "--config", str(fleet), "--models", str(model_repo), "--torch-threads", "1",
                  env=_env())
    proc, out, err = cloud.proc, cloud.out, cloud.err
    try:
        out.next_matching(lambda line: "serving" in line)
        start = _json(err.next_matching(_logged("fogline.cloud", "serving")))
        assert start["level"] == "info" and start["device"] == "cpu"
        assert all(_json(line) for line in err.lines), err.lines

        # The file now asks for text at INFO: SIGHUP applies it, and says so in the new format.
        fleet.write_text("version: 1\ncloud:\n  serving: " + serving % "{format: text, level: INFO}" + "\n")
        proc.send_signal(signal.SIGHUP)
        line = err.next_matching(lambda line: "SIGHUP: logging settings applied again" in line)
        assert _json(line) is None and " INFO    fogline.cloud: SIGHUP" in line
    finally:
        cloud.stop()
    assert proc.returncode == 0, "\n".join(err.lines)


def test_a_bad_level_or_format_from_the_environment_or_a_flag_is_refused_at_start(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("version: 1\ncloud: {serving: {logging: {format: json}}}\ndevices: {cam-001: {}}\n")

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fogline.cli", *args, "--config", str(fleet)],
                              capture_output=True, text=True, cwd=REPO, timeout=60, env=dict(_env(), **env))

    agent = run("agent", "run", "--device", "cam-001", FOGLINE_LOG_LEVEL="chatty")
    assert agent.returncode == 2 and "log level must be one of DEBUG, INFO" in agent.stderr
    cloud = run("cloud", "serve", FOGLINE_LOG_FORMAT="xml")
    assert cloud.returncode == 2 and "log format must be one of json, text, auto, got 'xml'" in cloud.stderr
    flag = run("cloud", "serve", "--log-level", "chatty")
    assert flag.returncode == 2 and "--log-level: invalid choice" in flag.stderr
