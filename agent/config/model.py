"""The typed, frozen settings of a fleet: what one device (and the cloud tier) runs with.

These models describe *effective* settings, after the layers of the fleet file have been merged
(``defaults`` <- group <- device, see ``layering``). Every field has a default, so any layer may set
just the keys it changes, and the same classes describe each layer in the JSON Schema.

Validation is strict about types (``slo_ms: "100"`` is an error, not a silent conversion) and checks
ranges and relations between keys; ``validation`` turns pydantic's errors into messages with the file,
line and key. Model names are checked against the catalogue the loader passes as validation context
(``{"catalogue": {name: versions}}``): the reference models ``minilm`` and ``digits`` plus any listed in
the file's top-level ``models:`` section. Objects built by hand (tests) skip that one check.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.config.interpolate import EnvText, typed_text

#: The reference models every fleet knows without a catalogue (see DESIGN.md).
BUILTIN_MODELS: dict[str, tuple[str, ...]] = {"minilm": (), "digits": ()}

Policy = Literal["edge_only", "cloud_only", "latency_aware", "hedged", "cascade"]
POLICIES: tuple[str, ...] = get_args(Policy)

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+|\*)$")
_VERSION = re.compile(r"^[0-9]+$")
#: Device, group and model names: they end up in metric labels and file names.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def split_host_port(value: str) -> tuple[str, int]:
    """``"10.0.0.5:8001"`` -> ``("10.0.0.5", 8001)``; IPv6 hosts in brackets (``[::1]:8001``).

    Raises ``ValueError`` with a message saying what is expected.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not _HOST.match(host) or (":" in host and not host.startswith("[")):
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8500 or [::1]:8500), got {value!r}")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"the port must be a number 0-65535, got {value!r}")
    return host, int(port)


def _listen_address(value: str) -> str:
    split_host_port(value)
    return value


def _endpoint(value: str) -> str:
    if split_host_port(value)[1] == 0:
        raise ValueError(f"the cloud endpoint needs a real port (1-65535), got {value!r}")
    return value


