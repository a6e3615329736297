"""``fogline models import``: a user's own ONNX / torch model -> a repository version both tiers serve.

Steps (each reported on stderr): read the source and export it to FP32 ONNX (``sources``); check the
graph and read its signature (``signature``); check the calibration / evaluation rows against the
inputs (``calibration``); pick the quantization method (``quant_plan``); quantize and judge the INT8
form against FP32 on the evaluation rows with the task's gate (``task_fidelity``), trying the remedies
in order until one passes (``sensitivity`` picks the nodes to keep FP32); load the result through the
runtimes the agent and cloud use (``EdgeModel`` / ``FullModel``), check the full form against the
source, time both; write the manifest. Everything happens in a temporary directory; the finished
version is copied next to its place and renamed into ``DIR/NAME/VERSION`` under the repository's
build lock, so a refused or failed import leaves the repository as it was.

``ImportRefused`` (exit 2) comes before any quantization; ``FidelityRefused`` (exit 1) after every
try missed the gate, unless ``accept_fidelity`` (then the best try is written, and the manifest says
``gate.accepted_below_gate``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fogline.modelbuild import (
    calibration,
    output_names,
    quant_plan,
    signature,
    sources,
    task_fidelity,
    text_inputs,
    timing,
)
from fogline.modelbuild.build import Progress, build_lock
from fogline.modelbuild.import_errors import FidelityRefused, ImportRefused
from fogline.modelbuild.quantize import Recipe, quantize_onnx
from fogline.models.repository import ModelRepository, sha256_file, write_manifest
from fogline.models.spec import TensorSpec
from fogline.models.text import TextEncoder

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INT8_ONNX = "model.int8.onnx"
#: Rows per calibration / evaluation batch.
BATCH = 32
#: Evaluation rows used to rank nodes by sensitivity.
SENSITIVITY_ROWS = 16
#: The full form must reproduce the source model this closely (relative error).
FULL_TOLERANCE = 1e-4

#: Evaluation / calibration rows: arrays keyed by input name, or sentences of a text model.
Rows = calibration.Dataset | text_inputs.TextDataset


@dataclass(frozen=True)
class ImportOptions:
    """What ``fogline models import`` was asked (see the command's help for each field)."""

    name: str
    source: Path
    models_dir: Path
    version: str | None = None
    task: str = "generic"
    calibration: Path | None = None
    eval: Path | None = None
    quantization: str = "auto"
    tokenizer: Path | None = None
    gates: tuple[str, ...] = ()
    accept_fidelity: bool = False
    scores_output: str | None = None
    #: Names for a torch source's outputs, in the order forward() returns them (``--output-names``).
    output_names: tuple[str, ...] | None = None
    progress: bool = True
    #: A torch form (``.pt2`` / ``.pt``) the cloud serves, for an ONNX ``source`` (the edge INT8 is
    #: quantized from the ONNX file; the torch form must reproduce it within ``FULL_TOLERANCE``).
    full: Path | None = None
    #: The first recipe to try (the reference builds' chosen recipes); None: the method's base recipe.
    recipe: Recipe | None = None
    #: Input name -> (low, high) recorded as the input's ``value_range`` (both runtimes then check it).
    value_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: Output name -> shape, for dimensions the graph leaves unknown (``-1``) but the model fixes.
    output_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: Extra top-level manifest keys (what a build records about its shipped source).
    manifest_extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ImportResult:
    path: Path
    manifest: dict[str, Any]
    tries: list[dict[str, Any]] = field(default_factory=list)


def import_model(options: ImportOptions) -> ImportResult:
    """Import ``options.source`` as ``options.name``; see the module docstring."""
    report = Progress(options.progress).reporter(options.name)
    version = _check_request(options)
    work = Path(tempfile.mkdtemp(prefix="fogline-import-"))
    try:
        version_dir = work / "v"
        version_dir.mkdir()
        manifest, tries = _build(options, version, version_dir, report)
        final = _move_into_place(options.models_dir, options.name, version, version_dir)
        report(f"done: {final}")
        return ImportResult(final, manifest, tries)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_request(options: ImportOptions) -> str:
    """Refuse a bad name, task, method or version before any work; return the version to write."""
    if not NAME_PATTERN.match(options.name):
        raise ImportRefused(f"model name {options.name!r}: use letters, digits, '_', '-' or '.', at most 64, "
                            "starting with a letter or digit")
    if options.task not in task_fidelity.TASKS:
        raise ImportRefused(f"--task {options.task!r}: expected one of {', '.join(task_fidelity.TASKS)}")
    if options.quantization not in quant_plan.METHODS:
        raise ImportRefused(f"--quantization {options.quantization!r}: expected one of {', '.join(quant_plan.METHODS)}")
    if sources.kind_of(options.source) == "onnx":
        output_names.refuse_for_onnx(options.output_names, options.source)
    if options.full is not None and (sources.kind_of(options.full) == "onnx" or sources.kind_of(options.source) != "onnx"):
        raise ImportRefused(f"--full {options.full}: a torch form (.pt2 or .pt) goes with an ONNX --from file only")
    if options.tokenizer is not None:
        text_inputs.open_encoder(text_inputs.tokenizer_file(options.tokenizer))
    existing = ModelRepository(options.models_dir).versions(options.name)
    if options.version is None:
        return str(int(existing[-1]) + 1) if existing else "1"
    if not (options.version.isdigit() and not options.version.startswith("0")):
        raise ImportRefused(f"--version {options.version!r}: versions are positive integers (1, 2, ...)")
    if options.version in existing:
        raise ImportRefused(f"{options.models_dir / options.name / options.version} already exists; pass another "
                            f"--version (next free: {int(existing[-1]) + 1})")
    return options.version


def _build(options: ImportOptions, version: str, out: Path,
           report: Callable[[str], None]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    raw = calibration.read_npz(options.calibration) if options.calibration else None
    encoder = None
    example = raw
    if options.tokenizer is not None:
        tokenizer = text_inputs.tokenizer_file(options.tokenizer)
        encoder = text_inputs.open_encoder(tokenizer)
        if raw is not None:
            text_inputs.read_texts(options.calibration, raw)
        example = text_inputs.example_tokens(encoder, raw)
        shutil.copyfile(tokenizer, out / text_inputs.TOKENIZER_FILE)
    report(f"reading {options.source}")
    source = sources.prepare(options.source, out, example, options.output_names)
    if options.full is not None:
        source = sources.attach_full(source, options.full, out)
    model = signature.load_onnx(source.fp32_onnx, options.source)
    inputs, outputs = signature.read_signature(model, options.source)
    signature.check_graph(model, options.source)
    _open_fp32(source.fp32_onnx, options.source)
    served_inputs = inputs
    if encoder is not None:
        text_inputs.check_token_inputs(inputs, options.source)
        if text_inputs.TEXT in {s.name for s in outputs}:
            raise ImportRefused(f"{options.source}: output name {text_inputs.TEXT!r} clashes with the text input "
                                "a --tokenizer model takes; rename it in the model")
        served_inputs = [text_inputs.TEXT_SPEC]
        calib: Rows | None = text_inputs.dataset(options.calibration, raw, encoder, [s.name for s in inputs])
    else:
        calib = calibration.match(options.calibration, raw, inputs) if raw is not None else None
    evaluation = _evaluation_rows(options, inputs, calib, encoder)
    unknown = sorted(set(options.value_ranges) - {s.name for s in served_inputs})
    if unknown:
        raise ImportRefused(f"value ranges for {unknown}: the model's inputs are {[s.name for s in served_inputs]}")
    served_inputs = [TensorSpec(s.name, s.datatype, s.shape, options.value_ranges.get(s.name)) for s in served_inputs]
    outputs = _with_output_shapes(outputs, options.output_shapes)
    scores = _scores_output(options, outputs) if options.task == "classification" else None
    counts = quant_plan.op_counts(model)
    if options.recipe is not None:
        method, reason = options.recipe.method, f"given: {options.recipe.note}"
    else:
        method, reason = quant_plan.choose_method(options.quantization, counts, calib is not None)
    tables = quant_plan.embedding_tables(model) if method == "dynamic" and options.recipe is None else []
    if tables:
        reason += f"; Gather too: embedding table(s) {', '.join(tables)}"
    limits = task_fidelity.gates_for(options.task, options.gates)
    shown = f"{_sig_text(served_inputs)} (tokenized: {_sig_text(inputs)})" if encoder else _sig_text(inputs)
    report(f"signature: {shown} -> {_sig_text(outputs)}; quantization {method} ({reason})")

    reference = _run_onnx(source.fp32_onnx, evaluation, outputs)
    feeds = calib.batches(BATCH) if calib is not None else []
    first = options.recipe or quant_plan.base_recipe(method, tables)
    tries, chosen = _quantize_with_remedies(source.fp32_onnx, out, first, feeds, evaluation, reference, outputs,
                                            options, scores, limits, report)
    passed = bool(chosen["passed"])
    if not passed and not options.accept_fidelity:
        raise FidelityRefused(f"{options.name}: no recipe met the {options.task} gate "
                              f"({_limits_text(limits)}); --accept-fidelity writes the best try anyway", tries)
    os.replace(chosen["path"], out / INT8_ONNX)
    for stale in out.glob("int8.try*.onnx"):
        stale.unlink()

    manifest: dict[str, Any] = {
        "name": options.name,
        "version": version,
        "task": options.task,
        "inputs": [s.to_dict() for s in served_inputs],
        "outputs": [s.to_dict() for s in outputs],
        "artifacts": {"edge": INT8_ONNX, "reference_onnx": sources.FP32_ONNX,
                      **({source.full_artifact[0]: source.full_artifact[1]} if source.full_artifact else {})},
        **options.manifest_extra,
        "import": {"source": {"kind": source.kind, "file": options.source.name,
                              "sha256": sha256_file(options.source), "opset": signature.opset_of(model)},
                   "evaluation": evaluation.origin, "calibration": calib.origin if calib else None,
                   "evaluation_rows": evaluation.rows, "op_counts": dict(counts.most_common())},
    }
    if encoder is not None:
        manifest["artifacts"]["tokenizer"] = text_inputs.TOKENIZER_FILE
        manifest["feed"] = [s.name for s in inputs]
    if scores is not None:
        manifest["classification"] = {"output": scores, "scores": _scores_kind(reference[scores])}
    write_manifest(out, manifest)  # provisional: the runtimes below read it
    report("loading both forms through the serving runtimes; checking the full form against the source")
    checks, latency = _check_and_time(out, source, evaluation)
    recipe = chosen["recipe"]
    manifest["quantization"] = {**recipe.to_dict(), "chosen_by": reason, "tries": _try_rows(tries)}
    manifest["metrics"] = {"int8": chosen["metrics"], **checks}
    manifest["gate"] = {"task": options.task, "limits": limits, "passed": passed,
                        "accepted_below_gate": not passed}
    if not passed:
        manifest["gate"]["misses"] = chosen["misses"]
        print(f"warning: {options.name}: below its fidelity gate ({'; '.join(chosen['misses'])}); written anyway "
              "(--accept-fidelity)", file=sys.stderr, flush=True)
    manifest["sizes"] = _sizes(out, source)
    manifest["latency_ms"] = latency
    comparison = timing.int8_vs_fp32(latency)
    if comparison is not None:
        manifest["latency"] = comparison
    return write_manifest(out, manifest), tries


def _evaluation_rows(options: ImportOptions, inputs: Sequence[TensorSpec], calib: Rows | None,
                     encoder: TextEncoder | None = None) -> Rows:
    if encoder is not None:
        if options.eval is None:
            return calib
        return text_inputs.dataset(options.eval, calibration.read_npz(options.eval), encoder, [s.name for s in inputs])
    if options.eval is not None:
        return calibration.match(options.eval, calibration.read_npz(options.eval), inputs)
    if calib is not None:
        return calib
    made = calibration.synthetic(inputs)
    if made is None:
        raise ImportRefused("no --calibration or --eval file, and the inputs cannot be made up (non-float types or "
                            "dynamic dimensions beyond the batch); pass --calibration F.npz")
    return made


def _with_output_shapes(outputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]]) -> list[TensorSpec]:
    """``outputs`` with the given shapes, each of which may only fix dimensions the graph left ``-1``."""
    unknown = sorted(set(shapes) - {s.name for s in outputs})
    if unknown:
        raise ImportRefused(f"output shapes for {unknown}: the model's outputs are {[s.name for s in outputs]}")
    out = []
    for spec in outputs:
        shape = tuple(shapes.get(spec.name, spec.shape))
        if len(shape) != len(spec.shape) or any(g != -1 and g != w for g, w in zip(spec.shape, shape, strict=True)):
            raise ImportRefused(f"output {spec.name!r} is {list(spec.shape)} in the graph; {list(shape)} does not fit it")
        out.append(TensorSpec(spec.name, spec.datatype, shape))
    return out


