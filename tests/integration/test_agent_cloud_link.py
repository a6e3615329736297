"""The cloud link against a plain v2 server that knows nothing about fogline (``fake_v2.PlainV2``: it
answers like a stock Triton/KServe would, and some model names make it misbehave on purpose, so the
link's failure handling shows)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time

import grpc
import numpy as np
import pytest
from fake_v2 import PlainV2

from fogline import codec
from fogline.agent.cloud_link import CloudLink
from fogline.agent.link_settings import LinkSettings
from fogline.errors import ConfigError, Unavailable
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration


class BareStream(PlainV2):
    """Answers unary ModelInfer, but its stream sends bare ModelInferResponse messages (as MLServer does)."""

    def __init__(self, version):
        super().__init__()
        self.version = version
        self.unary_calls = 0

    def answer(self, request):
        req = codec.request_from_proto(request)
        return codec.response_to_proto(codec.InferResponse(req.model_name, {"y": req.inputs["x"] * 2},
                                                           self.version, req.id))

    async def ModelInfer(self, request, context):
        self.unary_calls += 1
        return self.answer(request)

    async def ModelStreamInfer(self, request_iterator, context):
        async for msg in request_iterator:
            yield self.answer(msg)


async def start_server(port=0, servicer=None):
    server = grpc.aio.server()
    servicer = servicer or PlainV2()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, servicer, bound


@contextlib.asynccontextmanager
async def connected(servicer=None, clock=None, **settings_kw):
    """A test server and a started ``CloudLink`` to it; the link, then the server, closed on the way out."""
    server, servicer, port = await start_server(servicer=servicer)
    link = CloudLink(settings(port, **settings_kw), **({"clock": clock} if clock else {}))
    await link.start()
    try:
        yield link, servicer
    finally:
        await link.close()
        await server.stop(None)


def settings(port, **kw):
    base = dict(endpoint=f"127.0.0.1:{port}", probe_interval_ms=50, connect_timeout_ms=500,
                request_timeout_ms=400, keepalive_timeout_ms=2000, backoff_initial_ms=50, backoff_max_ms=200)
    base.update(kw)
    return LinkSettings(**base)


def request(model, value, id_="client-id"):
    return codec.InferRequest(model, {"x": np.full((1, 2), value, np.float32)}, id=id_)


def test_multiplexed_answers_rtt_from_probes_and_model_errors():
    async def scenario():
        async with connected() as (link, servicer):
            assert await link.wait_usable(5.0)
            await asyncio.sleep(0.3)
            probes_before_traffic = servicer.ready_calls
            answers = await asyncio.gather(*(link.submit(request("m", float(i), f"c{i}")) for i in range(20)))
            with pytest.raises(Unavailable, match="model boom failed"):
                await link.submit(request("boom", 1.0))
            assert link.view("boom").usable  # one error is not a pattern yet
            for _ in range(2):
                with pytest.raises(Unavailable):
                    await link.submit(request("boom", 1.0))
            benched = link.view("boom")
            view = link.view("m")
            return probes_before_traffic, answers, view, link.stats, benched

    probes, answers, view, stats, benched = asyncio.run(scenario())
    # Three errors in a row bench that model on the cloud; the link and other models carry on.
    assert not benched.usable and benched.state == "model_failing"
    assert probes >= 3  # probes ran while no request traffic flowed
    for i, answer in enumerate(answers):
        assert answer.response.id == f"c{i}"  # the client's id comes back, not the wire id
        assert answer.response.outputs["y"].tolist() == [[2.0 * i, 2.0 * i]]
    assert view.usable and view.rtt_ms is not None and 0 <= view.rtt_ms < 100
    assert stats.answered == 20 and stats.connects == 1


def test_stalled_stream_fails_pending_fast_and_reconnects():
    async def scenario():
        async with connected() as (link, _):
            assert await link.wait_usable(5.0)
            start = time.monotonic()
            with pytest.raises(Unavailable, match="stalled"):
                await link.submit(request("hang", 1.0))
            waited = time.monotonic() - start
            assert await link.wait_usable(5.0)
            answer = await link.submit(request("m", 3.0))
            return waited, answer, link.stats

    waited, answer, stats = asyncio.run(scenario())
    assert 0.35 <= waited < 1.5
    assert answer.response.outputs["y"].tolist() == [[6.0, 6.0]]
    assert stats.connects == 2 and stats.disconnects == 1


def test_broken_stream_fails_every_pending_request_at_once():
    async def scenario():
        async with connected(request_timeout_ms=10_000) as (link, _):
            assert await link.wait_usable(5.0)
            hung = [link.submit(request("hang", float(i))) for i in range(5)]
            await asyncio.sleep(0.05)
            start = time.monotonic()
            link.submit(request("die", 0.0))
            results = await asyncio.gather(*hung, return_exceptions=True)
            return time.monotonic() - start, results

    elapsed, results = asyncio.run(scenario())
    assert all(isinstance(r, Unavailable) for r in results), results
    assert elapsed < 0.5  # no waiting for any timeout


def test_cloud_down_then_back_on_the_same_port():
    async def scenario():
        server, _, port = await start_server()
        link = CloudLink(settings(port))
        await link.start()
        try:
            assert await link.wait_usable(5.0)
            await server.stop(None)
            await asyncio.sleep(0.3)
            view = link.view("m")
            with pytest.raises(Unavailable):
                await link.submit(request("m", 1.0))  # fails at once: nothing to send it on
            server, _, _ = await start_server(port)
            start = time.monotonic()
            assert await link.wait_usable(5.0)
            back_after = time.monotonic() - start
            answer = await link.submit(request("m", 2.0))
            return view, back_after, answer
        finally:
            await link.close()
            await server.stop(None)

    view, back_after, answer = asyncio.run(scenario())
    assert not view.usable and view.state in ("down", "connecting")
    assert back_after < 2.0
    assert answer.response.outputs["y"].tolist() == [[4.0, 4.0]]


@pytest.mark.parametrize("version", ["7", ""])
def test_auto_mode_switches_to_unary_for_a_non_triton_stream(version):
    """Version "7" makes the bare message unparseable (INTERNAL); "" makes it parse as an id-less error."""
    async def scenario():
        async with connected(servicer=BareStream(version)) as (link, servicer):
            assert await link.wait_usable(5.0)
            with pytest.raises(Unavailable):
                await link.submit(request("m", 1.0))  # the stream attempt fails fast...
            for _ in range(100):
                if link.mode == "unary" and link.stats.connects >= 2:
                    break
                await asyncio.sleep(0.02)
            assert await link.wait_usable(5.0)
            answers = await asyncio.gather(*(link.submit(request("m", float(i), f"u{i}")) for i in range(6)))
            return link.mode, answers, servicer.unary_calls

    mode, answers, unary_calls = asyncio.run(scenario())
    assert mode == "unary" and unary_calls == 6  # ...and from then on every request goes unary
    assert [a.response.id for a in answers] == [f"u{i}" for i in range(6)]
    assert answers[5].response.outputs["y"].tolist() == [[10.0, 10.0]]


def test_reported_compute_time_is_learned_and_fades_without_news():
    offset = [0.0]

    async def scenario():
        async with connected(clock=lambda: time.monotonic() + offset[0]) as (link, _):
            assert await link.wait_usable(5.0)
            answer = await link.submit(request("reports", 1.0))
            fresh = link.view("reports").cloud_compute_ms
            other = link.view("m").cloud_compute_ms
            offset[0] += 5.0  # five seconds without a word from the cloud about this model
            faded = link.view("reports").cloud_compute_ms
            return answer, fresh, other, faded

    answer, fresh, other, faded = asyncio.run(scenario())
    assert answer.response.parameters["compute_ms"] == 80.0
    assert fresh == pytest.approx(80.0, rel=0.01) and other == 0.0
    assert faded == pytest.approx(40.0, rel=0.05)


def make_cert(folder):
    """A self-signed certificate for 127.0.0.1 (openssl), as a cloud behind TLS would present."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return key, cert


class TokenChecking(PlainV2):
    async def ServerReady(self, request, context):
        if ("authorization", "Bearer s3cret") not in tuple(context.invocation_metadata()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        return await super().ServerReady(request, context)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_and_bearer_token(tmp_path):
    key, cert = make_cert(tmp_path)

    async def scenario(token):
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(TokenChecking(), server)
        creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        link = CloudLink(settings(port, tls=True, ca_file=str(cert), token=token))
        await link.start()
        try:
            if not await link.wait_usable(3.0):
                return None
            return await link.submit(request("m", 4.0))
        finally:
            await link.close()
            await server.stop(None)

    answer = asyncio.run(scenario("s3cret"))
    assert answer is not None and answer.response.outputs["y"].tolist() == [[8.0, 8.0]]
    assert asyncio.run(scenario("wrong")) is None  # probes are refused: never usable
    assert "s3cret" not in repr(settings(1, token="s3cret"))
    with pytest.raises(ConfigError, match="ca_file"):
        CloudLink(settings(1, tls=True, ca_file=str(tmp_path / "missing.pem")))
