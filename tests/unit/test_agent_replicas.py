"""The cloud as replicas, without sockets: target parsing, the least-outstanding choice, the aggregate view,
and ``ReplicaSet`` over scripted links and a fake resolver (re-resolution, resends, retargeting)."""

from __future__ import annotations

import asyncio
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from fogline import codec
from fogline.agent import replica_set as replica_set_module
from fogline.agent.link_port import CloudAnswer, CloudLinkPort, LinkLost
from fogline.agent.link_settings import LinkSettings
from fogline.agent.replica_choice import NO_REPLICAS, ReplicaLoad, aggregate, choose
from fogline.agent.replica_set import ReplicaSet
from fogline.agent.resolver import Replica, Resolver
from fogline.agent.router_types import CLOUD_UNAUTHENTICATED, LinkView
from fogline.errors import Unavailable
from fogline.fleet import FleetConfigError, parse_fleet
from fogline.fleet.target import Address, parse_target

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("text, kind, host, port, addresses", [
    ("127.0.0.1:8001", "single", "127.0.0.1", 8001, ()),
    ("cloud.example:443", "single", "cloud.example", 443, ()),
    ("[::1]:8001", "single", "::1", 8001, ()),
    ("dns:///fogline-cloud.ml.svc.cluster.local:8001", "dns", "fogline-cloud.ml.svc.cluster.local", 8001, ()),
    ("dns:cloud:8001", "dns", "cloud", 8001, ()),
    ("ipv4:10.0.0.1:8001,10.0.0.2:8002", "static", "", 0,
     (Address("10.0.0.1", 8001), Address("10.0.0.2", 8002))),
    ("ipv6:[fd00::1]:8001,[::1]:9", "static", "", 0, (Address("fd00::1", 8001), Address("::1", 9))),
])
def test_target_forms(text, kind, host, port, addresses):
    target = parse_target(text)
    assert (target.kind, target.host, target.port, target.addresses) == (kind, host, port, addresses)
    assert target.spread == (kind != "single")


def test_addresses_print_as_grpc_dials_them():
    assert [str(a) for a in parse_target("ipv6:[fd00::1]:8001").addresses] == ["[fd00::1]:8001"]
    assert [str(a) for a in parse_target("ipv4:10.0.0.1:8001").addresses] == ["10.0.0.1:8001"]


@pytest.mark.parametrize("text, message", [
    ("dns:///cloud", "expected dns:///NAME:PORT"),
    ("dns://8.8.8.8/cloud:8001", "a DNS server of its own"),
    ("dns:///cloud:0", "the port must be 1-65535"),
    ("dns:///bad name:8001", "expected dns:///NAME:PORT"),
    ("ipv4:10.0.0.1", "needs a port"),
    ("ipv4:10.0.0.1:8001,", "comma-separated list"),
    ("ipv4:10.0.0.300:8001", "is not an IPv4 address"),
    ("ipv4:10.0.0.1:8001,10.0.0.1:8001", "listed twice"),
    ("ipv6:fd00::1:8001", "in brackets"),
    ("ipv6:[fd00::zz]:8001", "is not an IPv6 address"),
    ("nowhere", "expected HOST:PORT"),
])
def test_bad_targets_say_what_is_expected(text, message):
    with pytest.raises(ValueError, match=message):
        parse_target(text)


def test_the_fleet_model_takes_every_form_and_names_the_key_of_a_bad_one():
    for endpoint in ("dns:///cloud.svc:8001", "ipv4:10.0.0.1:8001,10.0.0.2:8001", "ipv6:[::1]:8001"):
        fleet = parse_fleet(f"version: 1\ncloud: {{endpoint: '{endpoint}'}}\ndevices: {{d1: {{}}}}\n", "f.yaml", env={})
        assert fleet.device("d1").cloud.endpoint == endpoint
    text = textwrap.dedent("""\
        version: 1
        devices:
          d1: {cloud: {endpoint: "ipv4:10.0.0.1"}}
        """)
    with pytest.raises(FleetConfigError) as caught:
        parse_fleet(text, "f.yaml", env={})
    assert str(caught.value).startswith("f.yaml:3:")
    assert "devices.d1.cloud.endpoint: 'ipv4:10.0.0.1': '10.0.0.1' needs a port" in str(caught.value)


