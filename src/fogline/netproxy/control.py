"""The network proxy's command line and its control port (change conditions from another process).

Run a proxy::

    python -m fogline.netproxy.proxy --listen 127.0.0.1:9001 --target 127.0.0.1:8001 --delay-ms 50 \\
        --control 127.0.0.1:9002

Change it while it runs, from any shell (one command per line, one JSON reply per line)::

    python -m fogline.netproxy.proxy ctl 127.0.0.1:9002 update delay_ms=300 jitter_ms=20 jitter_dist=pareto
    python -m fogline.netproxy.proxy ctl 127.0.0.1:9002 update blackhole=on
    python -m fogline.netproxy.proxy ctl 127.0.0.1:9002 set            # back to a clean link
    python -m fogline.netproxy.proxy ctl 127.0.0.1:9002 reset          # RST every open connection
    python -m fogline.netproxy.proxy ctl 127.0.0.1:9002 status
    echo "update bandwidth_kbps=512" | nc 127.0.0.1 9002       # the protocol is plain text

``set`` replaces all conditions (fields not named return to a clean link); ``update`` changes only
the named ones. Fields: delay_ms, jitter_ms, jitter_dist (uniform|normal|pareto), bandwidth_kbps
(a number or "none"), blackhole (on|off), jitter_slot_ms (timeline mode only). Errors come back as
``{"error": "..."}``. The replies to ``set`` and ``update`` carry ``applied_at``: the proxy's
``time.monotonic()`` when the change took effect (the clock is system-wide, so another process on
the same host can place the switch on its own timeline).

``--timeline --seed N`` runs the proxy in timeline mode (``fogline.netproxy.timeline``): the delay is a
deterministic function of time (jitter drawn per ``--jitter-slot-ms`` slot, delay spikes and steps
drain like a queue), identical for every run that applies the same conditions at the same moments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
from typing import Any

from fogline.netproxy.proxy import JITTER_DISTS, NetProxy

_FIELDS = ("delay_ms", "jitter_ms", "jitter_dist", "bandwidth_kbps", "blackhole", "jitter_slot_ms")


def parse_assignments(words: list[str]) -> dict[str, Any]:
    """``["delay_ms=50", "blackhole=on"]`` -> ``{"delay_ms": 50.0, "blackhole": True}``; ValueError if bad."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in _FIELDS:
            raise ValueError(f"expected FIELD=VALUE with FIELD one of {', '.join(_FIELDS)}, got {word!r}")
        raw = raw.strip()
        if key == "blackhole":
            if raw.lower() not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"blackhole must be on or off, got {raw!r}")
            out[key] = raw.lower() in ("on", "true", "1", "yes")
        elif key == "jitter_dist":
            out[key] = raw
        elif key == "bandwidth_kbps" and raw.lower() in ("none", "off", "unlimited", ""):
            out[key] = None
        else:
            try:
                out[key] = float(raw)
            except ValueError:
                raise ValueError(f"{key} must be a number, got {raw!r}") from None
    return out


def handle_command(proxy: NetProxy, line: str) -> dict[str, Any]:
    """Run one control command against ``proxy`` and return the JSON-ready reply."""
    words = line.split()
    if not words:
        return {"error": "empty command; try: help"}
    cmd, args = words[0].lower(), words[1:]
    try:
        if cmd == "status":
            return proxy.describe()
        if cmd == "reset":
            return {"reset": proxy.reset_connections()}
        if cmd == "set":
            return {"conditions": proxy.set_conditions(**parse_assignments(args)).as_dict(),
                    "applied_at": proxy.applied_at}
        if cmd == "update":
            return {"conditions": proxy.update_conditions(**parse_assignments(args)).as_dict(),
                    "applied_at": proxy.applied_at}
        if cmd == "help":
            return {"commands": ["status", "reset", "set FIELD=VALUE...", "update FIELD=VALUE..."],
                    "fields": list(_FIELDS), "jitter_dist": list(JITTER_DISTS)}
    except (TypeError, ValueError) as exc:
        return {"error": str(exc)}
    return {"error": f"unknown command {cmd!r}; expected status, reset, set, update or help"}


async def serve_control(proxy: NetProxy, host: str, port: int) -> asyncio.AbstractServer:
    """Start the line-based control server for ``proxy`` (replies are single JSON lines)."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = handle_command(proxy, line.decode("utf-8", "replace"))
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(client, host, port)


def send_command(address: str, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to a running proxy's control port and return its decoded reply."""
    host, port = _split_address(address)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command.strip().encode() + b"\n")
        with sock.makefile("rb") as f:
            line = f.readline()
    if not line:
        raise ConnectionError(f"control port {address} closed without a reply")
    return json.loads(line)


def _split_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _run(args: argparse.Namespace) -> int:
    lhost, lport = args.listen
    thost, tport = args.target
    proxy = NetProxy(lhost, lport, target_host=thost, target_port=tport, seed=args.seed,
                     timeline=args.timeline)
    proxy.set_conditions(delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, jitter_dist=args.jitter_dist,
                         bandwidth_kbps=args.bandwidth_kbps, blackhole=args.blackhole,
                         jitter_slot_ms=args.jitter_slot_ms)
    await proxy.start()
    control = None
    line = f"netproxy: listening on {proxy.address} -> {thost}:{tport}"
    if args.control is not None:
        control = await serve_control(proxy, *args.control)
        line += f", control on {args.control[0]}:{control.sockets[0].getsockname()[1]}"
    print(line, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if control is not None:
        control.close()
    await proxy.stop()
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m fogline.netproxy.proxy") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ctl":
        if len(argv) < 3:
            print(f"usage: {prog} ctl HOST:PORT status|reset|set|update [FIELD=VALUE...]", file=sys.stderr)
            return 2
        try:
            reply = send_command(argv[1], " ".join(argv[2:]))
        except (OSError, argparse.ArgumentTypeError, ValueError) as exc:
            print(f"netproxy ctl: cannot reach control port {argv[1]}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(reply, indent=2))
        return 1 if "error" in reply else 0

    parser = argparse.ArgumentParser(prog=prog, description="TCP proxy that adds delay, jitter, a "
                                     "bandwidth cap, blackholes and resets (use 'ctl' to change a running one)")
    parser.add_argument("--listen", type=_split_address, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--target", type=_split_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay in each direction")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--jitter-dist", choices=JITTER_DISTS, default="uniform")
    parser.add_argument("--bandwidth-kbps", type=float, default=None, help="cap per direction")
    parser.add_argument("--blackhole", action="store_true", help="start with the link down")
    parser.add_argument("--control", type=_split_address, default=None, metavar="HOST:PORT",
                        help="line-based control port (commands: status, reset, set, update)")
    parser.add_argument("--seed", type=int, default=None, help="seed the jitter for repeatable runs")
    parser.add_argument("--timeline", action="store_true",
                        help="delay as a deterministic function of time (jitter per slot, queue-like drain)")
    parser.add_argument("--jitter-slot-ms", type=float, default=0.0,
                        help="timeline mode: one jitter draw per slot of this length")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except ValueError as exc:
        print(f"netproxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"netproxy: cannot listen: {exc}", file=sys.stderr)
        return 1
