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
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fogline.codec import MAX_MESSAGE_BYTES
from fogline.errors import ConfigError
from fogline.fleet.interpolate import EnvText, typed_text
from fogline.fleet.target import FORMS, has_scheme, parse_target
from fogline.serving.address import parse_listen

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


def _agent_listen(value: str) -> str:
    """The agent's listen address: ``HOST:PORT`` or a unix socket (``unix:///run/fogline/agent.sock``),
    checked by the same parser the server binds with."""
    if not value.startswith("unix:"):
        return _listen_address(value)
    try:
        parse_listen(value, "listen")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


def _endpoint(value: str) -> str:
    """``HOST:PORT`` (its checks and messages as before) or a gRPC target naming several replicas
    (``dns:///NAME:PORT``, ``ipv4:...``, ``ipv6:...``; ``fogline.fleet.target``)."""
    if has_scheme(value):
        parse_target(value)
        return value
    if split_host_port(value)[1] == 0:
        raise ValueError(f"the cloud endpoint needs a real port (1-65535), got {value!r}")
    return value


ListenAddress = Annotated[str, AfterValidator(_listen_address)]
AgentListenAddress = Annotated[str, AfterValidator(_agent_listen)]
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


def default_of(model: type[BaseModel], name: str) -> Any:
    """The default of ``model``'s field ``name``, as declared here.

    These models are the one place a default is written: runtime objects built from them
    (``fogline.agent.from_fleet``, ``fogline.cloud.settings``) that keep defaults of their own, for
    tests that build them by hand, read them through this function.
    """
    return model.model_fields[name].get_default(call_default_factory=True)


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
    from fogline.fleet.errors import did_you_mean

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
        from fogline.fleet.errors import did_you_mean, one_of

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


