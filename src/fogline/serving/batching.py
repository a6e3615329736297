"""Batching helpers both tiers' batchers use: rows, concatenating requests, splitting the answers.

The agent's edge micro-batcher (``fogline.agent.edge_pool``) and the cloud's dynamic batcher
(``fogline.cloud.batcher``) decide *when* requests share a model call, each its own way; *how* they
are put together and taken apart is here: inputs are concatenated along axis 0 (the batch axis) and
the outputs are split back by each request's row count, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fogline.errors import InvalidInput

Arrays = dict[str, np.ndarray]


def rows_of(inputs: Mapping[str, np.ndarray]) -> int:
    """The batch dimension of a request (its first input's first axis; 1 for a scalar).
    ``InvalidInput`` for a request without inputs."""
    if not inputs:
        raise InvalidInput("the request has no inputs")
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def can_share(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """Two requests can share one call when they carry the same tensors with the same row shapes and
    dtypes (only the number of rows may differ)."""
    if a.keys() != b.keys():
        return False
    for name, array in a.items():
        other = b[name]
        if array.ndim == 0 or other.ndim == 0 or array.shape[1:] != other.shape[1:] or array.dtype != other.dtype:
            return False
    return True


def concat_inputs(items: Sequence[Arrays]) -> Arrays:
    """Concatenate several requests' inputs along axis 0 (no copy for a single request)."""
    if len(items) == 1:
        return items[0]
    return {name: np.concatenate([it[name] for it in items], axis=0) for name in items[0]}


def split_outputs(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[Arrays]:
    """Split a batch's outputs back into per-request outputs by row counts (views, no copies).
    RuntimeError when an output does not have exactly ``sum(rows)`` rows."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.shape[:1] != (total,):
            raise RuntimeError(f"model output {name!r} has shape {array.shape}; expected {total} rows")
    bounds = np.cumsum([0, *rows])
    return [{name: array[bounds[i]: bounds[i + 1]] for name, array in outputs.items()} for i in range(len(rows))]
