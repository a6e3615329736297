"""Transport security shared by every fogline listener: bearer tokens, TLS credentials, the auth check.

Tokens
    A tokens file holds one line per device, ``DEVICE_ID SHA256_HEX_OF_TOKEN``; ``#`` starts a comment
    and blank lines are skipped, so the file itself reveals no token. ``load_tokens(path)`` parses it
    into a ``TokenSet`` (a malformed line is a ``ConfigError`` naming the file and the line number);
    ``TokenSet.device_of(token)`` hashes the presented token and compares it with every stored hash in
    constant time (``hmac.compare_digest``, no early exit). ``new_token()`` makes a fresh random token
    (256 bits, URL-safe) and ``add_token(path, device_id)`` appends its hashed line (the file is created
    with mode 0600).

Reload
    ``TokenStore`` holds the set in force; ``reload()`` parses the file again and swaps the whole set in
    one assignment, or, when the new file is unreadable or malformed, keeps the last good set and
    returns the error. ``TlsCredentials`` does the same for certificates: it builds
    ``grpc.dynamic_ssl_server_credentials`` whose fetcher hands gRPC the re-read certificate on the
    next TLS handshake; connections already established keep theirs. Whether the client must present
    a certificate (mutual TLS) is fixed when the listener starts.

The check
    ``AuthInterceptor`` (a ``grpc.aio.ServerInterceptor``) requires ``authorization: Bearer TOKEN`` on
    every call except the open services (``grpc.health.v1.Health`` always; reflection when the server
    enables it) and aborts any other call with UNAUTHENTICATED. The token is checked when a call starts;
    for calls that stream requests it is checked again before each request message is handed to the
    handler, so a token removed by a reload stops a long-lived stream at its next message: the stream
    stops reading, the handler answers what it already holds, and the call ends with UNAUTHENTICATED.
    Inside the handler ``current_device()`` gives the device id the token maps to.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import inspect
import logging
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fogline.errors import ConfigError

log = logging.getLogger("fogline.security")

#: Services a caller may use without a token: probes must work before anything is configured.
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")

#: Reasons an authentication fails, as they appear in metrics.
REASONS = ("missing", "malformed", "unknown", "revoked")

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")

_current_device: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fogline_current_device", default=None
)


def current_device() -> str | None:
    """The device id of the authenticated caller of the call being handled (None without auth)."""
    return _current_device.get()


# ---------------------------------------------------------------------------------------------- tokens


def hash_token(token: str) -> str:
    """The SHA-256 hex digest a tokens file stores for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token: 32 random bytes (256 bits), URL-safe base64 without padding."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenSet:
    """Device ids and the hashes of their tokens; immutable, so it can be swapped whole."""

    entries: tuple[tuple[str, str], ...] = ()  # (device_id, sha256 hex)
    source: str = "<none>"

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(device for device, _ in self.entries)

    def device_of(self, token: str) -> str | None:
        """The device ``token`` belongs to, or None; every entry is compared, in constant time."""
        return self.device_of_hash(hash_token(token))

    def device_of_hash(self, digest: str) -> str | None:
        found = None
        presented = digest.encode("ascii")
        for device, stored in self.entries:
            if hmac.compare_digest(presented, stored.encode("ascii")):
                found = device
        return found


def parse_tokens(text: str, *, source: str = "tokens") -> TokenSet:
    """Parse the text of a tokens file; a malformed line raises ``ConfigError`` naming it."""
    entries: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(
                f"{where}: expected 'DEVICE_ID SHA256_HEX' (two fields), got {len(parts)} field(s)"
            )
        device, digest = parts[0], parts[1].lower()
        if not _DEVICE_ID.match(device):
            raise ConfigError(
                f"{where}: device id {device!r} is not valid (letters, digits and . _ : @ -, at most 128)"
            )
        if not _HEX.match(digest):
            raise ConfigError(
                f"{where}: the second field must be the 64-digit SHA-256 hex of the token "
                "(make one with: fogline cloud token new DEVICE_ID --tokens-file FILE)"
            )
        if device in seen:
            raise ConfigError(f"{where}: device {device!r} is already listed on line {seen[device]}")
        if digest in hashes:
            raise ConfigError(f"{where}: the same token hash is already listed on line {hashes[digest]}")
        seen[device] = number
        hashes[digest] = number
        entries.append((device, digest))
    return TokenSet(tuple(entries), source)


