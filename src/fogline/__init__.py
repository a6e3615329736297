"""fogline: the wire protocol and what every tier shares.

``fogline.inference`` holds the generated Open Inference Protocol v2 stubs, ``fogline.codec`` turns
numpy arrays into v2 tensors and back, ``fogline.errors`` is the one place where failures get their
gRPC status codes, and ``fogline.cli`` is the ``fogline`` command.
"""

__version__ = "0.1.0"