def _scores_output(options: ImportOptions, outputs: Sequence[TensorSpec]) -> str:
    """The classifier's probability/logit output: ``--scores-output`` or the first float [N,C] output."""
    if options.scores_output is not None:
        if options.scores_output not in {s.name for s in outputs}:
            raise ImportRefused(f"--scores-output {options.scores_output!r}: the model's outputs are "
                                f"{[s.name for s in outputs]}")
        return options.scores_output
    for spec in outputs:
        if spec.datatype in ("FP32", "FP64") and len(spec.shape) == 2:
            return spec.name
    raise ImportRefused(f"--task classification needs a float [N,C] output of class scores; the outputs are "
                        f"{_sig_text(outputs)} (use --task generic)")


def _scores_kind(scores: np.ndarray) -> str:
    """``probabilities`` when every row is a distribution, else ``logits``."""
    rows = np.asarray(scores, dtype=np.float64)
    is_distribution = rows.min() >= 0 and rows.max() <= 1 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3)
    return "probabilities" if is_distribution else "logits"


def _open_fp32(path: Path, source: Path) -> None:
    from fogline.models.edge_runtime import open_session

    try:
        open_session(path)
    except Exception as exc:  # onnxruntime's own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImportRefused(f"{source}: onnxruntime cannot load the model: {first}") from None


