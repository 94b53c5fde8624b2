"""The dev stack's lab: every check of the report passes."""

from __future__ import annotations

import pytest

from lab.checks import run_all
from lab.report import Check

pytestmark = pytest.mark.lab

# Spelled out, so that a check that disappears from the report fails here.
EXPECTED = [
    "ping a1->b1",
    "ping b1->a1",
    "handshake alpha (wgA)",
    "handshake beta (wgB)",
    "mtr b1->a1",
    "mtu a1->b1",
    "mtu b1->a1",
    "no-nat a1->b1",
    "no-nat b1->a1",
    "firewall a1->b1 'no ssh between sites'",
    "firewall b1->a1 'no ssh between sites'",
    "transfer a1->b1",
    "stranger",
]


@pytest.fixture(scope="module")
def report(dev_lab) -> dict[str, Check]:
    checks = run_all(dev_lab.topology, dev_lab.state)
    for check in checks:
        print(check.line())
    return {check.name: check for check in checks}


@pytest.mark.parametrize("name", EXPECTED)
def test_check_passes(report, name, record_property):
    assert name in report, f"the report has no check {name!r}: {sorted(report)}"
    record_property(name, report[name].line())
    assert report[name].ok, report[name].line()


def test_report_has_no_unexpected_checks(report):
    assert sorted(report) == sorted(EXPECTED)


def test_trace_shows_the_guides_three_hops(report, dev_lab):
    beta_gw, alpha_tunnel = dev_lab.topology.sites[1], dev_lab.topology.sites[0]
    figure = report["mtr b1->a1"].figure
    expected = (
        f"hops {beta_gw.gateway.private_address.ip} {alpha_tunnel.facts.tunnel_address.ip}"
        f" {alpha_tunnel.hosts[0].address.ip} "
    )
    assert figure.startswith(expected), figure
