"""Generated Open Inference Protocol v2 stubs (regenerate with ``python scripts/gen_proto.py``)."""
