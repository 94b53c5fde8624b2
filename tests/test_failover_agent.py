"""The failover agent of a site with two gateways (cloud-init/failover.py, issue 16).

Its decisions (the Decider: probe rounds and holder checks in, actions out, no I/O); the
real script, as the user data installs it, against moto's EC2 and CloudWatch on loopback
with the lab's IMDS stand-in and fakes for ping, ip and systemctl; and its place in the
user data, the apply, the check and the probe. Single-gateway sites render exactly as
before issue 16."""

from __future__ import annotations

import ast
import datetime
import difflib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from core import health
from core.config import load_stack_config
from core.facts import (
    APPLY_PATH,
    AWS_CALL_PATH,
    CHECK_PATH,
    FAILOVER_AGENT_PATH,
    FAILOVER_UNIT_PATH,
    PROBE_PATH,
    GatewayFacts,
    gateway_facts,
)
from core.render import (
    FAILOVER_SOURCE,
    FailoverInputs,
    PeerEndpoint,
    failover_section,
    limit_problems,
    parse_user_data,
    render_apply,
    render_aws_call,
    render_bootstrap,
    render_check,
    render_desired_state,
    render_probe,
)
from lab import imds as imds_stand_in
from plan.engine import STACKS, read_stack_file
from tests.aws_stand_in import CREDENTIALS, REGION, boto_client, moto_endpoint, script_env
from tests.test_apply import endpoints, make_gateway, planted_key
from tests.test_render import _cloud_init_schema

__all__ = ["moto_endpoint"]  # fixture


def _load_agent() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wg_s2s_failover", FAILOVER_SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


AGENT = _load_agent()
ENI = ("eni-00000000000000000", "eni-11111111111111111")


TEST_STACKS = STACKS.parent / "tests" / "stacks"


def ha_facts(stack: str = "ha") -> GatewayFacts:
    """alpha of tests/stacks/Pulumi.ha.yaml (the dev stack's sites, two gateways each)."""
    config = load_stack_config(read_stack_file("ha", TEST_STACKS))
    facts = gateway_facts(config, stack)[0]
    assert facts.highly_available and facts.site.region == REGION
    return facts


# ------------------------------------------------------------------------ the decisions


def standby(index: int = 1) -> Any:
    """Gateway `index` as standby: its first holder check found the other holding."""
    decider = AGENT.Decider(index, ENI[index], ENI[1 - index], f"10.1.{1 - index}.4")
    action = decider.held(0.0, ENI[1 - index])
    assert (action.kind, decider.role) == (AGENT.SETTLE, AGENT.STANDBY)
    return decider


def rounds(decider: Any, start: float, results: list[tuple[bool, bool]]) -> list[Any]:
    """Probe rounds every PROBE_INTERVAL from `start`: (partner answered, a peer answered)."""
    return [
        decider.probed(start + n * AGENT.PROBE_INTERVAL, partner, forwarding)
        for n, (partner, forwarding) in enumerate(results)
    ]


def test_takes_over_only_after_three_rounds_with_partner_and_forwarding_down() -> None:
    decider = standby()
    assert AGENT.MISSES == 3 and AGENT.PROBE_INTERVAL == 0.5  # 1.5 s

    first, second, third = rounds(decider, 1.0, [(False, False)] * 3)

    assert first is None and second is None
    assert third.kind == AGENT.TAKEOVER
    assert third.reason == "gateway 0 at 10.1.0.4 and every peer unreachable for 3 probes"
    assert decider.role == AGENT.ACTIVE


def test_one_answer_in_between_starts_the_count_again() -> None:
    decider = standby()
    misses = [(False, False)] * 2
    answered = rounds(decider, 1.0, [*misses, (True, False), *misses, (False, True), *misses])
    assert answered == [None] * 8
    assert rounds(decider, 9.0, [(False, False)])[0].kind == AGENT.TAKEOVER


def test_a_peer_site_down_is_no_takeover() -> None:
    # The negative control: nothing answers through the active, but the active answers.
    decider = standby()
    assert rounds(decider, 1.0, [(True, False)] * 20) == [None] * 20
    assert decider.role == AGENT.STANDBY


def test_a_partition_between_the_gateways_is_no_takeover() -> None:
    # The partner is unreachable, but the peers answer through it: it still forwards.
    decider = standby()
    assert rounds(decider, 1.0, [(False, True)] * 20) == [None] * 20
    assert decider.role == AGENT.STANDBY


def test_no_takeover_from_nobody() -> None:
    # Before any holder check, or with the address on nobody, the claim rules decide.
    unknown = AGENT.Decider(1, ENI[1], ENI[0], "10.1.0.4")
    assert rounds(unknown, 0.0, [(False, False)] * 5) == [None] * 5
    free = AGENT.Decider(1, ENI[1], ENI[0], "10.1.0.4")
    free.held(0.0, None)
    assert rounds(free, 0.5, [(False, False)] * 5) == [None] * 5


def test_the_active_steps_down_when_the_other_holds_and_holds_down() -> None:
    decider = standby()
    rounds(decider, 1.0, [(False, False)] * 3)
    assert decider.held(3.0, ENI[1]) is None  # its own takeover: nothing to do

    stepped = decider.held(10.0, ENI[0])

    assert stepped.kind == AGENT.STEP_DOWN
    assert stepped.reason == "gateway 0 holds the Elastic IP"
    assert decider.role == AGENT.STANDBY
    # No takeover for HOLD_DOWN (30 s), whatever the probes say; then as usual.
    assert AGENT.HOLD_DOWN == 30.0
    assert rounds(decider, 10.5, [(False, False)] * 58) == [None] * 58
    assert rounds(decider, 40.0, [(False, False)])[0].kind == AGENT.TAKEOVER


