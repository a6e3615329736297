"""The JSON Schema of a fleet file, for editors (completion, inline checks) and CI linters.

It is generated from the same pydantic models the loader validates with, then adjusted to what a
file may contain *before* loading: every settings block may be left empty (``routing:``), a model may
be written as a bare name, and any number, true/false or fixed-choice value may instead be a ``${VAR}`` reference
(filled in at load time). Checks that need the whole file (unknown group or model names, merged
values such as ``rtt_recover_ms < rtt_threshold_ms``) are only done by ``fogline fleet validate``.

Point an editor at it, e.g. with the YAML language server::

    # yaml-language-server: $schema=fleet.schema.json
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from fogline.fleet.model import NAME_PATTERN, CatalogueEntry, CloudConfig, DeviceSettings, Settings

SCHEMA_ID = "https://fogline.dev/schemas/fleet-v1.json"
_REFERENCE = {"type": "string", "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*([:]?-[^}]*)?\}$"}


class DeviceEntry(DeviceSettings):
    """A device's own settings; ``group`` names the group it inherits from."""

    group: str | None = Field(
        None, description="the group (under groups:) whose settings this device inherits"
    )


class FleetFile(Settings):
    """A fogline fleet file: the cloud tier and every edge device, with layered settings."""

    version: Literal[1] = Field(description="format version of this file")
    cloud: CloudConfig | None = Field(None, description="the cloud tier, for every device unless overridden")
    models: dict[str, CatalogueEntry | None] = Field(
        default_factory=dict, description="model names devices may use besides minilm and digits"
    )
    defaults: DeviceSettings | None = Field(None, description="settings every device starts from")
    groups: dict[str, DeviceSettings | None] = Field(default_factory=dict, description="settings per group")
    devices: dict[str, DeviceEntry | None] = Field(default_factory=dict, description="settings per device")


def fleet_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a fleet file."""
    schema = FleetFile.model_json_schema()
    definitions = schema.get("$defs", {})
    for definition in definitions.values():
        for prop in definition.get("properties", {}).values():
            _loosen(prop)
    for key, prop in schema.get("properties", {}).items():
        if key != "version":  # the format version is read before anything else, never from the environment
            _loosen(prop)
    model_ref = definitions.get("ModelRef")
    if model_ref is not None:
        definitions["ModelRef"] = {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": NAME_PATTERN,
                    "description": "a model name: its newest version",
                },
                {key: value for key, value in model_ref.items() if key != "title"},
            ],
            "title": "ModelRef",
        }
    schema["patternProperties"] = {"^x-": {"description": "ignored: a place for YAML anchors"}}
    for key in ("groups", "devices", "models"):
        schema["properties"][key]["propertyNames"] = {"pattern": NAME_PATTERN}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def _strict_scalar(schema: dict[str, Any]) -> bool:
    """Whether a ``${VAR}`` text would fail ``schema`` (a number, a flag or a fixed choice)."""
    return schema.get("type") in ("integer", "number", "boolean") or "enum" in schema or "const" in schema


def _loosen(prop: dict[str, Any]) -> None:
    """Let a property be null when it is a block, and a ${VAR} reference when it is a number or choice."""
    if "$ref" in prop:
        ref = prop.pop("$ref")
        prop["anyOf"] = [{"$ref": ref}, {"type": "null"}]
        return
    options = prop.get("anyOf")
    if options is None and _strict_scalar(prop):
        typed = {key: prop.pop(key) for key in list(prop) if key not in ("default", "description", "title")}
        prop["anyOf"] = [typed, dict(_REFERENCE)]
    elif options is not None and any(_strict_scalar(option) for option in options):
        options.append(dict(_REFERENCE))
