"""``fogline agent run``: the edge daemon's command line.

    fogline agent run --config FLEET.yaml --device ID [--listen HOST:PORT] [--cloud HOST:PORT]
                      [--models DIR] [--grace-s S]

Reads the device's effective settings from the fleet file (flags override them), loads its INT8 models,
opens the cloud stream and serves until SIGTERM or SIGINT, which drains: no new requests are taken,
everything in flight is answered, then it exits 0. SIGHUP re-reads the fleet file and applies its
routing and load settings to the next requests without touching open streams; a file that does not
load or validate is refused with a log line naming the problem, and the settings in use stay. Bad configuration or flags exit 2, anything that
stops it from serving (models missing, port taken) exits 1, each with one line saying why.
Under systemd (``Type=notify``) it reports READY once serving and STOPPING while draining, and pings
the watchdog (``WatchdogSec=``) from the event loop. Logging follows ``FOGLINE_LOG_LEVEL`` /
``FOGLINE_LOG_FORMAT``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from fogline.errors import ConfigError, FoglineError

log = logging.getLogger("agent")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="The fogline edge agent.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve the device's models and route to the cloud until SIGTERM")
    run.add_argument("--config", required=True, help="fleet YAML file")
    run.add_argument("--device", required=True, help="device id in the fleet file")
    run.add_argument("--listen", help="HOST:PORT to serve on (overrides the config; port 0 = any free port)")
    run.add_argument("--cloud", help="HOST:PORT of the cloud's v2 endpoint (overrides the config; '' = none)")
    run.add_argument("--models", help="model repository directory (overrides the config)")
    run.add_argument("--grace-s", type=float, default=10.0, help="seconds to finish in-flight work on SIGTERM")
    return parser


def _load_device(path: str, device_id: str) -> Any:
    from agent.config import load_fleet

    fleet = load_fleet(path)
    return fleet.device(device_id)


async def serve(device: Any, args: argparse.Namespace, prog: str) -> int:
    from agent.sdnotify import Notifier, Watchdog
    from agent.server import create_server

    server, port = create_server(device, listen=args.listen, cloud=args.cloud, models_dir=args.models)
    await server.start()
    notifier = Notifier.from_environment()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if stopping:
            return
        print(f"{prog}: {signal.Signals(signum).name}, draining (grace {args.grace_s:g} s)", flush=True)
        notifier.stopping()
        stopping.append(loop.create_task(server.stop(args.grace_s)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    reloads: list[asyncio.Task[None]] = []

    def on_hangup() -> None:
        if stopping or any(not task.done() for task in reloads):
            log.warning("config reload: SIGHUP ignored (%s)", "stopping" if stopping else "a reload is running")
            return
        reloads[:] = [loop.create_task(reload_config(server, args, notifier, prog), name="config-reload")]

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    models = ", ".join(f"{r.name} v{r.version}" for r in server.dataplane.edge.runners.values())
    cloud = server.link.settings.endpoint if server.link is not None else "none"
    host = (args.listen or str(getattr(device, "listen", ""))).rpartition(":")[0] or "127.0.0.1"
    revision = server.dataplane.config_revision or "-"
    line = (f"serving {models} on {host}:{port} (cloud {cloud}, policy {server.dataplane.policy.policy.value}, "
            f"config revision {revision})")
    print(f"{prog}: {line}", flush=True)
    notifier.ready(line)
    # Under WatchdogSec=, ping from the event loop while the server takes work: a wedged loop or a
    # server that stopped serving gets restarted by systemd.
    dog = Watchdog(notifier, healthy=lambda: server.servicer.ready and not server.servicer.drain_event.is_set())
    dog.start()
    await server.wait_for_termination()
    await dog.stop()
    for task in reloads:
        task.cancel()
    print(f"{prog}: stopped", flush=True)
    return 0


async def reload_config(server: Any, args: argparse.Namespace, notifier: Any, prog: str) -> bool:
    """SIGHUP: load and validate the fleet file again, then apply the device's new routing settings.
    On any problem the old settings stay and one log line (and one output line) says why."""
    old_revision = server.dataplane.config_revision or "-"
    notifier.reloading(f"reloading {args.config}")
    try:
        device = await asyncio.to_thread(_load_device, args.config, args.device)
        restart_only = server.apply_config(device)
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
    if server.metrics is not None:
        server.metrics.observe_reload(True)
    notifier.ready(f"config revision {revision}, policy {policy.policy.value}")
    return True


def main(argv: list[str] | None = None, prog: str = "fogline agent") -> int:
    args = build_parser(prog).parse_args(argv)
    from agent.logs import setup_logging_from_env

    setup_logging_from_env()
    try:
        device = _load_device(args.config, args.device)
        from agent.server import split_host_port

        for flag, value in (("--listen", args.listen), ("--cloud", args.cloud)):
            if value:
                split_host_port(value, what=flag)
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
