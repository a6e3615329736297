"""Transport security shared by every fogline listener: bearer tokens, TLS credentials, the auth check.

Three modules, one concept each: ``tokens`` (the tokens file and the store that reloads it), ``tls``
(certificates, reloaded at the next handshake) and ``auth`` (the interceptor that checks every call).
Their public names are importable from ``fogline.security`` itself.

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

from fogline.security.auth import (
    HEALTH_SERVICE,
    REASONS,
    REFLECTION_SERVICES,
    AuthInterceptor,
    bearer_token,
    current_device,
)
from fogline.security.tls import TlsCredentials, TlsFiles, server_credentials
from fogline.security.tokens import (
    TokenSet,
    TokenStore,
    add_token,
    hash_token,
    load_tokens,
    new_token,
    parse_tokens,
)

__all__ = [
    "HEALTH_SERVICE",
    "REASONS",
    "REFLECTION_SERVICES",
    "AuthInterceptor",
    "TlsCredentials",
    "TlsFiles",
    "TokenSet",
    "TokenStore",
    "add_token",
    "bearer_token",
    "current_device",
    "hash_token",
    "load_tokens",
    "new_token",
    "parse_tokens",
    "server_credentials",
]
