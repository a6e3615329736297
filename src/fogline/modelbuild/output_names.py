"""The output names of an imported torch model (``fogline models import --output-names a,b``).

A torch source records no output names (a ``torch.export`` program names its outputs after ops, a
TorchScript module not at all), so the import names them ``output`` (one output) or ``output_0``,
``output_1``... (several), unless the user gives names. Given names are checked here, before the export:
one per output, in the order ``forward()`` returns them, each non-empty and without spaces or commas,
no two alike, none equal to an input name or a name the import reserves. An ONNX file names its
outputs in its graph, so the flag is refused for one (``refuse_for_onnx``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from fogline.modelbuild.import_errors import ImportRefused
from fogline.modelbuild.signature import RESERVED

NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
FLAG = "--output-names"


def parse(text: str) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")`` (whitespace around each name dropped; checking is ``resolve``'s)."""
    return tuple(part.strip() for part in text.split(","))


def default(count: int) -> list[str]:
    """``output`` for one output, ``output_0``... for several."""
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def resolve(count: int, given: Sequence[str] | None, inputs: Sequence[str], path: Path) -> list[str]:
    """The names of a torch model's ``count`` outputs: ``given`` once checked, else ``default(count)``."""
    if given is None:
        return default(count)
    names = list(given)
    shown = ",".join(names)
    if len(names) != count:
        raise ImportRefused(f"{FLAG} {shown}: {path} returns {count} output{'s' if count != 1 else ''} from forward(), "
                            f"{len(names)} name{'s' if len(names) != 1 else ''} given; give one name per output, "
                            "in the order forward() returns them")
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise ImportRefused(f"{FLAG} {shown}: {bad[0]!r} is not a valid tensor name (use 1-128 letters, digits, "
                            "'_', '.', ':', '/' or '-'; names are separated by commas)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ImportRefused(f"{FLAG} {shown}: {twice[0]!r} is given twice; output names must be unique")
    clash = [n for n in names if n in inputs or n in RESERVED]
    if clash:
        what = "an input of the model" if clash[0] in inputs else "reserved by the import"
        raise ImportRefused(f"{FLAG} {shown}: {clash[0]!r} is {what} (inputs: {', '.join(inputs)}); pick another name")
    return names


def refuse_for_onnx(given: Sequence[str] | None, path: Path) -> None:
    """``ImportRefused`` when names are given for an ONNX source, whose graph names its outputs."""
    if given is not None:
        raise ImportRefused(f"{FLAG}: {path} is an ONNX file, whose graph already names its outputs; the flag names "
                            "the outputs of a torch source (.pt2, .pt)")
