"""Two gateways per site (tests/stacks/Pulumi.ha.yaml) in the lab, built once for the
module: the gateways' own failover agent moves the site through moto's EC2 API, and the
lab's VPC routers and internet gateways follow moto (lab.controller).

The tests run in order on one lab: a host failure of alpha's active gateway, its return,
a partition between alpha's two gateways, alpha's image roll, `python -m lab failover`
on both sites, a day-2 change and a takeover after it, the probe on both gateways, and
last the peer-site-down control (beta's gateways stay down).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from core import health
from core.facts import PROBE_PATH
from lab import aws, cli, netns
from lab.build import host_run
from lab.checks import check_handshake, directions, expected_hops
from lab.day2 import ContinuousPing, push
from lab.failover import (
    active_first,
    far_host,
    fresh_boot,
    holder,
    image_roll,
    interface_up,
    kill_active,
    partition,
    partner,
    route_targets,
    site_down,
    status,
    wait_standby_ready,
    wait_until,
)
from lab.health import samples
from lab.lifecycle import Lab
from lab.office import with_lab_keys
from lab.topology import Gateway, Site
from plan.engine import read_stack_file, run_program
from tests.lab.support import EXAMPLES, example_lab

pytestmark = pytest.mark.lab

STACK = "ha"
MAX_FAILOVER_SECONDS = 10.0
MAX_ROLL_SECONDS = 1.0


@pytest.fixture(scope="module")
def lab(root: None) -> Iterator[Lab]:
    with example_lab(STACK) as built:
        assert built.first_reply is not None, "no reply through the tunnel after the build"
        yield built


class _Dead:
    gateway: Gateway | None = None


def _alpha(lab: Lab) -> Site:
    site = lab.topology.sites[0]
    assert site.name == "alpha" and site.highly_available
    return site


def _ping(lab: Lab, site: Site) -> ContinuousPing:
    target = far_host(lab.topology, site)
    return ContinuousPing(site.hosts[0].namespace, str(target.address.ip))


def test_the_lab_follows_moto(lab: Lab) -> None:
    # At `lab up` gateway 0 of each site claims the Elastic IP (nobody held it) in moto;
    # the routes were made to gateway 0's interface. Only the holder has its tunnel up.
    for site in lab.topology.sites:
        assert holder(site) is site.gateway, site.name
        assert route_targets(site) == {str(site.gateway.private_address.ip)}, site.name
        assert [interface_up(site, g) for g in site.gateways] == [True, False], site.name
    log = aws.CONTROLLER_LOG.read_text()
    assert "alpha: Elastic IP 203.0.113.10 -> 10.1.0.4" in log, log


def test_killing_the_active_moves_the_elastic_ip_and_every_route(lab: Lab) -> None:
    site = _alpha(lab)
    standby = site.second
    assert standby is not None
    wait_standby_ready(site, standby, lab.state)
    result, dead = kill_active(lab.topology, site, lab.state)
    _Dead.gateway = dead
    print(result.line())
    assert dead is site.gateway
    assert result.took_over == standby.namespace
    assert result.sent > 0
    assert result.seconds <= MAX_FAILOVER_SECONDS, result.line()
    # In moto: the Elastic IP and every route of the three tables on the survivor. Replies
    # flow as soon as the private table's routes moved; the agent may still be moving the
    # other tables' (one ReplaceRoute each), so they get a few seconds more.
    assert holder(site) is standby
    survivor = {str(standby.private_address.ip)}
    wait_until(lambda: route_targets(site) == survivor, 5.0, "every route on the survivor")
    assert len(aws.ec2_view()[site.name]["routes"]) == 3 * len(site.facts.routed_destinations)
    assert interface_up(site, standby)


def test_the_old_active_returns_as_standby_and_nothing_is_lost(lab: Lab) -> None:
    site = _alpha(lab)
    dead = _Dead.gateway
    assert dead is not None, "needs test_killing_the_active_..."
    survivor = partner(site, dead)
    ping = _ping(lab, site)
    try:
        time.sleep(0.5)
        fresh_boot(site, dead, lab.state)
        seconds = wait_standby_ready(site, dead, lab.state)
        time.sleep(1.0)
    finally:
        sent, lost = ping.stop()
    print(f"returned, standby ready {seconds:.1f} s after its boot; {lost} of {sent} lost")
    assert sent > 10
    assert lost == 0
    # No preemption: the survivor keeps the site.
    assert holder(site) is survivor
    assert status(dead, lab.state)["role"] == "standby"
    assert not interface_up(site, dead)


def test_a_partition_between_the_gateways_keeps_one_holder_and_traffic(lab: Lab) -> None:
    site = _alpha(lab)
    active = holder(site)
    assert active is not None
    standby = partner(site, active)
    ping = _ping(lab, site)
    try:
        time.sleep(0.5)
        with partition(site):
            # The cut is real: the standby no longer reaches the active's own address...
            reach = netns.ns_run(
                standby.namespace,
                ["ping", "-c1", "-W1", "-n", str(active.private_address.ip)],
                check=False,
            )
            assert reach.returncode != 0
            # ...for longer than the agent's 3 missed probes (1.5 s), several times over.
            time.sleep(5.0)
            holders = holder(site)
            up = [interface_up(site, g) for g in site.gateways]
            roles = [status(g, lab.state).get("role") for g in site.gateways]
    finally:
        sent, lost = ping.stop()
    print(f"partition: holder {holders.namespace if holders else None}, tunnel up {up},")
    print(f"roles {roles}; {lost} of {sent} pings lost")
    assert holders is active
    assert up == [g is active for g in site.gateways]
    assert roles == ["active" if g is active else "standby" for g in site.gateways]
    assert sent > 50
    assert lost == 0


def test_an_image_roll_loses_at_most_a_second(lab: Lab) -> None:
    site = _alpha(lab)
    steps: list[str] = []
    ping = _ping(lab, site)
    started = time.monotonic()
    try:
        time.sleep(0.5)
        image_roll(site, lab.state, steps.append)
    finally:
        sent, lost = ping.stop()
    seconds = lost * ping.interval
    print(f"image roll in {time.monotonic() - started:.1f} s: {steps}")
    print(f"image roll: {lost} of {sent} pings lost ({seconds:.1f} s)")
    # The standby goes first; the active hands over before it goes.
    assert steps == [
        "alpha: drain 1: handed over",
        "alpha: gateway 1 replaced, standby ready",
        "alpha: drain 0: handed over",
        "alpha: gateway 0 replaced, standby ready",
    ]
    assert holder(site) is site.second
    assert seconds <= MAX_ROLL_SECONDS


def test_the_failover_command_kills_each_active_in_turn(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {site.name: holder(site) for site in lab.topology.sites}
    assert cli.failover(str(EXAMPLES / "Pulumi.ha.yaml"), 1) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [line for line in lines if line.startswith("failover ")]
    print("\n".join(shown))
    assert [line.split(":")[0] for line in shown] == ["failover alpha", "failover beta"]
    for line in shown:
        match = re.fullmatch(r"failover \w+: (\d+) of (\d+) pings lost \((\d+\.\d) s\)", line)
        assert match, line
        assert float(match[3]) <= MAX_FAILOVER_SECONDS, line
    for site in lab.topology.sites:
        # Each site moved to the other gateway, and the dead one came back as the standby.
        old = before[site.name]
        assert old is not None
        assert holder(site) is partner(site, old), site.name
        assert status(old, lab.state)["role"] == "standby", site.name
    # `lab check` looks at the active gateways: there the handshakes are fresh, and the
    # trace's first hop is the active's address.
    moved = active_first(lab.topology)
    for site, static in zip(moved.sites, lab.topology.sites, strict=True):
        assert site.gateway is holder(site)
        assert check_handshake(site).ok, check_handshake(site).line()
        if static.gateway is not site.gateway:
            # Where the standby is gateway 0, the plan's order would check the wrong one.
            assert not check_handshake(static).ok
    alpha_to_beta = next(d for d in directions(moved) if d.label == "a1->b1")
    assert expected_hops(alpha_to_beta)[0] == str(moved.sites[0].gateway.private_address.ip)


def test_the_failover_command_refuses_a_stack_without_two_gateways(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    from lab.__main__ import main

    assert main(["failover", "dev"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lab: stack dev has no site with two gateways (gateways: 2)"]


def test_a_day2_change_reaches_the_standby_and_a_takeover_runs_it(lab: Lab) -> None:
    site = _alpha(lab)
    config, _ = with_lab_keys(read_stack_file(STACK, EXAMPLES))
    config["tunnel"]["persistentKeepalive"] = 10
    syslog = {"description": "no syslog", "protocol": "udp", "port": 514, "action": "drop"}
    config["firewall"].append(syslog)

    _, results = push(lab, run_program(STACK, config))

    # Every gateway's apply: the active's applies in place, the standby's installs the
    # files and leaves its tunnel down (only the agent brings it up).
    assert [r.returncode for r in results] == [0] * 4, [r.output for r in results]
    for result in results:
        applied_site = next(s for s in lab.topology.sites if s.name == result.site)
        gateway = next(g for g in applied_site.gateways if g.namespace == result.gateway)
        if holder(applied_site) is gateway:
            assert "applied in place" in result.output, result.output
        else:
            assert "stays down until the failover agent" in result.output, result.output
    # The standby takes over from a dead active: its tunnel runs the new config.
    active = holder(site)
    assert active is not None
    standby = partner(site, active)
    wait_standby_ready(site, standby, lab.state)
    failover, dead = kill_active(lab.topology, site, lab.state)
    print(failover.line())
    assert failover.took_over == standby.namespace
    keepalive = netns.ns_run(
        standby.namespace, ["wg", "show", site.interface, "persistent-keepalive"]
    ).stdout.split()
    assert keepalive[-1] == "10", keepalive
    rules = netns.ns_run(standby.namespace, ["iptables-save", "-t", "filter"]).stdout
    assert any(
        line.startswith(f"-A s2s-fw-{site.interface}") and "--dport 514" in line
        for line in rules.splitlines()
    ), rules
    # Back as it was for the next test: the dead gateway boots again, as the standby.
    fresh_boot(site, dead, lab.state)
    wait_standby_ready(site, dead, lab.state)


def test_only_the_active_gateway_reports_its_tunnel(lab: Lab) -> None:
    # The probe (the timer's script) on both: the active publishes its own TunnelUp, the
    # standby publishes none, so its per-gateway tunnel-down alarm stays quiet.
    site = _alpha(lab)
    active = holder(site)
    assert active is not None
    standby = partner(site, active)
    assert active.instance_id != standby.instance_id
    since = time.time() - 1.0
    ran = {
        g.namespace: host_run(g.namespace, lab.state, [PROBE_PATH], check=False)
        for g in site.gateways
    }
    assert [r.returncode for r in ran.values()] == [0, 0], [r.stderr for r in ran.values()]
    assert "standby, no tunnel to measure" in ran[standby.namespace].stdout

    def reported(gateway: Gateway) -> list[float]:
        points = samples(site, health.TUNNEL_UP, since, instance_id=gateway.instance_id)
        return [value for _, value in points]

    wait_until(lambda: bool(reported(active)), 10.0, "the active's TunnelUp in CloudWatch")
    assert set(reported(active)) == {1.0}
    assert reported(standby) == []


def test_a_peer_site_down_causes_no_takeover(lab: Lab) -> None:
    # Last: beta's gateways stay down. alpha's standby loses its forwarding probe (no peer
    # answers through the active), but still reaches the active: no takeover.
    alpha, beta = lab.topology.sites
    active = holder(alpha)
    assert active is not None
    standby = partner(alpha, active)
    site_down(beta)
    target = str(alpha.facts.peers[0].tunnel_address)
    probe = netns.ns_run(standby.namespace, ["ping", "-c1", "-W1", "-n", target], check=False)
    assert probe.returncode != 0, "the peer site is not down"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        assert holder(alpha) is active
        time.sleep(1.0)
    assert status(standby, lab.state)["role"] == "standby"
    assert interface_up(alpha, active)
    assert not interface_up(alpha, standby)
