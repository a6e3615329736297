"""The cloud swaps model versions (SIGHUP's ``reload_models``) under open streams, and the agent stays
paired with it: while the cloud serves a version the agent's edge does not, the agent answers on the
edge (``cloud_version_missing``) over a link that stays up; once the agent swaps too, the cloud answers
again. A corrupt version on the cloud is refused while the last good one serves."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from cloud_thread import CloudThread
from model_versions import Streamer, add_version, corrupt_version, versioned_repo

from fogline.agent.router_types import CLOUD_VERSION_MISSING
from fogline.agent.server import create_server
from fogline.cloud.settings import ServingSettings
from fogline.demo.loopback import device_config
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.models]


def agent_device(repo, version: str):
    return device_config((f'{{name: digits, version: "{version}"}}',), policy="cloud_only", models_dir=repo)


def test_the_cloud_swaps_under_streams_and_the_agent_follows_its_version(model_repo, tmp_path):
    cloud_repo = versioned_repo(model_repo, tmp_path / "cloud", {"digits": 1})
    edge_repo = versioned_repo(model_repo, tmp_path / "edge", {"digits": 2})
    settings = ServingSettings(listen="127.0.0.1:0", device="cpu", torch_threads=1, max_batch_size=8)
    cloud = CloudThread(settings, None, repo=cloud_repo)

    async def scenario():
        agent, port = create_server(agent_device(edge_repo, "1"), cloud=cloud.address, listen="127.0.0.1:0")
        await agent.start()
        try:
            assert await agent.link.wait_usable(30)
            async with grpc.aio.insecure_channel(cloud.address) as to_cloud, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{port}") as to_agent:
                direct = [Streamer(pb_grpc.GRPCInferenceServiceStub(to_cloud)) for _ in range(3)]
                paired = Streamer(pb_grpc.GRPCInferenceServiceStub(to_agent))
                await asyncio.gather(*(s.wait_for("1") for s in [*direct, paired]))
                assert paired.params[-1]["served_by"] == "cloud"

                # The cloud moves to version 2 while three streams batch on it.
                add_version(model_repo, cloud_repo, "digits", 2)
                changes = await cloud.on_loop(cloud.server.reload_models())
                assert [(c.before, c.after, c.refused) for c in changes] == [("1", "2", "")]
                marks = [len(s.versions) for s in direct]
                await asyncio.gather(*(s.wait_for("2", m) for s, m in zip(direct, marks, strict=True)))
                await cloud.on_loop(cloud.server.dataplane.wait_released())

                # The agent still serves 1 on its edge: the cloud lacks it, the edge answers.
                mark = len(paired.params)
                while not any(p["route_reason"] == CLOUD_VERSION_MISSING for p in paired.params[mark:]):
                    await asyncio.sleep(0.01)
                missing = [p for p in paired.params[mark:] if p["route_reason"] == CLOUD_VERSION_MISSING]
                assert all(p["served_by"] == "edge" and p["model_version"] == "1" for p in missing)
                link_state = agent.link.view("digits").state

                # The agent moves to 2 as well: paired again, the cloud answers.
                await agent.reload_models(agent_device(edge_repo, "2"))
                mark = len(paired.params)
                await paired.wait_for("2", mark)
                while paired.params[-1]["served_by"] != "cloud":
                    await asyncio.sleep(0.01)

                # A corrupt version 3 on the cloud is refused; 2 keeps serving there.
                corrupt_version(model_repo, cloud_repo, "digits", 3)
                changes = await cloud.on_loop(cloud.server.reload_models())
                assert [(c.after, c.refused, c.reason) for c in changes] == [("2", "3", "hash")]
                marks = [len(s.versions) for s in direct]
                await asyncio.sleep(0.3)
                for s in [*direct, paired]:
                    await s.close()
                return direct, paired, marks, link_state
        finally:
            await agent.stop(1.0)

    try:
        direct, paired, marks, link_state = asyncio.run(asyncio.wait_for(scenario(), 120))
        failures = cloud.server.dataplane.metrics.registry.get_sample_value(
            "fogline_cloud_model_load_failures_total", {"model": "digits", "version": "3", "reason": "hash"})
    finally:
        cloud.stop()
    assert link_state == "ready"  # a missing version is not a broken link
    for s, mark in zip(direct, marks, strict=True):
        assert s.errors == []
        runs = [v for i, v in enumerate(s.versions) if i == 0 or s.versions[i - 1] != v]
        assert runs == ["1", "2"] and set(s.versions[mark:]) == {"2"}
    assert paired.errors == [] and paired.params[-1]["served_by"] == "cloud"
    assert failures == 1
