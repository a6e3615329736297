"""Logging for both tiers: one JSON object per line (for journald, Loki, Elasticsearch) or text.

Code logs with the standard library as usual and passes structured fields with ``extra``::

    log = logging.getLogger("fogline.agent.router")
    log.info("route changed", extra={"model": "digits", "tier": "edge", "rtt_ms": 312.5})

With ``setup_logging(fmt="json")`` that line becomes::

    {"ts": "2026-11-23T11:04:05.123Z", "level": "info", "logger": "fogline.agent.router",
     "msg": "route changed", "model": "digits", "tier": "edge", "rtt_ms": 312.5}

(on one line). Exceptions add ``exc`` (the formatted traceback). ``fmt="text"`` prints the same facts
for people: ``2026-11-23T11:04:05.123Z INFO fogline.agent.router: route changed model=digits ...`` (a mapping
field such as ``labels`` is spelled ``labels.site=plant-3``). ``fmt="auto"`` picks text on a terminal
and JSON otherwise (under systemd, in a container).

``configure_logging`` is what the commands call, at start and again on reload. It takes the fleet
file's ``logging`` block (``level``, ``format``, ``levels``: logger name -> level) and resolves each
setting with the precedence **command-line flag > environment (``FOGLINE_LOG_LEVEL``,
``FOGLINE_LOG_FORMAT``) > fleet file > default (INFO, auto)**. The per-logger ``levels`` come from the
fleet file only and apply whatever the root level is; a reload that drops one returns that logger to
the root's level.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from fogline.fleet.model import LoggingConfig

#: Log formats ``setup_logging`` accepts.
FORMATS = ("json", "text", "auto")
#: Level names, lowest first.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The environment variables ``configure_logging`` reads (below the flags, above the fleet file).
ENV_LEVEL, ENV_FORMAT = "FOGLINE_LOG_LEVEL", "FOGLINE_LOG_FORMAT"

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
        fields = _flat({**self.static, **extra_fields(record)})
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _flat(fields: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"labels": {"site": "a"}}`` -> ``{"labels.site": "a"}`` (text lines have no nesting)."""
    flat: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def setup_logging_from_env(env: Mapping[str, str] | None = None, **kwargs: Any) -> logging.Handler:
    """``setup_logging`` with ``FOGLINE_LOG_LEVEL`` (default INFO) and ``FOGLINE_LOG_FORMAT``
    (default auto) from the environment, as the systemd unit sets them."""
    return configure_logging(None, env=env, **kwargs)


def resolve_logging(config: LoggingConfig | None = None, *, level: str | None = None, fmt: str | None = None,
                    env: Mapping[str, str] | None = None) -> tuple[str, str, dict[str, str]]:
    """``(level, format, levels)`` from a flag (``level``/``fmt``) > the environment > the fleet
    file's ``logging`` block (``config``; None: the block's defaults)."""
    env = os.environ if env is None else env
    config = config if config is not None else LoggingConfig()
    chosen_level = level or env.get(ENV_LEVEL) or config.level
    chosen_fmt = fmt or env.get(ENV_FORMAT) or config.format
    return str(chosen_level), str(chosen_fmt), dict(config.levels)


def configure_logging(config: LoggingConfig | None = None, *, level: str | None = None, fmt: str | None = None,
                      env: Mapping[str, str] | None = None, **kwargs: Any) -> logging.Handler:
    """Set up logging from a fleet ``logging`` block, the environment and flags (see
    ``resolve_logging``); call it again on reload. ``kwargs`` go to ``setup_logging`` (``static``
    fields such as the device id and labels, ``stream``)."""
    chosen_level, chosen_fmt, levels = resolve_logging(config, level=level, fmt=fmt, env=env)
    return setup_logging(chosen_level, chosen_fmt, levels=levels, **kwargs)


def level_number(level: str | int, what: str = "log level") -> int:
    """The ``logging`` number of a level name (any case) or number; ValueError naming the valid ones."""
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    resolved = logging.getLevelName(str(level).upper()) if isinstance(level, str) else None
    if not isinstance(resolved, int):
        raise ValueError(f"{what} must be one of {', '.join(LEVELS)}, got {level!r}")
    return resolved


#: Loggers whose level the last ``setup_logging`` set, so the next one can put them back.
_touched: set[str] = set()


def setup_logging(level: str | int = "INFO", fmt: str = "auto", *, stream: IO[str] | None = None,
                  static: Mapping[str, Any] | None = None, quiet: tuple[str, ...] = ("grpc", "asyncio"),
                  levels: Mapping[str, str | int] | None = None) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr by default) in the chosen format.

    Replaces handlers a previous call installed (safe to call again on SIGHUP), leaves other
    handlers alone, and lowers noisy libraries in ``quiet`` to WARNING. ``levels`` sets the level of
    single loggers (``{"fogline.agent.router": "DEBUG"}``; a logger's children follow it), over ``quiet``;
    loggers a previous call set and this one does not go back to following the root. Returns the
    handler. Raises ValueError for an unknown level or format, naming the valid ones; nothing changes then.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    level = level_number(level)
    per_logger = {name: level_number(value, f"log level of {name!r}") for name, value in (levels or {}).items()}
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
    for name in _touched - set(quiet) - set(per_logger):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name in quiet:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    for name, value in per_logger.items():
        logging.getLogger(name).setLevel(value)
    _touched.clear()
    _touched.update(quiet, per_logger)
    logging.captureWarnings(True)
    return handler