def test_the_hold_down_stops_a_claim_too() -> None:
    decider = standby(0)
    decider.held(1.0, ENI[0])
    assert decider.held(2.0, ENI[1]).kind == AGENT.STEP_DOWN
    assert [decider.held(t, None) for t in (4.0, 20.0, 31.9)] == [None] * 3
    assert decider.held(32.0, None).kind == AGENT.CLAIM


def test_no_preemption_when_the_old_active_returns() -> None:
    # Gateway 0 was active, failed, and boots again: gateway 1 holds the site now.
    returned = AGENT.Decider(0, ENI[0], ENI[1], "10.1.1.4")
    first = returned.held(0.0, ENI[1])
    assert (first.kind, returned.role) == (AGENT.SETTLE, AGENT.STANDBY)
    assert first.reason == "gateway 1 holds the Elastic IP"
    later = [returned.held(t, ENI[1]) for t in (2.0, 4.0, 60.0)]
    assert later == [None] * 3
    assert rounds(returned, 0.5, [(True, True)] * 10) == [None] * 10
    assert returned.role == AGENT.STANDBY
    # ... and gateway 1, active, stays so.
    active = AGENT.Decider(1, ENI[1], ENI[0], "10.1.0.4", role=AGENT.ACTIVE)
    assert active.held(0.0, ENI[1]).kind == AGENT.RESUME  # its restart: make it true
    assert [active.held(t, ENI[1]) for t in (2.0, 4.0)] == [None, None]


def test_initial_claim_gateway_0_at_once_gateway_1_after_the_grace() -> None:
    first = AGENT.Decider(0, ENI[0], ENI[1], "10.1.1.4")
    assert first.held(100.0, None).kind == AGENT.CLAIM
    assert first.role == AGENT.ACTIVE

    second = AGENT.Decider(1, ENI[1], ENI[0], "10.1.0.4")
    assert AGENT.INITIAL_GRACE == 20.0
    assert second.held(100.0, None).kind == AGENT.SETTLE
    assert [second.held(t, None) for t in (102.0, 110.0, 119.9)] == [None] * 3
    claim = second.held(120.0, None)
    assert claim.kind == AGENT.CLAIM
    assert claim.reason == "nobody held it for 20 s"
    # The grace counts from when it was last seen held, not from the agent's start.
    third = AGENT.Decider(1, ENI[1], ENI[0], "10.1.0.4")
    third.held(0.0, None)
    third.held(30.0, ENI[0])
    assert third.held(32.0, None) is None
    assert third.held(52.0, None).kind == AGENT.CLAIM


def test_a_gateway_that_finds_it_holds_the_address_is_active() -> None:
    # A one-shot takeover (the drain) moved it while the daemon thought itself standby.
    decider = standby()
    action = decider.held(5.0, ENI[1])
    assert action.kind == AGENT.RESUME and decider.role == AGENT.ACTIVE


def test_a_failed_takeover_counts_again_from_zero() -> None:
    decider = standby()
    rounds(decider, 1.0, [(False, False)] * 3)
    decider.failed()
    assert decider.role == AGENT.STANDBY
    assert rounds(decider, 3.0, [(False, False)] * 3)[2].kind == AGENT.TAKEOVER


def test_holder_of_reads_describe_addresses() -> None:
    answer = (
        '<?xml version="1.0"?><DescribeAddressesResponse xmlns="http://ec2.amazonaws.com/doc/'
        '2016-11-15/"><addressesSet><item><publicIp>192.0.2.1</publicIp><allocationId>'
        "eipalloc-1</allocationId>{eni}</item></addressesSet></DescribeAddressesResponse>"
    )
    held = f"<networkInterfaceId>{ENI[1]}</networkInterfaceId>"
    assert AGENT.holder_of(answer.format(eni=held), "eipalloc-1") == ENI[1]
    assert AGENT.holder_of(answer.format(eni=""), "eipalloc-1") is None
    with pytest.raises(AGENT.Problem, match="does not list eipalloc-2"):
        AGENT.holder_of(answer.format(eni=held), "eipalloc-2")


# ----------------------------------------------------------- the script against moto

FAKE_PING = """#!/bin/sh
# ping -c1 -W1 -n ADDRESS: answers if $FAKE/answers/ADDRESS exists.
for target; do :; done
echo "$*" >> "$FAKE/pinged"
[ -e "$FAKE/answers/$target" ]
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$FAKE/systemctl"
case "$1" in
    restart | start) : > "$FAKE/up" ;;
    stop) rm -f "$FAKE/up" ;;
esac
"""
FAKE_IP = """#!/bin/sh
# ip link show dev IFACE: there while the fake interface is up.
[ -e "$FAKE/up" ]
"""