def load_tokens(path: str | Path) -> TokenSet:
    """Read and parse a tokens file; ``ConfigError`` when it cannot be read or is malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the tokens file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the tokens file is not UTF-8 text") from None
    return parse_tokens(text, source=str(path))


def add_token(path: str | Path, device_id: str, *, replace: bool = False) -> str:
    """Make a token for ``device_id``, append its hashed line to ``path`` and return the token.

    The file is created with mode 0600 when absent. A device already listed is refused unless
    ``replace``, which drops its old line (that token stops working at the next reload).
    """
    path = Path(path)
    if not _DEVICE_ID.match(device_id):
        raise ConfigError(
            f"device id {device_id!r} is not valid (letters, digits and . _ : @ -, at most 128 characters)"
        )
    existing = load_tokens(path) if path.exists() else TokenSet(source=str(path))
    token = new_token()
    line = f"{device_id} {hash_token(token)}\n"
    if device_id in existing.devices:
        if not replace:
            raise ConfigError(
                f"{path}: device {device_id!r} already has a token; pass --replace to issue a new one"
            )
        kept = [
            raw
            for raw in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if raw.split("#", 1)[0].split()[:1] != [device_id]
        ]
        text = "".join(kept)
        if text and not text.endswith("\n"):
            text += "\n"
        _write_private(path, text + line)
        return token
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        if handle.tell() > 0 and not path.read_bytes().endswith(b"\n"):
            handle.write("\n")
        handle.write(line)
    return token


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, keeping it readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


class TokenStore:
    """The token set in force, swapped whole on reload (readers never see half a file)."""

    def __init__(self, path: str | Path | None = None, tokens: TokenSet | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if tokens is None:
            if self.path is None:
                raise ValueError("TokenStore needs a path or a TokenSet")
            tokens = load_tokens(self.path)
        self._tokens = tokens

    @property
    def tokens(self) -> TokenSet:
        return self._tokens

    def replace(self, tokens: TokenSet) -> None:
        self._tokens = tokens

    def reload(self) -> ConfigError | None:
        """Re-read the file: None when the new set is in force, else the error (the old set stays)."""
        if self.path is None:
            return None
        try:
            tokens = load_tokens(self.path)
        except ConfigError as exc:
            log.error("tokens not reloaded, the last good set (%d devices) stays: %s", len(self._tokens), exc)
            return exc
        self._tokens = tokens
        log.info("tokens reloaded from %s: %d devices", self.path, len(tokens))
        return None


# ------------------------------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    """Where a listener's certificate, key and (for mutual TLS) client CA live."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(key, certificate chain, client CA) as PEM bytes; ``ConfigError`` naming a bad file."""
        key = _read_pem(self.key_file, "key_file", "PRIVATE KEY")
        cert = _read_pem(self.cert_file, "cert_file", "CERTIFICATE")
        ca = _read_pem(self.client_ca_file, "client_ca_file", "CERTIFICATE") if self.client_ca_file else None
        return key, cert, ca


def _read_pem(path: Path, key: str, kind: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls.{key}: cannot read {path} ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data or kind.encode() not in data:
        raise ConfigError(f"tls.{key}: {path} holds no PEM {kind}")
    return data


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Static TLS credentials; with a client CA, mutual TLS (a client without a certificate is refused)."""
    key, cert, ca = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=files.mutual)


class TlsCredentials:
    """Server credentials that pick up re-read certificates at the next TLS handshake.

    ``credentials`` goes to ``server.add_secure_port``; ``reload()`` re-reads the files and, when they
    are good, queues them for gRPC's fetcher (called on each new connection); a bad file is refused
    with one log line and the certificate in force stays.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._pending: Any = None
        self.loaded_at = time.time()
        initial = self._configuration()
        self.credentials = grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=files.mutual
        )

    def _configuration(self) -> Any:
        key, cert, ca = self.files.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> Any:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> ConfigError | None:
        try:
            configuration = self._configuration()
        except ConfigError as exc:
            log.error("certificates not reloaded, the ones in force stay: %s", exc)
            return exc
        with self._lock:
            self._pending = configuration
        self.loaded_at = time.time()
        log.info("certificates reloaded from %s (used from the next connection)", self.files.cert_file)
        return None


# ---------------------------------------------------------------------------------------- interceptor


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
