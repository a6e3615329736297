"""An agent over three real ``fogline cloud serve`` replicas (child processes on loopback, port 0).

One scenario, in phases, through the agent's own gRPC listener:

1. spread: requests go to every replica, each serving at least 20% of the cloud's answers (counted by
   each cloud's own ``nv_inference_request_success`` and by the agent's per-replica answers);
2. kill: one replica gets SIGKILL while requests stream; every request is answered (cloud or edge), with
   no error, and the ones it held are resent to the others;
3. add: a fourth replica starts and the fleet file's ``ipv4:`` list is rewritten and reloaded (what
   SIGHUP does); the new replica receives traffic within ``max_connection_age`` + 5 s (here: at once).

The agent's per-replica gauges (``fogline_agent_cloud_replica_*{replica}``) follow each step.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import grpc
import numpy as np
import pytest

from fogline import codec
from fogline.agent.replica_set import ReplicaSet
from fogline.agent.server import create_server
from fogline.demo.loopback import CloudProcess
from fogline.fleet import parse_fleet
from fogline.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_METRICS_PORT = re.compile(r"metrics port (\d+)")
#: What the cloud's ``max_connection_age`` would be in a cluster; the reload makes it moot here.
MAX_CONNECTION_AGE_S = 3.0


def start_replicas(model_repo, n: int) -> list[CloudProcess]:
    """``n`` cloud processes started side by side (each loads torch: seconds apiece)."""
    procs = [CloudProcess(model_repo, extra=["--metrics-port", "0", "--max-connection-age-s",
                                             str(MAX_CONNECTION_AGE_S)]) for _ in range(n)]
    errors: list[BaseException] = []

    def start(proc: CloudProcess) -> None:
        try:
            proc.start()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for p in procs:
            p.stop()
        raise errors[0]
    return procs


def metrics_port(proc: CloudProcess) -> int:
    for line in proc.output:
        if match := _METRICS_PORT.search(line):
            return int(match.group(1))
    raise AssertionError(f"no metrics port in the cloud's output: {list(proc.output)[-3:]}")


def fleet(ports: list[int], model_repo) -> object:
    endpoint = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    text = "\n".join([
        "version: 1",
        f'cloud: {{endpoint: "{endpoint}", request_timeout_ms: 3000}}',
        "defaults:",
        '  listen: "127.0.0.1:0"',
        "  models: [digits]",
        f'  models_dir: "{model_repo}"',
        "  routing: {policy: cloud_only, slo_ms: 2000, probe_interval_ms: 200}",
        "devices:",
        "  d1: {}",
    ])
    return parse_fleet(text, source="<replicas>").device("d1")


class Load:
    """Unary requests through the agent from ``workers`` concurrent callers until ``stop()``."""

    def __init__(self, port: int, workers: int = 6) -> None:
        self.port = port
        self.workers = workers
        self.answers: list[dict] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Load:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._tasks = [asyncio.create_task(self._worker(stub, i)) for i in range(self.workers)]
        return self

    async def _worker(self, stub, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            image = rng.uniform(0, 16, (1, 8, 8)).astype(np.float32)
            msg = codec.request_to_proto(codec.InferRequest("digits", {"image": image},
                                                            parameters={"deadline_ms": 2000}))
            try:
                reply = codec.response_from_proto(await stub.ModelInfer(msg, timeout=10.0))
            except grpc.aio.AioRpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            assert reply.outputs["probabilities"].shape == (1, 10)
            self.answers.append(dict(reply.parameters))

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._channel.close()


def replica_gauges(server) -> dict[str, str]:
    """replica -> its current state, as the agent's metrics publish it."""
    server.refresh_gauges()
    states = {}
    for family in server.metrics.registry.collect():
        if family.name == "fogline_agent_cloud_replica_state":
            for sample in family.samples:
                if sample.value == 1:
                    states[sample.labels["replica"]] = sample.labels["state"]
    return states


