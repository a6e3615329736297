"""Turning pydantic's validation errors into ``Problem``s a person can act on.

pydantic reports an error at a path inside the data it was given (for a device, its *merged*
settings). ``Validator.check`` maps that path back to where the offending value was written in the
file (via ``Layered.origin_of``), finds its line and column, and rewrites the message to say what was
found and what would be valid. The same mistake reached through several devices (a bad value in a
group, say) is reported once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from fogline.fleet.document import Document
from fogline.fleet.errors import KeyPath, Problem, did_you_mean, one_of

M = TypeVar("M", bound=BaseModel)

_TYPE_NAMES = {
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "tuple_type": "a list",
    "list_type": "a list",
    "path_type": "a path (a string)",
}
_BOUNDS = {
    "greater_than": ("gt", "must be greater than"),
    "greater_than_equal": ("ge", "must be at least"),
    "less_than": ("lt", "must be below"),
    "less_than_equal": ("le", "must be at most"),
}
_SECRET_KEYS = {"token"}


def describe(value: Any) -> str:
    """A short, YAML-flavoured description of a value found in the file."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return repr(value)


def model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings class found by following ``loc`` (field names) from ``model``, if any."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part) if isinstance(part, str) else None
        if info is None:
            continue  # a list index or dict key: stay on the item type below
        current = info.annotation
        while not (isinstance(current, type) and issubclass(current, BaseModel)):
            inner = [a for a in get_args(current) if a is not type(None) and a is not Ellipsis]
            if not inner:
                break
            current = inner[-1]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def message_for(error: dict[str, Any], model: type[BaseModel]) -> tuple[str, bool]:
    """The message for one pydantic error, and whether it points at the key rather than the value."""
    kind, loc = error["type"], tuple(error["loc"])
    value = error.get("input")
    got = "" if any(part in _SECRET_KEYS for part in loc) else f", got {describe(value)}"
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(loc[-1])
        if key == "group":
            return "only a device entry names its group (group: NAME under devices.ID)", True
        owner = model_at(model, loc[:-1])
        valid = list(owner.model_fields) if owner else []
        hint = did_you_mean(key, valid) or (f"; valid keys: {', '.join(valid)}" if valid else "")
        return f"unknown key {key!r}{hint}", True
    if kind == "missing":
        return f"missing required key {loc[-1]!r}", True
    if kind == "string_type" and isinstance(value, (bool, int, float)):
        return f"expected a string{got}; put it in quotes if it is meant as text", False
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}{got}", False
    if kind in _BOUNDS:
        name, text = _BOUNDS[kind]
        return f"{text} {ctx.get(name)}{got}", False
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        return f"must be {one_of(choices)}{got}{hint}", False
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} entry{got}", False
    if kind == "string_pattern_mismatch":
        return f"a name is letters, digits, '.', '_' or '-', starting with a letter or digit{got}", False
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, "), False
    return f"{error['msg']}{got}", False


class Validator:
    """Validates blocks of a document, collecting deduplicated problems in file order."""

    def __init__(self, doc: Document):
        self.doc = doc
        # (file path, message) -> (problem, notes); notes is None once it was found in its own section
        self._found: dict[tuple[KeyPath, str], tuple[Problem, list[str] | None]] = {}

    def add(self, path: KeyPath, message: str, *, at_key: bool = False, note: str | None = None) -> None:
        """Report ``message`` at file ``path``; ``note`` names what was being checked when it was found."""
        if any(path[: len(bad)] == bad for bad in self.doc.unresolved):
            return  # an unresolved ${VAR} here was already reported
        key = (path, message)
        if key not in self._found:
            line, column = self.doc.position(path, at_key=at_key)
            self._found[key] = (Problem(self.doc.source, line, column, path, message), [] if note else None)
        notes = self._found[key][1]
        if note is None:
            self._found[key] = (self._found[key][0], None)
        elif notes is not None and note not in notes:
            notes.append(note)

    def check(
        self,
        model: type[M],
        data: Any,
        *,
        origin_of: Callable[[KeyPath], KeyPath | None],
        fallback: KeyPath,
        owner: KeyPath,
        note: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> M | None:
        """Validate ``data`` as ``model``; on errors, report each at the file path it came from.

        ``owner`` is the file section being checked (e.g. ``('devices', 'cam-1')``): an error whose value
        was written outside it (inherited from defaults or a group) gets ``note`` appended, so the reader
        knows which device's merged settings showed it.
        """
        try:
            return model.model_validate(data, context=context)
        except ValidationError as exc:
            for error in exc.errors():
                loc = tuple(error["loc"])
                message, at_key = message_for(error, model)
                if loc and loc[-1] == "[key]":  # a bad mapping key: point at the key itself
                    loc, at_key = loc[:-1], True
                path = origin_of(loc) or (*fallback, *loc)
                inherited = path[: len(owner)] != owner
                self.add(path, message, at_key=at_key, note=note if inherited else None)
            return None

    def problems(self) -> list[Problem]:
        """Every problem found so far (including the document's own), in file order."""
        found = list(self.doc.problems)
        for problem, notes in self._found.values():
            if notes:
                shown = ", ".join(notes[:3]) + (f" and {len(notes) - 3} more" if len(notes) > 3 else "")
                problem = Problem(
                    problem.source,
                    problem.line,
                    problem.column,
                    problem.path,
                    f"{problem.message} (as merged for {shown})",
                )
            found.append(problem)
        return sorted(found, key=lambda p: (p.line, p.column))
