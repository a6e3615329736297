"""Problems found in a fleet file, and the one exception that carries all of them.

Loading a fleet file never stops at the first mistake: every check adds a ``Problem`` (where it is,
which key, what is wrong and what would be valid) and, when any were found, the loader raises one
``FleetConfigError`` holding them all. Its text is one line per problem, in the format compilers use,
so editors and CI logs can jump straight to the spot::

    deploy/fleet.yaml:14:7: devices.cam-001.routing.slo_ms: must be greater than 0, got -5
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from fogline.errors import ConfigError

#: A key path inside the YAML document: mapping keys (str) and list indexes (int).
KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """``('devices', 'cam-1', 'models', 0)`` -> ``devices.cam-1.models[0]``; the empty path is ``<top>``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "<top>"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A `` (did you mean 'x'?)`` hint for a mistyped ``word``, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def one_of(choices: Iterable[str]) -> str:
    """``'a', 'b' or 'c'`` for messages that list what would be valid."""
    quoted = [repr(str(c)) for c in choices]
    if not quoted:
        return "nothing"
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


@dataclass(frozen=True)
class Problem:
    """One mistake in a fleet file.

    ``line`` and ``column`` are 1-based (0 when the problem concerns the file as a whole, such as an
    unreadable file); ``path`` is the key path inside the document (empty for the whole document).
    """

    source: str
    line: int
    column: int
    path: KeyPath
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        return (
            f"{where}: {format_path(self.path)}: {self.message}" if self.path else f"{where}: {self.message}"
        )


class FleetConfigError(ConfigError):
    """A fleet file is unreadable or invalid; ``problems`` lists every mistake found, in file order."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid fleet configuration")
