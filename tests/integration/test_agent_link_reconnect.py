"""How fast the cloud link comes back after an outage, and that its reconnects stay bounded.

A real gRPC server on loopback behind the network proxy: a 5 s blackhole resets every connection
that lost bytes when it lifts, and the link (asked for by a busy router) must be usable again
within a fraction of a second. Against a server that accepts and drops every connection, the
attempts (gRPC's own retries inside each one included) stay at a few per second."""

from __future__ import annotations

import asyncio
import time

import pytest
from grpc import aio

from fogline.agent.cloud_link import CloudLink
from fogline.agent.link_settings import LinkSettings
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc
from fogline.netproxy.proxy import NetProxy

pytestmark = pytest.mark.integration


def fast_link(endpoint: str) -> LinkSettings:
    """The link these tests were written against: shorter timeouts than a fleet file's defaults."""
    return LinkSettings(endpoint=endpoint, connect_timeout_ms=1000, request_timeout_ms=3000,
                        keepalive_timeout_ms=2000)


class ReadyOnly(pb_grpc.GRPCInferenceServiceServicer):
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelStreamInfer(self, request_iterator, context):
        async for _ in request_iterator:
            pass
        if False:  # an async generator that never answers: the stream just stays open
            yield pb.ModelStreamInferResponse()


async def _busy_until(link: CloudLink, predicate, timeout_s: float) -> float | None:
    """Ask for the link every 10 ms (as a router with traffic does) until ``predicate(view)``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate(link.view("m")):
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    return None


def test_link_is_usable_again_soon_after_a_blackhole_lifts():
    async def body():
        server = aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(ReadyOnly(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        proxy = NetProxy(target_host="127.0.0.1", target_port=port, seed=1, timeline=True)
        await proxy.start()
        proxy.set_conditions(delay_ms=5)
        link = CloudLink(fast_link(f"127.0.0.1:{proxy.port}"))
        await link.start()
        try:
            assert await _busy_until(link, lambda v: v.usable, 10.0) is not None
            proxy.set_conditions(delay_ms=5, blackhole=True)
            assert await _busy_until(link, lambda v: not v.usable, 5.0) is not None
            await _busy_until(link, lambda v: False, 5.0)  # stay busy through the outage
            proxy.set_conditions(delay_ms=5)
            return await _busy_until(link, lambda v: v.usable, 5.0), link.stats.connects
        finally:
            await link.close()
            await proxy.stop()
            await server.stop(None)

    back_after, connects = asyncio.run(asyncio.wait_for(body(), 40))
    assert back_after is not None and back_after < 0.5, back_after  # was ~1 s before start pacing
    assert connects >= 2


def test_reconnect_attempts_against_a_dropping_server_stay_bounded():
    async def body():
        accepts: list[float] = []

        async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepts.append(time.monotonic())
            writer.transport.abort()

        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        link = CloudLink(fast_link(f"127.0.0.1:{server.sockets[0].getsockname()[1]}"))
        await link.start()
        try:
            await _busy_until(link, lambda v: False, 4.0)
        finally:
            await link.close()
            server.close()
            await server.wait_closed()
        return len(accepts)

    accepts = asyncio.run(asyncio.wait_for(body(), 30))
    assert 2 <= accepts <= 4 * 8, accepts  # about 5 a second (gRPC retries inside each attempt)
