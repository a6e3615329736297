"""Model distribution: the wire protocol by which a cloud hands its model files to agents.

An edge device has no torch and cannot build models, so the cloud tier serves the files of its model
repository beside the v2 service (``fogline.cloud.model_files``) and an agent fetches what it lacks
(``fogline.models.fetch``; ``fogline models pull`` by hand, the agent itself at start and on reload).

Service ``fogline.models.v1.ModelFiles``, on the cloud's listener (same TLS, same bearer tokens as
inference). Requests are small JSON objects (UTF-8 bytes; no protobuf schema, so no generated stubs,
as the agent's status RPC):

- ``Describe`` ``{"name": N, "version": V | null}`` -> JSON ``{"name", "version", "manifest"}`` where
  ``manifest`` is the version's ``manifest.json`` text as stored (the newest version when ``version``
  is null). ``NOT_FOUND`` for a model or version the cloud lacks.
- ``Read`` ``{"name", "version", "path", "sha256", "offset"}`` -> a stream of raw byte chunks (at most
  ``CHUNK_BYTES`` each) of that file from ``offset`` to its end. Content-addressed: ``path`` must be
  in the manifest's file table with exactly that ``sha256``, else ``NOT_FOUND`` (the cloud has other
  content under that name now); an ``offset`` past the end is ``OUT_OF_RANGE``. A cut stream is
  resumed by asking again from the bytes already received.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

SERVICE = "fogline.models.v1.ModelFiles"
DESCRIBE = f"/{SERVICE}/Describe"
READ = f"/{SERVICE}/Read"
#: Bytes per streamed chunk: well under the 64 MiB message limit, large enough to keep per-message
#: costs (about 0.3 ms in Python gRPC) small against the transfer.
CHUNK_BYTES = 1 << 20
#: The artifacts the edge runtime reads; an agent fetches and checks only these files.
EDGE_ROLES = ("edge", "tokenizer")


def encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def decode(data: bytes) -> dict[str, Any]:
    """A JSON object from the wire; ``ValueError`` for anything else."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON object ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def files_of_roles(manifest: Mapping[str, Any], roles: tuple[str, ...] | None) -> dict[str, dict[str, Any]]:
    """The manifest's file-table entries an artifact role reads (a role may name a file or a folder);
    every file when ``roles`` is None."""
    table: dict[str, dict[str, Any]] = dict(manifest.get("files") or {})
    if roles is None:
        return table
    paths = [manifest["artifacts"][role] for role in roles if role in (manifest.get("artifacts") or {})]
    return {rel: entry for rel, entry in table.items()
            if any(rel == path or rel.startswith(path.rstrip("/") + "/") for path in paths)}


def split_ref(text: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION`` -> (name, version or None); ``ValueError`` when malformed."""
    name, _, version = text.partition(":")
    if not name or "/" in name or name.startswith(".") or (version and not version.isdigit()):
        raise ValueError(f"{text!r}: expected NAME or NAME:VERSION (a positive integer)")
    return name, version or None
