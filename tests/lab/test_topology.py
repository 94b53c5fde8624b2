"""The lab's topology comes from the plan and the core (no root needed)."""

from __future__ import annotations

import copy
import ipaddress
import json

import pytest

from lab import PREFIX
from lab.topology import derive
from tests.conftest import planned
from tests.lab.mutate import (
    attached_as_primary,
    mutated,
    no_mtu_line,
    no_routes_to_gateways,
    source_dest_check_on,
    tunnel_open_to_all,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def dev_plan():
    return planned("dev")


def test_addresses_come_from_plan_and_facts(dev_plan):
    alpha, beta = derive(dev_plan).sites
    eips = {r.name: r.outputs["publicIp"] for r in dev_plan.by_type("aws:ec2/eip:Eip")}
    assert str(alpha.gateway.elastic_ip) == eips["alpha-address"]
    assert str(beta.gateway.elastic_ip) == eips["beta-address"]
    assert alpha.gateway.private_address.ip == alpha.facts.layout.gateway_private_ip
    assert alpha.public_router.ip == alpha.facts.layout.router
    assert alpha.hosts[0].address.ip in alpha.facts.layout.private_subnet
    assert alpha.gateway.source_dest_check is False


def test_route_tables_as_declared(dev_plan):
    alpha = derive(dev_plan).sites[0]
    for table in (alpha.public_table, alpha.private_table):
        via = {str(r.destination): r for r in table.routes if r.kind == "gateway"}
        assert via["10.2.0.0/16"].via == ipaddress.IPv4Address("10.1.0.4")
    assert any(r.kind == "internet" for r in alpha.public_table.routes)
    assert not any(r.kind == "internet" for r in alpha.private_table.routes)


def test_security_group_rules(dev_plan):
    alpha = derive(dev_plan).sites[0]
    tunnel = next(r for r in alpha.gateway.ingress if r.protocol == "udp")
    assert (tunnel.from_port, str(tunnel.cidr)) == (51000, "203.0.113.20/32")


def test_egress_rules_as_declared(dev_plan):
    alpha = derive(dev_plan).sites[0]
    assert [r.describe() for r in alpha.gateway.egress] == ["all to 0.0.0.0/0"]
    assert [r.describe() for r in alpha.hosts[0].egress or ()] == ["all to 10.2.0.0/16"]


def test_names_are_prefixed_and_key_is_not_shown(dev_plan):
    topology = derive(dev_plan)
    assert all(ns.startswith(PREFIX) for ns in topology.namespaces)
    key = topology.sites[0].gateway.private_key
    assert key and key not in repr(topology)


def test_mutations_reach_the_topology(dev_plan):
    broken = mutated(
        dev_plan,
        source_dest_check_on("alpha"),
        no_routes_to_gateways,
        tunnel_open_to_all("alpha"),
        no_mtu_line("beta"),
    )
    alpha, beta = derive(broken).sites
    assert alpha.gateway.source_dest_check
    assert not any(r.kind == "gateway" for r in alpha.private_table.routes)
    assert any(str(r.cidr) == "0.0.0.0/0" for r in alpha.gateway.ingress)
    state = beta.gateway.parameters[beta.facts.desired_state_parameter_name][1]
    assert "MTU = " not in json.loads(state)["config"]
    # The original plan is untouched.
    assert derive(dev_plan).sites[0].gateway.source_dest_check is False


def test_a_gateway_on_primary_network_interface_has_the_check_on(dev_plan):
    # The lab reads the check AWS holds after the next `pulumi up`: with d82e7db's
    # attachment the provider writes the instance's default (on) to the interface.
    alpha, beta = derive(mutated(dev_plan, attached_as_primary("alpha"))).sites
    assert alpha.gateway.source_dest_check is True
    assert beta.gateway.source_dest_check is False


# The example stacks (tests/stacks), planned once for this module with the lab's
# own office keys.
@pytest.fixture(scope="module")
def hub_nat():
    from lab.office import with_lab_keys
    from plan.engine import read_stack_file, run_program
    from tests.lab.support import EXAMPLES

    config, keys = with_lab_keys(read_stack_file("hub-nat", EXAMPLES))
    return run_program("hub-nat", config), keys, config


def test_offices_and_every_pair_of_a_hub(hub_nat):
    from lab.checks import directions, expected_hops, trace_directions

    plan, keys, _ = hub_nat
    topology = derive(plan)
    assert [m.name for m in topology.members] == ["core", "spoke-a", "spoke-b", "office"]
    (office,) = topology.offices
    assert [s.name for s in topology.sites] == ["core", "spoke-a", "spoke-b"]
    # The lab's key for the office is the one the plan has: it plays the office.
    from core.keys import public_key

    external = office.facts.site.external
    assert external is not None and external.source_cidr is not None
    assert public_key(keys["office"]) == external.public_key
    # Behind NAT: its router's outside address is in the sourceCidr, never the stranger's.
    assert office.nat is not None
    assert office.nat.outside in external.source_cidr
    assert office.public_address == office.nat.outside
    # Every ordered pair is joined (through the hub), one trace per pair.
    assert len(directions(topology)) == 12 and len(trace_directions(topology)) == 6
    c1_to_b1 = next(d for d in directions(topology) if d.label == "c1->b1")
    core, spoke_a, spoke_b = topology.sites
    assert expected_hops(c1_to_b1) == [
        str(spoke_b.gateway.private_address.ip),
        str(core.facts.tunnel_address.ip),
        str(spoke_a.facts.tunnel_address.ip),
        str(spoke_a.hosts[0].address.ip),
    ]
    b1_to_a1 = next(d for d in directions(topology) if d.label == "b1->a1")
    assert len(expected_hops(b1_to_a1)) == 3


def test_a_stranger_inside_an_admitted_source_cidr_is_refused(hub_nat):
    from lab import LabError
    from lab.topology import STRANGER

    plan, _, _ = hub_nat
    broken = copy.deepcopy(plan)
    office = next(s for s in broken.config["sites"] if s["name"] == "office")
    office["external"]["sourceCidr"] = str(ipaddress.IPv4Network(f"{STRANGER.ip}/28", strict=False))
    with pytest.raises(
        LabError, match=r"site office: the lab's stranger 198\.51\.100\.200 is inside"
    ):
        derive(broken)


def test_four_sites_for_the_bench(dev_plan):
    from lab.bench import four_sites
    from plan.engine import read_stack_file

    config = four_sites(read_stack_file("dev"))
    assert [s["name"] for s in config["sites"]] == ["alpha", "beta", "gamma", "delta"]
    assert config["tunnel"]["cidr"] == "10.255.255.0/29"
    cidrs = [ipaddress.IPv4Network(s["cidr"]) for s in config["sites"]]
    assert not any(a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1 :])


