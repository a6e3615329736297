"""The cloud link against a v2 server that checks tokens (``fogline.security``) behind mutual TLS.

A refused token is a link state (``cloud_unauthenticated``), not a stream of errors: one refusal
counted per attempt, attempts paced by ``auth_retry_ms`` or a reload, pending calls failed with
``CloudUnauthenticated`` so the edge answers them.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from fake_v2 import PlainV2

from fogline import codec
from fogline.agent.cloud_link import CloudLink
from fogline.agent.link_auth import CloudUnauthenticated
from fogline.agent.link_settings import LinkSettings
from fogline.agent.router_types import CLOUD_UNAUTHENTICATED
from fogline.inference import grpc_service_pb2_grpc as pb_grpc
from fogline.security import AuthInterceptor, TokenSet, TokenStore, hash_token

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.integration

TOKEN = "agent-token-0123456789"


def tokens(*pairs):
    return TokenSet(tuple((device, hash_token(token)) for device, token in pairs))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("cam-001")
    files = {"ca": folder / "ca.pem", "server": folder / "server.pem", "client": folder / "client.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    return files


async def start_cloud(pki, store):
    server = grpc.aio.server(interceptors=[AuthInterceptor(store)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(PlainV2(), server)
    pem = pki["server"].read_bytes()
    creds = grpc.ssl_server_credentials([(pem, pem)], root_certificates=pki["ca"].read_bytes(),
                                        require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, port


def link_settings(pki, port, **kw):
    base = dict(endpoint=f"127.0.0.1:{port}", probe_interval_ms=50, connect_timeout_ms=2000,
                request_timeout_ms=2000, keepalive_timeout_ms=2000, backoff_initial_ms=50,
                backoff_max_ms=200, tls=True,
                ca_file=str(pki["ca"]), cert_file=str(pki["client"]), key_file=str(pki["client"]),
                token=TOKEN)
    base.update(kw)
    return LinkSettings(**base)


def request(value):
    return codec.InferRequest("m", {"x": np.full((1, 2), value, np.float32)}, id="c")


async def wait_state(link, state, timeout_s=5.0):
    for _ in range(int(timeout_s / 0.02)):
        if link.view("m").state == state:
            return True
        await asyncio.sleep(0.02)
    return False


def test_mtls_and_token_then_a_revoked_token_is_a_quiet_link_state(pki, caplog):
    store = TokenStore(tokens=tokens(("cam-001", TOKEN)))
    refusals = []

    async def scenario():
        server, port = await start_cloud(pki, store)
        link = CloudLink(link_settings(pki, port), on_auth_failure=lambda: refusals.append(1))
        await link.start()
        try:
            assert await link.wait_usable(5.0)
            answer = await link.submit(request(3.0))
            waiting = link.submit(codec.InferRequest("hang", {"x": np.zeros((1, 2), np.float32)}))
            await asyncio.sleep(0.1)
            store.replace(tokens(("someone-else", "other-token")))  # the cloud revokes the token
            with pytest.raises(CloudUnauthenticated):  # the call in flight fails over, none is lost
                await asyncio.wait_for(waiting, 5.0)
            assert await wait_state(link, CLOUD_UNAUTHENTICATED)
            with pytest.raises(CloudUnauthenticated):
                await link.submit(request(1.0))
            await asyncio.sleep(1.0)  # no retry storm: the next try waits for auth_retry_ms or a reload
            quiet = len(refusals)
            store.replace(tokens(("cam-001", TOKEN)))
            link.reauthenticate()  # what the agent's SIGHUP does
            assert await link.wait_usable(5.0)
            again = await link.submit(request(5.0))
            return answer, quiet, again
        finally:
            await link.close()
            await server.stop(None)

    with caplog.at_level("DEBUG", logger="fogline.agent.cloud_link"):
        answer, quiet, again = asyncio.run(scenario())
    assert answer.response.outputs["y"].tolist() == [[6.0, 6.0]]
    assert again.response.outputs["y"].tolist() == [[10.0, 10.0]]
    assert 1 <= quiet <= 2  # the refusal noticed (by a probe and/or the stream), then silence
    refused_lines = [r for r in caplog.records if "refused this agent's credentials" in r.getMessage()
                     and r.levelname == "ERROR"]
    assert len(refused_lines) == 1
    assert any("accepts this agent's credentials again" in r.getMessage() for r in caplog.records)


def test_a_wrong_token_at_start_is_retried_slowly_and_a_token_file_is_read_again(pki, tmp_path):
    store = TokenStore(tokens=tokens(("cam-001", TOKEN)))
    token_file = tmp_path / "token"
    token_file.write_text("not-the-token\n")
    refusals = []

    async def scenario():
        server, port = await start_cloud(pki, store)
        settings = link_settings(pki, port, token=None, token_file=str(token_file), auth_retry_ms=400)
        link = CloudLink(settings, on_auth_failure=lambda: refusals.append(1))
        await link.start()
        try:
            assert await wait_state(link, CLOUD_UNAUTHENTICATED)
            await asyncio.sleep(1.3)
            retried = len(refusals)
            token_file.write_text(f"{TOKEN}\n")  # a rotated token: picked up at the next retry
            assert await link.wait_usable(5.0)
            return retried, await link.submit(request(2.0)), link.stats.connects
        finally:
            await link.close()
            await server.stop(None)

    retried, answer, connects = asyncio.run(scenario())
    assert 2 <= retried <= 5  # about one attempt per auth_retry_ms (+-20 %), not one per backoff step
    assert answer.response.outputs["y"].tolist() == [[4.0, 4.0]]
    assert connects == 1  # refused attempts never counted as connected


def test_a_client_without_the_ca_never_gets_through(pki, tmp_path):
    other = trustme.CA()
    other_pem = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(other_pem))
    store = TokenStore(tokens=tokens(("cam-001", TOKEN)))

    async def scenario():
        server, port = await start_cloud(pki, store)
        link = CloudLink(link_settings(pki, port, ca_file=str(other_pem), connect_timeout_ms=500))
        await link.start()
        try:
            usable = await link.wait_usable(1.5)
            return usable, link.view("m").state
        finally:
            await link.close()
            await server.stop(None)

    usable, state = asyncio.run(scenario())
    # A TLS failure is a connection problem (backoff, breaker), not refused credentials.
    assert not usable and state != CLOUD_UNAUTHENTICATED
