"""Building, verifying and loading fogline's reference models (``minilm`` and ``digits``).

Loading (what the agent and the cloud import):
- ``spec``: tensor signatures and the input checks both runtimes share (numpy only);
- ``repository``: the ``DIR/<name>/<version>/`` layout, manifests, hash checks (no torch);
- ``edge_runtime.EdgeModel``: the INT8 ONNX file under onnxruntime (never imports torch);
- ``full_runtime.FullModel``: the FP32 torch network (the cloud tier).

Building (``fogline models build`` / ``verify``, the ``models`` extra): ``build`` (locking,
temp-dir-and-rename, ``ensure_models``), ``build_minilm`` / ``build_digits``, ``quantize`` (recipes
applied with onnxruntime.quantization), ``smooth`` (activation smoothing), ``fidelity`` (metrics and
gates), ``verify``, ``explore`` (the recipe search recorded in ``bench/results/models.md``).
Importing this package imports nothing heavy.
"""