def test_an_office_admitting_the_auto_assigned_addresses_is_refused(hub_nat):
    from lab import LabError

    plan, _, _ = hub_nat
    broken = copy.deepcopy(plan)
    office = next(s for s in broken.config["sites"] if s["name"] == "office")
    office["external"]["sourceCidr"] = "192.0.2.200/29"
    with pytest.raises(
        LabError, match=r"site office: 192\.0\.2\.200/29 overlaps 192\.0\.2\.192/26"
    ):
        derive(broken)


# Two gateways per site (tests/stacks/Pulumi.ha.yaml), planned once for this module.
@pytest.fixture(scope="module")
def ha_plan():
    from plan.engine import read_stack_file
    from tests.lab.support import EXAMPLES

    return planned("ha", read_stack_file("ha", EXAMPLES), shared=True)


def test_two_gateways_per_site(ha_plan, dev_plan):
    from lab.build import gateway_link
    from lab.topology import AUTO_PUBLIC, LINK_PUBLIC, LINK_PUBLIC2

    topology = derive(ha_plan)
    alpha, beta = topology.sites
    assert topology.gateway_namespaces == [
        f"{PREFIX}alpha-gw",
        f"{PREFIX}alpha-gw2",
        f"{PREFIX}beta-gw",
        f"{PREFIX}beta-gw2",
    ]
    assert set(topology.gateway_namespaces) <= set(topology.namespaces)
    first, second = alpha.gateways
    # Each on its own interface and instance in its own subnet, at the core's addresses.
    assert [g.private_address.ip for g in alpha.gateways] == list(alpha.facts.gateway_private_ips)
    assert second.private_address.network == alpha.facts.layout.second_public_subnet
    assert (first.link, second.link) == (LINK_PUBLIC, LINK_PUBLIC2)
    assert alpha.gateway_router(second).ip == alpha.facts.layout.second_public_subnet[1]
    assert first.eni != second.eni and first.instance_id != second.instance_id
    assert gateway_link(alpha, second.private_address.ip) == LINK_PUBLIC2
    # One Elastic IP per site (the one its outputs name; the plan associates none), and an
    # auto-assigned public address per gateway, each its own.
    eips = {r.name: r for r in ha_plan.by_type("aws:ec2/eip:Eip")}
    assert (
        str(first.elastic_ip) == str(second.elastic_ip) == eips["alpha-address"].outputs["publicIp"]
    )
    assert alpha.allocation_id == eips["alpha-address"].outputs["allocationId"]
    autos = [g.auto_public_ip for site in topology.sites for g in site.gateways]
    assert all(a is not None and a in AUTO_PUBLIC for a in autos) and len(set(autos)) == 4
    # Three route tables, each routing the site's destinations to gateway 0 at first.
    assert alpha.second_public_table is not None
    assert [t.table for t in alpha.tables] == [101, 102, 103]
    for table in alpha.tables:
        gateway_routes = {str(r.destination): r.via for r in table.routes if r.kind == "gateway"}
        assert gateway_routes == {
            str(d): first.private_address.ip for d in alpha.facts.routed_destinations
        }, table.name
    assert any(r.kind == "internet" for r in alpha.second_public_table.routes)
    assert beta.highly_available and beta.second is not None
    # A single-gateway site keeps one gateway, two route tables, no auto-assigned address.
    one = derive(dev_plan).sites[0]
    assert len(one.gateways) == 1 and len(one.tables) == 2
    assert one.gateway.auto_public_ip is None and not one.highly_available


