"""The example stacks of issue 15 (tests/stacks/: three sites in a mesh, two AWS sites and an
office with a static address, a hub with two spokes and a NATed office), each planned once
per session by the real program under the mock engine: peers, AllowedIPs, endpoints,
security-group sources and routes, as the planned resources hold them.

The expected values are written out here, not derived from core/facts.py: the mocks give
Elastic IPs 203.0.113.10, .20, .30 in site order, and the tunnel addresses are the tunnel
cidr's hosts in site order.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from components.site_to_site import name_clashes
from plan import cost, document
from plan.engine import Plan, PlanError, read_stack_file, reveal, run_program
from policy import offline, rules
from tests.conftest import planned

TEST_STACKS = Path(__file__).resolve().parent / "stacks"
PARAMETER = "aws:ssm/parameter:Parameter"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
ROUTE = "aws:ec2/route:Route"
INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"

# Per stack: every site's CIDR and tunnel address, and for every AWS gateway its peers,
# each as (AllowedIPs, Endpoint or None) in site order.
EXPECTED: dict[str, dict[str, Any]] = {
    "mesh3": {
        "cidrs": {"east": "10.1.0.0/16", "west": "10.2.0.0/16", "central": "10.3.0.0/16"},
        "tunnel": {"east": "10.255.255.1", "west": "10.255.255.2", "central": "10.255.255.3"},
        "peers": {
            "east": {
                "west": ("10.255.255.2/32, 10.2.0.0/16", "203.0.113.20:51000"),
                "central": ("10.255.255.3/32, 10.3.0.0/16", "203.0.113.30:51000"),
            },
            "west": {
                "east": ("10.255.255.1/32, 10.1.0.0/16", "203.0.113.10:51000"),
                "central": ("10.255.255.3/32, 10.3.0.0/16", "203.0.113.30:51000"),
            },
            "central": {
                "east": ("10.255.255.1/32, 10.1.0.0/16", "203.0.113.10:51000"),
                "west": ("10.255.255.2/32, 10.2.0.0/16", "203.0.113.20:51000"),
            },
        },
        "sources": {
            "east": {"203.0.113.20/32", "203.0.113.30/32"},
            "west": {"203.0.113.10/32", "203.0.113.30/32"},
            "central": {"203.0.113.10/32", "203.0.113.20/32"},
        },
    },
    "office-static": {
        "cidrs": {"alpha": "10.1.0.0/16", "beta": "10.2.0.0/16", "office": "192.168.10.0/24"},
        "tunnel": {"alpha": "10.255.255.1", "beta": "10.255.255.2", "office": "10.255.255.3"},
        "peers": {
            "alpha": {
                "beta": ("10.255.255.2/32, 10.2.0.0/16", "203.0.113.20:51000"),
                "office": ("10.255.255.3/32, 192.168.10.0/24", "198.51.100.7:51000"),
            },
            "beta": {
                "alpha": ("10.255.255.1/32, 10.1.0.0/16", "203.0.113.10:51000"),
                "office": ("10.255.255.3/32, 192.168.10.0/24", "198.51.100.7:51000"),
            },
        },
        "sources": {
            "alpha": {"203.0.113.20/32", "198.51.100.7/32"},
            "beta": {"203.0.113.10/32", "198.51.100.7/32"},
        },
    },
    "hub-nat": {
        "cidrs": {
            "core": "10.0.0.0/16",
            "spoke-a": "10.10.0.0/16",
            "spoke-b": "10.20.0.0/16",
            "office": "192.168.10.0/24",
        },
        "tunnel": {
            "core": "10.255.255.1",
            "spoke-a": "10.255.255.2",
            "spoke-b": "10.255.255.3",
            "office": "10.255.255.4",
        },
        "peers": {
            "core": {
                "spoke-a": ("10.255.255.2/32, 10.10.0.0/16", "203.0.113.20:51000"),
                "spoke-b": ("10.255.255.3/32, 10.20.0.0/16", "203.0.113.30:51000"),
                # Behind NAT: no Endpoint, it dials in.
                "office": ("10.255.255.4/32, 192.168.10.0/24", None),
            },
            # A spoke's one peer is the hub, through which it reaches every other site.
            "spoke-a": {
                "core": (
                    "10.255.255.1/32, 10.255.255.3/32, 10.255.255.4/32, "
                    "10.0.0.0/16, 10.20.0.0/16, 192.168.10.0/24",
                    "203.0.113.10:51000",
                )
            },
            "spoke-b": {
                "core": (
                    "10.255.255.1/32, 10.255.255.2/32, 10.255.255.4/32, "
                    "10.0.0.0/16, 10.10.0.0/16, 192.168.10.0/24",
                    "203.0.113.10:51000",
                )
            },
        },
        "sources": {
            # The hub admits each spoke's Elastic IP and the office's declared sourceCidr;
            # a spoke admits only the hub.
            "core": {"203.0.113.20/32", "203.0.113.30/32", "198.51.100.64/28"},
            "spoke-a": {"203.0.113.10/32"},
            "spoke-b": {"203.0.113.10/32"},
        },
    },
}
STACKS = tuple(EXPECTED)


def example(stack: str) -> Plan:
    """The example stack's plan, made once per session (shared: do not change it)."""
    return planned(stack, read_stack_file(stack, TEST_STACKS), shared=True)


