"""Loading a fleet file: read, interpolate, check the structure, merge every device, validate.

``load_fleet(path)`` is what the agent, the cloud tier and ``fogline fleet`` call; ``parse_fleet``
does the same for text already in memory (tests, tools). Either returns a ``FleetConfig`` or raises a
single ``FleetConfigError`` listing every problem in the file with its line, column and key path.

The file's top level::

    version: 1            # required; the format version
    cloud: {...}          # CloudConfig: endpoint, timeouts, keepalive, tls, credentials, serving
    models: {...}         # optional catalogue of extra model names (and the versions they have)
    defaults: {...}       # DeviceSettings for every device
    groups: {NAME: {...}} # DeviceSettings for the devices of a group
    devices: {ID: {...}}  # DeviceSettings plus 'group: NAME'
    x-anything: ...       # ignored: a place for YAML anchors (&name) to share blocks, as in Compose

Each device gets ``cloud`` <- ``defaults`` <- its group <- its entry (see ``layering``). Defaults and
every group are validated on their own as well, so a mistake in a group with no devices is still found.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from fogline.fleet.document import Document, read_document
from fogline.fleet.errors import FleetConfigError, KeyPath, Problem, did_you_mean, one_of
from fogline.fleet.fleet import FleetConfig
from fogline.fleet.layering import Layered
from fogline.fleet.model import (
    BUILTIN_MODELS,
    NAME_PATTERN,
    CatalogueEntry,
    CloudConfig,
    DeviceConfig,
    DeviceSettings,
)
from fogline.fleet.validation import Validator, describe

FORMAT_VERSION = 1
REVISION_DIGITS = 12
S = TypeVar("S", bound=DeviceSettings)
TOP_KEYS = ("version", "cloud", "models", "defaults", "groups", "devices")
_NAME = re.compile(NAME_PATTERN)
#: Settings that hold file paths; relative ones are taken from the fleet file's folder.
_PATH_KEYS: tuple[KeyPath, ...] = (
    ("models_dir",),
    ("cloud", "serving", "models_dir"),
    ("cloud", "tls", "ca_file"),
    ("cloud", "tls", "cert_file"),
    ("cloud", "tls", "key_file"),
    ("cloud", "credentials", "token_file"),
    ("serving", "tls", "cert_file"),
    ("serving", "tls", "key_file"),
    ("serving", "tls", "client_ca_file"),
    ("serving", "auth", "tokens_file"),
)


def load_fleet(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> FleetConfig:
    """Load and validate the fleet file at ``path`` (``env`` defaults to ``os.environ``)."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise FleetConfigError([Problem(source, 0, 0, (), "is a directory, not a fleet file")]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise FleetConfigError([Problem(source, 0, 0, (), f"cannot read the fleet file: {reason}")]) from None
    return parse_fleet(data, source, env=env, base_dir=Path(path).parent)


