"""The issue's hub with two spokes and an office behind NAT (tests/stacks/Pulumi.hub-nat.yaml)
in the lab, built once: every pair carries traffic (spoke to spoke through the hub, as the
traces show), and the office, configured only by its bundle's install.sh, dials out through
a masquerading router on its uplink."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from lab import netns
from lab.build import in_etc
from lab.checks import directions
from lab.lifecycle import Lab
from lab.report import Check
from tests.lab.support import checks_by_name, example_lab, the_office

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(root: None) -> Iterator[Lab]:
    with example_lab("hub-nat") as built:
        yield built


@pytest.fixture(scope="module")
def report(lab: Lab) -> dict[str, Check]:
    return checks_by_name(lab)


def test_every_pair_carries_traffic_through_the_hub(lab: Lab, report: dict[str, Check]) -> None:
    # core (a1) is the hub; spoke-a (b1), spoke-b (c1) and the office (d1) its spokes:
    # every pair is joined, the spokes' through the hub.
    assert len(directions(lab.topology)) == 12
    failed = [c.line() for c in report.values() if not c.ok]
    assert not failed, failed


def test_spoke_to_spoke_traces_show_the_hub(lab: Lab, report: dict[str, Check]) -> None:
    core, spoke_a, spoke_b = lab.topology.sites
    office = the_office(lab)
    hub = str(core.facts.tunnel_address.ip)
    for source, target, label in (
        (spoke_b, spoke_a, "c1->b1"),
        (office, spoke_a, "d1->b1"),
        (office, spoke_b, "d1->c1"),
    ):
        figure = report[f"mtr {label}"].figure
        hops = [
            str(source.gateway.private_address.ip),
            hub,
            str(target.facts.tunnel_address.ip),
            str(target.hosts[0].address.ip),
        ]
        assert figure.startswith(f"hops {' '.join(hops)} "), figure
    # From a spoke to the hub's own site: no hop between.
    assert report["mtr b1->a1"].figure.startswith(
        f"hops {spoke_a.gateway.private_address.ip} {hub} {core.hosts[0].address.ip} "
    )


def test_the_nated_office_dials_out_through_its_router(lab: Lab) -> None:
    core = lab.topology.sites[0]
    office = the_office(lab)
    assert office.nat is not None
    external = office.facts.site.external
    assert external is not None and office.nat.outside in external.source_cidr  # type: ignore[operator]
    # The hub has no Endpoint for it (its config names none) and learned the router's
    # address from the office's own packets.
    state = core.gateway.parameters[core.facts.desired_state_parameter_name][1]
    section = json.loads(state)["config"].split(f"PublicKey = {external.public_key}")[1]
    assert "Endpoint" not in section.split("[Peer]")[0]
    endpoints = netns.ns_run(core.gateway.namespace, ["wg", "show", "wg0", "endpoints"])
    learned = dict(line.split("\t") for line in endpoints.stdout.strip().splitlines())
    assert learned[external.public_key].startswith(f"{office.nat.outside}:"), learned
    # It keeps its mapping open itself, and its router masqueraded what it sent.
    office_conf = in_etc(office.gateway.namespace, "/etc/wireguard/wg0.conf").read_text()
    assert re.search(r"^PersistentKeepalive = \d+$", office_conf, flags=re.MULTILINE)
    nat = netns.ns_run(office.nat.namespace, ["iptables", "-t", "nat", "-L", "-v", "-n", "-x"])
    masqueraded = re.search(r"^\s*(\d+)\s+\d+\s+MASQUERADE", nat.stdout, flags=re.MULTILINE)
    assert masqueraded and int(masqueraded[1]) > 0, nat.stdout
