"""Turning the cloud target into replica addresses (``fogline.fleet.target`` parses it).

- ``HOST:PORT``: one replica, the endpoint as written (gRPC dials the name; TLS checks it);
- ``ipv4:`` / ``ipv6:`` lists: the listed addresses, no lookup;
- ``dns:///NAME:PORT``: every address ``NAME`` resolves to (A and AAAA records), through the host's
  resolver (``loop.getaddrinfo``, off the event loop), in a stable order.

``Resolver`` is the one I/O piece; ``fogline.agent.replica_set.ReplicaSet`` calls it at start, every
``reresolve_s`` and when a replica fails, and the tests hand it a lookup of their own.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fogline.fleet.target import Address, CloudTarget

#: ``lookup(name, port) -> addresses``: the DNS step, replaceable in tests.
Lookup = Callable[[str, int], Awaitable[list[Address]]]


@dataclass(frozen=True)
class Replica:
    """One replica to dial: ``endpoint`` (what the link connects to) and the name its certificate and
    ``:authority`` carry when the endpoint is a resolved address (None: the endpoint's own host)."""

    endpoint: str
    server_name: str | None = None


async def getaddrinfo_lookup(name: str, port: int) -> list[Address]:
    """Every TCP address ``name`` resolves to, through the host's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return sorted({Address(str(info[4][0]), int(info[4][1])) for info in infos})


class Resolver:
    """The replicas of one target, looked up again on every ``resolve()``."""

    def __init__(self, target: CloudTarget, lookup: Lookup = getaddrinfo_lookup) -> None:
        self.target = target
        self._lookup = lookup

    async def resolve(self) -> list[Replica]:
        """The replicas now; raises ``OSError`` (``socket.gaierror``) when the name does not resolve."""
        target = self.target
        if target.kind == "single":
            return [Replica(target.text)]
        if target.kind == "static":
            return [Replica(str(address)) for address in target.addresses]
        addresses = await self._lookup(target.host, target.port)
        return [Replica(str(address), server_name=target.host) for address in addresses]