def test_the_failover_section_names_motos_ids(ha_plan):
    from lab.aws import translate_ids

    alpha = derive(ha_plan).sites[0]
    name = alpha.facts.desired_state_parameter_name
    value = alpha.gateway.parameters[name][1]
    planned_ids = json.loads(value)["failover"]
    ids = {planned_ids["allocationId"]: "eipalloc-moto"}
    ids |= {g["networkInterfaceId"]: f"eni-moto{i}" for i, g in enumerate(planned_ids["gateways"])}
    ids |= {r["routeTableId"]: "rtb-moto-" + r["routeTableId"][-3:] for r in planned_ids["routes"]}
    translated = json.loads(translate_ids(value, ids))
    failover = translated["failover"]
    assert failover["allocationId"] == "eipalloc-moto"
    assert [g["networkInterfaceId"] for g in failover["gateways"]] == ["eni-moto0", "eni-moto1"]
    assert all(r["routeTableId"].startswith("rtb-moto-") for r in failover["routes"])
    # Nothing else changes; a value without a failover section is left as it is.
    assert {k: v for k, v in translated.items() if k != "failover"} == {
        k: v for k, v in json.loads(value).items() if k != "failover"
    }
    assert translate_ids('{"config": "x"}', ids) == '{"config": "x"}'


def test_the_internet_gateway_maps_the_elastic_ip_to_its_holder():
    from lab.controller import nat_ruleset

    gateways = [("eni-0", "10.1.0.4", "192.0.2.192"), ("eni-1", "10.1.2.4", "192.0.2.193")]
    held = nat_ruleset("203.0.113.10", gateways, "eni-1")
    assert "ip daddr 203.0.113.10 ip daddr set 10.1.2.4" in held
    assert "ip saddr 10.1.2.4 ip saddr set 203.0.113.10" in held
    assert "ip saddr 10.1.0.4 ip saddr set 192.0.2.192" in held
    assert "ip daddr 192.0.2.192 ip daddr set 10.1.0.4" in held
    assert "10.1.0.4 ip saddr set 203.0.113.10" not in held
    free = nat_ruleset("203.0.113.10", gateways, None)
    assert "ip daddr 203.0.113.10 drop" in free
    assert "set 203.0.113.10" not in free


def test_a_stack_may_be_named_by_its_file():
    from lab import LabError
    from lab.cli import stack_location
    from plan.engine import STACKS
    from tests.lab.support import EXAMPLES

    assert stack_location("dev") == ("dev", STACKS)
    assert stack_location(str(EXAMPLES / "Pulumi.ha.yaml")) == ("ha", EXAMPLES)
    with pytest.raises(LabError, match=r"not a file named Pulumi\.<stack>\.yaml"):
        stack_location(str(EXAMPLES / "missing.yaml"))


def test_the_gateways_own_state_directory_is_where_the_scripts_look():
    # The role file and the probe's markers live there (core.facts); the lab mounts a
    # directory of each HA gateway's own over that path (lab.build.run_dir), which
    # test_failover's roles (one active, one standby at once) depend on.
    from core.facts import PROBE_STATE_DIR
    from lab import GATEWAY_RUN

    assert str(GATEWAY_RUN) == PROBE_STATE_DIR
