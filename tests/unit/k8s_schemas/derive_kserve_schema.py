"""Derive ``kserve-<version>.schema.json`` (next to this file) from the KServe Python SDK's models.

Why: the KServe SDK (``pip install kserve``) cannot go into fogline's virtualenv, because it pins
``psutil<6`` and would downgrade the ``psutil`` the agent uses (and ``python-dateutil``). Its wheel,
though, describes every CRD type as an OpenAPI-generated model class (``openapi_types``: attribute ->
type, ``attribute_map``: attribute -> JSON key, and a setter that refuses ``None`` for each required
field). This script reads those classes from the unpacked wheel *without importing them* (``ast``),
follows the types reachable from ``V1alpha1ServingRuntime`` and ``V1beta1InferenceService``, and writes
a JSON Schema (draft 2020-12): one ``$defs`` entry per KServe model, ``additionalProperties: false``
(the SDK refuses unknown attributes too), and Kubernetes types (``V1Container``, ``V1ObjectMeta``, ...)
as ``$ref`` into the Kubernetes definitions that ``kubernetes-validate`` ships, so the containers in a
``ServingRuntime`` are checked against the same strict schema as a Deployment's.

Regenerate after a KServe upgrade::

    .venv/bin/pip download --no-deps kserve==0.21.0 -d /tmp/kserve && \\
        unzip -q -o /tmp/kserve/kserve-0.21.0-*.whl -d /tmp/kserve/pkg
    .venv/bin/python tests/unit/k8s_schemas/derive_kserve_schema.py /tmp/kserve/pkg
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import kubernetes_validate

ROOTS = {"ServingRuntime": "V1alpha1ServingRuntime", "InferenceService": "V1beta1InferenceService"}
K8S_DEFS_ID = "https://kubernetes.io/api/_definitions.json"
#: Where a Kubernetes type of the SDK lives, when its name alone fits several API groups.
K8S_GROUP_PREFERENCE = ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta.", "io.k8s.api.apps.",
                        "io.k8s.api.autoscaling.", "io.k8s.apimachinery.pkg.api.resource.")
SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
           "bool": {"type": "boolean"}, "object": {}, "datetime": {"type": "string"},
           "date": {"type": "string"}}


def read_models(models_dir: Path) -> dict[str, dict]:
    """Class name -> {"types": {attr: type}, "keys": {attr: json key}, "required": {attr}}."""
    models = {}
    for path in sorted(models_dir.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            found: dict = {"types": None, "keys": None, "required": set()}
            for item in node.body:
                if isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
                    name = item.targets[0].id
                    if name in ("openapi_types", "attribute_map"):
                        found["types" if name == "openapi_types" else "keys"] = ast.literal_eval(item.value)
            for const in ast.walk(node):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    hit = re.fullmatch(r"Invalid value for `(\w+)`, must not be `None`", const.value)
                    if hit:
                        found["required"].add(hit.group(1))
            if found["types"] is not None and found["keys"] is not None:
                models[node.name] = found
    return models


def k8s_definition(class_name: str, k8s_defs: dict) -> str | None:
    """``V1Container`` -> ``io.k8s.api.core.v1.Container``; None when Kubernetes has no such type."""
    if class_name.startswith("K8sIo"):  # K8sIoApiAppsV1DeploymentStrategy
        words = re.findall(r"[A-Z][a-z0-9]*", class_name[len("K8sIo"):])
        version_at = next(i for i, w in enumerate(words) if re.fullmatch(r"V\d+\w*", w))
        group = ".".join(w.lower() for w in words[:version_at + 1])
        key = f"io.k8s.{group}.{''.join(words[version_at + 1:])}"
        return key if key in k8s_defs else None
    hit = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)(\w+)", class_name)
    if not hit:
        return None
    suffix = f".{hit.group(1).lower()}.{hit.group(2)}"
    candidates = [key for key in k8s_defs if key.endswith(suffix)]
    for prefix in K8S_GROUP_PREFERENCE:
        for key in candidates:
            if key.startswith(prefix):
                return key
    return candidates[0] if len(candidates) == 1 else None


def derive(models_dir: Path, k8s_defs: dict) -> dict:
    models = read_models(models_dir)
    defs: dict[str, dict] = {}
    unknown_k8s: set[str] = set()

    def schema_of(type_name: str) -> dict:
        type_name = type_name.strip()
        if type_name in SCALARS:
            return dict(SCALARS[type_name])
        if type_name.startswith("list[") and type_name.endswith("]"):
            return {"type": "array", "items": schema_of(type_name[5:-1])}
        hit = re.fullmatch(r"dict\(str, (.+)\)", type_name)
        if hit:
            return {"type": "object", "additionalProperties": schema_of(hit.group(1))}
        if type_name in models:
            add(type_name)
            return {"$ref": f"#/$defs/{type_name}"}
        key = k8s_definition(type_name, k8s_defs)
        if key is None:
            unknown_k8s.add(type_name)  # a type newer than the shipped Kubernetes schemas: any object
            return {"type": "object"}
        return {"$ref": f"{K8S_DEFS_ID}#/$defs/{key}"}

    def add(class_name: str) -> None:
        if class_name in defs:
            return
        model = models[class_name]
        entry: dict = {"type": "object", "additionalProperties": False, "properties": {}}
        defs[class_name] = entry  # before recursing: models refer to each other
        for attr, type_name in model["types"].items():
            entry["properties"][model["keys"][attr]] = schema_of(type_name)
        required = sorted(model["keys"][attr] for attr in model["required"])
        if required:
            entry["required"] = required

    for root in ROOTS.values():
        add(root)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "derived by derive_kserve_schema.py from the KServe SDK's models; do not edit by hand",
        "x-kubernetes-types-not-in-shipped-schemas": sorted(unknown_k8s),
        "roots": {kind: {"$ref": f"#/$defs/{name}"} for kind, name in ROOTS.items()},
        "$defs": dict(sorted(defs.items())),
    }


def main(argv: list[str]) -> int:
    unpacked = Path(argv[1])
    (dist_info,) = unpacked.glob("kserve-*.dist-info")
    version = dist_info.name.removeprefix("kserve-").removesuffix(".dist-info")
    versions_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    latest = sorted(versions_dir.glob("v*-local-strict"), key=lambda p: [int(x) for x in
                    re.findall(r"\d+", p.name)])[-1]
    k8s_defs = json.loads((latest / "_definitions.json").read_text())["$defs"]
    schema = derive(unpacked / "kserve" / "models", k8s_defs)
    schema["x-kserve-version"] = version
    out = Path(__file__).with_name(f"kserve-{version}.schema.json")
    out.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
    print(f"wrote {out} ({len(schema['$defs'])} KServe types, Kubernetes types from {latest.name}; "
          f"not in those: {', '.join(schema['x-kubernetes-types-not-in-shipped-schemas']) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
