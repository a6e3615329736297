"""Serving freshly imported models through a real cloud process and an agent, for the import tests.

The client runs in a child process (``python -c CLIENT ...``): tritonclient's stubs and fogline's
register the same protobuf names, so they never share an interpreter.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from fogline.demo.loopback import CloudProcess, LoopbackRig, device_config


def call_through_agent(repo: Path, names: tuple[str, ...], client: str, *client_args: str) -> dict:
    """Start a cloud over ``repo`` and an agent serving ``names`` from it (``latency_aware``, both
    tiers usable), run ``client`` with the agent's address and ``client_args``, return its JSON."""

    async def scenario(cloud_port: int) -> dict:
        catalogue = "models: {" + ", ".join(f"{n}: {{}}" for n in names) + "}"  # the fleet's own model list
        config = device_config(models=names, policy="latency_aware", models_dir=repo, extra_yaml=catalogue)
        async with LoopbackRig(repo, cloud_port, config=config) as rig:
            assert await rig.wait_cloud_usable(20.0)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", client, f"127.0.0.1:{rig.agent_port}", *client_args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 180)
            assert proc.returncode == 0, stderr.decode()[-3000:]
            return json.loads(stdout)

    with CloudProcess(repo) as cloud:
        return asyncio.run(scenario(cloud.port))
