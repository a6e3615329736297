"""The ``fogline`` command: one entry point, one sub-command per part of the system.

Each sub-command lives in the package that owns it and exposes ``main(argv, prog) -> int``; it is
imported only when used, so ``fogline agent`` on an edge device never imports torch, and a missing
optional dependency turns into one clear line instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module with main(argv, prog), one-line help, extra that provides its dependencies)
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "agent": ("fogline.agent.cli", "run the edge agent daemon", None),
    "cloud": ("fogline.cloud.cli", "serve the full-precision models (the cloud tier)", "cloud"),
    "models": ("fogline.modelbuild.cli", "build and verify the reference models", "models"),
    "fleet": ("fogline.fleet.cli", "validate, render and describe fleet YAML files", None),
    "demo": ("fogline.demo.cli", "cloud, network proxy and agent on loopback, for a first look", "cloud"),
    "bench": ("bench.cli", "run the benchmarks and write their reports", "dev"),
}

# (command, first argument) -> module: sub-commands that live apart from their command's module.
# ``fogline models pull`` is an edge device's command, so it must run without the ``models`` extra.
SUBCOMMANDS: dict[tuple[str, str], str] = {
    ("models", "pull"): "fogline.agent.pull",
}


def _usage() -> str:
    lines = ["usage: fogline COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_, _) in COMMANDS.items()]
    lines += ["", "Run 'fogline COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from fogline import __version__

        print(f"fogline {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fogline: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, _, extra = COMMANDS[name]
    if rest and (name, rest[0]) in SUBCOMMANDS:
        module_name, extra, name, rest = SUBCOMMANDS[(name, rest[0])], None, f"{name} {rest[0]}", rest[1:]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = f" (install it with: pip install 'fogline[{extra}]')" if extra else ""
        print(f"fogline {name}: missing dependency {exc.name!r}{hint}", file=sys.stderr)
        return 3
    try:
        return int(module.main(rest, prog=f"fogline {name}") or 0)
    except KeyboardInterrupt:
        print(f"fogline {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
