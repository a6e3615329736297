"""fogline's error types, each tied to the gRPC status code it is reported with.

Servicers raise these (or let the core raise them) and ``status_of`` is the one place that turns an
exception into a status code and a message a person can act on.
"""

from __future__ import annotations

import grpc


class FoglineError(Exception):
    """Base of every error fogline reports to a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(FoglineError):
    """A malformed tensor, wrong datatype or shape, bad parameter: the caller must fix the request."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(FoglineError):
    """The named model, or the pinned version of it, is not served here."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(FoglineError):
    """The tier that should answer is down or unreachable; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(FoglineError):
    """The request's deadline passed before an answer could be produced."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Overloaded(FoglineError):
    """A bounded queue is full; the caller should back off."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ConfigError(FoglineError):
    """A configuration or model file is wrong; raised at load, before anything starts."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message to report for ``exc``.

    Unknown exceptions become INTERNAL with their type name, never a bare traceback string.
    """
    if isinstance(exc, FoglineError):
        return exc.code, str(exc)
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
