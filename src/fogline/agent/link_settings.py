"""How the cloud link connects: endpoint, timeouts, keepalive, probing, backoff, TLS and token.

The credentials are read from their files by ``channel_credentials()`` and ``call_metadata()``: at
start (a bad path fails there) and again when the link retries after the cloud refused them.

``LinkSettings`` is the frozen set of knobs ``fogline.agent.cloud_link.CloudLink`` runs with, built from
the fleet model's ``cloud`` and ``routing`` blocks by ``LinkSettings.from_config``. The defaults of the
keys a fleet file sets are read from the fleet model, never written again here; the others (probe
timeout, backoff, breaker, RTT smoothing) are the link's own and are written only here.
``backoff_ms`` is the reconnect schedule: capped exponential growth with jitter (capped lower, at
``backoff_busy_max_ms``, while requests are arriving; ``CloudLink`` paces attempts by their start times).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fogline.codec import MAX_MESSAGE_BYTES
from fogline.errors import ConfigError
from fogline.fleet.model import CloudConfig, KeepaliveConfig, RoutingConfig, default_of


@dataclass(frozen=True)
class LinkSettings:
    """How the link connects, probes and gives up (all times in ms)."""

    endpoint: str
    #: "stream": Triton's multiplexed ModelStreamInfer; "unary": one ModelInfer call per request (for
    #: servers whose stream is not Triton's, such as MLServer); "auto": stream, and switch to unary for
    #: good if the server's stream turns out unusable before it ever answered.
    mode: str = "auto"
    connect_timeout_ms: float = float(default_of(CloudConfig, "connect_timeout_ms"))
    #: An answer overdue by this much means the stream stalled: it is torn down and rebuilt.
    request_timeout_ms: float = float(default_of(CloudConfig, "request_timeout_ms"))
    keepalive_ms: float = float(default_of(KeepaliveConfig, "time_ms"))
    keepalive_timeout_ms: float = float(default_of(KeepaliveConfig, "timeout_ms"))
    probe_interval_ms: float = float(default_of(RoutingConfig, "probe_interval_ms"))
    #: The probe interval while no request is out to the cloud (the router keeps work local): a
    #: recovered network shows within a few of these. Cost: at most ``max_probes_in_flight`` per RTT.
    idle_probe_interval_ms: float = 50.0
    probe_timeout_ms: float = 1000.0
    max_probes_in_flight: int = 12
    backoff_initial_ms: float = 100.0
    backoff_max_ms: float = 1000.0
    #: The backoff cap while the router is asking for the link (requests arrive): a recovered link is
    #: used again within a fraction of a second; attempts still start at most once per this delay.
    backoff_busy_max_ms: float = 250.0
    backoff_jitter: float = 0.2
    failure_threshold: int = 3
    breaker_open_ms: float = 500.0
    rtt_alpha: float = 0.3
    #: The router believes a recovery once this many fresh samples in a row all sit low.
    rtt_recent: int = 2
    #: The RTT tail the estimator reports (``routing.hedge_percentile``; hedging waits that long).
    rtt_percentile: float = float(default_of(RoutingConfig, "hedge_percentile"))
    #: TLS towards the cloud: server verified against ``ca_file`` (system roots when None), with a client
    #: certificate when ``cert_file``/``key_file`` are set.
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: Sent as ``authorization: Bearer <token>`` on every call.
    token: str | None = field(default=None, repr=False)
    #: A file holding the token (its first line; read at start and again before every retry after the
    #: cloud refused the credentials, so a rotated token needs no restart). Excludes ``token``.
    token_file: str | None = None
    #: After the cloud refused the credentials (UNAUTHENTICATED / PERMISSION_DENIED), wait this long
    #: (jittered) before trying again, unless ``CloudLink.reauthenticate()`` (SIGHUP) asks sooner.
    auth_retry_ms: float = 30_000.0
    #: The name the cloud's certificate is checked against and the ``:authority`` the calls carry when
    #: ``endpoint`` is one resolved address of a name (a replica of ``dns:///NAME:PORT``); None: the
    #: endpoint's own host.
    server_name: str | None = None

    def __post_init__(self) -> None:
        if not self.endpoint:
            raise ValueError("the cloud link needs an endpoint (HOST:PORT)")
        if self.mode not in ("auto", "stream", "unary"):
            raise ValueError(f"link mode must be auto, stream or unary, got {self.mode!r}")
        if self.token and self.token_file:
            raise ValueError("set the cloud token or a token file, not both")
        if self.auth_retry_ms <= 0:
            raise ValueError(f"auth_retry_ms must be positive, got {self.auth_retry_ms}")

    @classmethod
    def from_config(cls, cloud: CloudConfig, routing: RoutingConfig, **overrides: Any) -> LinkSettings:
        """A device's ``cloud`` block, with the probe interval and the RTT percentile of its ``routing``
        block, value for value (no defaults added). ``overrides`` replaces fields: ``endpoint`` (the
        ``--cloud`` flag) and the link's own knobs, which a fleet file does not set (tests, benchmarks)."""
        tls = cloud.tls
        settings = cls(
            endpoint=cloud.endpoint,
            connect_timeout_ms=float(cloud.connect_timeout_ms),
            request_timeout_ms=float(cloud.request_timeout_ms),
            keepalive_ms=float(cloud.keepalive.time_ms),
            keepalive_timeout_ms=float(cloud.keepalive.timeout_ms),
            probe_interval_ms=float(routing.probe_interval_ms),
            rtt_percentile=float(routing.hedge_percentile),
            tls=tls.enabled,
            ca_file=_path_text(tls.ca_file) if tls.enabled else None,
            cert_file=_path_text(tls.cert_file) if tls.enabled else None,
            key_file=_path_text(tls.key_file) if tls.enabled else None,
            token=cloud.credentials.token or None,
            token_file=_path_text(cloud.credentials.token_file),
        )
        return dataclasses.replace(settings, **overrides) if overrides else settings

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials (None for plaintext); ``ConfigError`` naming a file that cannot be read."""
        if not self.tls:
            return None

        def read(path: str | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"cloud.tls.{what}: cannot read {path} ({exc.strerror or exc})") from None

        return grpc.ssl_channel_credentials(root_certificates=read(self.ca_file, "ca_file"),
                                            private_key=read(self.key_file, "key_file"),
                                            certificate_chain=read(self.cert_file, "cert_file"))

    def call_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The ``authorization`` header every call carries (None without a token); ``ConfigError``
        when ``token_file`` cannot be read or holds no token."""
        token = self.token
        if self.token_file:
            try:
                lines = Path(self.token_file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise ConfigError(f"cloud.credentials.token_file: cannot read {self.token_file} ({reason})") \
                    from None
            token = next((line.strip() for line in lines if line.strip()), "")
            if not token or any(ch.isspace() for ch in token):
                raise ConfigError(f"cloud.credentials.token_file: {self.token_file} must hold the token "
                                  "alone on its first line")
        return (("authorization", f"Bearer {token}"),) if token else None

    def channel_options(self) -> list[tuple[str, Any]]:
        named = [("grpc.default_authority", self.server_name)] if self.server_name else []
        if self.server_name and self.tls:
            named.append(("grpc.ssl_target_name_override", self.server_name))
        return [
            *named,
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", int(self.keepalive_ms)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_ms)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # Each reconnect is ours to pace (backoff below); keep gRPC's own retry out of the way.
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(self.backoff_max_ms)),
        ]


def _path_text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def backoff_ms(attempt: int, initial_ms: float, max_ms: float, jitter: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): doubling from ``initial_ms``, capped,
    spread by +-``jitter`` so a fleet that lost the cloud together does not come back in lockstep."""
    base = min(max_ms, initial_ms * (2 ** min(attempt, 30)))
    return max(0.0, base * (1.0 + rng.uniform(-jitter, jitter)))
