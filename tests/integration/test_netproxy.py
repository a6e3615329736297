"""The network-condition proxy with real sockets on loopback: delay, jitter order, blackhole, reset,
bandwidth, and gRPC calls through it. Tolerances are generous: the test machine is small and shared."""

from __future__ import annotations

import asyncio
import statistics
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fogline.netproxy.proxy import BackgroundNetProxy, NetConditions, NetProxy

pytestmark = pytest.mark.integration


def run(coro, timeout: float = 30.0):
    """Run one async test body with a hard time bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _echo_server() -> asyncio.AbstractServer:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def _setup(**conditions):
    server = await _echo_server()
    proxy = NetProxy(target_host="127.0.0.1", target_port=server.sockets[0].getsockname()[1], seed=7)
    await proxy.start()
    proxy.set_conditions(**conditions)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    return server, proxy, reader, writer


async def _teardown(server, proxy, writer) -> None:
    writer.close()
    await proxy.stop()
    server.close()
    await server.wait_closed()


async def _rtt(reader, writer, n: int = 5) -> float:
    """Median round trip in ms of ``n`` one-byte ping-pongs."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        writer.write(b"x")
        await writer.drain()
        assert await reader.readexactly(1) == b"x"
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def test_delay_applies_each_way_and_changes_while_running():
    async def body():
        server, proxy, reader, writer = await _setup()
        try:
            clean = await _rtt(reader, writer)
            assert clean < 50, clean
            proxy.set_conditions(delay_ms=100)
            delayed = await _rtt(reader, writer)
            assert 195 <= delayed < 400, delayed  # one-way delay in each direction: RTT + 200 ms
            proxy.set_conditions(delay_ms=20)
            await _rtt(reader, writer, n=1)  # let bytes queued under the old delay drain
            assert 38 <= await _rtt(reader, writer) < 150
        finally:
            await _teardown(server, proxy, writer)

    run(body())


def test_heavy_tailed_jitter_delays_but_never_reorders():
    async def body():
        server, proxy, reader, writer = await _setup(delay_ms=5, jitter_ms=20, jitter_dist="pareto")
        try:
            sent = b"".join(b"%05d;" % i for i in range(300))
            for i in range(0, len(sent), 12):  # many small writes -> many separately delayed chunks
                writer.write(sent[i : i + 12])
                await writer.drain()
                await asyncio.sleep(0.001)
            got = await reader.readexactly(len(sent))
            assert got == sent
        finally:
            await _teardown(server, proxy, writer)

    run(body())


def test_blackhole_keeps_connections_open_then_resets_only_the_ones_that_lost_bytes():
    async def body():
        server, proxy, reader, writer = await _setup()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            assert await _rtt(idle_reader, idle_writer, n=1) < 100
            proxy.set_conditions(blackhole=True)
            writer.write(b"lost")
            await writer.drain()
            with pytest.raises(asyncio.TimeoutError):  # nothing comes back, but no EOF or reset either
                await asyncio.wait_for(reader.read(1), 0.6)
            assert proxy.open_connections == 2
            assert proxy.stats["up"]["dropped_bytes"] == 4
            proxy.set_conditions(blackhole=False)
            # The connection with a hole in its byte stream is reset; the idle one carries on.
            with pytest.raises(ConnectionError):
                data = await asyncio.wait_for(reader.read(1), 2)
                assert data == b"", data  # on some kernels a RST after close reads as EOF
                raise ConnectionResetError
            assert await _rtt(idle_reader, idle_writer, n=2) < 100
            r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await _rtt(r2, w2, n=1) < 100
            w2.close()
        finally:
            idle_writer.close()
            await _teardown(server, proxy, writer)

    run(body())


def test_reset_connections_sends_rst():
    async def body():
        server, proxy, reader, writer = await _setup()
        try:
            assert await _rtt(reader, writer, n=1) < 100
            assert proxy.reset_connections() == 1
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), 2)
            for _ in range(100):  # the handler notices and forgets the connection
                if proxy.open_connections == 0:
                    break
                await asyncio.sleep(0.02)
            assert proxy.open_connections == 0
        finally:
            await _teardown(server, proxy, writer)

    run(body())


