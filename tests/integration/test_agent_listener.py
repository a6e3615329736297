"""The agent's own listener: a unix domain socket, and TLS + tokens for apps on other hosts."""

from __future__ import annotations

import asyncio
import socket
import stat

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fogline import codec
from fogline.agent import cli as agent_cli
from fogline.agent.server import create_server
from fogline.demo.loopback import device_config
from fogline.errors import ConfigError
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc
from fogline.security import add_token
from fogline.serving.address import parse_listen

pytestmark = [pytest.mark.integration, pytest.mark.models]

IMAGE = np.random.default_rng(3).uniform(0, 16, (1, 8, 8)).astype(np.float32)


def digits():
    return codec.request_to_proto(codec.InferRequest("digits", {"image": IMAGE}))


def test_fleet_listen_and_serving_keys():
    from fogline.fleet import parse_fleet
    from fogline.fleet.errors import FleetConfigError

    text = ("version: 1\ndefaults:\n  serving: {auth: {tokens_file: /etc/fogline/app-tokens}}\n"
            "devices:\n  cam-1: {listen: 'unix:///run/fogline/agent.sock'}\n  cam-2: {listen: 'unix://x.sock'}\n")
    with pytest.raises(FleetConfigError, match=r"devices\.cam-2\.listen: .*unix:// takes an absolute path"):
        parse_fleet(text)
    device = parse_fleet(text.replace("cam-2: {listen: 'unix://x.sock'}", "cam-2: {}")).device("cam-1")
    assert device.listen == "unix:///run/fogline/agent.sock"
    assert str(device.serving.auth.tokens_file) == "/etc/fogline/app-tokens"


def test_parse_listen_addresses():
    assert parse_listen("unix:///run/fogline/agent.sock").target() == "unix:/run/fogline/agent.sock"
    assert parse_listen("unix:rel/agent.sock").describe() == "unix:rel/agent.sock"
    assert parse_listen("[::1]:0").target() == "[::1]:0"
    assert parse_listen("127.0.0.1:8500").describe(8500) == "127.0.0.1:8500"
    for bad in ("unix://run/agent.sock", "unix:", "unix:///run/", "nope", "unix:///" + "x" * 120):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_unix_socket_listener(model_repo, tmp_path):
    path = tmp_path / "run" / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a crashed agent's leftover file
    path.parent.mkdir()
    stale.bind(str(path))
    stale.close()
    config = device_config(("digits",), models_dir=model_repo)
    listen = f"unix://{path}"

    async def scenario():
        server, port = create_server(config, listen=listen, cloud="", warmup=False)
        await server.start()
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
                answer = codec.response_from_proto(
                    await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(digits()))
            with pytest.raises(ConfigError, match="another process is serving there"):
                create_server(config, listen=listen, cloud="", warmup=False)
            return port, mode, answer, path.exists()
        finally:
            await server.stop(1.0)

    port, mode, answer, existed = asyncio.run(scenario())
    assert port == 0 and mode == 0o660 and existed
    assert answer.parameters["served_by"] == "edge" and answer.outputs["probabilities"].shape == (1, 10)
    assert not path.exists()  # removed on a clean stop


def test_listener_not_a_socket_is_refused(model_repo, tmp_path):
    path = tmp_path / "agent.sock"
    path.write_text("not a socket")
    config = device_config(("digits",), models_dir=model_repo)
    with pytest.raises(ConfigError, match="not a socket"):
        asyncio.run(_create(config, listen=f"unix://{path}"))
    assert path.read_text() == "not a socket"


async def _create(config, **kw):
    return create_server(config, cloud="", warmup=False, **kw)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    folder = tmp_path_factory.mktemp("agent-pki")
    ca = trustme.CA()
    files = {name: folder / f"{name}.pem" for name in ("ca", "server", "client")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    ca.issue_cert("app-1").private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    return files


def test_listener_with_mutual_tls_and_tokens(model_repo, tmp_path, pki):
    tokens = tmp_path / "tokens"
    token = add_token(tokens, "app-1")
    serving = (f"  serving:\n    tls: {{cert_file: '{pki['server']}', key_file: '{pki['server']}', "
               f"client_ca_file: '{pki['ca']}'}}\n    auth: {{tokens_file: '{tokens}'}}")
    config = device_config(("digits",), models_dir=model_repo, extra_yaml=serving)
    client_pem = pki["client"].read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes(), private_key=client_pem,
                                         certificate_chain=client_pem)
    no_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())

    async def scenario():
        server, port = create_server(config, cloud="", warmup=False)
        await server.start()
        out = {}
        try:
            target = f"127.0.0.1:{port}"
            async with grpc.aio.secure_channel(target, creds) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                out["health"] = (await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest())).status
                for label, metadata in (("none", None), ("wrong", (("authorization", "Bearer nope"),))):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.ModelInfer(digits(), metadata=metadata)
                    out[label] = info.value.code()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ServerReady(pb.ServerReadyRequest())
                out["ready_without"] = info.value.code()
                good = (("authorization", f"Bearer {token}"),)
                out["answer"] = codec.response_from_proto(await stub.ModelInfer(digits(), metadata=good))
                # ``fogline agent status`` over the same mutual TLS, with the token (and refused without).
                token_file = tmp_path / "app-1.token"
                token_file.write_text(token + "\n")
                tls_flags = ["--listen", target, "--ca-file", str(pki["ca"]), "--cert-file", str(pki["client"])]
                out["status"] = await asyncio.to_thread(agent_cli.main, ["status", *tls_flags, "--token-file",
                                                                         str(token_file), "--json"])
                out["status_no_token"] = await asyncio.to_thread(agent_cli.main, ["status", *tls_flags])
                # A token removed from the file stops working after the reload (SIGHUP).
                tokens.write_text("# nobody\n")
                server.apply_config(config)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ModelInfer(digits(), metadata=good)
                out["revoked"] = info.value.code()
            async with grpc.aio.insecure_channel(target) as plain:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.GRPCInferenceServiceStub(plain).ServerLive(pb.ServerLiveRequest(), timeout=3)
                out["plaintext"] = info.value.code()
            async with grpc.aio.secure_channel(target, no_cert) as anonymous:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await pb_grpc.GRPCInferenceServiceStub(anonymous).ServerLive(
                        pb.ServerLiveRequest(), metadata=good, timeout=3)
                out["no_client_cert"] = info.value.code()
            out["failures"] = server.metrics.auth_failures.labels("unknown")._value.get()
        finally:
            await server.stop(1.0)
        return out

    out = asyncio.run(scenario())
    assert out["health"] == health_pb2.HealthCheckResponse.SERVING  # probes need no token
    assert out["none"] == out["wrong"] == out["ready_without"] == grpc.StatusCode.UNAUTHENTICATED
    assert out["answer"].parameters["served_by"] == "edge"
    assert (out["status"], out["status_no_token"]) == (0, 1)
    assert out["revoked"] == grpc.StatusCode.UNAUTHENTICATED
    assert out["plaintext"] == out["no_client_cert"] == grpc.StatusCode.UNAVAILABLE  # refused in the handshake
    assert out["failures"] >= 2
