"""Model distribution over real gRPC on loopback: the cloud's ``ModelFiles`` service and the fetch client.

The server here is a plain ``grpc.aio`` server with the cloud's handler (and, where a test says so,
the cloud's bearer-token interceptor), over copies of the built reference models: what is under test
is the transfer, the checks and what a failure leaves behind, not torch. A ``ModelFiles`` that cuts
its streams (``Cutting``) stands in for a network that drops mid-file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest
from model_versions import add_version

from fogline.agent.model_fetch import ModelFetcher, missing_models
from fogline.cloud.model_files import ModelFiles
from fogline.models.distribution import DESCRIBE, READ, SERVICE, decode, encode
from fogline.models.fetch import FetchError, FetchSource, fetch_version
from fogline.models.repository import hash_problems, read_manifest
from fogline.security import AuthInterceptor, TokenStore, hash_token

pytestmark = [pytest.mark.integration, pytest.mark.models]

SMALL_CHUNK = 256 * 1024


class Cutting(ModelFiles):
    """Ends the first ``cuts`` Read streams with UNAVAILABLE after ``after`` chunks; records every Read."""

    def __init__(self, root: Path, *, cuts: int = 1, after: int = 3) -> None:
        super().__init__(root, chunk_bytes=SMALL_CHUNK)
        self.cuts, self.after = cuts, after
        self.reads: list[tuple[str, int]] = []

    async def read(self, request, context):
        doc = decode(request)
        self.reads.append((doc["path"], doc["offset"]))
        sent = 0
        async for chunk in super().read(request, context):
            if self.cuts and sent == self.after:
                self.cuts -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (test)")
            sent += 1
            yield chunk


def files_handler(files: ModelFiles) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Describe": grpc.unary_unary_rpc_method_handler(files.describe, response_serializer=encode),
        "Read": grpc.unary_stream_rpc_method_handler(files.read),
    })


@contextlib.asynccontextmanager
async def files_server(files: ModelFiles, interceptors=()):
    server = grpc.aio.server(interceptors=list(interceptors) or None)
    server.add_generic_rpc_handlers((files_handler(files),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture
def cloud_repo(model_repo, tmp_path):
    root = tmp_path / "cloud"
    add_version(model_repo, root, "minilm", 1)
    add_version(model_repo, root, "digits", 1)
    add_version(model_repo, root, "digits", 2)
    return root


def edge_files(version_dir: Path) -> set[str]:
    return {p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*") if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Anything a fetch may leave that is not a finished version: staging directories and parts."""
    found = [p.relative_to(root).as_posix() for p in root.rglob(".fetch-*")]
    return found + [p.relative_to(root).as_posix() for p in (root / ".fetch").glob("*")] if (root / ".fetch").is_dir() \
        else found


def test_a_fetch_brings_the_edge_files_checked_and_a_second_one_only_checks(cloud_repo, tmp_path):
    device = tmp_path / "device"

    async def scenario():
        async with files_server(ModelFiles(cloud_repo)) as target:
            first = await fetch_version(FetchSource(target), device, "minilm", "1")
            again = await fetch_version(FetchSource(target), device, "minilm", None)
            newest = await fetch_version(FetchSource(target), device, "digits", None)
            return first, again, newest

    first, again, newest = asyncio.run(scenario())
    version_dir = device / "minilm" / "1"
    manifest = read_manifest(version_dir)
    assert edge_files(version_dir) == {"manifest.json", manifest["artifacts"]["edge"], manifest["artifacts"]["tokenizer"]}
    assert (version_dir / "manifest.json").read_bytes() == (cloud_repo / "minilm" / "1" / "manifest.json").read_bytes()
    sizes = manifest["files"]
    assert first.bytes_received == sum(sizes[rel]["bytes"] for rel in edge_files(version_dir) - {"manifest.json"})
    assert again.already_present and again.bytes_received == 0
    assert newest.version == "2" and (device / "digits" / "2" / "manifest.json").is_file()
    assert leftovers(device) == []
    # What the agent's swap checks (the edge roles' hashes) holds; the full model is not on the device.
    assert hash_problems(version_dir, dict(manifest, files={
        rel: e for rel, e in sizes.items() if rel in edge_files(version_dir)}), extra_files=False) == []


def test_a_stream_cut_half_way_resumes_where_it_stopped(cloud_repo, tmp_path):
    device = tmp_path / "device"
    files = Cutting(cloud_repo, cuts=2, after=3)

    async def scenario():
        async with files_server(files) as target:
            return await fetch_version(FetchSource(target), device, "minilm", "1", backoff_s=0.01)

    done = asyncio.run(scenario())
    manifest = read_manifest(device / "minilm" / "1")
    edge = manifest["artifacts"]["edge"]
    # Cut twice, after 3 chunks each time: asked again from the bytes already there, never from zero.
    assert [offset for path, offset in files.reads if path == edge] == [0, 3 * SMALL_CHUNK, 6 * SMALL_CHUNK]
    assert done.bytes_received == manifest["files"][edge]["bytes"] + manifest["files"][manifest["artifacts"]["tokenizer"]]["bytes"]
    assert leftovers(device) == []


