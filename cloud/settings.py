"""The cloud tier's serving settings: one frozen, validated object built once at start-up.

``ServingSettings`` holds every knob of ``fogline cloud serve``. It is built from defaults, then from
the fleet YAML's ``cloud.serving`` section (``settings_from_fleet``), then from command-line flags
(``dataclasses.replace``): flags override the YAML. Every value is checked in ``__post_init__`` and
a bad one raises ``ConfigError`` that names the key and says what would be valid.

Batching knobs follow Triton's dynamic batcher:

- ``max_batch_size``: most rows one model call may take (1 turns dynamic batching off);
- ``max_queue_delay_us``: after a batch of several requests, how long the next batch may wait for
  those callers to come back (a lone caller, or one that finds the model idle, never waits);
- ``max_queue_size``: most requests waiting per model; one more is refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogline.errors import ConfigError

#: The port Triton and fogline use for gRPC inference.
DEFAULT_LISTEN = "0.0.0.0:8001"
#: The port Triton uses for Prometheus metrics.
DEFAULT_METRICS_PORT = 8002
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

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

    listen: str = DEFAULT_LISTEN
    models_dir: Path | None = None  # None: $FOGLINE_MODELS or ./models
    device: str = "auto"  # auto = cuda when available, else cpu
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    max_queue_size: int = 1024
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    metrics_port: int | None = DEFAULT_METRICS_PORT  # None: no metrics endpoint; 0: any free port
    metrics_host: str = "0.0.0.0"
    grace_s: float = 10.0
    torch_threads: int | None = None  # None: one per CPU core
    compute_workers: int | None = None  # model calls side by side; None: one per core on a CPU, 1 on a GPU

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
        intra-op thread, calls side by side one each, see ``cloud.compute_pool``); on a GPU 1 per model."""
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


#: Keys of the fleet YAML's ``cloud.serving`` section that map onto ServingSettings.
FLEET_KEYS = (
    "listen",
    "models_dir",
    "device",
    "max_batch_size",
    "max_queue_delay_us",
    "max_queue_size",
    "max_message_bytes",
    "metrics_port",
    "grace_s",
    "torch_threads",
    "compute_workers",
)


def settings_from_mapping(values: dict[str, Any], *, source: str = "settings") -> ServingSettings:
    """Build settings from a plain mapping (unknown keys are an error naming the valid ones)."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(ServingSettings)})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(FLEET_KEYS)}")
    # None means "default" for every key except metrics_port, where it turns the endpoint off.
    clean = {k: v for k, v in values.items() if v is not None or k == "metrics_port"}
    if "models_dir" in clean:
        clean["models_dir"] = Path(str(clean["models_dir"]))
    try:
        return ServingSettings(**clean)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def settings_from_fleet(path: str | Path) -> ServingSettings:
    """Settings from a fleet YAML's ``cloud.serving`` section.

    Uses ``agent.config.load_fleet`` (the fleet model, validated there) when it exists; otherwise
    reads the section straight from the YAML so the cloud never depends on the agent's code.
    """
    path = Path(path)
    try:
        from agent.config import load_fleet  # type: ignore[import-not-found]
    except ImportError:
        load_fleet = None
    if load_fleet is not None:
        fleet = load_fleet(path)
        serving = getattr(getattr(fleet, "cloud", None), "serving", None)
        if serving is None:
            return ServingSettings()
        values = {key: getattr(serving, key) for key in FLEET_KEYS if hasattr(serving, key)}
        return settings_from_mapping(values, source=f"{path}: cloud.serving")
    return _settings_from_yaml(path)


def _settings_from_yaml(path: Path) -> ServingSettings:
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the fleet file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    cloud = (document or {}).get("cloud") or {}
    if not isinstance(cloud, dict):
        raise ConfigError(f"{path}: 'cloud' must be a mapping")
    serving = cloud.get("serving") or {}
    if not isinstance(serving, dict):
        raise ConfigError(f"{path}: 'cloud.serving' must be a mapping")
    values = dict(serving)
    if "models_dir" in values and values["models_dir"] is not None:
        models_dir = Path(str(values["models_dir"]))
        values["models_dir"] = models_dir if models_dir.is_absolute() else path.parent / models_dir
    return settings_from_mapping(values, source=f"{path}: cloud.serving")