class ShadowConfig(Settings):
    """Live agreement (``routing.shadow``): a share of the edge's answers is also asked of the cloud, off
    the client's path, and the two answers are compared with the model's fidelity metric, so a device
    learns whether its INT8 model still matches the full one on the traffic it really gets
    (``fogline.agent.shadow``). Off by default: every shadow is a cloud request nobody waits for."""

    share: float = Field(
        0.0, ge=0, le=1, description="fraction of edge-served requests also sent to the cloud; 0 = off"
    )
    max_inflight: int = Field(4, ge=1, description="shadow requests out at once; more are dropped (counted)")
    window: int = Field(500, ge=1, description="rows the running agreement is taken over")
    min_rows: int = Field(50, ge=1, description="rows compared before the manifest's gate is judged")

    @model_validator(mode="after")
    def _judged_within_window(self) -> ShadowConfig:
        if self.min_rows > self.window:
            raise ValueError(f"min_rows ({self.min_rows}) must not exceed window ({self.window}): the gate "
                             "would never be judged")
        return self


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
        {}, description="cascade: per-model thresholds, overriding cascade_threshold"
    )
    shadow: ShadowConfig = Field(
        ShadowConfig(), description="live agreement: shadow a share of edge answers to the cloud and compare"
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


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: A Python logger name: dotted identifiers (``fogline.agent.router``, ``fogline.cloud``, ``grpc``).
_LOGGER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _logger_name(value: str) -> str:
    if not _LOGGER.match(value):
        raise ValueError(f"a logger name is dotted Python names (e.g. fogline.agent.router or grpc), got {value!r}")
    return value


def _upper_level(value: Any) -> Any:
    if isinstance(value, str) and value.upper() in get_args(LogLevel):
        return value.upper()
    return value


class LoggingConfig(Settings):
    """Logging of the agent (a device's ``logging``) or the cloud (``cloud.serving.logging``).

    ``FOGLINE_LOG_LEVEL`` / ``FOGLINE_LOG_FORMAT`` and the ``--log-level`` / ``--log-format`` flags
    override ``level`` and ``format``; ``levels`` sets single loggers (and their children) whatever the
    root level is. The agent applies all of it again on SIGHUP.
    """

    level: LogLevel = Field("INFO", description="level of every logger not named in levels")
    format: Literal["text", "json", "auto"] = Field("auto", description="auto: text on a terminal, else JSON")
    levels: dict[Annotated[str, AfterValidator(_logger_name)], Annotated[LogLevel, BeforeValidator(_upper_level)]] = (
        Field({}, description="logger name -> level, e.g. {fogline.agent.router: DEBUG, grpc: INFO}")
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return _upper_level(value)


class MetricsConfig(Settings):
    """The Prometheus endpoint; port 0 turns it off."""

    port: Port = 0
    host: str = "0.0.0.0"


class KeepaliveConfig(Settings):
    """gRPC keepalive pings on the cloud stream (``grpc.keepalive_time_ms`` / ``_timeout_ms``)."""

    time_ms: Millis = 10_000
    timeout_ms: Millis = 5_000


class TlsConfig(Settings):
    """TLS towards the cloud (files are read when the link starts, not here). Setting any file turns TLS
    on unless ``enabled: false`` says otherwise; ``ca_file`` null trusts the system's roots;
    ``cert_file`` + ``key_file``: the client certificate for mutual TLS."""

    enabled: bool = False
    ca_file: PathSetting = None
    cert_file: PathSetting = None
    key_file: PathSetting = None

    @model_validator(mode="before")
    @classmethod
    def _implied(cls, data: Any) -> Any:
        if isinstance(data, dict) and "enabled" not in data and any(
                data.get(key) is not None for key in ("ca_file", "cert_file", "key_file")):
            return {**data, "enabled": True}
        return data

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate): set both or neither")
        return self


class CredentialsConfig(Settings):
    """How the agent authenticates to the cloud; ``token`` is sent as ``authorization: Bearer ...``."""

    token: str | None = Field(None, repr=False, description="usually ${FOGLINE_CLOUD_TOKEN}; never rendered")
    token_file: PathSetting = Field(None, description="a file holding the token (re-read on a refused retry)")

    @model_validator(mode="after")
    def _one_source(self) -> CredentialsConfig:
        if self.token and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self


class ServingTlsConfig(Settings):
    """TLS on the cloud's listener; with ``client_ca_file``, mutual TLS (clients need a certificate)."""

    cert_file: PathSetting = None
    key_file: PathSetting = None
    client_ca_file: PathSetting = None

    @model_validator(mode="after")
    def _pair(self) -> ServingTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        return self


class ServingAuthConfig(Settings):
    """Per-device bearer tokens: lines ``DEVICE_ID SHA256_HEX`` (``fogline cloud token new``)."""

    tokens_file: PathSetting = None


class ServingLimitsConfig(Settings):
    """Abuse limits of the cloud's listener (see docs/security.md)."""

    max_concurrent_streams: int = Field(100, ge=1, description="calls open at once on one connection")
    max_inflight_per_device: int = Field(
        128, ge=1, description="beyond it: RESOURCE_EXHAUSTED; a refused stream is then read only when a slot is free")
    min_ping_interval_ms: int = Field(5000, ge=0, description="clients pinging more often get strikes")
    max_ping_strikes: int = Field(2, ge=0, description="strikes before GOAWAY too_many_pings; 0 = none")
    max_connection_age_s: float = Field(3600.0, ge=0, description="0 = connections live forever")
    max_connection_age_grace_s: float = Field(30.0, ge=0)


class ServingConfig(Settings):
    """Settings of ``fogline cloud serve`` (the cloud tier); flags given on its command line win."""

    listen: ListenAddress = "0.0.0.0:8001"
    models_dir: PathSetting = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch_size: int = Field(32, ge=1)
    max_queue_delay_us: int = Field(2000, ge=0)
    max_queue_size: int = Field(1024, ge=1)
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1024)
    metrics_port: Port | None = Field(8002, description="0 = any free port, null = no metrics endpoint")
    grace_s: float = Field(10.0, ge=0)
    tls: ServingTlsConfig = ServingTlsConfig()
    auth: ServingAuthConfig = ServingAuthConfig()
    limits: ServingLimitsConfig = ServingLimitsConfig()
    reflection: bool = Field(False, description="gRPC server reflection (off unless enabled)")
    logging: LoggingConfig = LoggingConfig()


class AgentServingConfig(Settings):
    """Who may call the agent's own listener: the keys of ``cloud.serving`` that apply to it."""

    tls: ServingTlsConfig = ServingTlsConfig()
    auth: ServingAuthConfig = ServingAuthConfig()


class CloudConfig(Settings):
    """Where the cloud tier is and how to talk to it; ``serving`` configures the cloud tier itself."""

    endpoint: Endpoint = Field(
        "127.0.0.1:8001", description=f"any Open Inference Protocol v2 server, as a gRPC target: {FORMS}"
    )
    connect_timeout_ms: Millis = 2_000
    request_timeout_ms: Millis = 5_000
    keepalive: KeepaliveConfig = KeepaliveConfig()
    tls: TlsConfig = TlsConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    serving: ServingConfig = ServingConfig()


class DeviceSettings(Settings):
    """Everything one edge agent runs with; each layer of the fleet file sets some of these keys."""

    listen: AgentListenAddress = Field(
        "127.0.0.1:8500", description="HOST:PORT or unix:///PATH (socket mode 0660) of the agent's gRPC server"
    )
    serving: AgentServingConfig = Field(
        AgentServingConfig(), description="TLS and tokens on the agent's listener, as in cloud.serving"
    )
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
    labels: dict[str, str] = Field({}, description="free-form labels (site, rack, ...)")

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