def test_a_fetch_that_gives_up_leaves_no_version_and_the_next_one_resumes(cloud_repo, tmp_path):
    device = tmp_path / "device"
    files = Cutting(cloud_repo, cuts=1, after=4)

    async def scenario():
        async with files_server(files) as target:
            with pytest.raises(FetchError) as caught:
                await fetch_version(FetchSource(target), device, "minilm", "1", attempts=1)
            assert not (device / "minilm" / "1").exists() and missing_models(device, [("minilm", "1")])
            # Parts of other content: a fresh one stays, one a day old goes with the next fetch.
            fresh, stale = device / ".fetch" / f"{'a' * 64}.part", device / ".fetch" / f"{'b' * 64}.part"
            for part in (fresh, stale):
                part.write_bytes(b"x")
            os.utime(stale, (time.time() - 2 * 86400,) * 2)
            done = await fetch_version(FetchSource(target), device, "minilm", "1")
            assert fresh.exists() and not stale.exists()
            fresh.unlink()
            return caught.value, done

    error, done = asyncio.run(scenario())
    assert error.retry and "UNAVAILABLE" in str(error)
    edge = read_manifest(device / "minilm" / "1")["artifacts"]["edge"]
    assert [offset for path, offset in files.reads if path == edge] == [0, 4 * SMALL_CHUNK]
    assert leftovers(device) == []
    assert not missing_models(device, [("minilm", "1")])
    assert done.bytes_received < read_manifest(device / "minilm" / "1")["files"][edge]["bytes"] + 10**6


def test_corrupt_content_is_discarded_and_a_later_fetch_succeeds(cloud_repo, tmp_path):
    device = tmp_path / "device"
    edge = cloud_repo / "digits" / "1" / read_manifest(cloud_repo / "digits" / "1")["artifacts"]["edge"]
    good = edge.read_bytes()
    edge.unlink()  # (a hard link to the build: write a new file)
    edge.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])  # same size, one bit pattern off

    async def scenario():
        async with files_server(ModelFiles(cloud_repo)) as target:
            with pytest.raises(FetchError) as caught:
                await fetch_version(FetchSource(target), device, "digits", "1")
            before = leftovers(device), (device / "digits").exists() and any((device / "digits").iterdir())
            edge.write_bytes(good)
            return caught.value, before, await fetch_version(FetchSource(target), device, "digits", "1")

    error, (left, version_dirs), done = asyncio.run(scenario())
    assert "do not match the manifest" in str(error) and "discarded" in str(error)
    assert left == [] and not version_dirs
    assert done.version == "1" and leftovers(device) == []


def test_bad_requests_unknown_models_and_paths_outside_the_version_are_refused(cloud_repo, tmp_path):
    manifest_path = cloud_repo / "digits" / "2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../outside.txt"] = {"bytes": 3, "sha256": "0" * 64}
    manifest_path.unlink()
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "outside.txt").write_text("no")

    async def scenario():
        async with files_server(ModelFiles(cloud_repo)) as target, grpc.aio.insecure_channel(target) as channel:
            describe = channel.unary_unary(DESCRIBE, request_serializer=None, response_deserializer=decode)
            read = channel.unary_stream(READ, request_serializer=encode, response_deserializer=None)
            codes = {}
            for what, call in {
                "not json": lambda: describe(b"{nope"),
                "unknown model": lambda: describe(encode({"name": "nope", "version": None})),
                "unknown version": lambda: describe(encode({"name": "digits", "version": "9"})),
                "dot name": lambda: describe(encode({"name": "..", "version": None})),
            }.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call()
                codes[what] = (caught.value.code(), caught.value.details())
            for what, doc in {
                "outside": {"path": "../../outside.txt", "sha256": "0" * 64},
                "unlisted": {"path": "manifest.json", "sha256": "0" * 64},
                "stale hash": {"path": manifest["artifacts"]["edge"], "sha256": "1" * 64},
                "past the end": {"path": manifest["artifacts"]["edge"],
                                 "sha256": manifest["files"][manifest["artifacts"]["edge"]]["sha256"], "offset": 10**9},
            }.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in read({"name": "digits", "version": "2", "offset": 0, **doc}):
                        pass
                codes[what] = (caught.value.code(), caught.value.details())
            return codes

    codes = asyncio.run(scenario())
    code = {what: c for what, (c, _) in codes.items()}
    assert code == {"not json": grpc.StatusCode.INVALID_ARGUMENT, "unknown model": grpc.StatusCode.NOT_FOUND,
                    "unknown version": grpc.StatusCode.NOT_FOUND, "dot name": grpc.StatusCode.INVALID_ARGUMENT,
                    "outside": grpc.StatusCode.NOT_FOUND, "unlisted": grpc.StatusCode.NOT_FOUND,
                    "stale hash": grpc.StatusCode.NOT_FOUND, "past the end": grpc.StatusCode.OUT_OF_RANGE}
    assert "has: 1, 2" in codes["unknown version"][1]
    assert str(cloud_repo) not in " ".join(details for _, details in codes.values())  # no host paths leak


