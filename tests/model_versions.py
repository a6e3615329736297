"""Model repositories with several versions for the hot-swap tests, made from the ``model_repo`` build.

``versioned_repo(model_repo, root, {"digits": 2})`` copies each reference model's version 1 as
versions 1..N (the manifest's ``version`` fixed, its hashes still true); ``corrupt_version`` adds a
version whose edge file is cut in half (its manifest promises the whole file). ``Streamer`` keeps a
v2 stream busy with ``digits`` requests and records which version answered each.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from fogline import codec

IMAGE = np.random.default_rng(3).uniform(0, 16, (1, 8, 8)).astype(np.float32)


def add_version(model_repo: Path, root: Path, name: str, version: int) -> Path:
    """``root/name/version``: a copy of the built ``name`` version 1 that calls itself ``version``."""
    source = Path(model_repo) / name / "1"
    target = Path(root) / name / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # Hard links where the file system allows: minilm is 200 MB and nothing here writes to them.
    shutil.copytree(source, tmp, copy_function=_link_or_copy)
    manifest_path = tmp / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["version"] = str(version)
    manifest_path.unlink()  # (a hard link: write a new file, never into the build's)
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def versioned_repo(model_repo: Path, root: Path, versions: dict[str, int]) -> Path:
    for name, count in versions.items():
        for version in range(1, count + 1):
            add_version(model_repo, root, name, version)
    return Path(root)


def corrupt_version(model_repo: Path, root: Path, name: str, version: int) -> Path:
    """A version whose edge ONNX file is truncated (a copy cut short: what a broken download leaves)."""
    target = add_version(model_repo, root, name, version)
    manifest = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    edge = target / manifest["artifacts"]["edge"]
    data = edge.read_bytes()
    edge.unlink()
    edge.write_bytes(data[: len(data) // 2])
    return target


class Streamer:
    """One ``ModelStreamInfer`` stream (agent or cloud) asking ``digits`` one request at a time; records
    every answer's version and parameters, and every error."""

    def __init__(self, stub) -> None:
        self.call = stub.ModelStreamInfer()
        self.versions: list[str] = []
        self.params: list[dict] = []
        self.errors: list[str] = []
        self._stop = False
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        i = 0
        while not self._stop:
            await self.call.write(codec.request_to_proto(codec.InferRequest("digits", {"image": IMAGE}, id=str(i))))
            reply = await self.call.read()
            if reply.error_message:
                self.errors.append(reply.error_message)
            else:
                answer = codec.response_from_proto(reply.infer_response)
                assert answer.id == str(i)
                assert answer.parameters["model_version"] == answer.model_version
                self.versions.append(answer.model_version)
                self.params.append(answer.parameters)
            i += 1

    async def wait_for(self, version: str, after: int = 0, timeout_s: float = 30.0) -> int:
        """Until an answer past index ``after`` comes from ``version``; returns that answer's index."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for index in range(after, len(self.versions)):
                if self.versions[index] == version:
                    return index
            await asyncio.sleep(0.002)
        raise AssertionError(f"no answer from version {version} after #{after}: {self.versions[after:][-5:]}")

    async def close(self) -> None:
        self._stop = True
        await self.task
        await self.call.done_writing()


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
