"""Fetching a model version from a cloud into a local repository (``fogline.models.distribution``).

``fetch_version(source, root, name, version)`` asks the cloud for the version's manifest, downloads
the files the edge reads (``EDGE_ROLES``; every file with ``roles=None``), checks each against the
manifest's size and sha256, and only then puts the version in place:

1. each file downloads to ``ROOT/.fetch/<sha256>.part``; a cut stream is asked again from the bytes
   already there (up to ``attempts`` tries per call, with backoff), and a later call resumes the same
   part, since parts are named by content;
2. a part whose size or hash is wrong when complete is deleted (the next try starts it from zero);
3. the checked files and the manifest (byte for byte the cloud's) go into a hidden staging directory
   ``ROOT/NAME/.fetch-V-*`` that is renamed to ``ROOT/NAME/V`` in one step.

So the repository never holds a half-written version: a failed fetch leaves the versions as they were
(and at most its resumable parts under ``ROOT/.fetch/``, which the repository does not read; a part
of other content untouched for a day is deleted by the next fetch). A version
already present is checked rather than fetched again. Errors are ``FetchError`` with one line that
says what failed; ``FetchError.retry`` is False when trying again cannot help (the cloud lacks the
version, refuses the credentials).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fogline.models.distribution import DESCRIBE, EDGE_ROLES, READ, decode, encode, files_of_roles
from fogline.models.repository import MANIFEST, hash_problems, sha256_file

log = logging.getLogger("fogline.models.fetch")

#: A part of other content untouched for this long is deleted by the next fetch into the repository.
STALE_PART_S = 24 * 3600.0
#: Progress callback: (file, bytes so far, bytes in all).
Progress = Callable[[str, int, int], None]
#: Status codes after which trying again cannot help.
_FINAL = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED})


class FetchError(Exception):
    """A fetch failed; the message is one line. ``retry``: whether a later try may succeed."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class FetchSource:
    """Where to fetch from and how to connect: any gRPC target, TLS credentials, call metadata."""

    target: str
    credentials: grpc.ChannelCredentials | None = None
    metadata: tuple[tuple[str, str], ...] | None = None
    options: Sequence[tuple[str, Any]] = field(default_factory=tuple)

    def channel(self) -> grpc.aio.Channel:
        if self.credentials is not None:
            return grpc.aio.secure_channel(self.target, self.credentials, options=list(self.options))
        return grpc.aio.insecure_channel(self.target, options=list(self.options))


@dataclass(frozen=True)
class Fetched:
    """What ``fetch_version`` did: the version directory, the bytes transferred, and whether the
    version was already there (nothing transferred)."""

    path: Path
    version: str
    bytes_received: int
    already_present: bool = False


async def fetch_version(source: FetchSource, root: Path | str, name: str, version: str | None = None, *,
                        roles: tuple[str, ...] | None = EDGE_ROLES, attempts: int = 5, backoff_s: float = 0.2,
                        timeout_s: float = 30.0, progress: Progress | None = None) -> Fetched:
    """Bring ``name`` at ``version`` (the cloud's newest when None) into the repository at ``root``."""
    root = Path(root)
    async with source.channel() as channel:
        describe = channel.unary_unary(DESCRIBE, request_serializer=encode, response_deserializer=decode)
        read = channel.unary_stream(READ, request_serializer=encode, response_deserializer=None)
        reply = await _call(lambda: describe({"name": name, "version": version}, metadata=source.metadata,
                                             timeout=timeout_s), f"{name} v{version}" if version else f"{name} (newest version)", source, attempts,
                            backoff_s)
        manifest_text, version = _checked_reply(reply, name, version)
        manifest = json.loads(manifest_text)
        wanted = files_of_roles(manifest, roles)
        target = root / name / version
        if (target / MANIFEST).is_file():
            problems = hash_problems(target, dict(manifest, files=wanted), extra_files=False)
            if problems:
                raise FetchError(f"{target} exists but does not match the cloud's manifest ({problems[0]}); "
                                 "remove it to fetch it again", retry=False)
            return Fetched(target, version, 0, already_present=True)
        parts = root / ".fetch"
        parts.mkdir(parents=True, exist_ok=True)
        _prune_parts(parts, keep={str(entry.get("sha256")) for entry in wanted.values()})
        received = 0
        for rel, entry in sorted(wanted.items()):
            received += await _download(read, source, name, version, rel, entry, parts, attempts=attempts,
                                        backoff_s=backoff_s, timeout_s=timeout_s, progress=progress)
    _install(root, name, version, manifest_text, wanted, parts)
    log.info("fetched %s v%s from %s (%d bytes)", name, version, source.target, received)
    return Fetched(target, version, received)


