"""An agent with mutual TLS and a token in front of ``fogline cloud serve`` with TLS and tokens.

With the right credentials the cloud answers; once the cloud drops the agent's token (a SIGHUP after
the tokens file changed) the agent keeps answering every request from the edge, with route reason
``cloud_unauthenticated``, and its metrics say so.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import numpy as np
import pytest

from fogline import codec
from fogline.agent.server import create_server
from fogline.demo.loopback import CloudProcess, device_config
from fogline.inference import grpc_service_pb2_grpc as pb_grpc
from fogline.security import add_token

trustme = pytest.importorskip("trustme")

pytestmark = [pytest.mark.integration, pytest.mark.models]

IMAGE = np.random.default_rng(5).uniform(0, 16, (1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def secure_cloud(model_repo, tmp_path_factory):
    """A TLS (mutual) + tokens cloud child process and the files an agent needs to reach it."""
    folder = tmp_path_factory.mktemp("secure-cloud")
    ca = trustme.CA()
    files = {name: folder / f"{name}.pem" for name in ("ca", "cloud", "agent")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(files["cloud"]))
    ca.issue_cert("cam-001").private_key_and_cert_chain_pem.write_to_path(str(files["agent"]))
    tokens = folder / "tokens"
    token = add_token(tokens, "cam-001")
    token_file = folder / "agent-token"
    token_file.write_text(token + "\n")
    extra = ["--tls-cert", str(files["cloud"]), "--tls-key", str(files["cloud"]),
             "--tls-client-ca", str(files["ca"]), "--tokens-file", str(tokens)]
    with CloudProcess(model_repo, extra=extra) as proc:
        yield proc, files, tokens, token_file


def agent_config(model_repo, files, token_file):
    cloud = (f"  cloud:\n    tls: {{ca_file: '{files['ca']}', cert_file: '{files['agent']}', "
             f"key_file: '{files['agent']}'}}\n    credentials: {{token_file: '{token_file}'}}")
    return device_config(("digits",), models_dir=model_repo, probe_interval_ms=50, extra_yaml=cloud)


def test_mtls_token_agent_uses_the_cloud_then_a_revoked_token_keeps_it_on_the_edge(model_repo, secure_cloud):
    proc, files, tokens, token_file = secure_cloud
    config = agent_config(model_repo, files, token_file)
    request = codec.request_to_proto(codec.InferRequest("digits", {"image": IMAGE}, parameters={"deadline_ms": 2000}))

    async def scenario():
        server, port = create_server(config, cloud=f"127.0.0.1:{proc.port}", warmup=False)
        await server.start()
        answers: list[codec.InferResponse] = []
        errors: list[BaseException] = []
        try:
            assert await server.link.wait_usable(20.0), list(proc.output)[-5:]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)

                async def ask(n):
                    for _ in range(n):
                        try:
                            answers.append(codec.response_from_proto(await stub.ModelInfer(request)))
                        except grpc.aio.AioRpcError as exc:
                            errors.append(exc)
                        await asyncio.sleep(0.01)

                await ask(10)
                before = len(answers)
                kept = tokens.read_text().splitlines()
                tokens.write_text("\n".join(line for line in kept if not line.startswith("cam-001")) + "\n")
                proc.proc.send_signal(signal.SIGHUP)  # the cloud revokes the token
                revoke_at = time.monotonic()
                await ask(60)  # requests keep coming while the agent notices
                server.refresh_gauges()
                metrics = server.metrics
                return (answers[:before], answers[before:], errors, server.link.view("digits").state,
                        metrics.cloud_auth_failures._value.get(),
                        metrics.link_state.labels("unauthenticated")._value.get(), time.monotonic() - revoke_at)
        finally:
            await server.stop(2.0)

    first, after, errors, state, failures, gauge, _ = asyncio.run(scenario())
    assert not errors  # no request lost
    assert [a.parameters["served_by"] for a in first] == ["cloud"] * 10
    assert len(after) == 60 and all(a.parameters["served_by"] == "edge" for a in after[-30:])
    reasons = {a.parameters["route_reason"] for a in after[-30:]}
    assert reasons == {"cloud_unauthenticated"}
    assert state == "cloud_unauthenticated" and gauge == 1
    assert 1 <= failures <= 3  # one refusal noticed, no retry storm
