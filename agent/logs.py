"""Logging setup for the agent: one JSON object per line (for journald, Loki, Elasticsearch) or text.

Code logs with the standard library as usual and passes structured fields with ``extra``::

    log = logging.getLogger("agent.router")
    log.info("route changed", extra={"model": "digits", "tier": "edge", "rtt_ms": 312.5})

With ``setup_logging(fmt="json")`` that line becomes::

    {"ts": "2026-11-23T11:04:05.123Z", "level": "info", "logger": "agent.router",
     "msg": "route changed", "model": "digits", "tier": "edge", "rtt_ms": 312.5}

(on one line). Exceptions add ``exc`` (the formatted traceback). ``fmt="text"`` prints the same facts
for people: ``2026-11-23T11:04:05.123Z INFO agent.router: route changed model=digits ...``.
``fmt="auto"`` picks text on a terminal and JSON otherwise (under systemd, in a container).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

#: Log formats ``setup_logging`` accepts.
FORMATS = ("json", "text", "auto")

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def _timestamp(created: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-23T11:04:05.123Z``."""
    secs = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((created - secs) * 1000):03d}Z"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached with ``extra=``, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, msg, then the extra fields.

    ``static`` fields (say the device id) are added to every line; a record's own fields win.
    Values JSON cannot hold are written with ``str()``.
    """

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in {**self.static, **extra_fields(record)}.items():
            if key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <msg> key=value ...`` for people reading a terminal."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = {**self.static, **extra_fields(record)}
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def setup_logging_from_env(env: Mapping[str, str] | None = None, **kwargs: Any) -> logging.Handler:
    """``setup_logging`` with ``FOGLINE_LOG_LEVEL`` (default INFO) and ``FOGLINE_LOG_FORMAT``
    (default auto) from the environment, as the systemd unit sets them."""
    env = os.environ if env is None else env
    return setup_logging(env.get("FOGLINE_LOG_LEVEL", "INFO"), env.get("FOGLINE_LOG_FORMAT", "auto"), **kwargs)


def setup_logging(level: str | int = "INFO", fmt: str = "auto", *, stream: IO[str] | None = None,
                  static: Mapping[str, Any] | None = None, quiet: tuple[str, ...] = ("grpc", "asyncio")
                  ) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr by default) in the chosen format.

    Replaces handlers a previous call installed (safe to call again on SIGHUP), leaves other
    handlers alone, and lowers noisy libraries in ``quiet`` to WARNING. Returns the handler.
    Raises ValueError for an unknown level or format, naming the valid ones.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got {level!r}")
        level = resolved
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(static) if fmt == "json" else TextFormatter(static))
    handler._fogline = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_fogline", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)
    return handler
