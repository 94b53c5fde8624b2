"""The issue's three-site mesh (tests/stacks/Pulumi.mesh3.yaml, wg0 at every site) in the
lab, built once for the module: traffic between every pair, each gateway with its own
WireGuard socket, and day 2: a fourth site added to the running mesh loses no ping."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.keys import public_key
from lab import netns
from lab.checks import check_handshake, check_ping, directions
from lab.day2 import ContinuousPing, add_sites
from lab.lifecycle import Lab
from lab.report import Check
from plan.engine import read_stack_file, run_program
from tests.lab.support import EXAMPLES, checks_by_name, example_lab

pytestmark = pytest.mark.lab

STACK = "mesh3"
# The site day 2 adds: the next region, the next /16, the same interface name.
ADDED = {
    "name": "south",
    "region": "ap-southeast-2",
    "cidr": "10.4.0.0/16",
    "interface": "wg0",
    "image": "20251212",
}


@pytest.fixture(scope="module")
def lab(root: None) -> Iterator[Lab]:
    with example_lab(STACK) as built:
        yield built


@pytest.fixture(scope="module")
def report(lab: Lab) -> dict[str, Check]:
    return checks_by_name(lab)


def test_every_pair_carries_traffic(lab: Lab, report: dict[str, Check]) -> None:
    labels = [d.label for d in directions(lab.topology)]
    assert labels == ["a1->b1", "a1->c1", "b1->a1", "b1->c1", "c1->a1", "c1->b1"]
    for label in labels:
        for kind in ("ping", "mtu", "no-nat"):
            assert report[f"{kind} {label}"].ok, report[f"{kind} {label}"].line()
        firewall = report[f"firewall {label} 'no ssh between sites'"]
        assert firewall.ok, firewall.line()


def test_every_check_passes(report: dict[str, Check]) -> None:
    # One trace per pair (later site to earlier), a handshake per gateway with every peer.
    for name in ("mtr b1->a1", "mtr c1->a1", "mtr c1->b1", "stranger", "transfer a1->b1"):
        assert name in report, sorted(report)
    assert [n for n in report if n.startswith("handshake")] == [
        "handshake east (wg0)",
        "handshake west (wg0)",
        "handshake central (wg0)",
    ]
    failed = [check.line() for check in report.values() if not check.ok]
    assert not failed, failed


def test_gateways_with_one_interface_name_each_have_their_own(lab: Lab) -> None:
    # wireguard-go's socket is /var/run/wireguard/wg0.sock at every site: the lab gives
    # each gateway its own directory, so each `wg` reaches its own gateway's interface.
    seen = []
    for site in lab.topology.sites:
        shown = netns.ns_run(site.gateway.namespace, ["wg", "show", "wg0", "public-key"])
        assert shown.stdout.strip() == public_key(site.gateway.private_key), site.name
        seen.append(shown.stdout.strip())
    assert len(set(seen)) == 3


def test_adding_a_site_loses_no_ping_on_the_existing_pairs(lab: Lab) -> None:
    config = copy.deepcopy(read_stack_file(STACK, EXAMPLES))
    config["sites"].append(ADDED)
    plan = run_program(f"{STACK}", config)
    pairs = directions(lab.topology)
    pings = [ContinuousPing(d.source.namespace, str(d.target.address.ip)) for d in pairs]
    time.sleep(1.0)
    started = time.monotonic()
    applied, _ = add_sites(lab, plan)
    seconds = time.monotonic() - started
    time.sleep(1.0)
    counts = {d.label: ping.stop() for d, ping in zip(pairs, pings, strict=True)}
    print(f"site added in {seconds:.1f} s; (sent, lost) per existing pair: {counts}")
    assert [(a.site, a.returncode) for a in applied] == [
        ("east", 0),
        ("west", 0),
        ("central", 0),
    ], [a.output for a in applied]
    assert all(sent >= 10 * seconds for sent, _ in counts.values()), counts
    assert all(lost == 0 for _, lost in counts.values()), counts
    added = lab.topology.member("south")
    assert check_handshake(added).ok, check_handshake(added).line()


def test_the_added_site_reaches_every_site(lab: Lab) -> None:
    # After test_adding_a_site_...: the mesh has four sites, twelve pairs.
    pairs = directions(lab.topology)
    assert len(pairs) == 12
    with ThreadPoolExecutor(max_workers=6) as pool:
        pings = list(pool.map(check_ping, [d for d in pairs if "d1" in d.label]))
    failed = [check.line() for check in pings if not check.ok]
    assert not failed, failed