def test_agent_spreads_over_replicas_survives_a_kill_and_takes_a_new_one(model_repo, scrape_metrics):
    procs = start_replicas(model_repo, 3)
    extra: list[CloudProcess] = []
    ports = [p.port for p in procs]
    names = [f"127.0.0.1:{p}" for p in ports]

    async def scenario():
        server, agent_port = create_server(fleet(ports, model_repo), models_dir=model_repo)
        await server.start()
        link = server.link
        assert isinstance(link, ReplicaSet)
        try:
            assert await link.wait_usable(30.0)
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline and not all(link.links[n].connected for n in names):
                await asyncio.sleep(0.05)
            # 1. spread
            async with Load(agent_port) as load:
                while len(load.answers) < 150:
                    await asyncio.sleep(0.05)
            spread = dict(link.stats.answers), list(load.answers), list(load.errors)
            cloud_counts = [_successes(scrape_metrics(metrics_port(p))) for p in procs]
            states_before = replica_gauges(server)
            # 2. kill one replica mid-stream
            async with Load(agent_port) as load:
                while len(load.answers) < 40:
                    await asyncio.sleep(0.02)
                procs[0].kill()
                killed_at = len(load.answers)
                while len(load.answers) < killed_at + 80:
                    await asyncio.sleep(0.05)
            kill = list(load.answers), list(load.errors), link.stats.resent
            after_kill = dict(link.stats.answers)
            # 3. add a replica: the fleet file's list is rewritten and reloaded
            extra.append(start_replicas(model_repo, 1)[0])
            new = f"127.0.0.1:{extra[0].port}"
            async with Load(agent_port) as load:
                await asyncio.sleep(0.5)
                restart_only = server.apply_config(fleet([*ports[1:], extra[0].port], model_repo))
                reloaded = time.monotonic()
                while link.stats.answers[new] == 0 and time.monotonic() - reloaded < MAX_CONNECTION_AGE_S + 5.0:
                    await asyncio.sleep(0.05)
                took = time.monotonic() - reloaded
                await asyncio.sleep(1.0)
            add = list(load.answers), list(load.errors), took, restart_only
            return (spread, cloud_counts, states_before, kill, after_kill, add, dict(link.stats.answers),
                    replica_gauges(server))
        finally:
            await server.stop(2.0)

    try:
        spread, cloud_counts, states_before, kill, after_kill, add, answers, states_after = asyncio.run(scenario())
    finally:
        for p in procs + extra:
            p.stop()

    # 1. every replica takes its share
    counts, answered, errors = spread
    assert not errors, errors[:3]
    cloud = sum(counts.values())
    assert cloud >= 0.9 * len(answered), counts
    assert set(counts) == set(names), counts
    assert all(counts[n] >= 0.2 * cloud for n in names), counts
    assert states_before == {n: "ready" for n in names}
    # ... as the clouds themselves counted it
    assert all(c >= 0.2 * sum(cloud_counts) for c in cloud_counts), (cloud_counts, counts)

    # 2. the kill loses nothing
    answered, errors, resent = kill
    assert not errors, errors[:3]
    assert len(answered) >= 120, (len(answered), resent)
    assert all(a["served_by"] in ("cloud", "edge") for a in answered)
    assert after_kill[names[1]] > counts[names[1]] and after_kill[names[2]] > counts[names[2]]

    # 3. the new replica takes traffic within max_connection_age + 5 s, with no restart needed
    answered, errors, took, restart_only = add
    assert not errors, errors[:3]
    assert "cloud" not in restart_only
    new = f"127.0.0.1:{extra[0].port}" if extra else ""
    assert answers[new] > 0, answers
    assert took < MAX_CONNECTION_AGE_S + 5.0
    assert names[0] not in states_after and states_after.get(new) == "ready", states_after


def _successes(samples: dict) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "nv_inference_request_success_total" and dict(labels).get("model") == "digits")