@dataclass
class Site:
    """One HA site in moto's EC2: two interfaces, its Elastic IP and three route tables."""

    facts: GatewayFacts
    ec2: Any
    interfaces: tuple[str, str]
    allocation: str
    elastic_ip: str
    tables: tuple[str, ...]

    def holder(self) -> str | None:
        (address,) = self.ec2.describe_addresses(AllocationIds=[self.allocation])["Addresses"]
        holder: str | None = address.get("NetworkInterfaceId")
        return holder

    def route_targets(self) -> set[str | None]:
        wanted = {str(d) for d in self.facts.routed_destinations}
        found = self.ec2.describe_route_tables(RouteTableIds=list(self.tables))["RouteTables"]
        targets = [
            route.get("NetworkInterfaceId")
            for table in found
            for route in table["Routes"]
            if route.get("DestinationCidrBlock") in wanted
        ]
        assert len(targets) == len(wanted) * len(self.tables)
        return set(targets)

    def give_to(self, index: int) -> None:
        """Everything to gateway `index`, as its takeover would."""
        self.ec2.associate_address(
            AllocationId=self.allocation,
            NetworkInterfaceId=self.interfaces[index],
            AllowReassociation=True,
        )
        for table in self.tables:
            for destination in self.facts.routed_destinations:
                self.ec2.replace_route(
                    RouteTableId=table,
                    DestinationCidrBlock=str(destination),
                    NetworkInterfaceId=self.interfaces[index],
                )

    def failover_targets(self) -> list[str]:
        return [str(peer.tunnel_address) for peer in self.facts.peers]

    def failover_facts(self) -> str:
        """The file the apply writes from the desired state's `failover` entry."""
        inputs = FailoverInputs(self.allocation, self.elastic_ip, self.interfaces, self.tables)
        return json.dumps(failover_section(self.facts, inputs), sort_keys=True) + "\n"


@pytest.fixture(scope="module")
def site(moto_endpoint: str) -> Site:
    """alpha of the HA stack in moto, once: a stack name of its own for its metrics."""
    import boto3

    facts = ha_facts(f"failover-{uuid.uuid4().hex[:8]}")
    ec2 = boto3.Session(
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ).client("ec2", endpoint_url=moto_endpoint)
    layout = facts.layout
    vpc = ec2.create_vpc(CidrBlock=str(facts.site.cidr))["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=str(subnet))["Subnet"]["SubnetId"]
        for subnet in (layout.public_subnet, layout.second_public_subnet)
    ]
    interfaces = tuple(
        ec2.create_network_interface(SubnetId=subnet, PrivateIpAddress=str(ip))["NetworkInterface"][
            "NetworkInterfaceId"
        ]
        for subnet, ip in zip(subnets, facts.gateway_private_ips, strict=True)
    )
    tables = tuple(
        ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"] for _ in range(3)
    )
    for table in tables:
        for destination in facts.routed_destinations:
            ec2.create_route(
                RouteTableId=table,
                DestinationCidrBlock=str(destination),
                NetworkInterfaceId=interfaces[0],
            )
    allocated = ec2.allocate_address(Domain="vpc")
    assert len(interfaces) == 2
    return Site(facts, ec2, interfaces, allocated["AllocationId"], allocated["PublicIp"], tables)


@dataclass
class Imds:
    url: str
    answers: dict[str, str]


@pytest.fixture(scope="module")
def imds() -> Iterator[Imds]:
    answers: dict[str, str] = {}
    server = imds_stand_in.server(("127.0.0.1", 0), "imds-token-failover", lambda _: answers)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Imds(f"http://127.0.0.1:{server.server_address[1]}", answers)
    finally:
        server.shutdown()
        server.server_close()


MAC = "0e:12:34:56:78:9b"


@dataclass
class Gateway:
    """One gateway of the site: the installed agent and the fakes around it."""

    site: Site
    index: int
    root: Path
    env: dict[str, str]
    stack: str  # the agent's, for its metrics: one per test (the site is the module's)

    @property
    def fake(self) -> Path:
        return self.root / "fake"

    @property
    def role(self) -> str | None:
        path = self.root / "run" / f"{self.site.facts.interface}.role"
        return path.read_text().strip() if path.exists() else None

    def agent(self, *args: str, **popen: Any) -> list[str]:
        return ["python3", str(self.root / "bin" / "wg-site-to-site-failover"), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.agent(*args), env=self.env, capture_output=True, text=True, timeout=60, check=False
        )

    def answer(self, *addresses: str) -> None:
        (self.fake / "answers").mkdir(exist_ok=True)
        for address in addresses:
            (self.fake / "answers" / address).touch()

    def lines(self, name: str) -> list[str]:
        path = self.fake / name
        return path.read_text().splitlines() if path.exists() else []

    def metric(self, name: str, per_instance: bool) -> list[float]:
        dimensions = {
            health.DIMENSION_STACK: self.stack,
            health.DIMENSION_SITE: self.site.facts.name,
        }
        if per_instance:
            dimensions[health.DIMENSION_INSTANCE] = self.env["TEST_INSTANCE_ID"]
        now = datetime.datetime.now(datetime.UTC)
        result = boto_client(self.env["WG_S2S_ENDPOINT_EC2"], "cloudwatch").get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "m",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": health.NAMESPACE,
                            "MetricName": name,
                            "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                        },
                        "Period": 1,
                        "Stat": "Maximum",
                    },
                }
            ],
            StartTime=now - datetime.timedelta(minutes=5),
            EndTime=now + datetime.timedelta(minutes=1),
            ScanBy="TimestampAscending",
        )
        return list(result["MetricDataResults"][0]["Values"])


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def gateway_of(
    tmp_path: Path, moto_endpoint: str, imds: Imds, site: Site
) -> Callable[[int], Gateway]:
    """Gateway `index`, the site's address and routes on gateway 0 to start with."""

    def make(index: int) -> Gateway:
        site.give_to(0)
        files = render_bootstrap(site.facts).files
        etc = tmp_path / "etc"
        for name in ("bin", "fake", "run", "etc"):
            (tmp_path / name).mkdir()
        # The installed agent, its facts file moved into the sandbox.
        agent = files[FAILOVER_AGENT_PATH].replace("/etc/wireguard/", f"{etc}/")
        stack = f"failover-{uuid.uuid4().hex[:8]}"
        assert agent.count(f'stack="{site.facts.stack}"') == 1
        agent = agent.replace(f'stack="{site.facts.stack}"', f'stack="{stack}"')
        _executable(tmp_path / "bin" / "wg-site-to-site-failover", agent)
        _executable(tmp_path / "bin" / "wg-site-to-site-aws", files[AWS_CALL_PATH])
        _executable(tmp_path / "bin" / "ping", FAKE_PING)
        _executable(tmp_path / "bin" / "systemctl", FAKE_SYSTEMCTL)
        _executable(tmp_path / "bin" / "ip", FAKE_IP)
        (etc / f"{site.facts.interface}.failover").write_text(site.failover_facts())
        instance = f"i-{uuid.uuid4().hex[:17]}"
        imds.answers.clear()
        imds.answers.update(
            {
                "instance-id": instance,
                "mac": MAC,
                f"network/interfaces/macs/{MAC}/interface-id": site.interfaces[index],
            }
        )
        env = script_env(
            moto_endpoint,
            WG_S2S_ENDPOINT_EC2=moto_endpoint,
            WG_S2S_IMDS_ENDPOINT=imds.url,
            WG_S2S_STATE_DIR=str(tmp_path / "run"),
            PATH=f"{tmp_path / 'bin'}:/usr/bin:{os.environ['PATH']}",
            FAKE=str(tmp_path / "fake"),
            TEST_INSTANCE_ID=instance,
        )
        return Gateway(site, index, tmp_path, env, stack)

    return make


