"""``fogline fleet``: check a fleet file, show a device's effective settings, print the JSON Schema.

    fogline fleet validate FLEET.yaml [-v]        exit 0 when every device's settings are valid, 1 if not
    fogline fleet render FLEET.yaml --device ID   the device's merged settings, as YAML (or --format json)
    fogline fleet schema [-o FILE]                the JSON Schema of fleet files, for editors

Problems are printed one per line (``FILE:LINE:COL: key.path: message``) on stderr. Exit codes: 0 ok,
1 invalid or unreadable file or unknown device, 2 wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from fogline.fleet import DeviceConfig, FleetConfig, FleetConfigError, load_fleet

#: What ``render`` prints instead of a secret.
MASK = "***"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Validate, render and describe fleet YAML files.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    validate = commands.add_parser("validate", help="check a fleet file and every device in it")
    validate.add_argument("file", metavar="FLEET.yaml")
    validate.add_argument("-v", "--verbose", action="store_true", help="also print one line per device")

    render = commands.add_parser("render", help="print one device's effective (merged) settings")
    render.add_argument("file", metavar="FLEET.yaml")
    render.add_argument("--device", required=True, metavar="ID", help="the device id (a key under devices:)")
    render.add_argument("--format", choices=("yaml", "json"), default="yaml")
    render.add_argument("--show-secrets", action="store_true", help="print credentials instead of " + MASK)

    schema = commands.add_parser("schema", help="print the JSON Schema of fleet files")
    schema.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead of standard output")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "fogline fleet") -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed)
        return int(exc.code or 0)
    try:
        if args.command == "validate":
            return _validate(args.file, verbose=args.verbose)
        if args.command == "render":
            return _render(args.file, args.device, fmt=args.format, show_secrets=args.show_secrets)
        return _schema(args.output, prog)
    except FleetConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1


def _validate(path: str, *, verbose: bool) -> int:
    try:
        fleet = load_fleet(path)
    except FleetConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        print(f"{path}: invalid, {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    if verbose:
        for device_id in fleet.device_ids():
            print(_summary(fleet.device(device_id)))
    groups = len(fleet.groups)
    devices = len(fleet.devices)
    print(
        f"{path}: ok, revision {fleet.revision}, {devices} device{'s' if devices != 1 else ''} "
        f"in {groups} group{'s' if groups != 1 else ''}, cloud {fleet.cloud.endpoint}"
    )
    return 0


def _summary(device: DeviceConfig) -> str:
    models = ",".join(ref.name + (f"@{ref.version}" if ref.version else "") for ref in device.models)
    return (
        f"  {device.device_id:<16} group={device.group or '-':<12} policy={device.routing.policy:<13} "
        f"listen={device.listen:<21} cloud={device.cloud.endpoint:<21} models={models}"
    )


def render_device(fleet: FleetConfig, device_id: str, *, show_secrets: bool = False) -> dict[str, Any]:
    """A device's effective settings as plain data (what ``render`` prints), secrets masked."""
    device = fleet.device(device_id)
    data = device.model_dump(mode="json")
    ordered = {"device_id": data.pop("device_id"), "group": data.pop("group"), **data}
    credentials = ordered["cloud"]["credentials"]
    if not show_secrets:
        for key, value in credentials.items():
            if value is not None:
                credentials[key] = MASK
    return ordered


def _render(path: str, device_id: str, *, fmt: str, show_secrets: bool) -> int:
    fleet = load_fleet(path)
    data = render_device(fleet, device_id, show_secrets=show_secrets)
    if fmt == "json":
        print(json.dumps({"revision": fleet.revision, **data}, indent=2))
        return 0
    import yaml

    print(f"# effective settings of device {device_id} from {path} (revision {fleet.revision})")
    print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True), end="")
    return 0


def _schema(output: str | None, prog: str) -> int:
    from fogline.fleet.schema import fleet_schema

    text = json.dumps(fleet_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        print(f"{prog} schema: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
