"""The cloud tier's serving settings: one frozen, validated object built once at start-up.

``ServingSettings`` holds every knob of ``fogline cloud serve``. It is built from the fleet model's
``cloud.serving`` block (``ServingSettings.from_config``; ``settings_from_fleet`` loads the file), then
from command-line flags (``dataclasses.replace``): flags override the YAML. The fleet model
(``fogline.fleet.model.ServingConfig``) is where every default of a fleet key is written; the defaults
here are read from it, so ``ServingSettings()`` is what an empty ``cloud.serving`` block gives. Every
value is checked again in ``__post_init__`` (flags come in there) and a bad one raises ``ConfigError``
that names the key and says what would be valid.

Batching knobs follow Triton's dynamic batcher:

- ``max_batch_size``: most rows one model call may take (1 turns dynamic batching off);
- ``max_queue_delay_us``: after a batch of several requests, how long the next batch may wait for
  those callers to come back (a lone caller, or one that finds the model idle, never waits);
- ``max_queue_size``: most requests waiting per model; one more is refused with RESOURCE_EXHAUSTED.

Security keys (``cloud.serving.tls``, ``.auth``, ``.limits`` in the fleet YAML, flat here): TLS files
(``tls_client_ca_file`` turns on mutual TLS), the tokens file, reflection (off unless enabled) and the
abuse limits; docs/security.md says what each one stops.

Logging (``cloud.serving.logging``: ``level``, ``format``, ``levels``, as a device's ``logging``) is kept
here as ``log_level``, ``log_format`` and ``log_levels``; ``fogline cloud serve`` hands it to
``fogline.logs.configure_logging``, where ``--log-level``/``--log-format`` and ``FOGLINE_LOG_LEVEL``/
``FOGLINE_LOG_FORMAT`` win over it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogline.errors import ConfigError
from fogline.fleet.model import LoggingConfig, ServingConfig
from fogline.logs import FORMATS, level_number

#: What an empty ``cloud.serving`` block holds: where the defaults below come from.
_FLEET = ServingConfig()

_DEVICES = ("auto", "cpu", "cuda")


def parse_listen(value: str, *, key: str = "listen") -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 hosts in brackets) into ``(host, port)``; ``ConfigError`` otherwise."""
    host, sep, port_text = str(value).rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{key}: expected HOST:PORT with a port 0-65535 (e.g. 0.0.0.0:8001), got {value!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class ServingSettings:
    """Everything ``fogline cloud serve`` needs to know, validated at construction."""

    listen: str = _FLEET.listen
    models_dir: Path | None = _FLEET.models_dir  # None: $FOGLINE_MODELS or ./models
    device: str = _FLEET.device  # auto = cuda when available, else cpu
    max_batch_size: int = _FLEET.max_batch_size
    max_queue_delay_us: int = _FLEET.max_queue_delay_us
    max_queue_size: int = _FLEET.max_queue_size
    max_message_bytes: int = _FLEET.max_message_bytes
    metrics_port: int | None = _FLEET.metrics_port  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "0.0.0.0"  # not a fleet key
    grace_s: float = _FLEET.grace_s
    torch_threads: int | None = None  # not a fleet key (a flag); None: one per CPU core
    compute_workers: int | None = None  # not a fleet key (a flag); None: one per core on a CPU, 1 on a GPU
    # security (docs/security.md)
    tls_cert_file: Path | None = _FLEET.tls.cert_file
    tls_key_file: Path | None = _FLEET.tls.key_file
    tls_client_ca_file: Path | None = _FLEET.tls.client_ca_file  # set: mutual TLS
    tokens_file: Path | None = _FLEET.auth.tokens_file  # set: every v2 call needs `authorization: Bearer TOKEN`
    reflection: bool = _FLEET.reflection
    max_concurrent_streams: int = _FLEET.limits.max_concurrent_streams  # per connection (HTTP/2 SETTINGS)
    max_inflight_per_device: int = _FLEET.limits.max_inflight_per_device  # one device's requests in flight
    min_ping_interval_ms: int = _FLEET.limits.min_ping_interval_ms  # pinging more often: a strike
    max_ping_strikes: int = _FLEET.limits.max_ping_strikes  # then GOAWAY too_many_pings; 0 = no limit
    max_connection_age_s: float = _FLEET.limits.max_connection_age_s  # then GOAWAY, to rebalance; 0 = forever
    max_connection_age_grace_s: float = _FLEET.limits.max_connection_age_grace_s  # to finish after it
    # logging, as the fleet file's cloud.serving.logging sets it; the --log-* flags and FOGLINE_LOG_*
    # override level and format when logging is set up (fogline.logs.configure_logging)
    log_level: str = _FLEET.logging.level
    log_format: str = _FLEET.logging.format  # json | text | auto (text on a terminal, else JSON)
    log_levels: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: dict(_FLEET.logging.levels))  # logger name -> level

    @classmethod
    def from_config(cls, serving: ServingConfig) -> ServingSettings:
        """The fleet model's ``cloud.serving`` block, value for value (no defaults added)."""
        return cls(
            listen=serving.listen,
            models_dir=serving.models_dir,
            device=serving.device,
            max_batch_size=serving.max_batch_size,
            max_queue_delay_us=serving.max_queue_delay_us,
            max_queue_size=serving.max_queue_size,
            max_message_bytes=serving.max_message_bytes,
            metrics_port=serving.metrics_port,
            grace_s=serving.grace_s,
            tls_cert_file=serving.tls.cert_file,
            tls_key_file=serving.tls.key_file,
            tls_client_ca_file=serving.tls.client_ca_file,
            tokens_file=serving.auth.tokens_file,
            reflection=serving.reflection,
            max_concurrent_streams=serving.limits.max_concurrent_streams,
            max_inflight_per_device=serving.limits.max_inflight_per_device,
            min_ping_interval_ms=serving.limits.min_ping_interval_ms,
            max_ping_strikes=serving.limits.max_ping_strikes,
            max_connection_age_s=serving.limits.max_connection_age_s,
            max_connection_age_grace_s=serving.limits.max_connection_age_grace_s,
            log_level=serving.logging.level,
            log_format=serving.logging.format,
            log_levels=dict(serving.logging.levels),
        )

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if self.models_dir is not None and not isinstance(self.models_dir, Path):
            object.__setattr__(self, "models_dir", Path(self.models_dir))
        if self.device not in _DEVICES:
            raise ConfigError(f"device: expected one of {', '.join(_DEVICES)}, got {self.device!r}")
        _check_int("max_batch_size", self.max_batch_size, low=1)
        _check_int("max_queue_delay_us", self.max_queue_delay_us, low=0)
        _check_int("max_queue_size", self.max_queue_size, low=1)
        _check_int("max_message_bytes", self.max_message_bytes, low=1024)
        if self.metrics_port is not None:
            _check_int("metrics_port", self.metrics_port, low=0, high=65535)
        if isinstance(self.grace_s, bool) or not isinstance(self.grace_s, (int, float)) or self.grace_s < 0:
            raise ConfigError(f"grace_s: expected a number of seconds >= 0, got {self.grace_s!r}")
        if self.torch_threads is not None:
            _check_int("torch_threads", self.torch_threads, low=1)
        if self.compute_workers is not None:
            _check_int("compute_workers", self.compute_workers, low=1)
        for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "tokens_file"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, key, Path(value))
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls: cert_file and key_file go together; set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("tls: client_ca_file (mutual TLS) needs cert_file and key_file too")
        if not isinstance(self.reflection, bool):
            raise ConfigError(f"reflection: expected true or false, got {self.reflection!r}")
        _check_int("max_concurrent_streams", self.max_concurrent_streams, low=1)
        _check_int("max_inflight_per_device", self.max_inflight_per_device, low=1)
        _check_int("min_ping_interval_ms", self.min_ping_interval_ms, low=0)
        _check_int("max_ping_strikes", self.max_ping_strikes, low=0)
        for key in ("max_connection_age_s", "max_connection_age_grace_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{key}: expected a number of seconds >= 0, got {value!r}")
        self._check_logging()

    def _check_logging(self) -> None:
        if self.log_format not in FORMATS:
            raise ConfigError(f"logging.format: expected one of {', '.join(FORMATS)}, got {self.log_format!r}")
        try:
            level_number(self.log_level, "logging.level")
            if not isinstance(self.log_levels, Mapping):
                raise ValueError(f"logging.levels: expected a mapping of logger name to level, got {self.log_levels!r}")
            for name, level in self.log_levels.items():
                level_number(level, f"logging.levels.{name}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "log_levels", dict(self.log_levels))

    def logging_block(self) -> LoggingConfig:
        """The fleet file's logging settings, as ``fogline.logs.configure_logging`` takes them."""
        return LoggingConfig(level=self.log_level, format=self.log_format, levels=dict(self.log_levels))

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    def resolved_device(self) -> str:
        """``cpu`` or ``cuda``: ``auto`` becomes cuda when torch sees a GPU."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_models_dir(self) -> Path:
        if self.models_dir is not None:
            return self.models_dir
        return Path(os.environ.get("FOGLINE_MODELS", "models"))

    def resolved_torch_threads(self) -> int:
        return self.torch_threads or usable_cores()

    def resolved_compute_workers(self, device: str) -> int:
        """How many model calls may run side by side: on a CPU one per core (a lone call gets every
        intra-op thread, calls side by side one each, see ``fogline.cloud.compute_pool``); on a GPU 1 per model."""
        if self.compute_workers is not None:
            return self.compute_workers
        return usable_cores() if device == "cpu" else 1


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_int(key: str, value: Any, *, low: int, high: int | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{key}: expected an integer {bound}, got {value!r}")


def settings_from_fleet(path: str | Path) -> ServingSettings:
    """Settings from a fleet file's ``cloud.serving`` block, loaded and validated by ``fogline.fleet``
    (``FleetConfigError``, a ``ConfigError``, lists every problem with its line)."""
    from fogline.fleet import load_fleet

    return ServingSettings.from_config(load_fleet(Path(path)).cloud.serving)
