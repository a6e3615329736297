"""``fogline bench NAME ...``: run one of the benchmarks and write its report under ``bench/results``.

    fogline bench routing [--quick] [...]    # routing policies vs an oracle under network faults
    fogline bench models ...                 # quantized vs full models
    fogline bench cloud ...                  # the cloud tier's throughput and batching
    fogline bench agent ...                  # the agent's overhead
    fogline bench shadow ...                 # live agreement: shadowing's cost and agreement figures

Each name maps to a module ``bench.<name>`` with ``main(argv, prog) -> int`` (``python -m bench.<name>``
runs the same thing); the module is imported only when asked for.
"""

from __future__ import annotations

import importlib
import inspect
import sys

#: benchmark name -> (module, one-line description)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "routing": ("bench.routing", "routing policies vs an oracle under network faults"),
    "models": ("bench.models", "edge (INT8) vs full models: fidelity, accuracy, speed"),
    "cloud": ("bench.cloud", "the cloud tier: throughput and latency with dynamic batching"),
    "agent": ("bench.agent", "the edge agent: overhead and throughput on the device"),
    "scale": ("bench.scale", "agents over 1, 2 and 4 cloud replicas; one killed, one added"),
    "shadow": ("bench.shadow", "live agreement: shadowing 10% of edge answers, its cost and its figures"),
}


def _usage(prog: str) -> str:
    lines = [f"usage: {prog} NAME [ARGS...]", "", "benchmarks:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in BENCHMARKS.items()]
    lines += ["", f"Run '{prog} NAME --help' for a benchmark's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "fogline bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(prog))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"{prog}: unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module_name = BENCHMARKS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(f"{prog}: the {name} benchmark is not part of this checkout ({module_name} is missing)",
                  file=sys.stderr)
        else:
            print(f"{prog} {name}: missing dependency {exc.name!r} (install it with: pip install "
                  "'fogline[cloud,models,dev]')", file=sys.stderr)
        return 3
    run = module.main
    # ``main(argv, prog)`` is the convention; a benchmark whose main takes only argv still runs.
    if "prog" in inspect.signature(run).parameters:
        return int(run(rest, prog=f"{prog} {name}") or 0)
    return int(run(rest) or 0)


if __name__ == "__main__":
    sys.exit(main(prog="python -m bench.cli"))