def parse_fleet(
    text: str | bytes,
    source: str = "<string>",
    *,
    env: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> FleetConfig:
    """Validate fleet YAML given as text or bytes; ``base_dir`` anchors relative paths (None: kept)."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    doc = read_document(text, source, os.environ if env is None else env)
    if not isinstance(doc.data, dict):
        raise FleetConfigError(doc.problems)
    builder = _Builder(doc, Path(base_dir) if base_dir is not None else None)
    fleet = builder.build(hashlib.sha256(raw).hexdigest()[:REVISION_DIGITS])
    problems = builder.validator.problems()
    if problems or fleet is None:
        raise FleetConfigError(problems)
    return fleet


def file_revision(path: str | os.PathLike[str]) -> str:
    """The revision ``load_fleet(path)`` would report, without validating: to check for changes cheaply."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:REVISION_DIGITS]


class _Builder:
    """Checks a parsed document section by section and builds the ``FleetConfig`` when all is well."""

    def __init__(self, doc: Document, base_dir: Path | None):
        self.doc = doc
        self.base_dir = base_dir
        self.validator = Validator(doc)

    def error(self, path: KeyPath, message: str, *, at_key: bool = False) -> None:
        self.validator.add(path, message, at_key=at_key)

    def section(self, data: Mapping[str, Any], path: KeyPath, what: str) -> dict[str, Any]:
        """The mapping at ``path`` (empty when absent or null); a non-mapping is reported."""
        value = data.get(path[-1])
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"{what} must be a mapping (key: value lines), got {describe(value)}")
            return {}
        return value

    def build(self, revision: str) -> FleetConfig | None:
        top: dict[str, Any] = self.doc.data
        for key in top:
            if key not in TOP_KEYS and not key.startswith("x-"):
                hint = did_you_mean(key, TOP_KEYS) or f"; the top level holds {one_of(TOP_KEYS)}"
                self.error((key,), f"unknown key {key!r}{hint}", at_key=True)
        self.check_version(top)
        catalogue = self.catalogue(top)
        context = {"catalogue": catalogue}
        cloud_raw = self.section(top, ("cloud",), "cloud")
        defaults_raw = self.layer(self.section(top, ("defaults",), "defaults"), ("defaults",))
        groups_raw = self.named(top, "groups", "group")
        devices_raw = self.named(top, "devices", "device")

        cloud = self.validator.check(
            CloudConfig,
            self.resolve_paths({"cloud": copy.deepcopy(cloud_raw)})["cloud"],
            origin_of=lambda loc: ("cloud", *loc),
            fallback=("cloud",),
            owner=("cloud",),
            context=context,
        )
        defaults = self.effective(
            DeviceSettings, [(("defaults",), defaults_raw)], cloud_raw, ("defaults",), context
        )
        groups: dict[str, DeviceSettings | None] = {}
        for name, entry in groups_raw.items():
            layer = self.layer(entry, ("groups", name))
            groups[name] = self.effective(
                DeviceSettings,
                [(("defaults",), defaults_raw), (("groups", name), layer)],
                cloud_raw,
                ("groups", name),
                context,
            )
        devices: dict[str, DeviceConfig | None] = {}
        for device_id, entry in devices_raw.items():
            own = dict(entry)
            group = own.pop("group", None)
            layers = [(("defaults",), defaults_raw)]
            if group is not None and self.check_group(group, device_id, groups_raw):
                layers.append((("groups", group), self.layer(groups_raw[group], ("groups", group))))
            layers.append((("devices", device_id), self.layer(own, ("devices", device_id))))
            extra = {"device_id": device_id, "group": group if isinstance(group, str) else None}
            devices[device_id] = self.effective(
                DeviceConfig,
                layers,
                cloud_raw,
                ("devices", device_id),
                context,
                extra=extra,
                note=f"device {device_id!r}",
            )
        if cloud is None or defaults is None or None in groups.values() or None in devices.values():
            return None
        for device in devices.values():
            device._revision = revision  # private attributes: not settings, allowed on a frozen model
            device._source = self.doc.source
        return FleetConfig(
            source=self.doc.source,
            revision=revision,
            version=FORMAT_VERSION,
            cloud=cloud,
            catalogue=catalogue,
            defaults=defaults,
            groups=groups,
            devices=devices,  # type: ignore[arg-type]
        )

    def check_version(self, top: dict[str, Any]) -> None:
        if "version" not in top:
            self.error((), f"missing required key 'version'; add 'version: {FORMAT_VERSION}' at the top")
        elif top["version"] != FORMAT_VERSION or isinstance(top["version"], bool):
            self.error(
                ("version",),
                f"unsupported format version {top['version']!r}; this fogline reads version {FORMAT_VERSION}",
            )

    def catalogue(self, top: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        known = dict(BUILTIN_MODELS)
        for name, entry in self.section(top, ("models",), "models").items():
            path = ("models", name)
            if not _NAME.match(name):
                self.error(
                    path, f"bad model name {name!r}: use letters, digits, '.', '_' or '-'", at_key=True
                )
            checked = self.validator.check(
                CatalogueEntry,
                entry or {},
                origin_of=lambda loc, p=path: (*p, *loc),
                fallback=path,
                owner=path,
            )
            known[name] = checked.versions if checked is not None else ()
        return known

    def named(self, top: dict[str, Any], key: str, what: str) -> dict[str, dict[str, Any]]:
        """The entries of ``groups`` or ``devices``: name -> mapping (a null entry is an empty one)."""
        entries: dict[str, dict[str, Any]] = {}
        for name, entry in self.section(top, (key,), key).items():
            path = (key, name)
            if not _NAME.match(name):
                self.error(
                    path,
                    f"bad {what} name {name!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit",
                    at_key=True,
                )
            if entry is not None and not isinstance(entry, dict):
                self.error(path, f"a {what} entry must be a mapping of settings, got {describe(entry)}")
                entry = None
            entries[name] = entry or {}
        return entries

    def layer(self, entry: dict[str, Any], path: KeyPath) -> dict[str, Any]:
        """One layer's settings, minus what may only appear at the top level (reported)."""
        cloud = entry.get("cloud")
        if isinstance(cloud, dict) and "serving" in cloud:
            self.error(
                (*path, "cloud", "serving"),
                "cloud.serving configures 'fogline cloud serve'; set it only in the top-level cloud section",
                at_key=True,
            )
            entry = {**entry, "cloud": {k: v for k, v in cloud.items() if k != "serving"}}
        return entry

    def check_group(self, group: Any, device_id: str, groups: Mapping[str, Any]) -> bool:
        path = ("devices", device_id, "group")
        if not isinstance(group, str):
            self.error(path, f"expected a group name, got {describe(group)}")
            return False
        if group not in groups:
            hint = did_you_mean(group, groups) or (
                f"; groups: {one_of(groups)}" if groups else "; this file defines no groups"
            )
            self.error(path, f"unknown group {group!r}{hint}")
            return False
        return True

    def effective(
        self,
        model: type[S],
        layers: list[tuple[KeyPath, dict[str, Any]]],
        cloud_raw: dict[str, Any],
        owner: KeyPath,
        context: dict[str, Any],
        *,
        extra: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> S | None:
        """Merge ``cloud`` <- ``layers`` (each: where it is in the file, its data); validate as ``model``."""
        merged = Layered()
        merged.apply(cloud_raw, ("cloud",), at=("cloud",))
        for file_prefix, layer in layers:
            merged.apply(layer, file_prefix)
        data = self.resolve_paths(merged.data)
        if extra:
            data = {**data, **extra}
        return self.validator.check(
            model, data, origin_of=merged.origin_of, fallback=owner, owner=owner, note=note, context=context
        )

    def resolve_paths(self, data: dict[str, Any]) -> dict[str, Any]:
        """Relative file paths become paths under the fleet file's folder (when loaded from a file)."""
        if self.base_dir is None:
            return data
        for path in _PATH_KEYS:
            holder: Any = data
            for part in path[:-1]:
                holder = holder.get(part) if isinstance(holder, dict) else None
            value = holder.get(path[-1]) if isinstance(holder, dict) else None
            if isinstance(value, str) and value:
                expanded = Path(value).expanduser()
                holder[path[-1]] = str(expanded if expanded.is_absolute() else self.base_dir / expanded)
        return data
