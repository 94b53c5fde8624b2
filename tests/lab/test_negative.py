"""Negative controls: a lab built from a deliberately broken plan must FAIL the check that
covers the bug, proving the lab can see it. Each builds its own lab and removes it."""

from __future__ import annotations

import re

import pytest

from lab import netns
from lab.checks import check_mtu, check_ping, check_stranger, check_transfer, directions
from tests.conftest import planned
from tests.lab.mutate import (
    mutated,
    no_mtu_line,
    no_routes_to_gateways,
    source_dest_check_on,
    tunnel_open_to_all,
)
from tests.lab.support import b1_services, built

pytestmark = pytest.mark.lab

# Nothing is expected to get through; waiting long for the first reply would only be slow.
SHORT_WAIT = 3.0


@pytest.fixture(scope="module")
def dev_plan(root):
    return planned("dev")


def test_source_dest_check_on_breaks_forwarding(dev_plan, record_property):
    with built(mutated(dev_plan, source_dest_check_on("alpha")), wait=SHORT_WAIT) as lab:
        pings = [check_ping(d) for d in directions(lab.topology)]
        counters = netns.ns_run(
            lab.topology.sites[0].vpc_namespace,
            ["iptables", "-L", "source-dest-check", "-v", "-n", "-x"],
        ).stdout
    dropped = sum(int(line.split()[0]) for line in counters.splitlines()[2:] if line.strip())
    for ping in pings:
        print(ping.line())
    print(f"dropped by alpha's source/dest check in its VPC router: {dropped} packets")
    record_property("sourceDestCheck=True", "; ".join(p.line() for p in pings))
    assert lab.first_reply is None
    assert not any(p.ok for p in pings)
    assert dropped > 0


def test_missing_routes_mean_no_path(dev_plan, record_property):
    with built(mutated(dev_plan, no_routes_to_gateways), wait=SHORT_WAIT) as lab:
        pings = [check_ping(d) for d in directions(lab.topology)]
    for ping in pings:
        print(ping.line())
    record_property("routes removed", "; ".join(p.line() for p in pings))
    assert lab.first_reply is None
    assert not any(p.ok for p in pings)


def test_tunnel_port_open_to_all_lets_the_stranger_in(dev_plan, record_property):
    with built(mutated(dev_plan, tunnel_open_to_all("alpha"))) as lab:
        check = check_stranger(lab.topology, lab.state)
    print(check.line())
    record_property("cidrIpv4=0.0.0.0/0", check.line())
    assert not check.ok
    counted = re.search(r"alpha \S+ (\d+) arrived/(\d+) past", check.figure)
    assert counted, check.figure
    arrived, admitted = int(counted[1]), int(counted[2])
    assert admitted == arrived >= 1


def test_missing_mtu_is_a_black_hole(dev_plan, record_property):
    # Both gateways, as a template bug would do it. With one side still pinned, its MSS
    # clamp on the SYN-ACK would keep TCP below 1420 and only the DF ping would show it.
    with built(mutated(dev_plan, no_mtu_line("alpha"), no_mtu_line("beta"))) as lab:
        a_to_b = directions(lab.topology)[0]
        mtu = check_mtu(a_to_b)
        with b1_services(lab):
            transfer = check_transfer(a_to_b, timeout=10.0)
    print(mtu.line())
    print(transfer.line())
    record_property("no MTU line", f"{mtu.line()}; {transfer.line()}")
    assert "mtu 8921" in mtu.figure
    assert not mtu.ok
    assert not transfer.ok