def test_takeover_moves_the_address_and_every_route_to_its_own_interface(
    gateway_of: Callable[[int], Gateway],
) -> None:
    gateway = gateway_of(1)
    site = gateway.site
    assert site.holder() == site.interfaces[0]
    assert site.route_targets() == {site.interfaces[0]}

    result = gateway.run("takeover")

    assert result.returncode == 0, result.stderr
    assert (
        result.stdout == "failover: alpha gateway 1 took over from gateway 0 (takeover requested)\n"
    )
    assert result.stderr == ""
    # AssociateAddress with AllowReassociation (moto, as EC2, refuses a held address
    # without it), then ReplaceRoute in every table for every routed destination.
    assert site.holder() == site.interfaces[1]
    assert site.route_targets() == {site.interfaces[1]}
    assert gateway.role == "active"
    assert gateway.lines("systemctl") == ["systemctl restart wg-quick@wgA"]
    # A packet to every peer at once: WireGuard's handshake starts with it.
    targets = [str(peer.tunnel_address) for peer in site.facts.peers]
    assert [line.split()[-1] for line in gateway.lines("pinged")] == targets
    assert gateway.metric(health.FAILOVERS, per_instance=False) == [1.0]
    assert gateway.metric(health.ACTIVE, per_instance=True) == [1.0]
    # Again (a drain that retries): it holds the site already; no second failover.
    again = gateway.run("takeover")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "failover: alpha gateway 1 is active (it held the Elastic IP already)\n"
    assert site.holder() == site.interfaces[1]
    assert gateway.metric(health.FAILOVERS, per_instance=False) == [1.0]


# A connection that breaks under a call (the gateway's own public address changes when the
# Elastic IP moves to it): the first FAILING ReplaceRoute calls fail, then the real helper.
FLAKY_AWS_CALL = """#!/bin/sh
if [ "$2" = AssociateAddress ] && [ -n "$LOSE_ANSWER" ]; then
    "$(dirname "$0")/wg-site-to-site-aws.real" "$@" >/dev/null
    echo "wg-site-to-site-aws: ec2 AssociateAddress failed: no response (curl exit 56)" >&2
    exit 1
fi
if [ "$2" = ReplaceRoute ]; then
    # The agent moves the routes in parallel: the count is read and written under a lock.
    exec 9>"$FAKE/replace-route-failures.lock"
    flock 9
    count=$(cat "$FAKE/replace-route-failures" 2>/dev/null || echo 0)
    if [ "$count" -lt "$FAILING" ]; then
        echo $((count + 1)) >"$FAKE/replace-route-failures"
        echo "wg-site-to-site-aws: ec2 ReplaceRoute failed: no response (curl exit 56)" >&2
        exit 1
    fi
    exec 9>&-
fi
exec "$(dirname "$0")/wg-site-to-site-aws.real" "$@"
"""


def _flaky(gateway: Gateway) -> Gateway:
    bin_dir = gateway.root / "bin"
    (bin_dir / "wg-site-to-site-aws").rename(bin_dir / "wg-site-to-site-aws.real")
    _executable(bin_dir / "wg-site-to-site-aws", FLAKY_AWS_CALL)
    gateway.env["FAILING"] = "0"
    return gateway


def test_a_lost_answer_to_the_address_move_is_no_failed_takeover(
    gateway_of: Callable[[int], Gateway],
) -> None:
    gateway = _flaky(gateway_of(1))
    site = gateway.site
    gateway.env["LOSE_ANSWER"] = "1"

    result = gateway.run("takeover")

    # The address moved though its answer was lost: the takeover goes on.
    assert result.returncode == 0, result.stderr
    assert site.holder() == site.interfaces[1]
    assert site.route_targets() == {site.interfaces[1]}
    assert gateway.role == "active"


