"""The agent's own listener: where its gRPC server binds, and who may call it.

Where (the device's ``listen``):

- ``HOST:PORT`` (default ``127.0.0.1:8500``: loopback, so only local apps reach the agent; port 0
  picks a free one);
- ``unix:///run/fogline/agent.sock`` (or ``unix:relative/path``): a unix domain socket, created with
  mode 0660 so the agent's user and group may connect and nobody else; a stale socket file left by a
  crash is replaced, one a live process still serves is refused; the file is removed on a clean stop.

Who (the device's ``serving`` block, the same keys as the cloud's ``cloud.serving``):

- ``tls: {cert_file, key_file, client_ca_file}``: TLS on the listener; with ``client_ca_file``, mutual
  TLS (a client without a certificate from that CA is refused in the handshake);
- ``auth: {tokens_file}``: every call but ``grpc.health.v1`` needs ``authorization: Bearer TOKEN``
  whose SHA-256 is listed in the file (``DEVICE_ID SHA256HEX`` lines, ``fogline cloud token new``).

Both come from ``fogline.security`` (the cloud uses the same code); ``reload()`` re-reads the tokens
and certificates (the agent's SIGHUP), keeping the ones in force when the new files are bad. The
address is parsed and bound by ``fogline.serving.address`` (the cloud's too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from fogline.fleet.model import DeviceSettings
from fogline.security import AuthInterceptor, TlsCredentials, TlsFiles, TokenStore
from fogline.serving.address import ListenAddress, parse_listen


class Listener:
    """Where the agent's gRPC server listens, and who may call it; see the module docstring."""

    def __init__(self, address: ListenAddress, *, tls: TlsFiles | None = None, tokens_file: Path | None = None,
                 on_auth_failure: Any = None) -> None:
        self.address = address
        self.tls = TlsCredentials(tls) if tls is not None else None  # reads the files: bad ones fail here
        self.tokens = TokenStore(tokens_file) if tokens_file is not None else None
        self.auth = AuthInterceptor(self.tokens, on_failure=on_auth_failure) if self.tokens is not None else None

    @classmethod
    def from_config(cls, device: DeviceSettings, listen: str | None = None, *,
                    on_auth_failure: Any = None) -> Listener:
        """From a device's ``listen`` and ``serving`` blocks (``listen`` overrides, as ``--listen``)."""
        address = parse_listen(listen or device.listen)
        tls_cfg = device.serving.tls
        tls = None
        if tls_cfg.cert_file is not None and tls_cfg.key_file is not None:
            tls = TlsFiles(tls_cfg.cert_file, tls_cfg.key_file, tls_cfg.client_ca_file)
        return cls(address, tls=tls, tokens_file=device.serving.auth.tokens_file, on_auth_failure=on_auth_failure)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Pass to ``grpc.aio.server(interceptors=...)``: the token check, when tokens are configured."""
        return [self.auth] if self.auth is not None else []

    def describe(self, bound_port: int | None = None) -> str:
        extras = [word for word, on in (("mutual TLS", self.tls is not None and self.tls.files.mutual),
                                        ("TLS", self.tls is not None and not self.tls.files.mutual),
                                        ("tokens", self.tokens is not None)) if on]
        return self.address.describe(bound_port) + (f" ({', '.join(extras)})" if extras else "")

    def reload(self) -> list[str]:
        """Re-read the tokens file and the certificates (SIGHUP); the problems, each one line (the
        set in force stays for anything that failed)."""
        problems = []
        for part in (self.tokens, self.tls):
            if part is not None:
                error = part.reload()
                if error is not None:
                    problems.append(str(error))
        return problems
