"""TLS for a listener: the certificate files, static credentials, and credentials whose certificates
a reload replaces at the next handshake (see ``fogline.security``)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fogline.errors import ConfigError

log = logging.getLogger("fogline.security")


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
