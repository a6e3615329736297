"""The cloud serves its model repository's files to agents (``fogline.models.v1.ModelFiles``).

The protocol is ``fogline.models.distribution``'s. This side answers from the repository directory the
cloud was started with, every version in it (not only the ones it serves: an agent pinned to an older
version can still get it), and only files the version's manifest lists, under the version's own
directory: a manifest cannot make it read anything else. Files are read in a thread, one chunk at a
time, so a large transfer never holds the event loop. Authentication is the listener's (the same
interceptor as inference), so a device needs its token to fetch.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc

from fogline.errors import ConfigError, ModelNotFound
from fogline.models.distribution import CHUNK_BYTES, SERVICE, decode, encode
from fogline.models.repository import MANIFEST, ModelRepository, read_manifest

log = logging.getLogger("fogline.cloud")


class ModelFiles:
    """``Describe`` and ``Read`` over the repository at ``root``."""

    def __init__(self, root: Path | str, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.repo = ModelRepository(Path(root))
        self.chunk_bytes = chunk_bytes

    async def describe(self, request: bytes, context: grpc.aio.ServicerContext) -> dict[str, Any]:
        doc = await _parse(request, context)
        name, version = doc.get("name"), doc.get("version")
        version_dir = await self._version_dir(context, name, version)
        text = (version_dir / MANIFEST).read_text(encoding="utf-8")
        return {"name": name, "version": version_dir.name, "manifest": text}

    async def read(self, request: bytes, context: grpc.aio.ServicerContext):
        doc = await _parse(request, context)
        name, version, rel = doc.get("name"), doc.get("version"), doc.get("path")
        offset = doc.get("offset", 0)
        if not isinstance(version, str) or not isinstance(rel, str) or not isinstance(offset, int) or offset < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "Read needs name, version, path (strings), sha256 and offset >= 0")
        version_dir = await self._version_dir(context, name, version)
        try:
            entry = read_manifest(version_dir)["files"].get(rel)
        except ConfigError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        path = (version_dir / rel).resolve()
        if entry is None or not path.is_relative_to(version_dir.resolve()) or not path.is_file():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{name} v{version} has no file {rel!r}")
        if entry.get("sha256") != doc.get("sha256"):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"{name} v{version} {rel}: the cloud holds other content (sha256 "
                                f"{entry.get('sha256')}); describe the version again")
        size = int(entry.get("bytes", 0))
        if offset > size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"{rel} has {size} bytes; offset {offset} is past its end")
        with open(path, "rb") as handle:
            handle.seek(offset)
            while chunk := await asyncio.to_thread(handle.read, self.chunk_bytes):
                yield chunk
        log.info("model files: sent %s v%s %s from byte %d", name, version, rel, offset)

    async def _version_dir(self, context: grpc.aio.ServicerContext, name: Any, version: Any) -> Path:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad model name {name!r}")
        if version is not None and not isinstance(version, str):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad version {version!r}: a string or null")
        try:
            return self.repo.resolve(name, version)
        except ModelNotFound:
            # Said without the repository's path: the caller is a device, not this host's operator.
            versions = self.repo.versions(name)
            message = (f"this cloud has no version {version!r} of {name!r} (it has: {', '.join(versions)})"
                       if versions else f"this cloud has no model {name!r}")
            await context.abort(grpc.StatusCode.NOT_FOUND, message)
        raise AssertionError("unreachable")  # abort raises


async def _parse(request: bytes, context: grpc.aio.ServicerContext) -> dict[str, Any]:
    try:
        return decode(request)
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {exc}")
    raise AssertionError("unreachable")


def handler(root: Path | str) -> grpc.GenericRpcHandler:
    """The ``ModelFiles`` service over the repository at ``root``, for a gRPC server."""
    files = ModelFiles(root)
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Describe": grpc.unary_unary_rpc_method_handler(files.describe, response_serializer=encode),
        "Read": grpc.unary_stream_rpc_method_handler(files.read),
    })
