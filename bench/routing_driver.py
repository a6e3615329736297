"""The load generator: replays an arrival schedule against an agent over several v2 streams.

It speaks fogline's own client side of the Open Inference Protocol: requests are built with
``fogline.codec.request_to_proto`` and sent on ``ModelStreamInfer`` streams opened with the generated
stub; answers are matched to requests by ``id`` and decoded with ``fogline.codec.response_from_proto``.

Open loop: a scheduler wakes at each arrival time and hands the request to its stream's writer, so a
slow answer never holds back the next request. Latency runs from that hand-off to the moment the
answer is read. Each request ends in exactly one ``Outcome``: answered, failed (an error on the
stream for that request, or the stream itself breaking) or lost (no answer and no error by the end of
the drain window).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from bench.routing_workload import Arrival, Workload
from fogline import codec
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc


@dataclass
class Outcome:
    """What became of one request."""

    index: int
    model: str
    t_s: float  # when it was sent, seconds from the schedule's start
    status: str = "lost"  # ok | error | lost
    latency_ms: float | None = None
    served_by: str = ""
    fallback: bool = False
    reason: str = ""
    error: str = ""
    quality: float | None = None
    request_bytes: int = 0
    response_bytes: int = 0


def build_request(workload: Workload, arrival: Arrival, route: str = "auto",
                  deadline_ms: int | None = None) -> pb.ModelInferRequest:
    params: dict[str, codec.ParamValue] = {}
    if route != "auto":
        params["route"] = route
    if deadline_ms is not None:
        params["deadline_ms"] = int(deadline_ms)
    req = codec.InferRequest(
        model_name=arrival.model,
        inputs=workload.inputs(arrival.model, arrival.item),
        id=f"r{arrival.index}",
        parameters=params,
    )
    return codec.request_to_proto(req)


class _Stream:
    """One ``ModelStreamInfer`` call: a writer fed by a queue and a reader matching answers by id."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub, on_answer: Callable, on_broken: Callable):
        self.stub = stub
        self.on_answer, self.on_broken = on_answer, on_broken
        self.queue: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()
        self.in_flight: set[str] = set()
        self.anonymous_errors: list[str] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        pending: pb.ModelInferRequest | None = None
        while True:
            call = self.stub.ModelStreamInfer()
            reader = asyncio.create_task(self._read(call))
            try:
                while True:
                    req = pending or await self.queue.get()
                    pending = None
                    if req is None:
                        await call.done_writing()
                        await reader
                        return
                    if reader.done():  # the stream broke; reopen and send this request there
                        pending = req
                        break
                    self.in_flight.add(req.id)
                    await call.write(req)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                self._broken(f"stream write failed: {exc!r}")
            finally:
                if not reader.done():
                    reader.cancel()
                call.cancel()
            await asyncio.sleep(0.05)

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for msg in call:
                rid = msg.infer_response.id
                if msg.error_message and rid not in self.in_flight:
                    self.anonymous_errors.append(msg.error_message)
                    continue
                self.in_flight.discard(rid)
                self.on_answer(msg)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._broken(f"stream ended: {exc.code().name}: {exc.details()}")

    def _broken(self, why: str) -> None:
        ids, self.in_flight = self.in_flight, set()
        self.on_broken(ids, why)


async def replay(
    address: str,
    workload: Workload,
    arrivals: Sequence[Arrival],
    *,
    streams: int,
    route: str = "auto",
    deadline_ms: int | None = None,
    drain_s: float = 10.0,
    on_start: Callable[[float], None] | None = None,
) -> list[Outcome]:
    """Send ``arrivals`` on schedule to the agent at ``address`` and collect one outcome per request.

    ``on_start(t0)`` is called with the ``time.perf_counter()`` value the schedule counts from, so a
    caller can drive other timelines (network conditions) from the same origin.
    """
    outcomes = {f"r{a.index}": Outcome(a.index, a.model, a.t_s) for a in arrivals}
    by_id = {f"r{a.index}": a for a in arrivals}
    sent_at: dict[str, float] = {}
    remaining = {"n": len(arrivals)}
    all_done = asyncio.Event()
    if not arrivals:
        all_done.set()

    def finish() -> None:
        remaining["n"] -= 1
        if remaining["n"] == 0:
            all_done.set()

    def on_answer(msg: pb.ModelStreamInferResponse) -> None:
        now = time.perf_counter()
        rid = msg.infer_response.id
        out = outcomes.get(rid)
        if out is None or out.status != "lost" or rid not in sent_at:
            return
        out.latency_ms = (now - sent_at[rid]) * 1000.0
        if msg.error_message:
            out.status, out.error = "error", msg.error_message
        else:
            try:
                resp = codec.response_from_proto(msg.infer_response)
                arrival = by_id[rid]
                out.quality = workload.score(arrival.model, arrival.item, resp.outputs)
            except Exception as exc:  # a malformed answer is an error of the system under test
                out.status, out.error = "error", f"bad answer: {exc}"
                finish()
                return
            out.status = "ok"
            out.served_by = str(resp.parameters.get("served_by", ""))
            out.fallback = bool(resp.parameters.get("fallback", False))
            out.reason = str(resp.parameters.get("route_reason", ""))
            out.response_bytes = msg.infer_response.ByteSize()
        finish()

    def on_broken(ids: set[str], why: str) -> None:
        for rid in ids:
            out = outcomes[rid]
            if out.status == "lost":
                out.status, out.error = "error", why
                finish()

    options = [("grpc.max_receive_message_length", codec.MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", codec.MAX_MESSAGE_BYTES)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        lanes = [_Stream(stub, on_answer, on_broken) for _ in range(streams)]
        requests = [build_request(workload, a, route, deadline_ms) for a in arrivals]
        t0 = time.perf_counter()
        if on_start is not None:
            on_start(t0)
        for arrival, req in zip(arrivals, requests, strict=True):
            delay = t0 + arrival.t_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rid = req.id
            sent_at[rid] = time.perf_counter()
            outcomes[rid].t_s = sent_at[rid] - t0
            outcomes[rid].request_bytes = req.ByteSize()
            lanes[arrival.stream % streams].queue.put_nowait(req)
        try:
            await asyncio.wait_for(all_done.wait(), timeout=drain_s)
        except asyncio.TimeoutError:
            pass
        for lane in lanes:
            lane.queue.put_nowait(None)
        _, stuck = await asyncio.wait([lane.task for lane in lanes], timeout=2.0)
        for task in stuck:
            task.cancel()
        # Errors the agent sent without an id belong to some request of that stream; charge them to
        # its unanswered requests so that an error is never counted as a loss.
        for lane in lanes:
            unanswered = sorted(rid for rid in lane.in_flight if outcomes[rid].status == "lost")
            for rid, message in zip(unanswered, lane.anonymous_errors, strict=False):
                outcomes[rid].status, outcomes[rid].error = "error", message
    return [outcomes[f"r{a.index}"] for a in arrivals]
