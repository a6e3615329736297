"""The one check of a request against a model's signature, before it is queued on either tier.

``validate_request(model, inputs, outputs)`` refuses with ``InvalidInput`` what no model call should
see, so nothing malformed shares a batch with good requests:

- an input the model does not take, or one it needs and lacks: the message lists what it takes
  (``model 'digits': unexpected input 'img'; it takes image (FP32 [N,8,8])``);
- datatype, shape, empty or oversized batch, inputs disagreeing on the batch size, text that is not
  UTF-8, values outside the spec's range: ``fogline.models.spec.validate_inputs``, the same check
  the model runtimes apply;
- a requested output the model does not produce (the message lists those it does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fogline.errors import InvalidInput
from fogline.models.spec import validate_inputs


def _signature(specs: Sequence[Any]) -> str:
    def shape(spec: Any) -> str:
        return "[" + ",".join("N" if d == -1 else str(d) for d in spec.shape) + "]"

    return ", ".join(f"{spec.name} ({spec.datatype} {shape(spec)})" for spec in specs)


def validate_request(model: Any, inputs: Mapping[str, Any], outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Check a request's ``inputs`` and requested ``outputs`` against ``model`` (``.name``, ``.inputs``,
    ``.outputs``: TensorSpec lists); return the input arrays, ready to batch."""
    name = model.name
    takes = {spec.name for spec in model.inputs}
    for given in inputs:
        if given not in takes:
            raise InvalidInput(f"model {name!r}: unexpected input {given!r}; it takes {_signature(model.inputs)}")
    for spec in model.inputs:
        if spec.name not in inputs:
            raise InvalidInput(f"model {name!r}: missing input {spec.name!r}; it takes {_signature(model.inputs)}")
    arrays = validate_inputs(name, list(model.inputs), inputs)
    produces = {spec.name for spec in model.outputs}
    for wanted in outputs:
        if wanted not in produces:
            raise InvalidInput(f"model {name!r}: unknown output {wanted!r}; it produces {', '.join(sorted(produces))}")
    return arrays