def _checked_reply(reply: dict[str, Any], name: str, version: str | None) -> tuple[str, str]:
    text, got = reply.get("manifest"), reply.get("version")
    if not isinstance(text, str) or not isinstance(got, str) or not got.isdigit():
        raise FetchError(f"the cloud's answer for {name} is malformed", retry=False)
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FetchError(f"the cloud's manifest of {name} v{got} is not JSON ({exc})", retry=False) from None
    if manifest.get("name") != name or str(manifest.get("version")) != got or (version and got != version):
        raise FetchError(f"the cloud answered {manifest.get('name')} v{manifest.get('version')} for {name} "
                         f"v{version or 'newest'}", retry=False)
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("artifacts"), dict):
        raise FetchError(f"the cloud's manifest of {name} v{got} lacks its file table", retry=False)
    return text, got


async def _call(make: Callable[[], Any], what: str, source: FetchSource, attempts: int, backoff_s: float) -> Any:
    for attempt in range(attempts):
        try:
            return await make()
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _FINAL or attempt == attempts - 1:
                raise _error(exc, what, source) from None
            await asyncio.sleep(backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


def _error(exc: grpc.aio.AioRpcError, what: str, source: FetchSource) -> FetchError:
    detail = (exc.details() or "").strip().splitlines()
    return FetchError(f"{what} from {source.target}: {exc.code().name}: {detail[0] if detail else 'no detail'}",
                      retry=exc.code() not in _FINAL)


async def _download(read: Any, source: FetchSource, name: str, version: str, rel: str, entry: dict[str, Any],
                    parts: Path, *, attempts: int, backoff_s: float, timeout_s: float,
                    progress: Progress | None) -> int:
    """One file into its ``.part`` (resuming what is there), checked; returns the bytes received."""
    sha, size = str(entry.get("sha256", "")), int(entry.get("bytes", -1))
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha) or size < 0:
        raise FetchError(f"{name} v{version} {rel}: the manifest gives no valid sha256 and size", retry=False)
    part = parts / f"{sha}.part"
    received = 0
    for attempt in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            break
        try:
            call = read({"name": name, "version": version, "path": rel, "sha256": sha, "offset": have},
                        metadata=source.metadata, timeout=timeout_s + size / 1e6)
            with open(part, "ab") as out:
                async for chunk in call:
                    await asyncio.to_thread(out.write, chunk)
                    received += len(chunk)
                    have += len(chunk)
                    if progress is not None:
                        progress(f"{name} v{version} {rel}", have, size)
                    if have > size:  # more than the manifest says: stop reading, discarded below
                        call.cancel()
                        break
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _FINAL or attempt == attempts - 1:
                raise _error(exc, f"{name} v{version} {rel}", source) from None
            log.warning("fetching %s v%s %s: %s at byte %d; resuming", name, version, rel, exc.code().name, have)
            await asyncio.sleep(backoff_s * 2 ** attempt)
            continue
        if have >= size:
            break
    have = part.stat().st_size if part.exists() else 0
    if have != size or await asyncio.to_thread(sha256_file, part) != sha:
        part.unlink(missing_ok=True)
        raise FetchError(f"{name} v{version} {rel}: received {have} bytes that do not match the manifest "
                         f"({size} bytes, sha256 {sha[:12]}...); discarded")
    return received


def _prune_parts(parts: Path, keep: set[str], older_than_s: float = STALE_PART_S) -> None:
    """Drop parts of other content left by fetches that gave up long ago (a version the cloud has
    since replaced would never resume them)."""
    now = time.time()
    for part in parts.glob("*.part"):
        with contextlib.suppress(OSError):
            if part.name[: -len(".part")] not in keep and now - part.stat().st_mtime > older_than_s:
                part.unlink()


def _install(root: Path, name: str, version: str, manifest_text: str, wanted: dict[str, dict[str, Any]],
             parts: Path) -> None:
    """Checked parts + manifest into a staging directory, renamed into place in one step."""
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".fetch-{version}-", dir=model_dir))
    try:
        for rel, entry in wanted.items():
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(parts / f"{entry['sha256']}.part", dest)
        (stage / MANIFEST).write_text(manifest_text, encoding="utf-8")
        with contextlib.suppress(OSError):
            os.chmod(stage, 0o755)
        try:
            os.rename(stage, model_dir / version)
        except OSError as exc:
            raise FetchError(f"cannot put {name} v{version} in place at {model_dir / version} ({exc.strerror or exc})",
                             retry=False) from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    with contextlib.suppress(OSError):
        parts.rmdir()  # empty once nothing else is being fetched


def progress_printer(prefix: str, *, step: float = 0.1, out: Callable[[str], None] | None = None) -> Progress:
    """A ``Progress`` that prints one line per file each ``step`` of its size (and at its end)."""
    shown: dict[str, int] = {}
    write = out or (lambda line: print(line, flush=True))

    def report(rel: str, have: int, size: int) -> None:
        tenth = size and int(have / size / step)
        if have >= size or tenth > shown.get(rel, -1):
            shown[rel] = tenth
            write(f"{prefix}{rel}: {have / 1e6:.1f} of {size / 1e6:.1f} MB")

    return report
