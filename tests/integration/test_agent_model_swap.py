"""Hot swap of the agent's edge models (SIGHUP's ``reload_models``), with real gRPC streams on loopback:
a stream runs across a swap from version 1 to 2 without an error, a corrupt version 3 is refused while
2 serves, a rollback to 1 (pin and reload) takes under a second, and old runners are released."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from model_versions import IMAGE, Streamer, corrupt_version, versioned_repo

from fogline import codec
from fogline.agent.server import create_server
from fogline.demo.loopback import device_config
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.models]

def device(repo, *models: str):
    return device_config(models, policy="edge_only", models_dir=repo)


def pinned(name: str, version: str | None) -> str:
    return name if version is None else f'{{name: {name}, version: "{version}"}}'


def swap_scenario(repo, body):
    async def scenario():
        agent, port = create_server(device(repo, pinned("digits", "1")), cloud="", listen="127.0.0.1:0")
        agent.bound_port = port
        await agent.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await body(agent, pb_grpc.GRPCInferenceServiceStub(channel))
        finally:
            await agent.stop(1.0)

    return asyncio.run(scenario())


def test_streams_cross_a_swap_a_corrupt_version_is_refused_and_a_rollback_is_fast(model_repo, tmp_path):
    repo = versioned_repo(model_repo, tmp_path / "models", {"digits": 2})

    async def body(agent, stub):
        streams = [Streamer(stub), Streamer(stub)]
        await asyncio.gather(*(s.wait_for("1") for s in streams))
        first = agent.dataplane.edge.runners["digits"]
        # Version 1's live agreement, as its first shadow would have left it (this agent has no cloud).
        agent.dataplane.shadow._tracker("digits", "1", first, 10, 1)
        agent.metrics.set_shadow_agreement("digits", "1", "top1_agreement", 1.0, False)
        # Unpinned: the newest (2) is loaded beside 1, checked, and swapped in under the open streams.
        changes = await agent.reload_models(device(repo, "digits"))
        assert [(c.before, c.after, c.refused) for c in changes] == [("1", "2", "")]
        assert ("digits", "1") not in agent.dataplane.shadow.trackers  # its agreement went with it
        assert agent.metrics.registry.get_sample_value(
            "fogline_agent_shadow_agreement", {"model": "digits", "version": "1", "metric": "top1_agreement"}) is None
        marks = [len(s.versions) for s in streams]
        await asyncio.gather(*(s.wait_for("2", after) for s, after in zip(streams, marks, strict=True)))
        await agent.reloader.wait_released()
        assert agent.reloader.retiring == [] and first.drained and first._tasks[0].done()

        # A truncated version 3 is refused; version 2 keeps serving.
        corrupt_version(model_repo, repo, "digits", 3)
        changes = await agent.reload_models(device(repo, "digits"))
        assert [(c.before, c.after, c.refused, c.reason) for c in changes] == [("2", "2", "3", "hash")]
        assert "sha256 mismatch" in changes[0].message or "bytes" in changes[0].message
        marks = [len(s.versions) for s in streams]
        await asyncio.sleep(0.2)
        assert all(set(s.versions[m:]) == {"2"} for s, m in zip(streams, marks, strict=True))

        # Rollback: pin version 1 and reload.
        began = time.perf_counter()
        changes = await agent.reload_models(device(repo, pinned("digits", "1")))
        rollback_s = time.perf_counter() - began
        assert [(c.before, c.after) for c in changes] == [("2", "1")]
        marks = [len(s.versions) for s in streams]
        await asyncio.gather(*(s.wait_for("1", after) for s, after in zip(streams, marks, strict=True)))
        for s in streams:
            await s.close()
        metrics = agent.metrics
        return streams, rollback_s, metrics

    streams, rollback_s, metrics = swap_scenario(repo, body)
    for s in streams:
        assert s.errors == []
        # Each stream saw 1s, then 2s, then 1s: the switch happens once each way, never back and forth.
        runs = [v for i, v in enumerate(s.versions) if i == 0 or s.versions[i - 1] != v]
        assert runs == ["1", "2", "1"], runs
    print(f"digits rollback 2 -> 1: {rollback_s * 1000:.0f} ms")
    assert rollback_s < 1.0, f"rollback took {rollback_s:.3f} s"
    sample = metrics.registry.get_sample_value
    assert sample("fogline_agent_model_load_failures_total", {"model": "digits", "version": "3", "reason": "hash"}) == 1
    assert sample("fogline_agent_model_version", {"model": "digits", "version": "1"}) == 1
    assert sample("fogline_agent_model_version", {"model": "digits", "version": "2"}) is None
    assert sample("fogline_agent_model_swaps_total", {"model": "digits"}) == 2


@pytest.mark.slow
def test_minilm_rollback_under_a_second(model_repo, tmp_path):
    repo = versioned_repo(model_repo, tmp_path / "models", {"minilm": 2})

    async def scenario():
        agent, _ = create_server(device(repo, pinned("minilm", "2")), cloud="", listen="127.0.0.1:0")
        await agent.start()
        try:
            began = time.perf_counter()
            changes = await agent.reload_models(device(repo, pinned("minilm", "1")))
            elapsed = time.perf_counter() - began
            text = np.array([b"a rollback"], dtype=object)
            answer = await agent.dataplane.infer(codec.InferRequest("minilm", {"text": text}))
            return changes, elapsed, answer
        finally:
            await agent.stop(1.0)

    changes, elapsed, answer = asyncio.run(scenario())
    assert [(c.before, c.after) for c in changes] == [("2", "1")]
    assert answer.model_version == "1"
    print(f"minilm rollback 2 -> 1: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0, f"rollback took {elapsed:.3f} s"


def test_agent_status_reports_revision_versions_link_and_tiers(model_repo, tmp_path, capsys):
    from fogline.agent.cli import main
    from fogline.agent.status import fetch

    repo = versioned_repo(model_repo, tmp_path / "models", {"digits": 2})

    async def body(agent, stub):
        for _ in range(3):
            await stub.ModelInfer(codec.request_to_proto(codec.InferRequest("digits", {"image": IMAGE})))
        before = await asyncio.to_thread(fetch, f"127.0.0.1:{agent.bound_port}")
        await agent.reload_models(device(repo, "digits"))
        after = await asyncio.to_thread(fetch, f"127.0.0.1:{agent.bound_port}")
        code = await asyncio.to_thread(main, ["status", "--listen", f"127.0.0.1:{agent.bound_port}"])
        return before, after, code

    before, after, code = swap_scenario(repo, body)
    assert before["models"]["digits"]["version"] == "1" and after["models"]["digits"]["version"] == "2"
    assert before["config"]["revision"] and before["device"] == "loopback"
    assert before["link"]["state"] == "not_configured" and before["link"]["version_missing"] == {}
    assert before["tiers"]["served_by"] == {"edge": 3} and before["tiers"]["shares"] == {"edge": 1.0}
    out = capsys.readouterr().out
    assert code == 0 and "digits v2" in out and "edge 100% (3)" in out and "revision" in out
