"""``fogline cloud serve``: run the cloud tier until SIGTERM or Ctrl-C.

Settings come from defaults, then the fleet YAML's ``cloud.serving`` section (``--config``), then the
flags; flags override the YAML. On start it prints one line naming the models, the bound address
(useful with ``--listen HOST:0``), the device and the metrics port. SIGTERM (or SIGINT) drains:
new calls are refused, in-flight requests are answered (at most ``grace_s`` seconds), exit 0.

SIGHUP (``systemctl reload``) re-reads the tokens file and the TLS certificates: new calls and new
connections use them, established streams go on; a bad new file is refused with one log line and what
was in force stays. It also applies the fleet file's ``cloud.serving.logging`` again, and re-reads the
model repository: a model whose newest version changed is loaded beside the old one, checked (hashes,
a warm-up inference, output shapes, no NaN) and swapped in; batches in flight finish on the old
version, and a version failing a check is refused with a log line while the old one serves
(``fogline.cloud.model_reload``).

Logging goes to stderr: ``--log-level``/``--log-format`` win over ``FOGLINE_LOG_LEVEL``/
``FOGLINE_LOG_FORMAT``, which win over the fleet file's ``cloud.serving.logging`` (``level``, ``format``
json | text | auto, ``levels``: logger name -> level, e.g. ``{fogline.cloud: DEBUG}``).

``fogline cloud token new DEVICE_ID --tokens-file F`` prints a fresh token once and appends its hashed
line to F (created with mode 0600); a device already listed is refused unless ``--replace``.

Exit codes: 0 after a clean shutdown, 1 when the models cannot be loaded or the address cannot be
bound, 2 for bad flags or a bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from fogline.cloud.settings import ServingSettings, settings_from_fleet
from fogline.errors import ConfigError, FoglineError
from fogline.logs import FORMATS, LEVELS, configure_logging

log = logging.getLogger("fogline.cloud")


def _metrics_port(text: str) -> int | None:
    if text.lower() in ("off", "none", "-1"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number or 'off', got {text!r}") from None


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="The cloud tier: full-precision models over OIP v2 gRPC."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    defaults = ServingSettings()  # the fleet model's defaults (an empty cloud.serving block)
    serve = sub.add_parser(
        "serve", help="serve the models until SIGTERM", description=__doc__.split("\n\n")[0]
    )
    serve.add_argument("--config", type=Path, help="fleet YAML; its cloud.serving section sets the defaults")
    serve.add_argument("--listen", help=f"HOST:PORT for gRPC (default {defaults.listen}; port 0 = any free port)")
    serve.add_argument(
        "--models",
        type=Path,
        dest="models_dir",
        help="model repository (default $FOGLINE_MODELS or ./models)",
    )
    serve.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="torch device (default: cuda when available)"
    )
    serve.add_argument(
        "--max-batch-size", type=int, help=f"most rows per model call (1 = no batching; default {defaults.max_batch_size})"
    )
    serve.add_argument(
        "--max-queue-delay-us",
        type=int,
        help="after a batch of several requests, wait this long for their callers to return "
        f"(default {defaults.max_queue_delay_us})",
    )
    serve.add_argument(
        "--max-queue-size", type=int, help=f"most queued requests per model before RESOURCE_EXHAUSTED (default {defaults.max_queue_size})"
    )
    serve.add_argument("--max-message-bytes", type=int, help=f"largest gRPC message accepted (default {defaults.max_message_bytes >> 20} MiB)")
    serve.add_argument(
        "--metrics-port",
        type=_metrics_port,
        default=argparse.SUPPRESS,
        help=f"Prometheus port (default {defaults.metrics_port}; 0 = any; 'off')",
    )
    serve.add_argument(
        "--grace-s", type=float, help=f"seconds to finish in-flight requests on SIGTERM (default {defaults.grace_s:g})"
    )
    serve.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: one per core)")
    serve.add_argument(
        "--compute-workers",
        type=int,
        help="model calls run side by side (default: one per core on a CPU, 1 on a GPU)",
    )
    security = serve.add_argument_group("security (docs/security.md)")
    security.add_argument(
        "--tls-cert", type=Path, dest="tls_cert_file", help="server certificate chain (PEM)"
    )
    security.add_argument("--tls-key", type=Path, dest="tls_key_file", help="server private key (PEM)")
    security.add_argument(
        "--tls-client-ca", type=Path, dest="tls_client_ca_file", help="CA of client certificates: mutual TLS"
    )
    security.add_argument(
        "--tokens-file",
        type=Path,
        help="per-device tokens (DEVICE_ID SHA256HEX lines); calls need a Bearer token",
    )
    security.add_argument(
        "--reflection",
        action="store_true",
        default=None,
        help="enable gRPC server reflection (off by default)",
    )
    security.add_argument(
        "--max-inflight-per-device", type=int, help=f"requests of one device in flight (default {defaults.max_inflight_per_device})"
    )
    security.add_argument(
        "--max-concurrent-streams", type=int, help=f"calls open at once on one connection (default {defaults.max_concurrent_streams})"
    )
    security.add_argument(
        "--max-connection-age-s",
        type=float,
        help=f"close connections after this long, 0 = never (default {defaults.max_connection_age_s:g})",
    )
    logs = serve.add_argument_group("logging (flags > FOGLINE_LOG_LEVEL/FORMAT > cloud.serving.logging)")
    logs.add_argument("--log-level", type=str.upper, choices=LEVELS, help=f"root log level (default {defaults.log_level})")
    logs.add_argument("--log-format", choices=FORMATS, help="json, text, or auto: text on a terminal (default)")
    token = sub.add_parser("token", help="manage per-device tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    new = token_sub.add_parser(
        "new", help="print a new token for a device once and append its hash to the tokens file"
    )
    new.add_argument("device_id", metavar="DEVICE_ID")
    new.add_argument("--tokens-file", type=Path, default=Path("tokens"), help="default ./tokens")
    new.add_argument("--replace", action="store_true", help="replace the device's existing token")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServingSettings:
    """Defaults < fleet YAML < flags."""
    base = settings_from_fleet(args.config) if args.config else ServingSettings()
    keys = (
        "listen",
        "models_dir",
        "device",
        "max_batch_size",
        "max_queue_delay_us",
        "max_queue_size",
        "max_message_bytes",
        "grace_s",
        "torch_threads",
        "compute_workers",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "tokens_file",
        "reflection",
        "max_inflight_per_device",
        "max_concurrent_streams",
        "max_connection_age_s",
    )
    overrides = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    if hasattr(args, "metrics_port"):
        overrides["metrics_port"] = args.metrics_port
    return dataclasses.replace(base, **overrides)


async def serve(settings: ServingSettings, *, prog: str = "fogline cloud",
                relog: Callable[[], None] | None = None) -> int:
    """Start the server, print where it listens, and block until SIGTERM/SIGINT has drained it.
    ``relog`` (SIGHUP) applies the fleet file's logging settings again."""
    from fogline.cloud.server import create_server
    from fogline.serving.lifecycle import run_until_signal

    server, port = create_server(settings)
    await server.start()

    def on_stop(name: str) -> None:
        print(f"{prog}: {name}, draining (grace {settings.grace_s:g} s)", flush=True)

    async def on_reload() -> None:
        if relog is not None:
            relog()
        if not server.reload():
            print(f"{prog}: SIGHUP, reloaded tokens and certificates", flush=True)
        for change in await server.reload_models():
            print(f"{prog}: SIGHUP, model {change.describe()}", flush=True)

    models = ", ".join(f"{m.name} v{m.version}" for m in server.dataplane.models.values())
    host = settings.host_port[0]
    metrics = server.metrics_port if server.metrics_port is not None else "off"
    security = ("mutual TLS" if settings.tls_client_ca_file else "TLS") if settings.tls else "plaintext"
    if server.tokens is not None:
        security += f", tokens for {len(server.tokens.tokens)} devices"

    def on_ready() -> None:
        print(
            f"{prog}: serving {models} on {host}:{port} (device {settings.resolved_device()}, "
            f"max batch {settings.max_batch_size}, metrics port {metrics}, {security})",
            flush=True,
        )
        log.info("serving %s on %s:%d", models, host, port,
                 extra={"device": settings.resolved_device(), "metrics_port": server.metrics_port})

    await run_until_signal(server, grace=settings.grace_s, on_ready=on_ready, on_stop=on_stop, on_reload=on_reload)
    print(f"{prog}: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None, prog: str = "fogline cloud") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "token":
        return new_token(args, prog)
    try:
        settings = settings_from_args(args)
        configure_logging(settings.logging_block(), level=args.log_level, fmt=args.log_format)
    except (ConfigError, ValueError) as exc:  # ValueError: a bad FOGLINE_LOG_LEVEL / _FORMAT
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2

    def relog() -> None:
        if not args.config:
            return
        try:
            block = settings_from_fleet(args.config).logging_block()
            configure_logging(block, level=args.log_level, fmt=args.log_format)
        except (ConfigError, ValueError, OSError) as exc:
            log.error("SIGHUP: logging settings of %s refused, the ones in use stay: %s", args.config, exc)
            return
        log.info("SIGHUP: logging settings applied again from %s", args.config)

    try:
        return asyncio.run(serve(settings, prog=prog, relog=relog))
    except FoglineError as exc:  # bad model repository, unbindable address, no GPU
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def new_token(args: argparse.Namespace, prog: str) -> int:
    """``token new``: the token on stdout (only there, only now), where it went on stderr."""
    from fogline.security import add_token

    try:
        token = add_token(args.tokens_file, args.device_id, replace=args.replace)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: cannot write {args.tokens_file} ({exc.strerror or exc})", file=sys.stderr)
        return 1
    print(token, flush=True)
    print(
        f"{prog}: token for {args.device_id} added to {args.tokens_file}; it is shown only now. "
        "Send SIGHUP to a running cloud (systemctl reload) to use it.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
