"""The cloud tier's TLS, mutual TLS, bearer tokens, reload and per-device limit, with real certificates.

Certificates are made for the run with ``trustme``; servers run on loopback in background threads
(one event loop each) over the same loaded models; clients are plain synchronous gRPC stubs and, for
wire compatibility, an unmodified ``tritonclient.grpc`` client in a subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import queue
import textwrap
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from cloud_thread import CloudThread, metric, run_python
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fogline import codec
from fogline.cloud.server import load_models
from fogline.cloud.settings import ServingSettings
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc
from fogline.security import add_token

trustme = pytest.importorskip("trustme")

pytestmark = [pytest.mark.integration, pytest.mark.models, pytest.mark.slow]

HOSTS = ("localhost", "127.0.0.1")


class Pki:
    """A server CA and certificate, a client CA with a client certificate, and strangers' CAs."""

    def __init__(self, root) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.client_ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.server_cert = self._write(self.ca.issue_cert(*HOSTS), "server")
        self.client_cert = self._write(self.client_ca.issue_cert("cam-001"), "client")
        self.stranger_cert = self._write(self.other_ca.issue_cert("mallory"), "stranger")
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.client_ca_file = root / "client-ca.pem"
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_file))

    def _write(self, cert, name: str) -> tuple:
        chain, key = self.root / f"{name}.pem", self.root / f"{name}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        return chain, key

    def channel(self, address: str, *, ca=None, client=None) -> grpc.Channel:
        ca = ca or self.ca
        kwargs = {}
        if client is not None:
            kwargs = {"private_key": client[1].read_bytes(), "certificate_chain": client[0].read_bytes()}
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.cert_pem.bytes(), **kwargs))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def models(model_repo):
    return list(load_models(ServingSettings(device="cpu", torch_threads=1), model_repo))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens"
    return path, {device: add_token(path, device) for device in ("cam-001", "cam-002")}


def serve(models, **settings) -> CloudThread:
    base = {"listen": "127.0.0.1:0", "device": "cpu", "metrics_port": None, "max_batch_size": 8}
    return CloudThread(ServingSettings(**{**base, **settings}), models, host="localhost")


def serving(models, **settings):
    """A module fixture's body: a server with ``settings`` for the module's tests, then stopped."""
    server = serve(models, **settings)
    yield server
    server.stop()


def server_tls(pki) -> dict:
    """The settings that make a server speak TLS with the run's server certificate."""
    return {"tls_cert_file": pki.server_cert[0], "tls_key_file": pki.server_cert[1]}


@pytest.fixture(scope="module")
def tls_cloud(models, pki, tokens):
    yield from serving(models, **server_tls(pki), tokens_file=tokens[0], metrics_port=0)


@pytest.fixture(scope="module")
def mtls_cloud(models, pki, tokens):
    yield from serving(models, **server_tls(pki), tls_client_ca_file=pki.client_ca_file, tokens_file=tokens[0],
                       max_inflight_per_device=1, max_batch_size=1, metrics_port=0)


@pytest.fixture(scope="module")
def plain_cloud(models):
    yield from serving(models)


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(n, 8, 8)).astype(np.float32)


def request(model: str, inputs: dict, rid: str = "") -> pb.ModelInferRequest:
    return codec.request_to_proto(codec.InferRequest(model, inputs, id=rid))


def digits(seed: int = 0, rid: str = "") -> pb.ModelInferRequest:
    return request("digits", {"image": images(3, seed)}, rid)


