"""``fogline cloud serve``: run the cloud tier until SIGTERM or Ctrl-C.

Settings come from defaults, then the fleet YAML's ``cloud.serving`` section (``--config``), then the
flags; flags override the YAML. On start it prints one line naming the models, the bound address
(useful with ``--listen HOST:0``), the device and the metrics port. SIGTERM (or SIGINT) drains:
new calls are refused, in-flight requests are answered (at most ``grace_s`` seconds), exit 0.

Exit codes: 0 after a clean shutdown, 1 when the models cannot be loaded or the address cannot be
bound, 2 for bad flags or a bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from pathlib import Path

from fogline.errors import ConfigError, FoglineError

from cloud.settings import ServingSettings, settings_from_fleet


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
    serve = sub.add_parser(
        "serve", help="serve the models until SIGTERM", description=__doc__.split("\n\n")[0]
    )
    serve.add_argument("--config", type=Path, help="fleet YAML; its cloud.serving section sets the defaults")
    serve.add_argument("--listen", help="HOST:PORT for gRPC (default 0.0.0.0:8001; port 0 = any free port)")
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
        "--max-batch-size", type=int, help="most rows per model call (1 = no batching; default 32)"
    )
    serve.add_argument(
        "--max-queue-delay-us",
        type=int,
        help="after a batch of several requests, wait this long for their callers to return (default 2000)",
    )
    serve.add_argument(
        "--max-queue-size", type=int, help="most queued requests per model before RESOURCE_EXHAUSTED"
    )
    serve.add_argument("--max-message-bytes", type=int, help="largest gRPC message accepted (default 64 MiB)")
    serve.add_argument(
        "--metrics-port",
        type=_metrics_port,
        default=argparse.SUPPRESS,
        help="Prometheus port (default 8002; 0 = any; 'off')",
    )
    serve.add_argument(
        "--grace-s", type=float, help="seconds to finish in-flight requests on SIGTERM (default 10)"
    )
    serve.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: one per core)")
    serve.add_argument(
        "--compute-workers",
        type=int,
        help="model calls run side by side (default: one per core on a CPU, 1 on a GPU)",
    )
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
    )
    overrides = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    if hasattr(args, "metrics_port"):
        overrides["metrics_port"] = args.metrics_port
    return dataclasses.replace(base, **overrides)


async def serve(settings: ServingSettings, *, prog: str = "fogline cloud") -> int:
    """Start the server, print where it listens, and block until SIGTERM/SIGINT has drained it."""
    from cloud.server import create_server

    server, port = create_server(settings)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def on_signal(signum: int) -> None:
        if not stopping:
            print(
                f"{prog}: {signal.Signals(signum).name}, draining (grace {settings.grace_s:g} s)", flush=True
            )
            stopping.append(loop.create_task(server.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    models = ", ".join(f"{m.name} v{m.version}" for m in server.dataplane.models.values())
    host = settings.host_port[0]
    metrics = server.metrics_port if server.metrics_port is not None else "off"
    print(
        f"{prog}: serving {models} on {host}:{port} (device {settings.resolved_device()}, "
        f"max batch {settings.max_batch_size}, metrics port {metrics})",
        flush=True,
    )
    await server.wait_for_termination()
    print(f"{prog}: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None, prog: str = "fogline cloud") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings, prog=prog))
    except FoglineError as exc:  # bad model repository, unbindable address, no GPU
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