def test_fetching_needs_a_token_when_the_cloud_asks_for_one(cloud_repo, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"cam-001 {hash_token('s3cret-token-for-cam-001')}\n")
    auth = AuthInterceptor(TokenStore(tokens))
    device = tmp_path / "device"

    async def scenario():
        async with files_server(ModelFiles(cloud_repo), [auth]) as target:
            with pytest.raises(FetchError) as refused:
                await fetch_version(FetchSource(target), device, "digits", "1")
            with pytest.raises(FetchError) as wrong:
                await fetch_version(FetchSource(target, metadata=(("authorization", "Bearer wrong"),)), device,
                                    "digits", "1")
            ok = await fetch_version(FetchSource(target, metadata=(("authorization", "Bearer s3cret-token-for-cam-001"),)),
                                     device, "digits", "1")
            return refused.value, wrong.value, ok

    refused, wrong, ok = asyncio.run(scenario())
    for error in (refused, wrong):
        assert "UNAUTHENTICATED" in str(error) and not error.retry
    assert ok.version == "1"


def test_a_version_the_cloud_lacks_is_not_retried_blindly_and_is_fetched_once_published(cloud_repo, tmp_path,
                                                                                       model_repo):
    """NOT_FOUND is final for that try (no retry loop hammers the cloud); the next reload fetches it."""
    device = tmp_path / "device"
    shutil.rmtree(cloud_repo / "digits" / "2")

    async def scenario():
        async with files_server(Cutting(cloud_repo, cuts=0)) as target:
            fetcher = ModelFetcher(lambda: FetchSource(target))
            first = await fetcher.ensure(device, [("digits", "2")])
            add_version(model_repo, cloud_repo, "digits", 2)
            second = await fetcher.ensure(device, [("digits", "2")])
            return first, second, fetcher

    first, second, fetcher = asyncio.run(scenario())
    assert len(first) == 1 and "NOT_FOUND" in first[0].error and not first[0].retry
    assert first[0].describe().startswith("fetch of digits v2 failed: ")
    assert second == [second[0]] and not second[0].error and second[0].version == "2"
    assert (fetcher.fetched, fetcher.failures) == (1, 1)


def test_a_reload_fetches_the_pinned_version_and_a_cut_fetch_is_retried_in_the_background(
        model_repo, tmp_path, monkeypatch, async_until):
    """SIGHUP's ``reload_models`` names digits v2, which the device lacks: the first fetch is cut (the
    reload refuses v2 as missing, v1 keeps serving), the background retry resumes it and swaps v2 in."""
    from fogline.agent import model_fetch, status
    from fogline.agent.server import create_server
    from fogline.demo.loopback import device_config

    monkeypatch.setattr(model_fetch, "RETRY_FIRST_S", 0.05)
    device_repo = tmp_path / "device"
    add_version(model_repo, device_repo, "digits", 1)
    cloud = tmp_path / "cloud"
    add_version(model_repo, cloud, "digits", 2)
    files = Cutting(cloud, cuts=1, after=0)

    def config(version: str):
        return device_config([f'{{name: digits, version: "{version}"}}'], policy="edge_only", models_dir=device_repo)

    async def scenario():
        async with files_server(files) as target:
            agent, _ = create_server(config("1"), cloud="127.0.0.1:1", listen="127.0.0.1:0")
            agent.fetcher = ModelFetcher(lambda: FetchSource(target), attempts=1)
            await agent.start()
            try:
                wanted = config("2")
                agent.apply_config(wanted)
                changes = await agent.reload_models(wanted)
                serving_meanwhile = agent.dataplane.edge.runners["digits"].version
                assert agent.fetcher.retrying or agent.dataplane.edge.runners["digits"].version == "2"
                await async_until(lambda: agent.dataplane.edge.runners["digits"].version == "2",
                                  what="digits v2 fetched and swapped in by the retry")
                assert not agent.fetcher.retrying
                doc = status.snapshot(agent)
                assert doc["fetch"] == {"fetched": 1, "failures": 1, "retrying": False}
                assert doc["models"]["digits"]["version"] == "2"
                return changes, serving_meanwhile, agent.fetcher.fetched, agent.fetcher.failures
            finally:
                await agent.stop(1.0)

    changes, meanwhile, fetched, failures = asyncio.run(scenario())
    assert [(c.before, c.after, c.refused, c.reason) for c in changes] == [("1", "1", "2", "missing")]
    assert meanwhile == "1" and (fetched, failures) == (1, 1)
    edge = read_manifest(device_repo / "digits" / "2")["artifacts"]["edge"]
    assert [offset for path, offset in files.reads if path == edge] == [0, 0]  # cut before any byte arrived
    assert leftovers(device_repo) == []