def test_a_route_move_that_fails_under_the_address_change_is_tried_again(
    gateway_of: Callable[[int], Gateway],
) -> None:
    gateway = _flaky(gateway_of(1))
    site = gateway.site
    routes = len(json.loads(site.failover_facts())["routes"])
    # Every route's first call fails, and two more after that: three rounds in all.
    gateway.env["FAILING"] = str(routes + 2)

    result = gateway.run("takeover")

    # The one-shot takeover (a drain) succeeds, with every route on this gateway.
    assert result.returncode == 0, result.stderr
    assert site.holder() == site.interfaces[1]
    assert site.route_targets() == {site.interfaces[1]}
    assert gateway.lines("replace-route-failures") == [str(routes + 2)]


def test_status_reports_the_role_and_the_holder(gateway_of: Callable[[int], Gateway]) -> None:
    gateway = gateway_of(1)
    site = gateway.site

    before = gateway.run("status")
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout) == {
        "site": "alpha",
        "gateway": 1,
        "role": "standby",
        "networkInterfaceId": site.interfaces[1],
        "holder": site.interfaces[0],
        "holderGateway": 0,
    }
    (gateway.root / "run" / "wgA.role").write_text("active\n")
    site.give_to(1)
    after = json.loads(gateway.run("status").stdout)
    assert (after["role"], after["holder"], after["holderGateway"]) == (
        "active",
        site.interfaces[1],
        1,
    )


