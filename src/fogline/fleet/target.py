"""The cloud endpoint as a gRPC target: one address, a DNS name for every replica, or a fixed list.

``cloud.endpoint`` takes the forms of gRPC's own target syntax that name TCP servers:

- ``HOST:PORT``: one cloud, dialed by that name (gRPC resolves it and keeps one connection);
- ``dns:///NAME:PORT`` (or ``dns:NAME:PORT``): every address ``NAME`` resolves to is a replica (a
  Kubernetes headless Service resolves to every ready pod); the agent resolves it again every while
  and when a replica fails. ``dns://SERVER/...`` (a DNS server of its own) is not supported: the host's
  resolver answers;
- ``ipv4:10.0.0.1:8001,10.0.0.2:8001`` and ``ipv6:[fd00::1]:8001,[fd00::2]:8001``: a fixed list of
  replicas (a fleet reload may rewrite it).

``parse_target`` is pure (no lookups); ``fogline.fleet.model`` validates the key with it and the agent's
resolver (``fogline.agent.resolver``) turns a target into replica addresses. The port is required in
every form (gRPC would guess 443).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

#: A DNS name (or an IPv4 literal): labels of letters, digits, ``-`` and ``_``, dot-separated.
_DNS_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")

SCHEMES = ("dns:", "ipv4:", "ipv6:")
FORMS = "HOST:PORT, dns:///NAME:PORT, ipv4:ADDR:PORT,ADDR:PORT or ipv6:[ADDR]:PORT,[ADDR]:PORT"


@dataclass(frozen=True, order=True)
class Address:
    """One replica's address: an IP (or, for a ``HOST:PORT`` target, the name) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CloudTarget:
    """A parsed ``cloud.endpoint``."""

    text: str
    #: "single": one ``HOST:PORT``; "dns": every address of ``host``; "static": ``addresses``.
    kind: Literal["single", "dns", "static"]
    host: str = ""
    port: int = 0
    addresses: tuple[Address, ...] = ()

    @property
    def spread(self) -> bool:
        """The agent keeps one stream per replica (a name to resolve or a list), not one in all."""
        return self.kind != "single"


def has_scheme(value: str) -> bool:
    return value.strip().startswith(SCHEMES)


def parse_target(value: str) -> CloudTarget:
    """``value`` as a ``CloudTarget``; ``ValueError`` saying which form is expected otherwise."""
    text = str(value).strip()
    if text.startswith("dns:"):
        return _parse_dns(text)
    if text.startswith("ipv4:"):
        return CloudTarget(text, "static", addresses=_parse_list(text, "ipv4:", _ipv4))
    if text.startswith("ipv6:"):
        return CloudTarget(text, "static", addresses=_parse_list(text, "ipv6:", _ipv6))
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected {FORMS}, got {text!r}")
    return CloudTarget(text, "single", host=host.strip("[]"), port=int(port))


def _parse_dns(text: str) -> CloudTarget:
    rest = text[len("dns:"):]
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if not slash:
            raise ValueError(f"expected dns:///NAME:PORT, got {text!r}")
        if authority:
            raise ValueError(f"{text!r}: a DNS server of its own (dns://{authority}/...) is not supported; "
                             "write dns:///NAME:PORT and the host's resolver answers")
    name, sep, port = rest.rpartition(":")
    if not sep or not name or not _DNS_NAME.match(name):
        raise ValueError(f"expected dns:///NAME:PORT (a DNS name and a port), got {text!r}")
    return CloudTarget(text, "dns", host=name, port=_port(port, text))


def _parse_list(text: str, scheme: str, host_of) -> tuple[Address, ...]:
    items = [item.strip() for item in text[len(scheme):].split(",")]
    if not items or not all(items):
        raise ValueError(f"{text!r}: {scheme} takes a comma-separated list of addresses with ports")
    addresses: list[Address] = []
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: {item!r} needs a port ({scheme}ADDR:PORT)")
        address = Address(host_of(host, text), _port(port, text))
        if address in addresses:
            raise ValueError(f"{text!r}: {address} is listed twice")
        addresses.append(address)
    return tuple(addresses)


def _ipv4(host: str, text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IPv4 address") from None


def _ipv6(host: str, text: str) -> str:
    if not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"{text!r}: write IPv6 addresses in brackets with a port, e.g. ipv6:[fd00::1]:8001")
    try:
        return str(ipaddress.IPv6Address(host[1:-1]))
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None


def _port(port: str, text: str) -> int:
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1-65535, got {port!r}")
    return int(port)