def test_resolver_forms_and_a_fake_lookup():
    async def lookup(name, port):
        assert (name, port) == ("cloud.svc", 8001)
        return [Address("10.0.0.2", 8001), Address("fd00::1", 8001)]

    async def scenario():
        return (await Resolver(parse_target("cloud.svc:8001")).resolve(),
                await Resolver(parse_target("ipv4:10.0.0.1:8001,10.0.0.2:8001")).resolve(),
                await Resolver(parse_target("dns:///cloud.svc:8001"), lookup).resolve())

    single, static, dns = asyncio.run(scenario())
    assert single == [Replica("cloud.svc:8001")]
    assert static == [Replica("10.0.0.1:8001"), Replica("10.0.0.2:8001")]
    assert dns == [Replica("10.0.0.2:8001", "cloud.svc"), Replica("[fd00::1]:8001", "cloud.svc")]


def test_a_resolved_replica_keeps_the_name_for_tls_and_authority():
    options = dict(LinkSettings(endpoint="10.0.0.2:8001", tls=True, server_name="cloud.svc").channel_options())
    assert options["grpc.ssl_target_name_override"] == "cloud.svc"
    assert options["grpc.default_authority"] == "cloud.svc"
    assert "grpc.ssl_target_name_override" not in dict(LinkSettings(endpoint="a:1").channel_options())


# ---------------------------------------------------------------------------------------------- choice
def test_least_outstanding_wins():
    loads = [ReplicaLoad(True, 3), ReplicaLoad(True, 1), ReplicaLoad(True, 2)]
    assert choose(loads, 0) == 1


def test_unusable_replicas_are_never_chosen():
    assert choose([ReplicaLoad(False, 0), ReplicaLoad(True, 9)], 0) == 1
    assert choose([ReplicaLoad(False, 0), ReplicaLoad(False, 0)], 0) is None
    assert choose([], 3) is None


def test_ties_rotate_from_the_start():
    loads = [ReplicaLoad(True, 0)] * 3
    assert [choose(loads, start) for start in range(5)] == [0, 1, 2, 0, 1]
    # A busier replica is skipped even when the rotation points at it.
    assert choose([ReplicaLoad(True, 0), ReplicaLoad(True, 1), ReplicaLoad(True, 0)], 1) == 2


def test_aggregate_is_the_chosen_replicas_view():
    fast, slow = LinkView(True, rtt_ms=5.0), LinkView(True, rtt_ms=80.0)
    assert aggregate([slow, fast], 1) is fast


def test_aggregate_is_down_only_when_no_replica_is_healthy():
    assert aggregate([], None) == NO_REPLICAS
    down, opening = LinkView(False, "down"), LinkView(False, "breaker_open")
    assert aggregate([down, opening], None).state == "breaker_open"
    assert aggregate([down, LinkView(False, "model_failing")], None).state == "model_failing"
    refused = LinkView(False, CLOUD_UNAUTHENTICATED)
    assert aggregate([refused, down], None).state == "down"
    assert aggregate([refused, refused], None).state == CLOUD_UNAUTHENTICATED
    assert not aggregate([refused, down], None).usable


# ---------------------------------------------------------------------------------------------- the set
class ScriptedLink:
    """A replica's link: usable or not, answers when the test says, fails everything on ``drop``."""

    instances: dict[str, ScriptedLink] = {}

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self.name = settings.endpoint
        self.usable = True
        self.connected = True
        self.rtt_ms = 10.0
        self.pending: list[tuple[codec.InferRequest, asyncio.Future]] = []
        self.started = self.closed = False
        self.rtt = SimpleNamespace(smoothed_ms=self.rtt_ms)
        ScriptedLink.instances[self.name] = self

    @property
    def pending_count(self) -> int:
        return sum(not f.done() for _, f in self.pending)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True
        self.drop("closed")

    def reauthenticate(self) -> None:
        pass

    def view(self, model: str) -> LinkView:
        return LinkView(self.usable, "ready" if self.usable else "down", rtt_ms=self.rtt_ms)

    def submit(self, request: codec.InferRequest) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        return future

    def answer_all(self) -> None:
        for request, future in self.pending:
            if not future.done():
                future.set_result(CloudAnswer(codec.InferResponse(request.model_name, {}, id=request.id), 1.0))

    def drop(self, reason: str, error: type[Unavailable] = LinkLost) -> None:
        self.usable = self.connected = False
        for _, future in self.pending:
            if not future.done():
                future.set_exception(error(reason))


