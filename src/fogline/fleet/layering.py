"""Merging the layers of a fleet file, remembering where each effective value was written.

A device's effective settings are built from, in order: the top-level ``cloud`` section (as the
device's ``cloud`` block), ``defaults``, its group's entry, and its own entry. Later layers win key by
key: mappings merge recursively (a device may change ``routing.slo_ms`` and keep the rest of
``routing``), while lists and plain values replace what came before (a device's ``models`` list is the
whole list). A settings block written as an empty key (``routing:`` with nothing under it) sets nothing.

``Origins`` maps each path in the merged settings to the path in the file that last set it, so an
error found in the merged settings can be reported at the line that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from fogline.fleet.errors import KeyPath
from fogline.fleet.model import DeviceSettings


def _section_keys(model: type[BaseModel], seen: set[str] | None = None) -> frozenset[str]:
    """Names of fields that hold a mapping (a settings block or a dict), at any depth."""
    names: set[str] = set() if seen is None else seen
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.add(name)
            _section_keys(annotation, names)
        elif get_origin(annotation) is dict or annotation is dict:
            names.add(name)
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _section_keys(arg, names)
    return frozenset(names)


#: Keys whose value is a block of settings; ``key:`` with no value means "nothing set here".
SECTION_KEYS = _section_keys(DeviceSettings)


@dataclass
class Layered:
    """Merged plain data plus, for every merged path, the file path that set it."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, KeyPath] = field(default_factory=dict)

    def apply(self, overlay: dict[str, Any] | None, file_prefix: KeyPath, at: KeyPath = ()) -> None:
        """Merge ``overlay`` (written in the file at ``file_prefix``) into the data at path ``at``."""
        if not overlay:
            return
        target = self.data
        for part in at:
            target = target.setdefault(part, {})
        if at:
            self.origins.setdefault(at, file_prefix)
        self._merge(target, overlay, at, file_prefix)

    def _merge(
        self, target: dict[str, Any], overlay: dict[str, Any], at: KeyPath, file_prefix: KeyPath
    ) -> None:
        for key, value in overlay.items():
            here, there = (*at, key), (*file_prefix, key)
            if value is None and key in SECTION_KEYS:
                continue
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                self.origins[here] = there
                self._merge(target[key], value, here, there)
                continue
            for stale in [path for path in self.origins if path[: len(here)] == here]:
                del self.origins[stale]
            target[key] = _copy(value)
            self._record(value, here, there)

    def _record(self, value: Any, here: KeyPath, there: KeyPath) -> None:
        self.origins[here] = there
        if isinstance(value, dict):
            for key, item in value.items():
                self._record(item, (*here, key), (*there, key))

    def origin_of(self, path: KeyPath) -> KeyPath | None:
        """The file path a merged ``path`` came from (None when no layer wrote any part of it)."""
        for end in range(len(path), 0, -1):
            origin = self.origins.get(path[:end])
            if origin is not None:
                return (*origin, *path[end:])
        return None


def _copy(value: Any) -> Any:
    """A copy of plain YAML data (dicts, lists, scalars), so devices never share mutable parts."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value
