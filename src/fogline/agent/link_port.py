"""What the data plane needs of a cloud link: a view for the router and a way to send a request.

``fogline.agent.cloud_link.CloudLink`` (a gRPC stream to one v2 server) and
``fogline.agent.replica_set.ReplicaSet`` (one ``CloudLink`` per cloud replica, each request to the least
busy) are the real implementations; the unit tests' scripted clouds are others. The data plane reads
nothing else of a link, so anything with these two methods can stand behind it, and
``isinstance(x, CloudLinkPort)`` says whether it can.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fogline import codec
from fogline.agent.router_types import LinkView
from fogline.errors import Unavailable


class LinkLost(Unavailable):
    """The request got no answer because the connection failed (the stream broke or stalled, the link
    was down or closing): it may be sent again, to another replica. A cloud's own error for the
    request is a plain ``Unavailable`` and is not sent again."""


@dataclass
class CloudAnswer:
    """The cloud's answer to one request, and how long it took from sending to receiving (ms)."""

    response: codec.InferResponse
    elapsed_ms: float


@runtime_checkable
class CloudLinkPort(Protocol):
    def view(self, model: str) -> LinkView:
        """The link as the router sees it now, for a request for ``model``."""
        ...

    def submit(self, request: codec.InferRequest) -> asyncio.Future[CloudAnswer]:
        """Send one request; the future resolves with the answer or fails with ``Unavailable`` (never
        with a bare gRPC error; ``LinkLost`` when the connection, not the cloud, failed it). A future the caller stops waiting for must still be consumed."""
        ...
