"""The Prometheus ``/metrics`` endpoint both tiers serve: a registry over HTTP from a daemon thread.

``MetricsEndpoint(registry, host, port)`` starts serving at once (prometheus_client's WSGI server,
plain text exposition); port 0 picks a free one (``.port`` is the real one). Each server passes its
own ``CollectorRegistry``, never the global one, so several servers in one process do not collide.
Raises OSError when the port is taken. ``close()`` stops it.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


class MetricsEndpoint:
    """A running ``/metrics`` endpoint; ``registry`` is a ``CollectorRegistry`` or has one as ``.registry``."""

    def __init__(self, registry: CollectorRegistry | Any, host: str = "127.0.0.1", port: int = 0) -> None:
        registry = getattr(registry, "registry", registry)
        if not isinstance(registry, CollectorRegistry):
            raise ValueError("MetricsEndpoint: pass the server's metrics (or their CollectorRegistry)")
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self._httpd.server_port)
        log.info("metrics on %s", self.url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
