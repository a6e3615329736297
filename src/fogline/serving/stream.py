"""The v2 inference calls of both tiers, handled once: Triton's ``ModelStreamInfer``, unary failures,
the drain, and the hint that a stream's client waits alone.

Both servicers convert protobuf to their core's request and back; everything about *calls* lives here
(``InferenceCalls``), so the agent and the cloud behave alike on the wire:

- **Stream** (Triton's ``ModelStreamInfer``): many requests in flight on one stream; each is answered
  by its own task the moment it is ready (not in request order), carrying the request's ``id``. A
  failed request is answered with ``error_message`` set (and ``infer_response`` holding the model
  name, version and id, so the sender can match it); the stream stays open for the others.
- **Error format**: ``error_message`` is ``"[CODE] message"``, the gRPC status code name in brackets
  (``"[INVALID_ARGUMENT] digits: input 'image' has shape [1, 9], expected [N,8,8]"``). tritonclient
  hands a stream error to the callback as ``InferenceServerException(msg=error_message)``, whose
  ``str()`` is then laid out as its unary errors are (``"[StatusCode.INVALID_ARGUMENT] message"``):
  the code first, in brackets, so a program can read it and a person sees it.
- **Unary**: a failure becomes the call's gRPC status (``fogline.errors.status_of``); INTERNAL is logged.
- **Drain** (SIGTERM: ``drain_event`` set): new unary calls are refused UNAVAILABLE; a stream stops
  reading, answers every request it already read, then ends with UNAVAILABLE ("shutting down;
  reconnect"), so a client learns that requests it sent after the drain began were not taken and
  reconnects (to another replica). A stream whose client half-closes ends OK once answered.
- **Waits alone** (``waits_alone()``): the calls open now are counted (unary calls and streams). A
  stream request is marked when its stream is the only call open and its client has waited for every
  answer so far (nothing else of the stream is in flight, and it was already answered at least once,
  so a client that sends a burst is not taken for one that waits). Nobody else is connected, so the
  core may run a short model on the event loop instead of a worker thread. The mark is a context
  variable set here, in the request's own task, and read by the core; unary calls never carry it
  (calls that arrive meanwhile are invisible until the loop is free).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar

import grpc

from fogline.errors import status_of
from fogline.inference import grpc_service_pb2 as pb
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: Answers one decoded-to-encoded request: the tier's servicer binds its core here.
Answer = Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]]

_WAITS_ALONE: ContextVar[bool] = ContextVar("fogline_waits_alone", default=False)


def waits_alone() -> bool:
    """True while answering a stream request whose client is the server's only one and waits for each
    answer (see the module docstring): nothing else needs the event loop meanwhile."""
    return _WAITS_ALONE.get()


def error_text(exc: BaseException) -> str:
    """A stream's ``error_message`` for a failed request: ``"[CODE] message"``."""
    code, text = status_of(exc)
    return f"[{code.name}] {text}"


def error_reply(request: pb.ModelInferRequest, exc: BaseException) -> pb.ModelStreamInferResponse:
    """The stream answer to a failed request: the error, and the request's model, version and id."""
    code, _ = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("request %r failed", request.id, exc_info=exc)
    return pb.ModelStreamInferResponse(
        error_message=error_text(exc),
        infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                             model_version=request.model_version, id=request.id),
    )


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End a unary call with the status of ``exc`` (INTERNAL is logged with its traceback)."""
    code, text = status_of(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("internal error: %s", text, exc_info=exc)
    await context.abort(code, text)


class InferenceCalls:
    """The inference calls of one server: counted, answered, drained (see the module docstring)."""

    def __init__(self, *, server: str = "the server") -> None:
        #: Set when the server drains: no new calls, streams stop reading.
        self.drain_event = asyncio.Event()
        #: Inference calls open now: unary calls in progress plus open streams.
        self.open_calls = 0
        self._server = server

    @property
    def draining(self) -> bool:
        return self.drain_event.is_set()

    @contextlib.contextmanager
    def _open(self) -> Iterator[None]:
        self.open_calls += 1
        try:
            yield
        finally:
            self.open_calls -= 1

    async def unary(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext,
                    answer: Answer) -> pb.ModelInferResponse:
        """``ModelInfer``: ``answer(request)``, or the call's status for its failure."""
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self._server} is shutting down; retry on another")
        with self._open():
            try:
                return await answer(request)
            except Exception as exc:
                await abort(context, exc)
                raise  # not reached: abort raises

    async def stream(self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext,
                     answer: Answer, *, before_read: Callable[[], Awaitable[None]] | None = None) -> None:
        """``ModelStreamInfer``: answer every request read, each as soon as it is ready.

        ``before_read``, when given, is awaited before each read: the tier may hold the stream unread
        for a while (the cloud paces a device over its in-flight limit); the client's requests then
        wait in the transport."""
        # A reader task takes requests off the stream and starts one answer task per request; each
        # answer task writes its own response the moment it is ready (``context.write``, one write at a
        # time on the stream). Per request that is one task and nothing more: this is the hot path.
        writing = asyncio.Lock()
        answers: set[asyncio.Task[None]] = set()
        # Requests read whose reply is not built yet, and replies built so far (for ``waits_alone``).
        unanswered = answered = 0
        cut_short = False  # the drain stopped the reading (rather than the client closing its side)

        async def reply_to(msg: pb.ModelInferRequest, alone: bool) -> None:
            nonlocal unanswered, answered
            _WAITS_ALONE.set(alone)  # this task's own context: seen by the core for this request only
            try:
                reply = pb.ModelStreamInferResponse(infer_response=await answer(msg))
            except Exception as exc:
                reply = error_reply(msg, exc)
            # Counted before the write: the client may see the reply, and send its next request,
            # before the write's completion reaches this task.
            unanswered -= 1
            answered += 1
            try:
                async with writing:
                    await context.write(reply)
            except Exception as exc:  # the client went away: nobody to answer
                log.debug("stream response %r not sent: %s", msg.id, exc)

        async def read() -> None:
            nonlocal unanswered, cut_short
            incoming = aiter(requests)
            try:
                while True:
                    if before_read is not None:
                        await before_read()
                    try:
                        msg = await anext(incoming)
                    except StopAsyncIteration:
                        break
                    if self.draining:
                        cut_short = True
                        break
                    alone = self.open_calls == 1 and unanswered == 0 and answered > 0
                    unanswered += 1
                    task = asyncio.create_task(reply_to(msg, alone))
                    answers.add(task)
                    task.add_done_callback(answers.discard)
            except Exception as exc:
                log.debug("stream closed by the client: %s", exc)

        reader = asyncio.create_task(read())
        drain = asyncio.create_task(self.drain_event.wait())
        with self._open():
            try:
                await asyncio.wait({reader, drain}, return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    cut_short = True
                    reader.cancel()  # draining: stop taking new requests; answer what is in flight
                    await asyncio.wait({reader})
                while answers:
                    await asyncio.wait(set(answers))
            finally:
                for task in (reader, drain, *answers):
                    if not task.done():
                        task.cancel()
        if cut_short:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self._server} is shutting down; reconnect")


class V2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The base of both tiers' servicers: their ``calls`` (``InferenceCalls``), the drain event, liveness."""

    def __init__(self, *, server: str) -> None:
        self.calls = InferenceCalls(server=server)
        #: Set when the server drains (``InferenceCalls.drain_event``).
        self.drain_event = self.calls.drain_event

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)