def _run_onnx(path: Path, data: Rows, outputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    from fogline.models.edge_runtime import open_session

    session = open_session(path)
    names = [s.name for s in outputs]
    parts = [session.run(names, feed) for feed in data.batches(BATCH)]
    return {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(names)}


def _quantize_with_remedies(
    fp32: Path, out: Path, first: Recipe, feeds: list[dict[str, np.ndarray]], evaluation: Rows,
    reference: dict[str, np.ndarray], outputs: Sequence[TensorSpec], options: ImportOptions, scores: str | None,
    limits: Mapping[str, float], report: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Try ``first``, then each remedy while the gate is missed; return every try and the chosen one."""
    from fogline.modelbuild.sensitivity import rank_nodes

    judged = {k: v for k, v in reference.items() if scores is None or k == scores}
    judged = {k: v for k, v in judged.items() if v.dtype.kind == "f"}
    tries: list[dict[str, Any]] = []
    recipes = [first]
    ranked: list[str] | None = None
    while recipes:
        recipe = recipes.pop(0)
        path = out / f"int8.try{len(tries) + 1}.onnx"
        quantize_onnx(fp32, path, recipe, feeds)
        candidate = _run_onnx(path, evaluation, outputs)
        metrics = task_fidelity.measure(options.task, judged, {k: candidate[k] for k in judged}, scores,
                                        evaluation.labels)
        missed = task_fidelity.misses(metrics, limits)
        row = {"try": len(tries) + 1, "recipe": recipe, "path": path, "metrics": metrics, "misses": missed,
               "passed": not missed, "bytes": path.stat().st_size}
        tries.append(row)
        report(f"try {row['try']}: {recipe.note.removeprefix('import: ')}: {task_fidelity.describe(metrics)} -> "
               + ("passes" if not missed else "misses: " + "; ".join(missed)))
        if not missed:
            return tries, row
        if len(tries) == 1:
            recipes.append(quant_plan.per_channel(recipe))
        elif ranked is None:
            report("ranking nodes by the error they add")
            ranked = rank_nodes(fp32, path, recipe.op_types, evaluation.head(SENSITIVITY_ROWS))
            recipes += [quant_plan.keep_fp32(recipe, ranked, f) for f in quant_plan.EXCLUDE_FRACTIONS]
    best = max(tries, key=lambda r: task_fidelity.score(options.task, r["metrics"]))
    return tries, best


def _check_and_time(out: Path, source: sources.Source,
                    evaluation: Rows) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load both forms as the agent and cloud do; compare the full form with the source; time both."""
    from fogline.models.edge_runtime import EdgeModel
    from fogline.models.full_runtime import FullModel

    edge = EdgeModel.load(out)
    full = FullModel.load(out)
    fp32 = EdgeModel.load(out, artifact="reference_onnx")
    tokens = evaluation.head(8)
    sample = evaluation.wire(8) if isinstance(evaluation, text_inputs.TextDataset) else tokens
    served = full.predict(sample)
    expected = source.run_torch(tokens) if source.run_torch else list(fp32.predict(sample).values())
    errors = [task_fidelity.relative_error(e, served[s.name]) for s, e in zip(full.outputs, expected, strict=True)]
    worst = max(errors)
    if worst > FULL_TOLERANCE:
        raise ImportRefused(f"the served full model differs from the source by {worst:.3g} (relative; the limit is "
                            f"{FULL_TOLERANCE:g}): the export changed the model")
    onnx_vs_full = max(task_fidelity.relative_error(served[k], v) for k, v in fp32.predict(sample).items()
                       if v.dtype.kind == "f") if source.full_artifact else 0.0
    checks = {"full_vs_source_relative_error": float(f"{worst:.3g}"),
              "fp32_onnx_vs_full_relative_error": float(f"{onnx_vs_full:.3g}")}
    latency = {"edge_int8_onnxruntime": timing.median_ms(edge.predict, sample),
               "full_fp32_" + ("torch" if source.full_artifact else "onnxruntime"): timing.median_ms(full.predict, sample)}
    if source.full_artifact:
        latency["fp32_onnxruntime"] = timing.median_ms(fp32.predict, sample)
    return checks, latency


def _sizes(out: Path, source: sources.Source) -> dict[str, int]:
    sizes = {"fp32_onnx_bytes": (out / sources.FP32_ONNX).stat().st_size, "int8_onnx_bytes": (out / INT8_ONNX).stat().st_size}
    if source.full_artifact:
        sizes["full_torch_bytes"] = (out / source.full_artifact[1]).stat().st_size
    return sizes


def _try_rows(tries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"try": r["try"], "note": r["recipe"].note, "per_channel": r["recipe"].per_channel,
             "nodes_fp32": len(r["recipe"].nodes_to_exclude), "metrics": r["metrics"], "passed": r["passed"],
             "int8_bytes": r["bytes"]} for r in tries]


def tries_table(tries: Sequence[dict[str, Any]]) -> str:
    """The tries as a small text table (what a refused import prints)."""
    lines = [f"{'try':>3}  {'recipe':<58} {'result':<7} metrics"]
    for r in tries:
        recipe: Recipe = r["recipe"]
        lines.append(f"{r['try']:>3}  {recipe.method + ', ' + recipe.note.removeprefix('import: '):<58} "
                     f"{'pass' if r['passed'] else 'miss':<7} {task_fidelity.describe(r['metrics'])}")
    return "\n".join(lines)


def _move_into_place(root: Path, name: str, version: str, built: Path) -> Path:
    """Copy ``built`` next to ``root/name/version`` and rename it there, under the build lock."""
    with build_lock(root):
        model_dir = root / name
        final = model_dir / version
        if final.exists():
            raise ImportRefused(f"{final} appeared while importing; pass another --version")
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
        try:
            shutil.copytree(built, staging / "v")
            os.rename(staging / "v", final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _sig_text(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.datatype} [{','.join(str(d) for d in s.shape)}]" for s in specs)


def _limits_text(limits: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in limits.items())
