"""The two ways ``fogline models import`` refuses a model, and the exit status each one means.

``ImportRefused`` (exit 2): the model or its data cannot be imported as given (unsupported operator,
datatype or opset, no static rank, a name clash, calibration arrays that do not match the inputs, a
corrupt file). Raised before anything is written, with one line that says what to change.

``FidelityRefused`` (exit 1): the model imported, but no quantization recipe brought its INT8 form
within the fidelity gate; ``tries`` is the table of what was tried (``--accept-fidelity`` writes the
best try anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ImportRefused(Exception):
    """The model cannot be imported as given; the message is one line a person can act on."""


class FidelityRefused(Exception):
    """Every recipe tried missed the fidelity gate; ``tries`` holds one row per try."""

    def __init__(self, message: str, tries: Sequence[dict[str, Any]]) -> None:
        super().__init__(message)
        self.tries = list(tries)
