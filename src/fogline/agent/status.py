"""The agent's read-only status: one gRPC call beside the v2 service, and ``fogline agent status``.

``/fogline.agent.v1.Status/Get`` takes an empty message and answers a JSON document (UTF-8 bytes; no
protobuf schema, so no generated stubs) on the agent's own listener: TCP or unix socket, TLS and
tokens as the listener has them, so it is as reachable, and as protected, as inference itself. It
reports what an operator asks first:

- ``device``, ``config``: the device id, the fleet file revision in use and how often it was applied;
- ``models``: per model, the version serving, its queue, and versions still draining after a swap;
- ``link``: the cloud endpoint, the link's state and RTT (ms), and the models whose edge version the
  cloud lacks (``cloud_version_missing``);
- ``tiers``: requests answered per tier since start, their shares, fallbacks and the route reasons
  (the data plane's counters, the ones ``fogline_agent_requests_total`` is fed from);
- ``shadow``: the share of edge answers shadowed to the cloud (``routing.shadow``), shadows out now,
  and per model and version the live agreement (running and total, rows, the manifest's gate and
  offline figure, whether it misses the gate) and the shadows' outcomes.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

SERVICE = "fogline.agent.v1.Status"
METHOD = f"/{SERVICE}/Get"


def snapshot(agent: Any) -> dict[str, Any]:
    """The status document of a running ``AgentServer``."""
    plane = agent.dataplane
    config = agent._device_config
    models = {name: {"version": runner.version, "queue_depth": runner.queue_depth}
              for name, runner in sorted(plane.edge.runners.items())}
    for runner in agent.reloader.retiring:
        models.setdefault(runner.name, {}).setdefault("draining", []).append(runner.version)
    link: dict[str, Any] = {"endpoint": None, "state": "not_configured"}
    if agent.link is not None:
        view = agent.link.view("")
        link = {"endpoint": agent.link.settings.endpoint, "state": view.state,
                "rtt_ms": None if view.rtt_ms is None else round(view.rtt_ms, 3)}
    link["version_missing"] = {name: version for name, (version, _) in sorted(plane.cloud_missing.items())}
    served = dict(plane.stats.served_by)
    answered = sum(served.values())
    return {
        "device": getattr(config, "device_id", None),
        "config": {"revision": plane.config_revision, "generation": plane.config_generation,
                   "source": getattr(config, "source", None)},
        "models": models,
        "link": link,
        "tiers": {"answered": answered, "errors": plane.stats.errors, "fallbacks": plane.stats.fallbacks,
                  "served_by": served,
                  "shares": {tier: round(count / answered, 4) for tier, count in served.items()} if answered else {},
                  "reasons": dict(plane.stats.reasons.most_common())},
        "shadow": plane.shadow.snapshot(plane.policy),
        "fetch": None if agent.fetcher is None else {
            "fetched": agent.fetcher.fetched, "failures": agent.fetcher.failures, "retrying": agent.fetcher.retrying},
    }


def handler(agent: Any) -> grpc.GenericRpcHandler:
    """The ``Status/Get`` method for the agent's gRPC server."""

    async def get(_request: bytes, _context: Any) -> dict[str, Any]:
        return snapshot(agent)

    method = grpc.unary_unary_rpc_method_handler(
        get, request_deserializer=None, response_serializer=lambda doc: json.dumps(doc).encode())
    return grpc.method_handlers_generic_handler(SERVICE, {"Get": method})


def fetch(target: str, *, token: str | None = None, credentials: grpc.ChannelCredentials | None = None,
          server_name: str | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
    """Ask the agent at ``target`` (``HOST:PORT`` or ``unix:///path``) for its status: over TLS with
    ``credentials`` (the listener's ``cloud.serving.tls``), else plaintext."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name and credentials else []
    channel = (grpc.secure_channel(target, credentials, options=options) if credentials is not None
               else grpc.insecure_channel(target))
    with channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=json.loads)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        return call(b"", timeout=timeout_s, metadata=metadata)


def render(doc: dict[str, Any]) -> str:
    """The status as a few lines for a person."""
    config = doc["config"]
    lines = [f"device    {doc.get('device') or '-'}",
             f"config    revision {config.get('revision') or '-'} (applied {config.get('generation')}x)"]
    models = []
    for name, model in doc["models"].items():
        text = f"{name} v{model.get('version', '-')}"
        if model.get("draining"):
            text += f" (draining v{', v'.join(model['draining'])})"
        models.append(text)
    lines.append(f"models    {', '.join(models) or 'none'}")
    link = doc["link"]
    rtt = f", rtt {link['rtt_ms']:.1f} ms" if link.get("rtt_ms") is not None else ""
    missing = "".join(f", cloud lacks {name} v{version}" for name, version in link["version_missing"].items())
    lines.append(f"link      {link.get('endpoint') or 'none'} {link['state']}{rtt}{missing}")
    tiers = doc["tiers"]
    shares = ", ".join(f"{tier} {share:.0%} ({tiers['served_by'][tier]})" for tier, share in tiers["shares"].items())
    lines.append(f"tiers     {shares or 'no requests yet'}; fallbacks {tiers['fallbacks']}, errors {tiers['errors']}")
    if "shadow" in doc:
        lines.append(f"shadow    {_shadow_text(doc['shadow'])}")
    return "\n".join(lines)


def _shadow_text(shadow: dict[str, Any]) -> str:
    """``10% of edge answers; digits v1 top1_agreement 1.0000 (gate 0.97, offline 1, 412 rows)``."""
    if not shadow.get("share"):
        return "off"
    parts = []
    for name, versions in shadow.get("models", {}).items():
        for version, entry in versions.items():
            if entry.get("value") is None:
                parts.append(f"{name} v{version} nothing compared yet")
                continue
            gate = "-" if entry.get("gate") is None else f"{entry['gate']:g}"
            offline = "-" if entry.get("offline") is None else f"{entry['offline']:g}"
            below = ", BELOW GATE" if entry.get("below_gate") else ""
            parts.append(f"{name} v{version} {entry['metric']} {entry['value']:.4f} (gate {gate}, offline {offline}, "
                         f"{entry['rows']} rows{below})")
    return f"{shadow['share'] * 100:g}% of edge answers; " + ("; ".join(parts) or "none picked yet")
