"""Read an ONNX model's tensor signature and check that fogline can run and quantize it.

``load_onnx`` opens the file (a corrupt one is refused), ``check_graph`` refuses an opset outside
``MIN_OPSET..MAX_OPSET`` and operators onnxruntime has no kernel for, and ``read_signature`` returns
the inputs and outputs as ``TensorSpec`` (v2 datatypes; ``-1`` for every dimension that is symbolic or
unknown), refusing a datatype fogline does not serve, a tensor without a static rank and names that
clash. Every refusal is ``ImportRefused`` with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fogline.modelbuild.import_errors import ImportRefused
from fogline.models.spec import DATATYPES, TensorSpec

#: Opsets accepted: 13 is the oldest that onnxruntime's QDQ quantizer handles per-channel; 22 the newest
#: that the onnxruntime fogline pins runs everywhere.
MIN_OPSET, MAX_OPSET = 13, 22

#: Operator domains onnxruntime implements (standard ONNX, ONNX-ML, Microsoft contrib).
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")

#: ONNX ``TensorProto`` element types -> v2 datatype names fogline serves.
V2_OF_ONNX = {1: "FP32", 11: "FP64", 7: "INT64", 6: "INT32"}

#: Names the import gives its own tensors (text models take ``text``); a model tensor may not use them.
RESERVED = ("labels",)


def load_onnx(path: Path, shown: Path | None = None) -> Any:
    """The parsed ``onnx.ModelProto``; ``ImportRefused`` (naming ``shown``, the user's file, when given)
    when the file is not a readable ONNX model."""
    import onnx

    shown = shown or path
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError...
        raise ImportRefused(f"{shown}: not a readable ONNX model (corrupt or truncated file?): {_first(exc)}") from None
    if not model.graph.node:
        raise ImportRefused(f"{shown}: not a readable ONNX model (corrupt or truncated file?): the graph is empty")
    return model


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def opset_of(model: Any) -> int:
    """The default-domain opset the model declares."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def check_graph(model: Any, path: Path) -> None:
    """Refuse an opset outside the supported range, operators onnxruntime cannot run or quantize, and a
    graph the ONNX checker rejects."""
    import onnx

    opset = opset_of(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ImportRefused(
            f"{path}: unsupported opset {opset}; fogline imports opsets {MIN_OPSET} to {MAX_OPSET} "
            f"(re-export with opset_version={min(max(opset, MIN_OPSET), MAX_OPSET)})"
        )
    for node in _all_nodes(model.graph):
        domain = node.domain or ""
        known = domain in KNOWN_DOMAINS and (domain == "com.microsoft" or onnx.defs.has(node.op_type, domain))
        if not known:
            qualified = f"{domain}::{node.op_type}" if domain else node.op_type
            raise ImportRefused(
                f"{path}: unsupported operator {qualified} (node {node.name or '<unnamed>'!r}): onnxruntime has no "
                "kernel for it, so it can be neither served nor quantized; replace it or export it as standard ops"
            )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and friends
        raise ImportRefused(f"{path}: the ONNX checker rejects the model: {_first(exc)}") from None


def _all_nodes(graph: Any) -> list[Any]:
    """Every node, including those in the subgraphs of If / Loop / Scan."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                nodes.extend(_all_nodes(attribute.g))
            for sub in attribute.graphs:
                nodes.extend(_all_nodes(sub))
    return nodes


def read_signature(model: Any, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's real inputs (initializers left out) and outputs, as ``TensorSpec``."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [_spec(value, path, "input") for value in model.graph.input if value.name not in weights]
    outputs = [_spec(value, path, "output") for value in model.graph.output]
    check_names(inputs, outputs, path)
    return inputs, outputs


def _spec(value: Any, path: Path, role: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ImportRefused(f"{path}: {role} {value.name!r} is a {kind or 'untyped value'}, not a tensor; "
                            "fogline serves tensors only (skl2onnx: convert with options={'zipmap': False})")
    tensor = value.type.tensor_type
    datatype = V2_OF_ONNX.get(tensor.elem_type)
    if datatype is None:
        import onnx

        name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise ImportRefused(f"{path}: {role} {value.name!r} has datatype {name}; fogline serves "
                            f"{', '.join(d for d in DATATYPES if d != 'BYTES')} tensors (cast it in the model)")
    if not tensor.HasField("shape"):
        raise ImportRefused(f"{path}: {role} {value.name!r} has no static rank (its shape is unknown); "
                            "export the model with a fixed number of dimensions")
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)
    return TensorSpec(value.name, datatype, dims)


def check_names(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], path: Path) -> None:
    """Refuse empty, duplicate, reserved or shared input/output names."""
    if not inputs or not outputs:
        raise ImportRefused(f"{path}: the model has {len(inputs)} input(s) and {len(outputs)} output(s); "
                            "it needs at least one of each")
    seen: dict[str, str] = {}
    for role, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            if not spec.name:
                raise ImportRefused(f"{path}: an {role} tensor has an empty name")
            if spec.name in RESERVED:
                raise ImportRefused(f"{path}: {role} name {spec.name!r} clashes with a name the import reserves "
                                    f"({', '.join(RESERVED)}); rename it in the model")
            if spec.name in seen:
                raise ImportRefused(f"{path}: tensor name {spec.name!r} clashes: it names both an {seen[spec.name]} "
                                    f"and an {role}; give each tensor its own name")
            seen[spec.name] = role
