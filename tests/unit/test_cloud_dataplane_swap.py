"""The cloud data plane's swap (``DataPlane.swap``) with fake models: a batch running on the old version
finishes there and answers with its version, the next request gets the new one, the old batcher closes."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from fogline.cloud.dataplane import DataPlane
from fogline.cloud.settings import ServingSettings
from fogline.codec import InferRequest
from fogline.models.spec import TensorSpec

pytestmark = pytest.mark.unit


class Slow:
    """A model whose calls wait for ``gate`` (so a test can swap while one runs)."""

    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("y", "FP32", (-1, 2))]

    def __init__(self, version: str, gate: threading.Event) -> None:
        self.name, self.version, self.gate = "m", version, gate

    def predict(self, inputs):
        assert self.gate.wait(10)
        return {"y": inputs["x"] + float(self.version)}


def request(i: int) -> InferRequest:
    return InferRequest("m", {"x": np.zeros((1, 2), np.float32)}, id=str(i))


def test_a_running_batch_finishes_on_the_old_version_and_new_requests_get_the_new_one():
    async def scenario():
        gate = threading.Event()
        plane = DataPlane([Slow("1", gate)], ServingSettings(device="cpu", max_batch_size=4))
        plane.start()
        old = asyncio.ensure_future(plane.infer(request(0)))
        await asyncio.sleep(0.05)  # it is running on version 1, held by the gate
        previous = plane.swap(Slow("2", threading.Event()))
        plane.models["m"].model.gate.set()
        new = await plane.infer(request(1))
        assert not old.done() and previous.batcher.busy
        gate.set()
        first = await old
        await plane.wait_released()
        closed = previous.batcher._closed
        await plane.close()
        return first, new, closed

    first, new, closed = asyncio.run(scenario())
    assert first.model_version == "1" and float(first.outputs["y"][0, 0]) == 1.0
    assert new.model_version == "2" and float(new.outputs["y"][0, 0]) == 2.0
    assert closed