def health_status(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


class OpenStream:
    """A ModelStreamInfer call held open: ``ask`` sends one request and waits for its answer."""

    def __init__(self, stub, token: str) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._calls = stub.ModelStreamInfer(
            iter(self._requests.get, None), metadata=bearer(token), timeout=120
        )

    def ask(self, req: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        self._requests.put(req)
        return next(self._calls)

    def close(self) -> None:
        self._requests.put(None)


# ---------------------------------------------------------------------------------------------- TLS


def test_plaintext_client_to_a_tls_cloud_fails(tls_cloud):
    with grpc.insecure_channel(tls_cloud.address) as channel:
        assert code_of(lambda: health_status(channel)) == grpc.StatusCode.UNAVAILABLE


def test_client_trusting_another_ca_fails(tls_cloud, pki):
    with pki.channel(tls_cloud.address, ca=pki.other_ca) as channel:
        assert code_of(lambda: health_status(channel)) == grpc.StatusCode.UNAVAILABLE
    with pki.channel(tls_cloud.address) as channel:
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING


def test_mutual_tls_refuses_a_client_without_a_certificate_or_with_a_stranger_one(mtls_cloud, pki):
    with pki.channel(mtls_cloud.address) as channel:
        assert code_of(lambda: health_status(channel)) == grpc.StatusCode.UNAVAILABLE
    with pki.channel(mtls_cloud.address, client=pki.stranger_cert) as channel:
        assert code_of(lambda: health_status(channel)) == grpc.StatusCode.UNAVAILABLE
    with pki.channel(mtls_cloud.address, client=pki.client_cert) as channel:
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------------------------------- tokens


def test_health_is_open_every_v2_call_needs_a_token_and_reflection_is_off(tls_cloud, pki, tokens):
    before = tls_cloud.metrics_text()
    with pki.channel(tls_cloud.address) as channel:
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert code_of(lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        wrong = bearer("not-a-token")
        assert code_of(lambda: stub.ModelInfer(digits(), metadata=wrong, timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        basic = (("authorization", "Basic abc"),)
        assert code_of(lambda: stub.ServerReady(pb.ServerReadyRequest(), metadata=basic, timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        replies = stub.ModelStreamInfer(iter([digits()]), metadata=wrong, timeout=10)
        assert code_of(lambda: list(replies)) == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ServerLive(pb.ServerLiveRequest(), metadata=bearer(tokens[1]["cam-001"]), timeout=10).live

        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        assert code_of(lambda: list(reflect.ServerReflectionInfo(iter([ask]), timeout=10))) in (
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.StatusCode.UNAUTHENTICATED,
        )
    after = tls_cloud.metrics_text()
    name = "fogline_cloud_auth_failures_total"
    assert metric(after, name, reason="missing") >= metric(before, name, reason="missing") + 1
    assert metric(after, name, reason="unknown") - metric(before, name, reason="unknown") >= 2
    assert metric(after, name, reason="malformed") - metric(before, name, reason="malformed") >= 1


def test_the_right_token_gives_the_plaintext_answers_and_is_counted_by_device(
    tls_cloud, plain_cloud, pki, tokens
):
    token = tokens[1]["cam-002"]
    text = np.array([b"the cat sat on the mat", b"edge inference over TLS"], dtype=object)
    cases = [digits(5, "u-d"), request("minilm", {"text": text}, "u-m")]
    with grpc.insecure_channel(plain_cloud.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        plain = [codec.response_from_proto(stub.ModelInfer(c, timeout=30)) for c in cases]
    with pki.channel(tls_cloud.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        secure = [
            codec.response_from_proto(stub.ModelInfer(c, metadata=bearer(token), timeout=30)) for c in cases
        ]
        streamed = list(stub.ModelStreamInfer(iter(cases), metadata=bearer(token), timeout=30))
    by_id = {r.infer_response.id: codec.response_from_proto(r.infer_response) for r in streamed}
    assert all(not r.error_message for r in streamed) and set(by_id) == {"u-d", "u-m"}
    for want, got in zip(plain, secure, strict=True):
        assert want.outputs.keys() == got.outputs.keys()
        for key in want.outputs:
            np.testing.assert_allclose(got.outputs[key], want.outputs[key], atol=1e-5)
            np.testing.assert_allclose(by_id[want.id].outputs[key], want.outputs[key], atol=1e-5)
        assert got.parameters["served_by"] == "cloud"
    assert metric(tls_cloud.metrics_text(), "fogline_cloud_device_requests_total", device="cam-002") >= 4


# ------------------------------------------------------------------------------------------- reload


def test_reload_revokes_a_removed_token_keeps_open_streams_and_picks_up_a_new_certificate(
    models, pki, tmp_path
):
    path = tmp_path / "tokens"
    keep, drop = add_token(path, "keep-1"), add_token(path, "drop-1")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(pki.server_cert[0].read_bytes())
    key_file.write_bytes(pki.server_cert[1].read_bytes())
    server = serve(models, tls_cert_file=cert_file, tls_key_file=key_file, tokens_file=path)
    try:
        old_channel = pki.channel(server.address)
        stub = pb_grpc.GRPCInferenceServiceStub(old_channel)
        kept, dropped = OpenStream(stub, keep), OpenStream(stub, drop)
        assert not kept.ask(digits(1, "k1")).error_message
        assert not dropped.ask(digits(1, "d1")).error_message

        # A bad file is refused and the last good set stays in force.
        good = path.read_text()
        path.write_text(good + "garbage-line\n")
        errors = server.reload()
        assert len(errors) == 1 and ":3:" in str(errors[0])
        assert stub.ServerLive(pb.ServerLiveRequest(), metadata=bearer(drop), timeout=10).live

        # Remove drop-1 and move the server to a certificate of a new CA.
        path.write_text("".join(line for line in good.splitlines(True) if not line.startswith("drop-1")))
        new_ca = trustme.CA()
        new_cert = new_ca.issue_cert(*HOSTS)
        cert_file.write_bytes(b"".join(blob.bytes() for blob in new_cert.cert_chain_pems))
        key_file.write_bytes(new_cert.private_key_pem.bytes())
        assert server.reload() == []
        # the revoked token: refused on its next call, and its open stream ends at its next message
        assert code_of(lambda: stub.ModelInfer(digits(), metadata=bearer(drop), timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert code_of(lambda: dropped.ask(digits(2, "d2"))) == grpc.StatusCode.UNAUTHENTICATED
        # the kept token: its stream, opened before the reload on the old certificate, goes on
        reply = kept.ask(digits(2, "k2"))
        assert not reply.error_message and reply.infer_response.id == "k2"
        assert stub.ServerLive(pb.ServerLiveRequest(), metadata=bearer(keep), timeout=10).live
        # a new connection gets the new certificate: trusting the old CA fails, the new one works
        with pki.channel(server.address) as channel:
            assert code_of(lambda: health_status(channel)) == grpc.StatusCode.UNAVAILABLE
        with pki.channel(server.address, ca=new_ca) as channel:
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        # and the old connection still works (established connections keep their certificate)
        assert stub.ServerLive(pb.ServerLiveRequest(), metadata=bearer(keep), timeout=10).live
        kept.close()
        old_channel.close()
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------- limits


def test_one_device_past_its_inflight_limit_is_refused_while_another_keeps_working(mtls_cloud, pki, tokens):
    flood, calm = tokens[1]["cam-001"], tokens[1]["cam-002"]
    text = np.array([b"a long sentence to keep the model busy for a while " * 8] * 16, dtype=object)
    heavy = request("minilm", {"text": text})
    with pki.channel(mtls_cloud.address, client=pki.client_cert) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def flood_one(_):
            try:
                stub.ModelInfer(heavy, metadata=bearer(flood), timeout=60)
                return "OK"
            except grpc.RpcError as exc:
                return exc.code().name

        with ThreadPoolExecutor(12) as pool:
            floods = [pool.submit(flood_one, i) for i in range(12)]
            calm_codes = []
            for i in range(4):
                try:
                    stub.ModelInfer(digits(i), metadata=bearer(calm), timeout=60)
                    calm_codes.append("OK")
                except grpc.RpcError as exc:
                    calm_codes.append(exc.code().name)
            results = [f.result() for f in floods]
    assert "RESOURCE_EXHAUSTED" in results and "OK" in results
    assert set(results) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert calm_codes == ["OK"] * 4
    text = mtls_cloud.metrics_text()
    assert metric(text, "fogline_cloud_device_throttled_total", device="cam-001") >= 1
    assert metric(text, "fogline_cloud_device_throttled_total", device="cam-002") == 0


def test_a_stream_past_its_devices_limit_is_refused_then_paced_not_answered_with_refusals(mtls_cloud, pki, tokens):
    # Limit 1: a stream that sends 30 requests at once learns it is over the limit from its first
    # refusals; after that it is read only when its device has a free slot, so the rest wait in the
    # transport and are served one by one instead of being refused (which would keep the server busy).
    token = tokens[1]["cam-002"]
    name = "fogline_cloud_device_throttled_total"
    before = metric(mtls_cloud.metrics_text(), name, device="cam-002")
    with pki.channel(mtls_cloud.address, client=pki.client_cert) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        sent = [digits(i, rid=str(i)) for i in range(30)]
        replies = list(stub.ModelStreamInfer(iter(sent), metadata=bearer(token), timeout=120))
    assert sorted(r.infer_response.id for r in replies) == sorted(str(i) for i in range(30))  # none lost
    refused = [r for r in replies if r.error_message]
    assert all(r.error_message.startswith("[RESOURCE_EXHAUSTED] ") for r in refused)
    assert 1 <= len(refused) <= 5, [r.infer_response.id for r in refused]
    throttled = metric(mtls_cloud.metrics_text(), name, device="cam-002") - before
    assert throttled == len(refused)


# ------------------------------------------------------------------------------------------ tritonclient

TRITON = textwrap.dedent(
    """
    import json, queue, sys
    import numpy as np
    import tritonclient.grpc as g

    address, ca_file, token = sys.argv[1:4]
    images = np.random.default_rng(5).uniform(0, 16, (3, 8, 8)).astype(np.float32)
    client = g.InferenceServerClient(address, ssl=True, root_certificates=ca_file)
    headers = {"authorization": f"Bearer {token}"}
    inp = g.InferInput("image", list(images.shape), "FP32")
    inp.set_data_from_numpy(images)
    out = {"live": client.is_server_live(headers=headers)}
    out["unary"] = client.infer("digits", [inp], headers=headers).as_numpy("probabilities").tolist()
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
    client.async_stream_infer("digits", [inp], request_id="s-1")
    result, error = answers.get(timeout=60)
    assert error is None, error
    out["stream"] = result.as_numpy("probabilities").tolist()
    client.stop_stream()
    try:
        client.is_server_live()
        out["no_token"] = "accepted"
    except Exception as exc:
        out["no_token"] = str(exc)
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None, reason="tritonclient (dev extra) missing"
)
def test_unmodified_tritonclient_with_ssl_and_a_bearer_header(tls_cloud, plain_cloud, pki, tokens):
    printed = run_python(TRITON, tls_cloud.address, str(pki.ca_file), tokens[1]["cam-001"])
    out = json.loads(printed.strip().splitlines()[-1])
    assert out["live"] is True
    assert "UNAUTHENTICATED" in out["no_token"] or "Unauthenticated" in out["no_token"], out["no_token"]
    with grpc.insecure_channel(plain_cloud.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        want = codec.response_from_proto(stub.ModelInfer(digits(5), timeout=30)).outputs["probabilities"]
    np.testing.assert_allclose(np.array(out["unary"], dtype=np.float32), want, atol=1e-5)
    np.testing.assert_allclose(np.array(out["stream"], dtype=np.float32), want, atol=1e-5)
