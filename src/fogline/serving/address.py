"""Where a server listens: ``HOST:PORT`` or a unix domain socket, parsed once and bound once.

- ``HOST:PORT`` (IPv6 hosts in brackets, ``[::1]:8001``; an empty host means every interface; port 0
  picks a free one);
- ``unix:///run/fogline/agent.sock`` (or ``unix:relative/path``): a unix domain socket, created with
  mode 0660 so the server's user and group may connect and nobody else; a stale socket file left by a
  crash is replaced, one a live process still serves is refused; ``release`` removes it after a stop.

``parse_listen`` is the one parser of listen addresses for both tiers; ``split_host_port`` is the same
rule for an address that must be TCP (a peer to dial, e.g. the agent's ``--cloud``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

from fogline.errors import ConfigError

log = logging.getLogger(__name__)

UNIX_SCHEME = "unix:"
#: Owner and group may connect to a unix socket; others may not.
SOCKET_MODE = 0o660
#: sun_path holds 108 bytes with the terminating NUL on Linux.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class ListenAddress:
    """A parsed listen address: a TCP ``host``/``port``, or a unix socket ``path``."""

    host: str = "127.0.0.1"
    port: int = 0
    path: Path | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def target(self) -> str:
        """The address as gRPC's ``add_*_port`` takes it."""
        if self.path is not None:
            return f"unix:{self.path}"
        return f"{_bracketed(self.host)}:{self.port}"

    def describe(self, bound_port: int | None = None) -> str:
        """For people: ``unix:///run/fogline/agent.sock`` or ``127.0.0.1:8500`` (with the bound port)."""
        if self.path is not None:
            return f"unix://{self.path}" if self.path.is_absolute() else f"unix:{self.path}"
        return f"{_bracketed(self.host)}:{self.port if bound_port is None else bound_port}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def split_host_port(value: str, what: str = "listen address") -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (brackets taken off an IPv6 host, an empty host is
    ``0.0.0.0``); ``ConfigError`` naming ``what`` otherwise."""
    host, sep, port = str(value).strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what} {value!r} must be HOST:PORT (port 0 picks a free one)")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_listen(value: str, what: str = "listen address") -> ListenAddress:
    """``HOST:PORT``, ``unix:///abs/path`` or ``unix:rel/path``; ``ConfigError`` naming ``what``."""
    value = str(value).strip()
    if not value.startswith(UNIX_SCHEME):
        try:
            host, port = split_host_port(value, what)
        except ConfigError:
            raise ConfigError(f"{what} {value!r} must be HOST:PORT (port 0 picks a free one) or "
                              "unix:///path/to/agent.sock") from None
        return ListenAddress(host=host, port=port)
    rest = value[len(UNIX_SCHEME):]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise ConfigError(f"{what} {value!r}: unix:// takes an absolute path (unix:///run/x.sock)")
    if not rest or rest.endswith("/"):
        raise ConfigError(f"{what} {value!r} must name a socket file (unix:///run/fogline/agent.sock)")
    if len(os.fsencode(rest)) > MAX_SOCKET_PATH:
        raise ConfigError(f"{what} {value!r}: a unix socket path may be at most {MAX_SOCKET_PATH} bytes")
    return ListenAddress(path=Path(rest))


def prepare_socket_path(path: Path) -> None:
    """Make room for a unix socket at ``path``: create its folder, replace a stale socket file, refuse
    a live one or anything that is not a socket."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"cannot listen on unix:{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody answers: left over from a process that did not stop cleanly
        log.info("replaced the stale socket file %s", path)
        return
    finally:
        probe.close()
    raise ConfigError(f"cannot listen on unix:{path}: another process is serving there")


def bind(server: grpc.aio.Server, address: ListenAddress,
         credentials: grpc.ServerCredentials | None = None) -> int:
    """Add ``address`` to ``server`` (TLS with ``credentials``); the bound TCP port, 0 for a unix
    socket. ``ConfigError`` when the address cannot be used."""
    path = address.path
    if path is not None:
        prepare_socket_path(path)
    old_umask = os.umask(0o117) if path is not None else None  # no window with a wider mode
    try:
        if credentials is not None:
            bound = server.add_secure_port(address.target(), credentials)
        else:
            bound = server.add_insecure_port(address.target())
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address.describe()} ({exc}); "
                          "is another process using it?") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    if bound == 0:
        raise ConfigError(f"cannot listen on {address.describe()}; is another process using it?")
    if path is None:
        return bound
    os.chmod(path, SOCKET_MODE)
    return 0


def release(address: ListenAddress) -> None:
    """After the server stopped: remove its unix socket file if it is still there."""
    if address.path is not None:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(address.path.lstat().st_mode):
                address.path.unlink()