def test_unreachable_target_resets_the_client():
    async def body():
        server = await _echo_server()
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        proxy = NetProxy(target_host="127.0.0.1", target_port=port)
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), 2)
            writer.close()
        finally:
            await proxy.stop()

    run(body())


def test_bandwidth_cap_paces_each_direction():
    async def body():
        server, proxy, reader, writer = await _setup(bandwidth_kbps=1600)  # 200 kB/s each way
        try:
            payload = bytes(range(256)) * 1200  # 307 200 bytes -> about 1.5 s at 200 kB/s
            t0 = time.perf_counter()
            writer.write(payload)
            got = await reader.readexactly(len(payload))
            elapsed = time.perf_counter() - t0
            assert got == payload
            assert 1.2 <= elapsed < 4.0, elapsed
            proxy.set_conditions()  # lift the cap: the same transfer is fast
            t0 = time.perf_counter()
            writer.write(payload)
            await reader.readexactly(len(payload))
            assert time.perf_counter() - t0 < 0.6
        finally:
            await _teardown(server, proxy, writer)

    run(body())


def test_grpc_calls_through_the_asyncio_proxy():
    async def body():
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        proxy = NetProxy(target_host="127.0.0.1", target_port=port)
        await proxy.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}")
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        try:
            reply = await stub.Check(request, timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            proxy.set_conditions(delay_ms=60)
            t0 = time.perf_counter()
            await stub.Check(request, timeout=5)
            assert 0.115 <= time.perf_counter() - t0 < 0.5

            proxy.set_conditions(blackhole=True)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Check(request, timeout=0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            proxy.set_conditions()  # the holed connection is reset; the channel reconnects
            for _ in range(20):  # a call racing the RST fails UNAVAILABLE, as on a real network
                try:
                    reply = await stub.Check(request, timeout=5, wait_for_ready=True)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    await asyncio.sleep(0.1)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert proxy.connections_total >= 2
        finally:
            await channel.close()
            await proxy.stop()
            await server.stop(None)

    run(body())


def test_background_proxy_serves_a_synchronous_grpc_client():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with BackgroundNetProxy(target_host="127.0.0.1", target_port=port) as proxy, \
                grpc.insecure_channel(proxy.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            proxy.set_conditions(delay_ms=50)
            t0 = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert 0.095 <= time.perf_counter() - t0 < 0.5
            assert proxy.reset_connections() == 1
            proxy.set_conditions()
            for _ in range(20):  # a call racing the RST fails UNAVAILABLE, as on a real network
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    time.sleep(0.1)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert proxy.describe()["connections_total"] >= 2
    finally:
        server.stop(None)


def test_the_proxy_in_timeline_mode_delays_real_bytes_by_d_of_t():
    """A step from 150 ms to 5 ms one way: an echo sent 50 ms after it still waits for the drain."""

    async def body():
        server = await _echo_server()
        proxy = NetProxy(target_host="127.0.0.1", target_port=server.sockets[0].getsockname()[1], seed=3,
                         timeline=True)
        await proxy.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            with pytest.raises(ValueError, match="jitter_slot_ms"):
                proxy.set_conditions(delay_ms=5, jitter_ms=3)  # refused in timeline mode...
            assert proxy.conditions == NetConditions()  # ...and nothing changed
            proxy.set_conditions(delay_ms=150)
            proxy.set_conditions(delay_ms=5)
            step = proxy.applied_at
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            writer.write(b"x")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
            took = (time.monotonic() - t0) * 1000
            expected = proxy.timeline.round_trip_ms(t0) if proxy.timeline else 0
            assert expected == pytest.approx((step + 0.15 - t0) * 1000 + 5, abs=3)  # ~100 ms drain + 5
            assert expected - 5 <= took <= expected + 60, (took, expected)
            described = proxy.describe()
            assert described["timeline"] is True and described["applied_at"] == step
        finally:
            writer.close()
            await proxy.stop()
            server.close()
            await server.wait_closed()

    run(body(), 20)
