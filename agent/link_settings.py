"""How the cloud link connects: endpoint, timeouts, keepalive, probing, backoff, TLS and token.

``LinkSettings`` is the frozen set of knobs ``agent.cloud_link.CloudLink`` runs with, usually built
from the fleet config's ``cloud`` and ``routing`` blocks by ``LinkSettings.from_config``.
``backoff_ms`` is the reconnect schedule: capped exponential growth with jitter (capped lower, at
``backoff_busy_max_ms``, while requests are arriving; ``CloudLink`` paces attempts by their start times).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from fogline.errors import ConfigError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LinkSettings:
    """How the link connects, probes and gives up (all times in ms)."""

    endpoint: str
    #: "stream": Triton's multiplexed ModelStreamInfer; "unary": one ModelInfer call per request (for
    #: servers whose stream is not Triton's, such as MLServer); "auto": stream, and switch to unary for
    #: good if the server's stream turns out unusable before it ever answered.
    mode: str = "auto"
    connect_timeout_ms: float = 1000.0
    #: An answer overdue by this much means the stream stalled: it is torn down and rebuilt.
    request_timeout_ms: float = 3000.0
    keepalive_ms: float = 10000.0
    keepalive_timeout_ms: float = 2000.0
    probe_interval_ms: float = 200.0
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
    rtt_percentile: float = 95.0
    #: TLS towards the cloud: server verified against ``ca_file`` (system roots when None), with a client
    #: certificate when ``cert_file``/``key_file`` are set.
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: Sent as ``authorization: Bearer <token>`` on every call.
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "stream", "unary"):
            raise ValueError(f"link mode must be auto, stream or unary, got {self.mode!r}")

    @classmethod
    def from_config(cls, cloud: Any, routing: Any = None, **overrides: Any) -> LinkSettings:
        """From the fleet config's ``cloud`` (and ``routing`` for the probe interval) objects."""
        fields: dict[str, Any] = {"endpoint": getattr(cloud, "endpoint", None)}
        for name in ("connect_timeout_ms", "request_timeout_ms"):
            value = getattr(cloud, name, None)
            if value is not None:
                fields[name] = float(value)
        keepalive = getattr(cloud, "keepalive", None)
        if isinstance(keepalive, (int, float)) and not isinstance(keepalive, bool):
            fields["keepalive_ms"] = float(keepalive)
        elif keepalive is not None:
            for src, dst in (("time_ms", "keepalive_ms"), ("interval_ms", "keepalive_ms"),
                             ("timeout_ms", "keepalive_timeout_ms")):
                value = getattr(keepalive, src, None)
                if value is not None:
                    fields[dst] = float(value)
        tls = getattr(cloud, "tls", None)
        if tls is not None and getattr(tls, "enabled", False):
            fields["tls"] = True
            for name in ("ca_file", "cert_file", "key_file"):
                value = getattr(tls, name, None)
                fields[name] = None if value is None else str(value)
        token = getattr(getattr(cloud, "credentials", None), "token", None)
        if token:
            fields["token"] = str(token)
        interval = getattr(routing, "probe_interval_ms", None) if routing is not None else None
        if interval is not None:
            fields["probe_interval_ms"] = float(interval)
        percentile = getattr(routing, "hedge_percentile", None) if routing is not None else None
        if percentile is not None:
            fields["rtt_percentile"] = float(percentile)
        fields.update(overrides)
        if not fields.get("endpoint"):
            raise ValueError("the cloud link needs an endpoint (HOST:PORT)")
        return cls(**fields)

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
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def channel_options(self) -> list[tuple[str, Any]]:
        return [
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


def backoff_ms(attempt: int, initial_ms: float, max_ms: float, jitter: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): doubling from ``initial_ms``, capped,
    spread by +-``jitter`` so a fleet that lost the cloud together does not come back in lockstep."""
    base = min(max_ms, initial_ms * (2 ** min(attempt, 30)))
    return max(0.0, base * (1.0 + rng.uniform(-jitter, jitter)))
