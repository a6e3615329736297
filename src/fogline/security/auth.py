"""The token check on every call: ``AuthInterceptor``, the bearer header, and the caller's device id
for the handler (``current_device``); see ``fogline.security``."""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from fogline.security.tokens import TokenStore, hash_token

log = logging.getLogger("fogline.security")

#: Services a caller may use without a token: probes must work before anything is configured.
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")

#: Reasons an authentication fails, as they appear in metrics.
REASONS = ("missing", "malformed", "unknown", "revoked")

_current_device: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fogline_current_device", default=None
)


def current_device() -> str | None:
    """The device id of the authenticated caller of the call being handled (None without auth)."""
    return _current_device.get()


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> tuple[str | None, str | None]:
    """(token, None) from ``authorization: Bearer TOKEN`` metadata, else (None, failure reason)."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return None, "missing"
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if len(values) > 1 or scheme.lower() != "bearer" or not token:
        return None, "malformed"
    return token, None


_MESSAGES = {
    "missing": "this server requires a token: send metadata 'authorization: Bearer TOKEN'",
    "malformed": "the authorization metadata must be exactly one 'Bearer TOKEN'",
    "unknown": "the token is not valid here (unknown or revoked)",
    "revoked": "the token was revoked; the stream ends",
}


@dataclass
class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer-token check on every call but the open services; see the module docstring.

    ``on_failure(reason)`` is called for every refusal (hook a metric to it); ``failures`` counts them
    too. ``on_success(device, peer_method)`` is called once per authenticated call.
    """

    store: TokenStore
    open_services: frozenset[str] = frozenset({HEALTH_SERVICE})
    on_failure: Callable[[str], None] | None = None
    on_success: Callable[[str, str], None] | None = None
    failures: Counter = field(default_factory=Counter)
    log_every_s: float = 10.0
    _last_logged: dict[str, float] = field(default_factory=dict)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        service = method.split("/")[1] if method.count("/") >= 2 else ""
        if service in self.open_services:
            return await continuation(handler_call_details)
        token, reason = bearer_token(handler_call_details.invocation_metadata)
        digest = hash_token(token) if token is not None else None
        device = self.store.tokens.device_of_hash(digest) if digest is not None else None
        if device is None:
            reason = reason or "unknown"
            self._refused(reason, method)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if device is None:
            return _aborting(handler, reason)
        if self.on_success is not None:
            self.on_success(device, method)
        return _authenticated(handler, device, digest, self)

    def _refused(self, reason: str, method: str) -> None:
        self.failures[reason] += 1
        if self.on_failure is not None:
            self.on_failure(reason)
        now = time.monotonic()
        if now - self._last_logged.get(reason, -1e9) >= self.log_every_s:
            self._last_logged[reason] = now
            log.warning(
                "refused %s: UNAUTHENTICATED (%s token; %d refusals for this reason so far)",
                method,
                reason,
                self.failures[reason],
            )


def _replace_behavior(handler: grpc.RpcMethodHandler, factory: Callable[[Callable], Callable]):
    """A handler of the same kind as ``handler`` whose behavior is ``factory(old behavior)``."""
    if handler.unary_unary:
        make, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    elif handler.unary_stream:
        make, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    elif handler.stream_unary:
        make, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    else:
        make, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    return make(
        factory(behavior),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _aborting(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    message = _MESSAGES[reason]

    def factory(behavior: Callable) -> Callable:
        if handler.response_streaming:

            async def refuse_stream(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
                yield  # pragma: no cover - makes this an async generator

            return refuse_stream

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return refuse

    return _replace_behavior(handler, factory)


def _authenticated(
    handler: grpc.RpcMethodHandler, device: str, digest: str, auth: AuthInterceptor
) -> grpc.RpcMethodHandler:
    """Run ``handler`` with ``current_device()`` set; recheck the token per streamed request."""

    def factory(behavior: Callable) -> Callable:
        revoked = [False]

        def requests_of(request):
            if not handler.request_streaming:
                return request

            async def checked():
                # The store swaps its token set whole on reload, so the token needs checking again
                # only when the set is a new one (not on every message: a lookup compares every entry).
                checked_against = auth.store.tokens
                async for message in request:
                    current = auth.store.tokens
                    if current is not checked_against:
                        checked_against = current
                        if current.device_of_hash(digest) is None:
                            revoked[0] = True
                            auth._refused("revoked", f"stream of {device}")
                            return
                    yield message

            return checked()

        if inspect.isasyncgenfunction(behavior):

            async def run_stream(request, context):
                _current_device.set(device)
                async for item in behavior(requests_of(request), context):
                    yield item
                if revoked[0]:
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGES["revoked"])

            return run_stream

        async def run(request, context):
            _current_device.set(device)
            result = behavior(requests_of(request), context)
            if inspect.isawaitable(result):
                result = await result
            if revoked[0]:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGES["revoked"])
            return result

        return run

    return _replace_behavior(handler, factory)