@pytest.fixture(scope="module", params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def desired_state(plan: Plan, site: str) -> dict[str, Any]:
    state = json.loads(plan.one(PARAMETER, f"{site}-desired-state").inputs["insecureValue"])
    assert isinstance(state, dict)
    return state


def wg_peers(config: str) -> dict[str, tuple[str, str | None]]:
    """Peer name -> (AllowedIPs, Endpoint or None) from a wg-quick config's [Peer]s."""
    found = {}
    for section in config.split("[Peer]")[1:]:
        lines = [line.strip() for line in section.strip().splitlines()]
        name = lines[0].removeprefix("# ").split(" ", 1)[0]
        values = dict(line.split(" = ", 1) for line in lines[1:] if " = " in line)
        found[name] = (values["AllowedIPs"], values.get("Endpoint"))
    return found


def test_each_gateway_has_its_topologys_peers_allowed_ips_and_endpoints(stack):
    plan, expected = example(stack), EXPECTED[stack]
    for site, peers in expected["peers"].items():
        state = desired_state(plan, site)
        assert wg_peers(state["config"]) == peers, site
        # The probe's and the check's list: every peer, its tunnel address.
        assert [(p["name"], p["address"]) for p in state["peers"]] == [
            (peer, expected["tunnel"][peer]) for peer in peers
        ]


def test_only_aws_sites_have_resources(stack):
    plan, expected = example(stack), EXPECTED[stack]
    gateways = sorted(r.name for r in plan.by_type("aws:ec2/instance:Instance"))
    assert gateways == sorted(f"{site}-gateway" for site in expected["peers"])
    offices = set(expected["cidrs"]) - set(expected["peers"])
    assert not [r.name for r in plan.resources if r.name.split("-")[0] in offices]
    assert sorted(plan.exports["sites"]) == sorted(expected["peers"])
    # Cost: one gateway per AWS site, nothing for an office.
    lines = cost.monthly_cost(document.public_document(plan)).lines
    instances = sum(int(line.quantity.split(" ")[0]) for line in lines if line.item[:4] == "EC2 ")
    assert instances == len(expected["peers"])


def test_tunnel_port_admits_exactly_each_peers_address(stack):
    plan, expected = example(stack), EXPECTED[stack]
    for site, sources in expected["sources"].items():
        group = plan.one("aws:ec2/securityGroup:SecurityGroup", f"{site}-gateway").outputs["id"]
        udp = {
            r.inputs["cidrIpv4"]
            for r in plan.by_type(INGRESS)
            if r.inputs["securityGroupId"] == group and r.inputs["ipProtocol"] == "udp"
        }
        assert udp == sources, site
        tunnel = [r for r in plan.by_type(INGRESS) if r.name.startswith(f"{site}-tunnel-from-")]
        assert all(r.inputs["fromPort"] == r.inputs["toPort"] == 51000 for r in tunnel)


def test_every_route_table_sends_every_other_site_to_the_gateway(stack):
    plan, expected = example(stack), EXPECTED[stack]
    for site in expected["peers"]:
        interface = plan.one(INTERFACE, f"{site}-gateway").outputs["id"]
        tables = [
            r.outputs["id"]
            for r in plan.by_type("aws:ec2/routeTable:RouteTable")
            if r.name.startswith(f"{site}-")
        ]
        assert len(tables) == 2
        others = {cidr for name, cidr in expected["cidrs"].items() if name != site}
        routes = [
            r
            for r in plan.by_type(ROUTE)
            if r.inputs["routeTableId"] in tables and r.inputs.get("networkInterfaceId")
        ]
        assert {(r.inputs["routeTableId"], r.inputs["destinationCidrBlock"]) for r in routes} == {
            (table, cidr) for table in tables for cidr in others
        }
        assert {r.inputs["networkInterfaceId"] for r in routes} == {interface}


def test_workloads_admit_every_other_site_and_its_gateways_icmp_errors(stack):
    plan, expected = example(stack), EXPECTED[stack]
    for site in expected["peers"]:
        group = plan.one("aws:ec2/securityGroup:SecurityGroup", f"{site}-from-peer-site")
        gid = group.outputs["id"]
        others = {name for name in expected["cidrs"] if name != site}
        rules_of = [r for r in plan.by_type(INGRESS) if r.inputs["securityGroupId"] == gid]
        everything = {r.inputs["cidrIpv4"] for r in rules_of if r.inputs["ipProtocol"] == "-1"}
        assert everything == {expected["cidrs"][name] for name in others}
        egress = {
            r.inputs["cidrIpv4"] for r in plan.by_type(EGRESS) if r.inputs["securityGroupId"] == gid
        }
        assert egress == everything
        icmp = {
            (r.inputs["fromPort"], r.inputs["cidrIpv4"])
            for r in rules_of
            if r.inputs["ipProtocol"] == "icmp"
            and r.inputs["fromPort"] in (3, 11)
            and r.inputs["toPort"] == -1
            # (the own gateway's, from its private address, are the gateway's rules)
            and not r.name.endswith("-from-gateway")
        }
        assert icmp == {
            (kind, f"{expected['tunnel'][name]}/32") for kind in (3, 11) for name in others
        }


def test_one_preshared_key_per_pair_stored_by_each_aws_side(stack):
    plan, expected = example(stack), EXPECTED[stack]
    pairs = {frozenset((site, peer)) for site, peers in expected["peers"].items() for peer in peers}
    keys = [
        r for r in plan.by_type("random:index/randomBytes:RandomBytes") if "preshared" in r.name
    ]
    assert len(keys) == len(pairs)
    for site, peers in expected["peers"].items():
        kms = plan.one("aws:kms/key:Key", f"{site}-wireguard-key").outputs["arn"]
        for peer in peers:
            parameter = plan.one(PARAMETER, f"{site}-preshared-key-{peer}").inputs
            assert (
                parameter["name"]
                == f"/wg-site-to-site/{stack}/{site}/{peer}/wireguard-preshared-key"
            )
            assert (parameter["type"], parameter["keyId"]) == ("SecureString", kms)
            if peer in expected["peers"]:
                # Both AWS sides of the pair hold the same key (a boolean: never print it).
                theirs = plan.one(PARAMETER, f"{peer}-preshared-key-{site}").inputs["value"]
                same = reveal(parameter["value"]) == reveal(theirs)
                assert same
        # Only its own gateway's role reads them.
        policy = json.loads(
            plan.one("aws:iam/rolePolicy:RolePolicy", f"{site}-read-own-parameters").inputs[
                "policy"
            ]
        )
        (reads,) = [s for s in policy["Statement"] if s["Action"] == "ssm:GetParameter"]
        assert len(reads["Resource"]) == 2 + len(peers)
        assert all(f"/{stack}/{site}/" in arn for arn in reads["Resource"])


def test_each_peer_has_its_own_tunnel_alarm_and_dashboard_line(stack):
    plan, expected = example(stack), EXPECTED[stack]
    for site, peers in expected["peers"].items():
        for peer in peers:
            alarm = plan.one(ALARM, f"{site}-{peer}-tunnel-down").inputs
            assert alarm["dimensions"]["Peer"] == peer
            assert alarm["dimensions"]["Site"] == site
    (dashboard,) = plan.by_type("aws:cloudwatch/dashboard:Dashboard")
    widgets = json.loads(dashboard.inputs["dashboardBody"])["widgets"]
    up = {
        w["properties"]["title"].split(":")[0]: [m[7] for m in w["properties"]["metrics"]]
        for w in widgets
        if w["properties"]["metrics"][0][1] == "TunnelUp"
    }
    assert up == {site: list(peers) for site, peers in expected["peers"].items()}


def test_every_example_passes_every_mandatory_policy(stack):
    found = rules.mandatory(rules.evaluate(offline.resources_from_plan(example(stack))))
    assert found == [], [(v.policy, v.name, v.message) for v in found]


def _with_cidr(resources: list[rules.Resource], name: str, cidr: str) -> list[rules.Resource]:
    edited = []
    for r in resources:
        if r.type == INGRESS and r.name == name:
            props = copy.deepcopy(dict(r.props))
            props["cidrIpv4"] = cidr
            edited.append(rules.Resource(r.type, r.name, r.urn, props, r.dependencies))
        else:
            edited.append(r)
    return edited


@pytest.mark.parametrize(
    ("stack_name", "rule", "cidr"),
    [
        # Wider than the office declares.
        ("hub-nat", "core-tunnel-from-office", "198.51.100.0/24"),
        # The office's sourceCidr, on another peer's rule.
        ("hub-nat", "core-tunnel-from-spoke-a", "198.51.100.64/28"),
        # An office with a static address declares no range at all.
        ("office-static", "alpha-tunnel-from-office", "198.51.100.0/28"),
    ],
    ids=["wider-than-declared", "another-peers-rule", "office-without-source-cidr"],
)
def test_port_policy_accepts_a_source_cidr_only_for_the_office_declaring_it(stack_name, rule, cidr):
    resources = offline.resources_from_plan(example(stack_name))
    assert rules.mandatory(rules.evaluate(resources)) == []

    found = rules.mandatory(rules.evaluate(_with_cidr(resources, rule, cidr)))

    assert [(v.policy, v.name) for v in found] == [("wireguard-port-not-public", rule)]
    assert f"admits udp from {cidr}" in found[0].message


def test_site_names_that_join_alike_are_refused_in_one_line():
    assert name_clashes(["core", "spoke-a", "spoke-b", "office"]) == []
    (line,) = name_clashes(["a", "b-c", "a-b", "c"])
    assert line.startswith("wg-site-to-site:sites: the names a and b-c and the names a-b and c")
    config = read_stack_file("mesh3", TEST_STACKS)
    for site, name in zip(config["sites"], ["a", "b-c", "a-b"], strict=True):
        site["name"] = name
    config["sites"].append({**config["sites"][0], "name": "c", "cidr": "10.4.0.0/16"})
    with pytest.raises(PlanError) as error:
        run_program("clash", config)
    assert "rename one of these sites" in str(error.value)
    assert "Traceback" not in str(error.value)
