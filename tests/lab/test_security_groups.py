"""Security groups as AWS enforces them: egress only where a rule allows it, replies of
tracked flows both ways, and no implicit "related" admission for ICMP errors.

The positive tests build the dev stack's lab as planned; each negative control builds
its own lab from a plan with one rule removed and must lose exactly what that rule gave.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from lab import netns
from lab.build import SG_TABLE
from lab.checks import DATA_PORT, agent, send, services, tunnel_mtu
from lab.lifecycle import Lab
from lab.topology import EC2_MTU, Host
from tests.conftest import planned
from tests.lab.mutate import mutated, no_frag_needed_rule, no_workload_egress
from tests.lab.support import built

pytestmark = pytest.mark.lab

DATAGRAM = 2000  # over the tunnel's MTU, under the instances' 9001
SHORT_WAIT = 3.0
FRAG_NEEDED = {"type": 3, "code": 4}  # ICMP destination unreachable, fragmentation needed


@pytest.fixture(scope="module")
def dev_plan(root):
    return planned("dev")


@pytest.fixture(scope="class")
def lab(dev_plan) -> Iterator[Lab]:
    # As the dev_lab fixture, but without asserting the first reply: with the groups
    # wrong, that reply is what is missing, and the tests should say so themselves. Class
    # scope: it must be down before the negative controls build their own labs.
    with built(dev_plan) as lab:
        yield lab


def _tcp(source: Host, target: Host) -> dict[str, Any]:
    with services(target.namespace, [DATA_PORT]):
        return send(source.namespace, str(target.address.ip), DATA_PORT, 1000, timeout=5.0)


def _udp_df(source: Host, target: Host) -> dict[str, Any]:
    return agent(
        source.namespace,
        "udp-df",
        str(target.address.ip),
        str(DATA_PORT),
        "--bytes",
        str(DATAGRAM),
        "--timeout",
        "2",
        timeout=2,
    )


def _not_admitted(host: Host) -> int:
    """Packets the host's security group dropped on the way in."""
    listed = netns.ns_run(host.namespace, ["nft", "list", "chain", "inet", SG_TABLE, "ingress"])
    match = re.search(r'counter packets (\d+) bytes \d+ drop comment "not admitted"', listed.stdout)
    assert match, listed.stdout
    return int(match[1])


class TestAsPlanned:
    """The dev stack's lab, groups exactly as planned."""

    def test_workload_host_starts_tcp_to_the_other_site(self, lab, record_property):
        a1, b1 = lab.topology.sites[0].hosts[0], lab.topology.sites[1].hosts[0]
        result = _tcp(a1, b1)
        print(result)
        record_property("a1->b1 tcp", result["status"])
        assert result["status"] == "done", result
        assert result["server"]["bytes"] == 1000
        assert result["server"]["peer"] == str(a1.address.ip)

    def test_df_datagram_gets_frag_needed_from_its_gateway(self, lab, record_property):
        alpha, beta = lab.topology.sites
        a1, b1 = alpha.hosts[0], beta.hosts[0]
        mtu = tunnel_mtu(alpha)
        result = _udp_df(a1, b1)
        print(result)
        record_property("a1->b1 2000-byte DF udp", str(result))
        assert result["sent_bytes"] == DATAGRAM, result
        icmp = result["icmp"]
        assert icmp is not None, f"no ICMP error came back: {result}"
        assert {k: icmp[k] for k in FRAG_NEEDED} == FRAG_NEEDED
        assert icmp["from"] == str(alpha.gateway.private_address.ip)
        assert icmp["mtu"] == mtu == alpha.facts.mtu
        # The kernel learnt the path MTU: the same datagram is now refused before it leaves.
        assert result["path_mtu"] == mtu
        assert result["resend"] == "EMSGSIZE"


def test_without_egress_a_host_starts_nothing_but_still_answers(dev_plan, record_property):
    with built(mutated(dev_plan, no_workload_egress("alpha")), wait=SHORT_WAIT) as lab:
        a1, b1 = lab.topology.sites[0].hosts[0], lab.topology.sites[1].hosts[0]
        assert a1.egress == ()
        outbound = _tcp(a1, b1)
        inbound = _tcp(b1, a1)
    print(f"a1->b1 {outbound}; b1->a1 {inbound}")
    record_property("no egress", f"a1->b1 {outbound['status']}; b1->a1 {inbound['status']}")
    assert lab.first_reply is None
    assert outbound["status"] != "done"
    # a1's replies leave on the tracked flow, with no egress rule at all.
    assert inbound["status"] == "done", inbound
    assert inbound["server"]["peer"] == str(b1.address.ip)


def test_without_the_icmp_rule_frag_needed_is_dropped(dev_plan, record_property):
    with built(mutated(dev_plan, no_frag_needed_rule("alpha"))) as lab:
        a1, b1 = lab.topology.sites[0].hosts[0], lab.topology.sites[1].hosts[0]
        assert not any(
            rule.protocol == "icmp" and rule.from_port in (3, -1) and rule.to_port in (4, -1)
            for rule in a1.ingress or ()
        )
        before = _not_admitted(a1)
        result = _udp_df(a1, b1)
        dropped = _not_admitted(a1) - before
    print(f"{result}; dropped by a1's security group: {dropped}")
    record_property("no frag-needed rule", f"{result}; {dropped} dropped")
    assert result["sent_bytes"] == DATAGRAM, result
    assert result["icmp"] is None
    assert result["path_mtu"] == EC2_MTU
    assert result["resend"] == "sent"
    # The gateway did answer: the error reached a1's interface and its group dropped it.
    assert dropped >= 1