class FakeDns:
    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.lookups = 0

    async def __call__(self, name: str, port: int) -> list[Address]:
        self.lookups += 1
        return [Address(a, port) for a in self.addresses]


def request(i: int, deadline_ms: int | None = None) -> codec.InferRequest:
    params = {} if deadline_ms is None else {"deadline_ms": deadline_ms}
    return codec.InferRequest("digits", {"image": np.zeros((1, 8, 8), np.float32)}, id=str(i), parameters=params)


def replica_set(target: str, dns: FakeDns | None = None, **kw) -> ReplicaSet:
    ScriptedLink.instances = {}
    parsed = parse_target(target)
    resolver = Resolver(parsed, dns) if dns is not None else None
    return ReplicaSet(LinkSettings(endpoint="x:1"), parsed, resolver=resolver, link_factory=ScriptedLink, **kw)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_replica_set_is_a_cloud_link_port():
    assert isinstance(replica_set("ipv4:10.0.0.1:1"), CloudLinkPort)


def test_requests_spread_by_least_outstanding_and_rotate_when_idle():
    async def scenario():
        links = replica_set("ipv4:10.0.0.1:1,10.0.0.2:1,10.0.0.3:1")
        assert await links.refresh()
        a, b, c = (ScriptedLink.instances[f"10.0.0.{i}:1"] for i in (1, 2, 3))
        futures = [links.submit(request(i)) for i in range(6)]  # none answered: 2 each
        spread = [a.pending_count, b.pending_count, c.pending_count]
        b.answer_all()
        await settle()
        futures += [links.submit(request(i)) for i in range(6, 8)]  # b is idle now: both go there
        after = b.pending_count
        for link in (a, b, c):
            link.answer_all()
        await settle()
        return spread, after, futures, links

    spread, after, futures, links = asyncio.run(scenario())
    assert spread == [2, 2, 2]
    assert after == 2
    assert all(f.done() and f.exception() is None for f in futures)
    assert sum(links.stats.answers.values()) == 8


def test_view_is_the_replica_it_would_pick_and_down_only_when_none_is_usable():
    async def scenario():
        links = replica_set("ipv4:10.0.0.1:1,10.0.0.2:1")
        await links.refresh()
        a, b = ScriptedLink.instances["10.0.0.1:1"], ScriptedLink.instances["10.0.0.2:1"]
        a.rtt_ms, b.rtt_ms = 5.0, 50.0
        a.usable = False
        one = links.view("digits")
        b.usable = False
        none = links.view("digits")
        return one, none

    one, none = asyncio.run(scenario())
    assert one.usable and one.rtt_ms == 50.0
    assert not none.usable and none.state == "down"


def test_pending_requests_of_a_broken_replica_go_to_another():
    async def scenario():
        links = replica_set("ipv4:10.0.0.1:1,10.0.0.2:1", default_deadline_ms=1000.0)
        await links.refresh()
        a, b = ScriptedLink.instances["10.0.0.1:1"], ScriptedLink.instances["10.0.0.2:1"]
        futures = [links.submit(request(i)) for i in range(4)]
        a.drop("stream lost")
        await settle()
        moved = b.pending_count
        b.answer_all()
        await settle()
        return futures, moved, links.stats.resent

    futures, moved, resent = asyncio.run(scenario())
    assert moved == 4 and resent == 2
    assert all(f.exception() is None for f in futures)


def test_no_resend_past_the_deadline_or_for_the_clouds_own_error():
    async def scenario():
        now = [100.0]
        links = replica_set("ipv4:10.0.0.1:1,10.0.0.2:1", clock=lambda: now[0])
        await links.refresh()
        a, b = ScriptedLink.instances["10.0.0.1:1"], ScriptedLink.instances["10.0.0.2:1"]
        late = links.submit(request(0, deadline_ms=50))  # goes to a
        errored = links.submit(request(1))  # goes to b
        now[0] += 0.045  # 45 ms spent; the round trip to the other replica takes 10
        a.drop("stream lost")
        b.pending[0][1].set_exception(Unavailable("cloud error: [INTERNAL] boom"))
        await settle()
        return late, errored, links.stats.resent

    late, errored, resent = asyncio.run(scenario())
    assert isinstance(late.exception(), LinkLost)
    assert isinstance(errored.exception(), Unavailable) and not isinstance(errored.exception(), LinkLost)
    assert resent == 0


