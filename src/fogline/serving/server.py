"""The gRPC server factory both tiers use: one ``grpc.aio`` server with the v2 service, health,
reflection on request, interceptors, TLS, and a TCP or unix listen address.

``create_server(servicer, listen, ...) -> (GrpcServer, port)`` builds and binds it (nothing is served
until ``await server.start()``); ``port`` is the bound TCP port (0 for a unix socket).

- Options (``ServerOptions``): the message limit (both directions), HTTP/2 streams per connection,
  how often clients may ping (keepalive policing: more often earns a strike, ``max_ping_strikes``
  strikes a GOAWAY ``too_many_pings``) and the connection age after which clients are sent a GOAWAY
  so long-lived ones rebalance. ``grpc.so_reuseport`` is off: a second server on a port in use fails.
- Health: the standard ``grpc.health.v1`` service, SERVING (the whole server and the v2 service)
  once started, NOT_SERVING from the start of ``stop``.
- Reflection (``reflection=True``) lists the v2 service, health and reflection itself.
- Interceptors: e.g. ``fogline.security.AuthInterceptor`` (tokens); ``tls``: the
  ``fogline.security.TlsCredentials`` the port is bound with (reloadable; mutual TLS with a client CA).

``await server.stop(grace)`` turns health NOT_SERVING, lets calls in flight finish for at most
``grace`` seconds (``grpc.aio.Server.stop``), cancels what is left, and removes a unix socket file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from fogline.codec import MAX_MESSAGE_BYTES
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc
from fogline.security import TlsCredentials
from fogline.serving import address as addresses
from fogline.serving.address import ListenAddress

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True)
class ServerOptions:
    """The channel options of a server (see the module docstring); ``None`` leaves gRPC's default."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_concurrent_streams: int | None = None
    #: Clients pinging more often than this (without data) get a strike; None: no policing.
    min_ping_interval_ms: int | None = None
    max_ping_strikes: int | None = None
    #: GOAWAY after this long (0: never), then this long for the calls in flight to finish.
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 0.0

    def channel_options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if self.max_concurrent_streams is not None:
            options.append(("grpc.max_concurrent_streams", self.max_concurrent_streams))
        if self.min_ping_interval_ms is not None:
            # Clients may keep idle connections alive with pings, but not more often than this.
            options += [("grpc.keepalive_permit_without_calls", 1),
                        ("grpc.http2.min_ping_interval_without_data_ms", self.min_ping_interval_ms)]
        if self.max_ping_strikes is not None:
            options.append(("grpc.http2.max_ping_strikes", self.max_ping_strikes))
        if self.max_connection_age_s > 0:
            options += [("grpc.max_connection_age_ms", int(self.max_connection_age_s * 1000)),
                        ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace_s * 1000))]
        return options


class GrpcServer:
    """A bound gRPC server with its health service; started and stopped as one."""

    def __init__(self, server: grpc.aio.Server, health: HealthServicer, address: ListenAddress,
                 tls: TlsCredentials | None = None) -> None:
        self.grpc_server = server
        self.health = health
        self.address = address
        self.tls = tls

    async def start(self) -> None:
        await self.grpc_server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Health NOT_SERVING, calls in flight get ``grace`` seconds, then the socket file goes."""
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        addresses.release(self.address)


def create_server(servicer: pb_grpc.GRPCInferenceServiceServicer, listen: ListenAddress | str, *,
                  options: ServerOptions, interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                  tls: TlsCredentials | None = None, reflection_on: bool = True) -> tuple[GrpcServer, int]:
    """Build the server around ``servicer`` and bind it to ``listen``; returns it and the bound port
    (0 for a unix socket). ``ConfigError`` when the address cannot be used. Call from inside the
    event loop that will run it."""
    address = listen if isinstance(listen, ListenAddress) else addresses.parse_listen(listen)
    server = grpc.aio.server(options=options.channel_options(), interceptors=list(interceptors) or None)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflection_on:
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = addresses.bind(server, address, tls.credentials if tls is not None else None)
    return GrpcServer(server, health, address, tls), port
