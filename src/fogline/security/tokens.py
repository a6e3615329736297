"""Bearer tokens: the tokens file (``DEVICE_ID SHA256_HEX`` per line), constant-time lookup, the store
that reloads it, and the command-line helper's ``add_token`` (see ``fogline.security``)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fogline.errors import ConfigError

log = logging.getLogger("fogline.security")

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


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