def test_no_usable_replica_fails_at_once():
    async def scenario():
        links = replica_set("ipv4:10.0.0.1:1")
        await links.refresh()
        ScriptedLink.instances["10.0.0.1:1"].usable = False
        return links.submit(request(0))

    future = asyncio.run(scenario())
    assert isinstance(future.exception(), LinkLost)


def test_a_failed_replica_makes_the_set_resolve_again_and_take_new_replicas():
    dns = FakeDns("10.0.0.1", "10.0.0.2")

    async def scenario():
        links = replica_set("dns:///cloud.svc:8001", dns, reresolve_s=3600.0)
        await links.start()
        await asyncio.sleep(0.05)
        first = sorted(links.links)
        dns.addresses = ["10.0.0.2", "10.0.0.3"]  # a replica replaced behind the name
        gone = ScriptedLink.instances["10.0.0.1:8001"]
        gone.drop("killed")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if "10.0.0.3:8001" in links.links:
                break
        second = sorted(links.links)
        servers = {name: link.settings.server_name for name, link in links.links.items()}
        await links.close()
        return first, second, gone.closed, dns.lookups, servers

    first, second, closed, lookups, servers = asyncio.run(scenario())
    assert first == ["10.0.0.1:8001", "10.0.0.2:8001"]
    assert second == ["10.0.0.2:8001", "10.0.0.3:8001"]
    assert closed and lookups >= 2
    assert set(servers.values()) == {"cloud.svc"}


def test_a_lookup_that_fails_keeps_the_replicas_known():
    dns = FakeDns("10.0.0.1")

    async def scenario():
        links = replica_set("dns:///cloud.svc:8001", dns)
        assert await links.refresh()

        async def broken(name, port):
            raise OSError("Name or service not known")

        links.resolver = Resolver(links.target, broken)
        ok = await links.refresh()
        dns.addresses = []
        links.resolver = Resolver(links.target, dns)
        empty = await links.refresh()
        return ok, empty, list(links.links), links.stats.resolve_failures

    ok, empty, names, failures = asyncio.run(scenario())
    assert not ok and not empty and failures == 1
    assert names == ["10.0.0.1:8001"]


def test_retarget_adds_and_removes_replicas_and_moves_pending_work(monkeypatch):
    # A new target is looked up at once, not after the gap that spaces out lookups after failures.
    monkeypatch.setattr(replica_set_module, "MIN_RESOLVE_GAP_S", 3600.0)

    async def scenario():
        links = replica_set("ipv4:10.0.0.1:1,10.0.0.2:1", default_deadline_ms=60_000.0)
        await links.start()
        await asyncio.sleep(0.05)
        futures = [links.submit(request(i)) for i in range(4)]
        links.retarget(parse_target("ipv4:10.0.0.2:1,10.0.0.3:1"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if "10.0.0.3:1" in links.links and "10.0.0.1:1" not in links.links:
                break
        names = list(links.links)
        for link in links.links.values():
            link.answer_all()
        await settle()
        endpoint = links.settings.endpoint
        await links.close()
        return names, futures, endpoint

    names, futures, endpoint = asyncio.run(scenario())
    assert names == ["10.0.0.2:1", "10.0.0.3:1"]
    assert endpoint == "ipv4:10.0.0.2:1,10.0.0.3:1"
    assert all(f.exception() is None for f in futures)


def test_close_fails_what_is_pending_without_resending():
    async def scenario():
        links = replica_set("ipv4:10.0.0.1:1,10.0.0.2:1", default_deadline_ms=1000.0)
        await links.refresh()
        futures = [links.submit(request(i)) for i in range(2)]
        await links.close()
        await settle()
        return futures, links.stats.resent

    futures, resent = asyncio.run(scenario())
    assert all(isinstance(f.exception(), LinkLost) for f in futures) and resent == 0
