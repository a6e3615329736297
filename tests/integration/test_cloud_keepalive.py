"""The cloud's connection limits as gRPC enforces them: max_connection_age and keepalive policing.

What grpc (core, checked on 1.85) does, and what is asserted here:

- ``max_connection_age_s`` (+ grace): at the age the server sends GOAWAY; the client's channel goes
  IDLE and the next call opens a new connection by itself (the caller sees nothing); a stream opened
  before keeps working through the grace and is then ended with UNAVAILABLE "max connection age".
- keepalive: a client pinging more often than ``min_ping_interval_ms`` on a connection where the server
  sends no data collects a strike per ping; past ``max_ping_strikes`` the server sends GOAWAY
  ENHANCE_YOUR_CALM ``too_many_pings``, the client's open stream fails with UNAVAILABLE "Too many pings",
  and its next call reconnects (grpc then doubles the client's keepalive time). A grpc client never
  pings more than once a second whatever it asks for, so the server defaults (5 s, 2 strikes) are used.
"""

from __future__ import annotations

import queue
import time

import grpc
import numpy as np
import pytest
from cloud_thread import CloudThread

from fogline import codec
from fogline.cloud.server import load_models
from fogline.cloud.settings import ServingSettings
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.models]

REQUEST = codec.request_to_proto(
    codec.InferRequest("digits", {"image": np.zeros((1, 8, 8), dtype=np.float32)})
)


@pytest.fixture(scope="module")
def digits_repo(model_repo, tmp_path_factory):
    """A repository holding only digits (loads in about a second)."""
    root = tmp_path_factory.mktemp("digits-only")
    (root / "digits").symlink_to(model_repo / "digits")
    return root


def start_cloud(repo, **settings) -> CloudThread:
    """A cloud server over the models in ``repo``, its calls cut at once when it stops."""
    settings = ServingSettings(listen="127.0.0.1:0", metrics_port=None, device="cpu", **settings)
    return CloudThread(settings, load_models(settings, repo), stop_grace_s=0)


class Stream:
    """A ModelStreamInfer call fed one request at a time from this thread."""

    def __init__(self, stub) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._replies = stub.ModelStreamInfer(iter(self._requests.get, None))

    def infer(self) -> pb.ModelStreamInferResponse:
        self._requests.put(REQUEST)
        return next(self._replies)

    def close(self) -> None:
        self._requests.put(None)
        self._replies.cancel()


def watch_states(channel: grpc.Channel) -> list[str]:
    states: list[str] = []
    channel.subscribe(lambda state: states.append(state.name), try_to_connect=True)
    return states


def went_idle_after_ready(states: list[str], timeout_s: float = 5.0) -> bool:
    """The channel reported READY, then IDLE (its connection closed); callbacks come on a grpc thread."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "READY" in states and "IDLE" in states[states.index("READY") :]:
            return True
        time.sleep(0.02)
    return False


def test_max_connection_age_sends_goaway_and_the_client_reconnects(digits_repo):
    server = start_cloud(digits_repo, max_connection_age_s=1.0, max_connection_age_grace_s=1.5)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        states = watch_states(channel)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stream = Stream(stub)  # opened on the first connection
        started = time.monotonic()
        served_through_grace = 0
        ended = None
        while time.monotonic() - started < 6.0:
            try:
                reply = stream.infer()
            except grpc.RpcError as exc:
                ended = exc, time.monotonic() - started
                break
            assert reply.error_message == ""
            if time.monotonic() - started > 1.2:  # past the age (1 s, +-10% jitter): within the grace
                served_through_grace += 1
            # new calls go on working across the GOAWAY: the channel reconnects by itself
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
            time.sleep(0.05)
        assert served_through_grace > 0, "the old stream stopped at the GOAWAY instead of the grace's end"
        assert ended is not None, "the stream outlived max_connection_age + grace"
        exc, at = ended
        assert exc.code() == grpc.StatusCode.UNAVAILABLE and "max connection age" in exc.details()
        assert 2.0 <= at <= 4.0, at  # age (0.9..1.1 s) + grace 1.5 s
        # the channel left the first connection (READY -> IDLE at the GOAWAY) and came back READY
        assert went_idle_after_ready(states), states
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        fresh = Stream(stub)
        assert fresh.infer().error_message == ""
        fresh.close()
    finally:
        channel.close()
        server.stop()


def test_a_client_pinging_too_often_is_sent_goaway_too_many_pings(digits_repo):
    server = start_cloud(digits_repo)  # defaults: min_ping_interval_ms 5000, max_ping_strikes 2
    assert (server.server.settings.min_ping_interval_ms, server.server.settings.max_ping_strikes) == (5000, 2)
    pinger = grpc.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[
            ("grpc.keepalive_time_ms", 50),  # grpc clamps it to one ping a second: still 5x too often
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    polite = grpc.insecure_channel(f"127.0.0.1:{server.port}")  # no keepalive pings
    try:
        states = watch_states(pinger)
        stub, polite_stub = pb_grpc.GRPCInferenceServiceStub(pinger), pb_grpc.GRPCInferenceServiceStub(polite)
        stream, polite_stream = Stream(stub), Stream(polite_stub)
        assert stream.infer().error_message == "" and polite_stream.infer().error_message == ""
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            next(stream._replies)  # an idle stream: nothing comes back but the pings' answers
        at = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "too many pings" in info.value.details().lower()
        assert at < 10.0, at  # 3 strikes at about a ping a second
        assert went_idle_after_ready(states), states  # the connection was closed
        # only the offender's connection went: the polite client's stream on its own connection lives on
        assert polite_stream.infer().error_message == ""
        # and the offender may come back (grpc doubles its keepalive time after too_many_pings)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        polite_stream.close()
    finally:
        pinger.close()
        polite.close()
        server.stop()
