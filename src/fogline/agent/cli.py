"""``fogline agent run``: the edge daemon's command line.

    fogline agent run --config FLEET.yaml --device ID [--listen HOST:PORT|unix:///PATH] [--cloud HOST:PORT]
                      [--models DIR] [--grace-s S]
    fogline agent status [--listen HOST:PORT|unix:///PATH] [--token-file F] [--ca-file F]
        [--cert-file F [--key-file F]] [--server-name NAME] [--json]

``status`` asks a running agent, on its own listener, for its config revision, model versions, link
state and tier shares (``fogline.agent.status``: a JSON gRPC call beside the v2 service; plaintext
listeners only for now).

Reads the device's effective settings from the fleet file (flags override them), loads its INT8 models,
opens the cloud stream and serves until SIGTERM or SIGINT, which drains: no new requests are taken,
everything in flight is answered, then it exits 0. SIGHUP re-reads the fleet file and applies its
routing and load settings to the next requests without touching open streams, re-reads the model
repository and hot-swaps every model whose pinned or newest version changed (checked first: hashes,
a warm-up inference, output shapes, no NaN; a version failing a check is refused with a log line and
the one serving stays; ``fogline.agent.model_reload``), re-reads the listener's
tokens file and certificates (``serving``), and lets a cloud link that was refused its credentials
try them again at once (re-reading ``cloud.credentials.token_file``); a file that does not
load or validate is refused with a log line naming the problem, and the settings in use stay. Bad configuration or flags exit 2, anything that
stops it from serving (models missing, port taken) exits 1, each with one line saying why.
Under systemd (``Type=notify``) it reports READY once serving and STOPPING while draining, and pings
the watchdog (``WatchdogSec=``) from the event loop.

Logging goes to stderr as the device's ``logging`` block says (``level``, ``format`` json | text | auto,
``levels``: logger name -> level), set up at start and again on every good SIGHUP;
``--log-level``/``--log-format`` win over ``FOGLINE_LOG_LEVEL``/``FOGLINE_LOG_FORMAT``, which win over
the fleet file. Every line carries ``device`` and the device's ``labels``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from fogline.errors import ConfigError, FoglineError
from fogline.logs import FORMATS, LEVELS, configure_logging, setup_logging_from_env

log = logging.getLogger("agent")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="The fogline edge agent.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve the device's models and route to the cloud until SIGTERM")
    run.add_argument("--config", required=True, help="fleet YAML file")
    run.add_argument("--device", required=True, help="device id in the fleet file")
    run.add_argument("--listen", help="HOST:PORT or unix:///PATH to serve on (overrides the config; "
                     "port 0 = any free port)")
    run.add_argument("--cloud", help="the cloud's v2 endpoint, any gRPC target: HOST:PORT, dns:///NAME:PORT, "
                     "ipv4:A:P,B:P (overrides the config; '' = none)")
    run.add_argument("--models", help="model repository directory (overrides the config)")
    run.add_argument("--grace-s", type=float, default=10.0, help="seconds to finish in-flight work on SIGTERM")
    run.add_argument("--log-level", type=str.upper, choices=LEVELS,
                     help="root log level (over FOGLINE_LOG_LEVEL and the fleet file's logging.level)")
    run.add_argument("--log-format", choices=FORMATS,
                     help="json, text or auto (over FOGLINE_LOG_FORMAT and the fleet file's logging.format)")
    status = sub.add_parser("status", help="print a running agent's config revision, model versions, "
                            "link state and tier shares")
    status.add_argument("--listen", default="127.0.0.1:8500",
                        help="the agent's address, HOST:PORT or unix:///PATH (default 127.0.0.1:8500)")
    status.add_argument("--token-file", help="a file holding the bearer token, when the agent wants one")
    status.add_argument("--ca-file", help="TLS: the CA that signed the agent's certificate (a TLS listener)")
    status.add_argument("--cert-file", help="mutual TLS: this client's certificate (PEM; may hold the key too)")
    status.add_argument("--key-file", help="mutual TLS: this client's key (PEM)")
    status.add_argument("--server-name", help="TLS: the name the agent's certificate is checked against")
    status.add_argument("--json", action="store_true", help="print the JSON document as the agent sends it")
    return parser


def show_status(args: argparse.Namespace, prog: str) -> int:
    """``fogline agent status``: ask the agent (``fogline.agent.status``) and print what it says."""
    import json

    import grpc

    from fogline.agent.status import fetch, render

    def read(path: str | None) -> bytes | None:
        try:
            return Path(path).read_bytes() if path else None
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None

    try:
        token_bytes = read(args.token_file)
        token = token_bytes.decode("utf-8", "replace").strip() if token_bytes is not None else None
        credentials = None
        if args.ca_file or args.cert_file:
            cert = read(args.cert_file)
            credentials = grpc.ssl_channel_credentials(root_certificates=read(args.ca_file),
                                                       private_key=read(args.key_file or args.cert_file) if cert else None,
                                                       certificate_chain=cert)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        doc = fetch(args.listen, token=token, credentials=credentials, server_name=args.server_name)
    except grpc.RpcError as exc:
        print(f"{prog}: no status from {args.listen}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else render(doc), flush=True)
    return 0


def apply_logging(device: Any, args: argparse.Namespace) -> None:
    """Set up logging from the device's ``logging`` block, the environment and the flags; every line
    carries the device id and its labels. ValueError (nothing changed) for a bad level or format."""
    fields: dict[str, Any] = {"device": device.device_id}
    if device.labels:
        fields["labels"] = dict(device.labels)
    configure_logging(device.logging, level=getattr(args, "log_level", None), fmt=getattr(args, "log_format", None),
                      static=fields)


def _load_device(path: str, device_id: str) -> Any:
    from fogline.fleet import load_fleet

    fleet = load_fleet(path)
    return fleet.device(device_id)


async def serve(device: Any, args: argparse.Namespace, prog: str) -> int:
    from fogline.agent.sdnotify import Notifier, Watchdog
    from fogline.agent.server import create_server
    from fogline.serving.lifecycle import run_until_signal

    if not await _fetch_missing_models(device, args, prog):
        return 1
    server, port = create_server(device, listen=args.listen, cloud=args.cloud, models_dir=args.models)
    await server.start()
    notifier = Notifier.from_environment()

    def on_stop(name: str) -> None:
        print(f"{prog}: {name}, draining (grace {args.grace_s:g} s)", flush=True)
        notifier.stopping()

    models = ", ".join(f"{r.name} v{r.version}" for r in server.dataplane.edge.runners.values())
    cloud = server.link.settings.endpoint if server.link is not None else "none"
    where = server.listener.describe(port) if server.listener is not None else str(port)
    revision = server.dataplane.config_revision or "-"
    line = (f"serving {models} on {where} (cloud {cloud}, policy {server.dataplane.policy.policy.value}, "
            f"config revision {revision})")
    # Under WatchdogSec=, ping from the event loop while the server takes work: a wedged loop or a
    # server that stopped serving gets restarted by systemd.
    dog = Watchdog(notifier, healthy=lambda: server.servicer.ready and not server.servicer.drain_event.is_set())

    def on_ready() -> None:
        print(f"{prog}: {line}", flush=True)
        notifier.ready(line)
        dog.start()

    await run_until_signal(server, grace=args.grace_s, on_ready=on_ready, on_stop=on_stop,
                           on_reload=lambda: reload_config(server, args, notifier, prog))
    await dog.stop()
    print(f"{prog}: stopped", flush=True)
    return 0


async def _fetch_missing_models(device: Any, args: argparse.Namespace, prog: str) -> bool:
    """Models the device lists but its repository lacks come from the cloud first
    (``fogline.agent.model_fetch``); False (after one line per failure) when one could not be fetched."""
    from fogline.agent.model_fetch import fetch_at_start
    from fogline.agent.server import models_root
    from fogline.models.fetch import progress_printer

    endpoint = args.cloud if args.cloud is not None else device.cloud.endpoint
    root = models_root(device, args.models)
    outcomes = await fetch_at_start(device, endpoint, root, progress_printer(f"{prog}: fetching "))
    failed = [o for o in outcomes if o.error]
    for outcome in failed:
        print(f"{prog}: {outcome.name} is not in {root}, and the {outcome.describe()}", file=sys.stderr, flush=True)
    return not failed


async def reload_config(server: Any, args: argparse.Namespace, notifier: Any, prog: str) -> bool:
    """SIGHUP: load and validate the fleet file again, then apply the device's new routing settings.
    On any problem the old settings stay and one log line (and one output line) says why."""
    old_revision = server.dataplane.config_revision or "-"
    notifier.reloading(f"reloading {args.config}")
    try:
        device = await asyncio.to_thread(_load_device, args.config, args.device)
        apply_logging(device, args)
        restart_only = server.apply_config(device)
        changes = await server.reload_models(device)
    except (ConfigError, OSError, KeyError, ValueError) as exc:
        reason = _one_line(exc)
        log.error("config reload refused, keeping revision %s: %s", old_revision, reason,
                  extra={"config": args.config, "revision": old_revision})
        print(f"{prog}: SIGHUP, config refused (keeping revision {old_revision}): {reason}", flush=True)
        if server.metrics is not None:
            server.metrics.observe_reload(False)
        notifier.ready(f"config reload refused, keeping revision {old_revision}")
        return False
    policy = server.dataplane.policy
    revision = server.dataplane.config_revision or "-"
    log.info("config reloaded: revision %s -> %s, policy %s, slo %g ms", old_revision, revision,
             policy.policy.value, policy.slo_ms, extra={"config": args.config, "revision": revision})
    if restart_only:
        log.warning("config reload: changes to %s take effect only after a restart", ", ".join(restart_only))
    print(f"{prog}: SIGHUP, config reloaded (revision {revision}, policy {policy.policy.value})", flush=True)
    for change in changes:
        print(f"{prog}: SIGHUP, model {change.describe()}", flush=True)
    if server.metrics is not None:
        server.metrics.observe_reload(True)
    notifier.ready(f"config revision {revision}, policy {policy.policy.value}")
    return True


def main(argv: list[str] | None = None, prog: str = "fogline agent") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "status":
        return show_status(args, prog)
    try:
        setup_logging_from_env()  # until the fleet file is read
        device = _load_device(args.config, args.device)
        apply_logging(device, args)
        from fogline.serving.address import parse_listen

        if args.listen:
            parse_listen(args.listen, what="--listen")
        if args.cloud:
            from fogline.fleet.target import parse_target

            try:
                parse_target(args.cloud)
            except ValueError as exc:
                raise ConfigError(f"--cloud: {exc}") from None
    except (ConfigError, OSError, KeyError, ValueError) as exc:
        print(f"{prog}: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(device, args, prog))
    except FoglineError as exc:
        print(f"{prog}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"{prog}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) if "\n" not in text else text.strip()