ListenAddress = Annotated[str, AfterValidator(_listen_address)]
Endpoint = Annotated[str, AfterValidator(_endpoint)]
#: A filesystem path; relative paths are taken from the fleet file's folder when loaded from a file.
PathSetting = Annotated[Path | None, Field(strict=False)]
Millis = Annotated[int, Field(gt=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


class Settings(BaseModel):
    """Base of every settings block: frozen, strict types, unknown keys are errors.

    Values filled in from environment variables (``EnvText``) are first read as the type their key
    wants, since the environment only holds text (see ``interpolate``).
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _env_values(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(isinstance(v, EnvText) for v in data.values()):
            return data
        fields = cls.model_fields
        return {
            key: _from_env(fields[key].annotation, value)
            if isinstance(value, EnvText) and key in fields
            else value
            for key, value in data.items()
        }


def _from_env(annotation: Any, value: EnvText) -> Any:
    """An environment value read as ``annotation`` wants: a number, a flag, None or the text itself."""
    options: list[Any] = []
    pending = [annotation]
    while pending:
        current = pending.pop()
        if get_origin(current) is Annotated:
            pending.append(get_args(current)[0])
        elif get_origin(current) in (Union, UnionType):
            pending.extend(get_args(current))
        else:
            options.append(current)
    if value == "" and type(None) in options:
        return None
    if any(option is str or option is Path or get_origin(option) is Literal for option in options):
        return str(value)
    if any(option in (int, float, bool) for option in options):
        typed = typed_text(value)
        return typed if isinstance(typed, (int, float, bool)) else str(value)
    return str(value)


def _catalogue(info: ValidationInfo) -> dict[str, tuple[str, ...]] | None:
    """The known models (name -> versions) the loader passes as context; None when built by hand."""
    return (info.context or {}).get("catalogue")


def _known_model(name: str, info: ValidationInfo) -> str:
    from agent.config.errors import did_you_mean

    catalogue = _catalogue(info)
    if catalogue is not None and name not in catalogue:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, catalogue)}")
    return name


#: A model name the fleet knows (a key of ``cascade_thresholds``).
KnownModel = Annotated[str, AfterValidator(_known_model)]


class ModelRef(Settings):
    """A model a device serves, optionally pinned to one version (``None``: the newest there is).

    In YAML either the bare name (``minilm``) or a mapping (``{name: minilm, version: "1"}``).
    """

    name: str = Field(pattern=NAME_PATTERN)
    version: str | None = Field(
        default=None, description="version directory, an integer as text; null = newest"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if (
            isinstance(value, dict)
            and isinstance(value.get("version"), int)
            and not isinstance(value["version"], bool)
        ):
            return {**value, "version": str(value["version"])}
        return value

    @field_validator("version")
    @classmethod
    def _version_digits(cls, value: str | None) -> str | None:
        if value is not None and not _VERSION.match(value):
            raise ValueError(f'a version is an integer such as "1", got {value!r}')
        return value

    @model_validator(mode="after")
    def _known(self, info: ValidationInfo) -> ModelRef:
        from agent.config.errors import did_you_mean, one_of

        catalogue = _catalogue(info)
        if catalogue is None:
            return self
        if self.name not in catalogue:
            hint = did_you_mean(self.name, catalogue) or f"; known models: {one_of(sorted(catalogue))}"
            raise ValueError(f"unknown model {self.name!r}{hint} (list others under the top-level 'models:')")
        versions = catalogue[self.name]
        if self.version is not None and versions and self.version not in versions:
            raise ValueError(
                f"model {self.name!r} has no version {self.version!r}; the catalogue lists {one_of(versions)}"
            )
        return self


class CatalogueEntry(Settings):
    """A model the fleet may name, besides the reference models; ``versions`` limits version pins."""

    versions: tuple[str, ...] = Field((), strict=False, description="versions that exist (empty: any)")
    description: str = ""

    @field_validator("versions", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value


class RoutingConfig(Settings):
    """How the router picks the edge or the cloud for each request (see the router's docs)."""

    policy: Policy = "latency_aware"
    slo_ms: Millis = Field(100, description="latency goal per request unless it sets deadline_ms")
    rtt_threshold_ms: Millis = Field(
        150, description="cloud RTT above which the cloud is no longer preferred"
    )
    rtt_recover_ms: Millis = Field(
        100, description="RTT below which the cloud is preferred again (hysteresis)"
    )
    probe_interval_ms: Millis = Field(200, description="how often the link probes the cloud while idle")
    hedge_delay_ms: float | None = Field(
        None,
        ge=0,
        description="hedged: send the second request after this long; null = the RTT percentile below",
    )
    hedge_percentile: float = Field(
        95.0, gt=0, lt=100, description="hedged: RTT percentile used when hedge_delay_ms is null"
    )
    cascade_threshold: float = Field(
        0.8, ge=0, le=1, description="cascade: edge confidence below which the cloud is asked"
    )
    cascade_thresholds: dict[KnownModel, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="cascade: per-model thresholds, overriding cascade_threshold"
    )

    @field_validator("rtt_recover_ms")
    @classmethod
    def _below_threshold(cls, value: int, info: ValidationInfo) -> int:
        threshold = info.data.get("rtt_threshold_ms")
        if threshold is not None and value >= threshold:
            raise ValueError(f"must be below rtt_threshold_ms ({threshold}) for hysteresis, got {value}")
        return value

    def threshold_for(self, model: str) -> float:
        """The cascade confidence threshold for ``model``."""
        return self.cascade_thresholds.get(model, self.cascade_threshold)


class BatchingConfig(Settings):
    """Dynamic batching of local (edge) inference, as in Triton's dynamic batcher."""

    max_batch_size: int = Field(8, ge=1)
    max_queue_delay_ms: float = Field(2.0, ge=0)
    max_queue_size: int = Field(256, ge=1)


class LoadConfig(Settings):
    """When the device counts as busy, so the router sends work to the cloud instead."""

    max_queue_depth: int = Field(64, ge=1, description="local requests waiting above which work is offloaded")
    cpu_high_percent: float = Field(90.0, gt=0, le=100, description="CPU use above which work is offloaded")


class LoggingConfig(Settings):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, str) and value.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            return value.upper()
        return value


class MetricsConfig(Settings):
    """The Prometheus endpoint; port 0 turns it off."""

    port: Port = 0
    host: str = "0.0.0.0"


class KeepaliveConfig(Settings):
    """gRPC keepalive pings on the cloud stream (``grpc.keepalive_time_ms`` / ``_timeout_ms``)."""

    time_ms: Millis = 10_000
    timeout_ms: Millis = 5_000


class TlsConfig(Settings):
    """TLS towards the cloud (room for it: files are checked when the link starts, not here)."""

    enabled: bool = False
    ca_file: PathSetting = None
    cert_file: PathSetting = None
    key_file: PathSetting = None

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate): set both or neither")
        return self


class CredentialsConfig(Settings):
    """How the agent authenticates to the cloud; ``token`` is sent as ``authorization: Bearer ...``."""

    token: str | None = Field(None, repr=False, description="usually ${FOGLINE_CLOUD_TOKEN}; never rendered")


class ServingConfig(Settings):
    """Settings of ``fogline cloud serve`` (the cloud tier); flags given on its command line win."""

    listen: ListenAddress = "0.0.0.0:8001"
    models_dir: PathSetting = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch_size: int = Field(32, ge=1)
    max_queue_delay_us: int = Field(2000, ge=0)
    max_queue_size: int = Field(1024, ge=1)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    metrics_port: Port | None = Field(8002, description="0 = any free port, null = no metrics endpoint")
    grace_s: float = Field(10.0, ge=0)


class CloudConfig(Settings):
    """Where the cloud tier is and how to talk to it; ``serving`` configures the cloud tier itself."""

    endpoint: Endpoint = Field(
        "127.0.0.1:8001", description="HOST:PORT of any Open Inference Protocol v2 server"
    )
    connect_timeout_ms: Millis = 2_000
    request_timeout_ms: Millis = 5_000
    keepalive: KeepaliveConfig = KeepaliveConfig()
    tls: TlsConfig = TlsConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    serving: ServingConfig = ServingConfig()


class DeviceSettings(Settings):
    """Everything one edge agent runs with; each layer of the fleet file sets some of these keys."""

    listen: ListenAddress = Field("127.0.0.1:8500", description="HOST:PORT of the agent's gRPC server")
    models: tuple[ModelRef, ...] = Field(
        (ModelRef(name="minilm"), ModelRef(name="digits")), strict=False, json_schema_extra={"minItems": 1}
    )
    models_dir: PathSetting = Field(None, description="model repository; null = $FOGLINE_MODELS or ./models")
    routing: RoutingConfig = RoutingConfig()
    batching: BatchingConfig = BatchingConfig()
    load: LoadConfig = LoadConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    cloud: CloudConfig = CloudConfig()
    labels: dict[str, str] = Field(default_factory=dict, description="free-form labels (site, rack, ...)")

    @field_validator("models")
    @classmethod
    def _unique(cls, value: tuple[ModelRef, ...]) -> tuple[ModelRef, ...]:
        if not value:
            raise ValueError("list at least one model (e.g. [minilm, digits])")
        names = [ref.name for ref in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"model {twice[0]!r} is listed more than once")
        return value

    def model(self, name: str) -> ModelRef | None:
        """The entry for model ``name``, or None when this device does not serve it."""
        return next((ref for ref in self.models if ref.name == name), None)


class DeviceConfig(DeviceSettings):
    """The effective settings of one device: ``defaults`` <- its group <- its own entry.

    ``revision`` and ``source`` say which fleet file (and which version of it) these came from, so the
    agent can report them in its metadata and metrics; they are not settings and never rendered.
    """

    device_id: str
    group: str | None = None
    _revision: str = PrivateAttr("")
    _source: str = PrivateAttr("")

    @property
    def revision(self) -> str:
        """The fleet file's revision (``FleetConfig.revision``); empty for a config built by hand."""
        return self._revision

    @property
    def source(self) -> str:
        """The fleet file this device's settings were loaded from."""
        return self._source
