"""Structured logging: every line one JSON object with ts, level, logger, msg and the extra fields."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from fogline.fleet.model import LoggingConfig
from fogline.logs import (
    JsonFormatter,
    configure_logging,
    resolve_logging,
    setup_logging,
    setup_logging_from_env,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_standard_and_extra_fields(restore_root):
    out = io.StringIO()
    setup_logging("DEBUG", "json", stream=out, static={"device": "cam-001"})
    log = logging.getLogger("fogline.agent.router")
    log.info("route %s", "changed", extra={"model": "digits", "rtt_ms": 312.5, "path": object()})
    log.debug("quiet detail")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("inference failed", extra={"device": "override"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first["level"] == "info" and first["logger"] == "fogline.agent.router" and first["msg"] == "route changed"
    assert first["model"] == "digits" and first["rtt_ms"] == 312.5 and first["device"] == "cam-001"
    assert first["path"].startswith("<object object")  # not JSON-able -> str()
    assert lines[1]["level"] == "debug"
    assert lines[2]["level"] == "error" and lines[2]["device"] == "override"
    assert "RuntimeError: boom" in lines[2]["exc"]


def test_extra_fields_cannot_clobber_the_standard_keys():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello", None, None)
    record.ts = "forged"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["ts"] != "forged" and doc["msg"] == "hello" and doc["level"] == "warning"


def test_text_format_and_repeat_setup_replace_the_handler(restore_root):
    out = io.StringIO()
    setup_logging("INFO", "json", stream=io.StringIO())
    setup_logging("INFO", "text", stream=out)
    assert sum(getattr(h, "_fogline", False) for h in logging.getLogger().handlers) == 1
    logging.getLogger("agent").warning("link down", extra={"reason": "rst from peer", "n": 3})
    line = out.getvalue().strip()
    assert re.fullmatch(r"\S+Z WARNING agent: link down reason=\"rst from peer\" n=3", line), line


def test_auto_picks_json_off_a_terminal_and_bad_settings_are_refused(restore_root):
    out = io.StringIO()
    setup_logging("info", "auto", stream=out)
    logging.getLogger("agent").info("hi")
    assert json.loads(out.getvalue())["msg"] == "hi"
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "xml")
    with pytest.raises(ValueError, match="log level"):
        setup_logging("LOUD", "json")


def test_environment_picks_level_and_format(restore_root):
    out = io.StringIO()
    setup_logging_from_env({"FOGLINE_LOG_LEVEL": "warning", "FOGLINE_LOG_FORMAT": "json"}, stream=out)
    logging.getLogger("agent").info("hidden")
    logging.getLogger("agent").warning("shown")
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["shown"]


def test_per_logger_levels_apply_over_the_root_and_a_new_setup_resets_them(restore_root):
    out = io.StringIO()
    setup_logging("WARNING", "json", stream=out, levels={"fogline.agent.router": "DEBUG", "grpc": "INFO"})
    logging.getLogger("fogline.agent.router.rtt").debug("child of a DEBUG logger")
    logging.getLogger("fogline.agent.server").info("root is WARNING: hidden")
    logging.getLogger("grpc").info("levels win over the quiet list")
    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == [
        "child of a DEBUG logger", "levels win over the quiet list"]
    setup_logging("WARNING", "json", stream=out)  # a reload that drops the levels
    assert logging.getLogger("fogline.agent.router").level == logging.NOTSET
    assert logging.getLogger("grpc").level == logging.WARNING
    with pytest.raises(ValueError, match="log level of 'agent'"):
        setup_logging("INFO", "json", stream=out, levels={"agent": "LOUD"})


def test_precedence_is_flag_then_environment_then_fleet_then_default():
    fleet = LoggingConfig(level="ERROR", format="text", levels={"fogline.agent.router": "DEBUG"})
    env = {"FOGLINE_LOG_LEVEL": "WARNING", "FOGLINE_LOG_FORMAT": "json"}
    assert resolve_logging(fleet, env={}) == ("ERROR", "text", {"fogline.agent.router": "DEBUG"})
    assert resolve_logging(fleet, env=env) == ("WARNING", "json", {"fogline.agent.router": "DEBUG"})
    assert resolve_logging(fleet, env=env, level="DEBUG", fmt="text") == ("DEBUG", "text", {"fogline.agent.router": "DEBUG"})
    assert resolve_logging(None, env={}) == ("INFO", "auto", {})


def test_mapping_fields_are_nested_in_json_and_dotted_in_text(restore_root):
    static = {"device": "cam-001", "labels": {"site": "plant 3", "rack": "r7"}}
    out = io.StringIO()
    configure_logging(LoggingConfig(format="json"), env={}, stream=out, static=static)
    logging.getLogger("agent").info("hi")
    assert json.loads(out.getvalue())["labels"] == {"site": "plant 3", "rack": "r7"}
    text = io.StringIO()
    configure_logging(LoggingConfig(format="text"), env={}, stream=text, static=static)
    logging.getLogger("agent").info("hi")
    assert text.getvalue().rstrip().endswith('hi device=cam-001 labels.site="plant 3" labels.rack=r7')