def _wait_for(condition: Callable[[], bool], seconds: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not within {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - start


def test_the_daemon_takes_over_a_dead_active_and_steps_down_for_the_other(
    gateway_of: Callable[[int], Gateway],
) -> None:
    # Gateway 1, standby: neither gateway 0 nor any peer answers (no fake answers).
    gateway = gateway_of(1)
    site = gateway.site
    env = {**gateway.env, "WG_S2S_METRIC_INTERVAL": "1"}
    daemon = subprocess.Popen(
        gateway.agent("run"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # The first holder check at once, then 3 failed rounds 0.5 s apart (each ping of
        # the fake answers at once): about 1 s, never less (the lab measures how fast; the
        # limits here leave room for a loaded machine).
        took = _wait_for(lambda: site.holder() == site.interfaces[1], 15.0)
        assert took >= 1.0
        # Then every route, all at once.
        _wait_for(lambda: site.route_targets() == {site.interfaces[1]}, 10.0)
        assert gateway.role == "active"
        assert "systemctl restart wg-quick@wgA" in gateway.lines("systemctl")
        # The other gateway moves the address back (its own takeover): a holder check
        # (every 2 s) names the other interface, and this one steps down.
        site.give_to(0)
        stopped = ["systemctl stop wg-quick@wgA"]
        _wait_for(lambda: gateway.lines("systemctl")[-1:] == stopped, 10.0)
        assert gateway.role == "standby"
    finally:
        daemon.terminate()
        out, err = daemon.communicate(timeout=10)
    assert out.splitlines() == [
        "failover: alpha gateway 1 is standby (gateway 0 holds the Elastic IP)",
        "failover: alpha gateway 1 took over from gateway 0 (gateway 0 at 10.1.0.4 and every"
        " peer unreachable for 3 probes)",
        "failover: alpha gateway 1 stepped down (gateway 0 holds the Elastic IP; no takeover"
        " for 30 s)",
    ]
    assert err == ""
    # systemd's stop (SIGTERM) ends the loop between steps: the step down was finished
    # and said, and the agent exits cleanly.
    assert daemon.returncode == 0
    assert site.holder() == site.interfaces[0]  # held down: no second takeover
    # Each round pinged the partner's private address and every peer's tunnel address.
    pinged = set(gateway.lines("pinged"))
    assert pinged == {f"-c1 -W1 -n {a}" for a in ("10.1.0.4", *site.failover_targets())}
    assert 1.0 in gateway.metric(health.ACTIVE, per_instance=True)
    assert gateway.metric(health.FAILOVERS, per_instance=False) == [1.0]


def test_the_daemon_reports_a_ready_standby_and_keeps_it_through_a_peer_site_down(
    gateway_of: Callable[[int], Gateway],
) -> None:
    gateway = gateway_of(1)
    site = gateway.site
    gateway.answer("10.1.0.4", *site.failover_targets())
    env = {**gateway.env, "WG_S2S_METRIC_INTERVAL": "0.5"}
    daemon = subprocess.Popen(
        gateway.agent("run"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def ready() -> list[float]:
        return gateway.metric(health.STANDBY_READY, per_instance=False)

    try:
        _wait_for(lambda: 1.0 in ready(), 15.0)
        # The peer site goes down: the partner still answers, so no takeover; the
        # standby is no longer ready (it cannot tell the forwarding path works).
        shutil.rmtree(gateway.fake / "answers")
        gateway.answer("10.1.0.4")
        _wait_for(lambda: ready()[-1:] == [0.0], 10.0)
    finally:
        daemon.terminate()
        out, err = daemon.communicate(timeout=10)
    assert out == "failover: alpha gateway 1 is standby (gateway 0 holds the Elastic IP)\n"
    assert err == ""
    assert gateway.role == "standby"
    assert site.holder() == site.interfaces[0]
    assert set(gateway.metric(health.ACTIVE, per_instance=True)) == {0.0}
    # Made sure its tunnel is down once (the standby's), never started it.
    assert gateway.lines("systemctl") == ["systemctl stop wg-quick@wgA"]


def test_bad_input_is_one_line(gateway_of: Callable[[int], Gateway]) -> None:
    gateway = gateway_of(1)
    usage = gateway.run("promote")
    assert (usage.returncode, usage.stderr) == (
        2,
        "usage: wg-site-to-site-failover run|takeover|status\n",
    )
    facts = gateway.root / "etc" / "wgA.failover"
    facts.write_text('{"allocationId": "eipalloc-1"}\n')
    broken = gateway.run("status")
    assert broken.returncode == 1
    assert broken.stderr == (
        f"wg-site-to-site-failover status: {facts}: not the failover facts (KeyError: 'gateways')\n"
    )
    facts.unlink()
    missing = gateway.run("takeover")
    assert missing.returncode == 1
    assert missing.stderr == (
        f"wg-site-to-site-failover takeover: no {facts}: the apply has not written the"
        " site's facts\n"
    )
    assert gateway.site.holder() == gateway.site.interfaces[0]


# ------------------------------------------------------------- user data and scripts

# sha256 of each single-gateway site's user data and desired state (planted peer keys and
# addresses): issue 16 (two gateways) left them as they were before it (523703c), or
# `pulumi up` would have replaced every gateway in service. Change these only with a
# change that means to, and say so: the apply's move from `wg syncconf` to `wg set`
# (AllowedIPs only where they change) changed the user data (not the desired state) once.
UNCHANGED = {
    "dev/alpha": (
        "616d7c3f7f59f33506fee366938807e9e25e455650b3eb31af8eafcc2ed38552",
        "664ec1332e6dfb0122fb04fa4975a99396d790051771451392fa39acf8a5c24f",
    ),
    "dev/beta": (
        "bc5db5096e3887706661d89473f68d32c7cc0a193b7da6a2b936d595da3ae814",
        "e4ee144ff161b401cc33ad86659ce1b63c1739c6f2c7d1e9da1c93a49995e97d",
    ),
    "single-region/prod": (
        "181b04b1511baff545eeb24459e79b942e70463b2c10abb03be31939afd96381",
        "d6a8c54ab1bfef349d4c559a343446e4b2bd3b94e2b3ca9a37244fa7db76d541",
    ),
    "single-region/shared": (
        "2709adb63fc4b96f4663eb9dae0416f2873b40558c812626efbf36374975bdd6",
        "258fba3c9b09151343735f0e8a30f063aeef921745495484cc5ad8f86185e55a",
    ),
    "mesh3/east": (
        "7fb6d89d0de176202b9a7b7ff970a2c032bdb58de254caa657156f09e86afe07",
        "4a10d2cd64d0b8cf0a0c7d304971e7036976e2a37f90c466fbc33c9021b2e25d",
    ),
    "mesh3/west": (
        "3d0ca80fd875a2632047928918ef36549f9f9dc1d8959f8549eb76c1b049832a",
        "0b3de61907c5fa0d26c3b36401ba9ecdefd585535947e37a762564583bd9a072",
    ),
    "mesh3/central": (
        "7731631ad6acab8013818bc2ab2cc835a6c052f8c9f7524d802058fb3219c639",
        "d95630aff98c703779be488f7b58592cd45abe3051ac5dee5b677b3a251d9eaf",
    ),
    "office-static/alpha": (
        "82f52abf28d227f3ed7f47adaaeac2f739aec2cfb3169b0d3a56303f95c7479c",
        "b14ecf89509f18a9887b53fb7f31b145d06701477b995c161dcba911766d3e11",
    ),
    "office-static/beta": (
        "248c767c99fda0ab268f40c026126004d4bb6530442e0b7165873c73d7fc2a61",
        "d110cbdecc1e7667124031ed7f7e22657cdab3b9eee090fa087e558a8decdc1a",
    ),
    "hub-nat/core": (
        "0d662f05d2fcd732086e65edecfef0d5f928eaa5dc539d7e73709871989e9e4e",
        "264ed610d61c2671955ccf61af7f48e458070d3a8aff054027deeb99289d4029",
    ),
    "hub-nat/spoke-a": (
        "fd9d8152553eb2233cabeb394ca2f9017c775801f3c67de7bc99aa901cb5d99a",
        "a0ef8694bb7efa2cef886910be1e220b35155e3afc70dd705d6e5d5b5d1d0e48",
    ),
    "hub-nat/spoke-b": (
        "47482991a7d363a5bc3e0907b95f91b964c09d674266d794ba007d41824a647f",
        "7480052f92f610a9cdfb08543ac96e4152232814d0ab4427da3ef5286103db7c",
    ),
}


def test_single_gateway_sites_render_exactly_as_before() -> None:
    found = {}
    stacks = [(STACKS, name) for name in ("dev", "single-region")]
    stacks += [
        (STACKS.parent / "tests" / "stacks", n) for n in ("mesh3", "office-static", "hub-nat")
    ]
    for directory, stack in stacks:
        for facts in gateway_facts(load_stack_config(read_stack_file(stack, directory)), stack):
            if not facts.is_aws:
                continue
            assert not facts.highly_available
            planted = {p.name: PeerEndpoint("A" * 43 + "=", "203.0.113.9") for p in facts.peers}
            found[f"{stack}/{facts.name}"] = tuple(
                hashlib.sha256(text.encode()).hexdigest()
                for text in (
                    render_bootstrap(facts).user_data,
                    render_desired_state(facts, planted).document,
                )
            )
    assert found == UNCHANGED


@pytest.fixture(scope="module")
def ha_files() -> dict[str, str]:
    return render_bootstrap(ha_facts()).files


def test_ha_user_data_runs_the_agent_and_no_wg_quick_at_boot(tmp_path: Path) -> None:
    facts = ha_facts()
    bootstrap = render_bootstrap(facts)
    runcmd = parse_user_data(bootstrap.user_data)["runcmd"]

    assert ["systemctl", "enable", "wg-quick@wgA"] not in runcmd
    assert not any("wg-quick@wgA" in part for command in runcmd for part in command)
    enabled = [command[-1] for command in runcmd if command[:3] == ["systemctl", "enable", "--now"]]
    assert enabled == [
        "wg-site-to-site-apply.service",
        "wg-site-to-site-failover.service",
        "wg-site-to-site-probe.timer",
    ]
    unit = bootstrap.files[FAILOVER_UNIT_PATH]
    for line in (
        "After=network-online.target wg-site-to-site-apply.service",
        "Type=simple",
        f"ExecStart={FAILOVER_AGENT_PATH} run",
        "Restart=always",
    ):
        assert line in unit.splitlines()
    # Under EC2's 16 KB (gzip), only because the HA files go without their comment lines.
    assert limit_problems(facts) == []
    # The real cloud-init accepts it.
    result = _cloud_init_schema(tmp_path / "ha.yaml", bootstrap.user_data)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_installed_agent_is_the_source_program(ha_files: dict[str, str]) -> None:
    installed = ha_files[FAILOVER_AGENT_PATH]
    assert installed.startswith("#!/usr/bin/python3\n")
    tree = ast.parse(installed)
    source = ast.parse(FAILOVER_SOURCE.read_text())
    # The source's statements, then the call of main with the site's settings.
    assert ast.dump(ast.Module(tree.body[:-1], [])) == ast.dump(source)
    (call,) = [
        node
        for node in ast.walk(tree.body[-1])
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "configured"
    ]
    settings = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    # It publishes every metric as a Count, the unit core.health gives them.
    assert set(health.FAILOVER_METRICS) == {health.ACTIVE, health.STANDBY_READY, health.FAILOVERS}
    assert set(health.FAILOVER_METRICS.values()) == {"Count"}
    assert settings == {
        "sbin": "/usr/local/sbin",
        "site": "alpha",
        "stack": "ha",
        "interface": "wgA",
        "failover_file": "/etc/wireguard/wgA.failover",
        "state_dir": "/run/wg-site-to-site",
        "aws": "wg-site-to-site-aws",
        "namespace": health.NAMESPACE,
        "dimensions": {"Stack": "Stack", "Site": "Site", "InstanceId": "InstanceId"},
        "metrics": {
            "Active": health.ACTIVE,
            "StandbyReady": health.STANDBY_READY,
            "Failovers": health.FAILOVERS,
        },
    }


def _bash_parse(script: Path) -> list[str]:
    """The program bash reads (`bash --pretty-print`: its parse printed back, comments
    gone), without blank lines."""
    printed = subprocess.run(
        ["bash", "--pretty-print", str(script)], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in printed.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("path", "render"),
    [
        (APPLY_PATH, render_apply),
        (CHECK_PATH, render_check),
        (PROBE_PATH, render_probe),
        (AWS_CALL_PATH, render_aws_call),
    ],
    ids=["apply", "check", "probe", "aws-call"],
)
def test_the_ha_scripts_are_the_same_programs_without_their_comments(
    ha_files: dict[str, str], tmp_path: Path, path: str, render: Callable[[GatewayFacts], str]
) -> None:
    full, compact = tmp_path / "full", tmp_path / "compact"
    full.write_text(render(ha_facts()))
    compact.write_text(ha_files[path])
    assert len(ha_files[path]) < len(full.read_text())
    # What bash parses is the same, but for comment lines of the Python in here-documents
    # (data to bash, comments to python3).
    removed = [
        line[1:]
        for line in difflib.unified_diff(_bash_parse(full), _bash_parse(compact), n=0)
        if not line.startswith(("---", "+++", "@@"))
    ]
    assert all(line.lstrip().startswith("# ") for line in removed), removed
    # ... and shellcheck finds in it what it finds in the full script (its directives stay).
    shell = "bash" if path in (APPLY_PATH, CHECK_PATH) else "sh"
    found = [
        sorted(
            finding["code"]
            for finding in json.loads(
                subprocess.run(
                    ["shellcheck", "-f", "json", "-s", shell, str(script)],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
            )
        )
        for script in (full, compact)
    ]
    assert found[0] == found[1]


# The apply of an HA site, in test_apply's sandbox (fakes for wg, ip, iptables, systemctl),
# reading its parameters from a directory (--from-dir: no AWS call).
def _ha_apply(tmp_path: Path, ha_files: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    facts = ha_facts()
    gateway = make_gateway(tmp_path, "http://127.0.0.1:9", facts, local=True)
    # The script the user data installs (without comment lines), in the sandbox.
    script = gateway.sandboxed(ha_files[APPLY_PATH]).replace('"/run/', f'"{tmp_path}/run/')
    _executable(tmp_path / "bin" / "wg-site-to-site-apply", script)
    inputs = FailoverInputs(
        "eipalloc-0123456789abcdef0",
        "203.0.113.10",
        ("eni-0000000000000000a", "eni-0000000000000000b"),
        ("rtb-0000000000000000a", "rtb-0000000000000000b", "rtb-0000000000000000c"),
    )
    state = json.loads(render_desired_state(facts, endpoints(facts), failover=inputs).document)
    state["config"] = gateway.sandboxed(state["config"])
    values = {
        facts.desired_state_parameter_name: json.dumps(state),
        facts.key_parameter_name: planted_key("alpha-private"),
    }
    values |= {p.psk_parameter_name: planted_key(f"alpha-{p.name}-psk") for p in facts.peers}
    gateway.put(values)
    return gateway, state


def test_ha_apply_writes_the_failover_facts_and_leaves_the_tunnel_down(
    tmp_path: Path, ha_files: dict[str, str]
) -> None:
    gateway, state = _ha_apply(tmp_path, ha_files)

    for args in (("--boot",), ()):
        result = gateway.run(*args, "--from-dir", str(gateway.bundle))
        assert result.returncode == 0, result.stderr
        assert result.stdout == (
            "wg-site-to-site-apply: wgA: files installed; wgA stays down until the failover"
            " agent brings it up\n"
        )
    # Nothing started the tunnel: only the agent does, on the active.
    assert not (gateway.fake / "systemctl").exists()
    written = gateway.etc / "wgA.failover"
    assert json.loads(written.read_text()) == state["failover"]
    assert written.stat().st_mode & 0o777 == 0o600
    assert (gateway.etc / "wgA.conf").exists()

    # Up (the agent brought it up on the active): converged in place, as on one gateway.
    (gateway.fake / "up").touch()
    wg_quick_up = [str(gateway.root / "bin" / "wg"), "fake-up", str(gateway.etc / "wgA.conf")]
    subprocess.run(wg_quick_up, env=gateway.env, check=True)
    result = gateway.run("--from-dir", str(gateway.bundle))
    assert result.returncode == 0, result.stderr
    assert "applied in place" in result.stdout
    assert not (gateway.fake / "systemctl").exists()


def test_ha_apply_refuses_a_desired_state_without_failover(
    tmp_path: Path, ha_files: dict[str, str]
) -> None:
    gateway, state = _ha_apply(tmp_path, ha_files)
    del state["failover"]
    gateway.put({gateway.facts.desired_state_parameter_name: json.dumps(state)})

    result = gateway.run("--from-dir", str(gateway.bundle))

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.rstrip().endswith("KeyError: 'failover'")
    assert list(gateway.etc.iterdir()) == []


FAKE_WG_DOWN = """#!/bin/sh
echo "wg $*" >> "$FAKE/wg"
echo "Unable to access interface: No such device" >&2
exit 1
"""
RECORDING_AWS = """#!/bin/sh
echo "$*" >> "$FAKE/aws-calls"
exit 1
"""


def _on_gateway(tmp_path: Path, ha_files: dict[str, str], role: str | None) -> dict[str, str]:
    """A sandbox with the given role file, a wg without the interface, and AWS recorded."""
    for name in ("bin", "fake", "run"):
        (tmp_path / name).mkdir()
    for path in (CHECK_PATH, PROBE_PATH):
        _executable(tmp_path / "bin" / Path(path).name, ha_files[path])
    _executable(tmp_path / "bin" / "wg", FAKE_WG_DOWN)
    _executable(tmp_path / "bin" / "wg-site-to-site-aws", RECORDING_AWS)
    _executable(tmp_path / "bin" / "wg-site-to-site-apply", "#!/bin/sh\nexit 1\n")
    if role is not None:
        (tmp_path / "run" / "wgA.role").write_text(f"{role}\n")
    return {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "FAKE": str(tmp_path / "fake"),
        "WG_S2S_STATE_DIR": str(tmp_path / "run"),
        "WG_S2S_PEER_FILE": str(tmp_path / "peers"),
    }


def _script(tmp_path: Path, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    shell = "bash" if name.endswith("check") else "sh"
    return subprocess.run(
        [shell, str(tmp_path / "bin" / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("role", "status", "first"),
    [
        ("standby", 0, "check role ok standby: wgA is down until the failover agent takes over"),
        ("active", 1, "check role ok active: this gateway holds the site"),
        (None, 1, "check role FAILED no role: is wg-site-to-site-failover running?"),
    ],
)
def test_ha_check_passes_the_standby_and_checks_the_active(
    tmp_path: Path, ha_files: dict[str, str], role: str | None, status: int, first: str
) -> None:
    env = _on_gateway(tmp_path, ha_files, role)

    result = _script(tmp_path, "wg-site-to-site-check", env)

    assert result.returncode == status
    lines = result.stdout.splitlines()
    assert lines[0] == first
    if role == "standby":
        assert lines == [first]
        assert not (tmp_path / "fake" / "wg").exists()
    else:
        # As on one gateway: the tunnel is checked (here it is missing).
        assert lines[1] == "check interface FAILED wgA does not exist"


def test_ha_probe_measures_nothing_on_the_standby(tmp_path: Path, ha_files: dict[str, str]) -> None:
    env = _on_gateway(tmp_path, ha_files, "standby")

    standby_run = _script(tmp_path, "wg-site-to-site-probe", env)

    assert standby_run.returncode == 0
    assert standby_run.stdout == "wg-site-to-site-probe: wgA: standby, no tunnel to measure\n"
    assert not (tmp_path / "fake" / "aws-calls").exists()
    assert not (tmp_path / "fake" / "wg").exists()
    # The active measures as on one gateway (here it fails at its first AWS call).
    (tmp_path / "run" / "wgA.role").write_text("active\n")
    active_run = _script(tmp_path, "wg-site-to-site-probe", env)
    assert active_run.returncode == 1
    assert (tmp_path / "fake" / "aws-calls").read_text() == "imds instance-id\n"
