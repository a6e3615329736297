"""``fogline models pull``: fetch a model version from a cloud into a repository, by hand.

    fogline models pull NAME[:VERSION] --from CLOUD [--models DIR] [--token-file F]
        [--tls] [--ca-file F] [--cert-file F --key-file F] [--server-name NAME] [--all-files]
    fogline models pull NAME[:VERSION] --config FLEET.yaml --device ID [--models DIR] [--all-files]

What an agent does by itself for a version its fleet entry names (``fogline.agent.model_fetch``), for
an operator preparing a device, or a platform team seeding a new cloud replica (``--all-files``: the
full model too, not only the edge files). With ``--config`` the cloud endpoint, TLS files and token
come from the device's fleet entry (``--from`` may still name another target) and the repository is
the device's ``models_dir``. Without a version, the cloud's newest. It lives with the agent because it
is an edge device's command: it needs neither torch nor the ``models`` extra.

Exit status: 0 fetched (or already present and intact), 1 the fetch failed (one line), 2 usage or
configuration errors. Progress lines go to stdout, errors to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from fogline.agent.link_settings import LinkSettings
from fogline.agent.model_fetch import source_of
from fogline.errors import ConfigError
from fogline.models.distribution import EDGE_ROLES, split_ref
from fogline.models.fetch import FetchError, fetch_version, progress_printer
from fogline.models.repository import default_models_dir


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Fetch a model version from a fogline cloud into a "
                                                             "model repository (hashes checked, put in place whole).")
    parser.add_argument("ref", metavar="NAME[:VERSION]", help="the model, and a version (default: the cloud's newest)")
    parser.add_argument("--from", dest="source", default=None, metavar="CLOUD",
                        help="the cloud's gRPC target: HOST:PORT, dns:///NAME:PORT, ipv4:A:P,B:P")
    parser.add_argument("--config", default=None, metavar="FLEET.yaml", help="take the cloud and credentials from "
                                                                            "this fleet file (with --device)")
    parser.add_argument("--device", default=None, metavar="ID", help="the device of --config")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="repository (default: the device's models_dir, else $FOGLINE_MODELS or ./models)")
    parser.add_argument("--token-file", default=None, metavar="F", help="a file whose first line is this device's token")
    parser.add_argument("--tls", action="store_true", help="TLS with the system's roots (implied by --ca-file)")
    parser.add_argument("--ca-file", default=None, metavar="F", help="CA bundle that signed the cloud's certificate")
    parser.add_argument("--cert-file", default=None, metavar="F", help="client certificate (mutual TLS)")
    parser.add_argument("--key-file", default=None, metavar="F", help="client key (mutual TLS)")
    parser.add_argument("--server-name", default=None, metavar="NAME",
                        help="the name the cloud's certificate is checked against")
    parser.add_argument("--all-files", action="store_true", help="every file of the version, not only the edge's")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def settings_of(args: argparse.Namespace) -> tuple[LinkSettings, Path]:
    """How to reach the cloud and where the repository is; ``ConfigError`` / ``ValueError`` when the
    flags or the fleet file do not say."""
    if args.config:
        from fogline.agent.server import models_root
        from fogline.fleet import load_fleet

        if not args.device:
            raise ValueError("--config needs --device ID")
        device = load_fleet(args.config).device(args.device)
        endpoint = args.source or device.cloud.endpoint
        if not endpoint:
            raise ValueError(f"device {args.device} has no cloud.endpoint; give --from CLOUD")
        return LinkSettings.from_config(device.cloud, device.routing, endpoint=endpoint), models_root(device, args.models)
    if not args.source:
        raise ValueError("say where to fetch from: --from CLOUD, or --config FLEET.yaml --device ID")
    tls = bool(args.tls or args.ca_file or args.cert_file)
    if bool(args.cert_file) != bool(args.key_file):
        raise ValueError("--cert-file and --key-file go together")
    settings = LinkSettings(endpoint=args.source, tls=tls, ca_file=args.ca_file, cert_file=args.cert_file,
                            key_file=args.key_file, token_file=args.token_file, server_name=args.server_name)
    return settings, args.models or default_models_dir()


def main(argv: list[str] | None = None, prog: str = "fogline models pull") -> int:
    parser = _parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        name, version = split_ref(args.ref)
        settings, root = settings_of(args)
        source = source_of(settings)
    except (ConfigError, ValueError, KeyError) as exc:
        print(f"{prog}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    progress = None if args.quiet else progress_printer(f"{prog}: ")
    try:
        done = asyncio.run(fetch_version(source, root, name, version, roles=None if args.all_files else EDGE_ROLES,
                                         progress=progress))
    except FetchError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: cannot write to {root}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if done.already_present:
        print(f"{prog}: {name} v{done.version} already in {done.path} (checked)")
    else:
        print(f"{prog}: {name} v{done.version} fetched into {done.path} ({done.bytes_received / 1e6:.1f} MB)")
    return 0
