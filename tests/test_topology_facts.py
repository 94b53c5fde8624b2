"""Peers, AllowedIPs, endpoints and tunnel addresses for N sites, mesh and hub (core/facts)."""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import Any

import pytest

from core.config import load_stack_config
from core.facts import NAT_KEEPALIVE_SECONDS, GatewayFacts, gateway_facts
from core.render import (
    FailoverInputs,
    PeerEndpoint,
    configured_endpoint,
    desired_state_bound,
    render_desired_state,
    render_wg_config,
)

OFFICE_KEY = base64.b64encode(bytes(range(32))).decode()
AWS_KEY = base64.b64encode(bytes(range(1, 33))).decode()


def _site(name: str, cidr: str, **extra: Any) -> dict[str, Any]:
    site: dict[str, Any] = {"name": name, "cidr": cidr, "interface": "wg0", **extra}
    if "external" not in extra:
        site.setdefault("region", "us-east-1")
    return site


def _facts(*sites: dict[str, Any], hub: str | None = None) -> dict[str, GatewayFacts]:
    raw: dict[str, Any] = {
        "tunnel": {"cidr": "10.255.255.0/24", "port": 51820},
        "sites": list(sites),
    }
    if hub:
        raw["topology"] = {"hub": hub}
    return {f.name: f for f in gateway_facts(load_stack_config(raw), "t")}


def _allowed(facts: GatewayFacts) -> dict[str, list[str]]:
    return {peer.name: [str(net) for net in peer.allowed_ips] for peer in facts.peers}


def _endpoints(facts: GatewayFacts) -> dict[str, PeerEndpoint]:
    """Offices from the config, AWS peers as the deploy would give them."""
    return {
        peer.name: configured_endpoint(peer)
        if peer.public_key
        else PeerEndpoint(AWS_KEY, "203.0.113.10")
        for peer in facts.peers
    }


def test_mesh_of_three_gives_every_gateway_every_other_site() -> None:
    facts = _facts(_site("a", "10.1.0.0/16"), _site("b", "10.2.0.0/16"), _site("c", "10.3.0.0/16"))
    assert _allowed(facts["a"]) == {
        "b": ["10.255.255.2/32", "10.2.0.0/16"],
        "c": ["10.255.255.3/32", "10.3.0.0/16"],
    }
    assert _allowed(facts["c"]) == {
        "a": ["10.255.255.1/32", "10.1.0.0/16"],
        "b": ["10.255.255.2/32", "10.2.0.0/16"],
    }
    assert str(facts["b"].tunnel_address) == "10.255.255.2/24"
    assert [str(n) for n in facts["a"].remote_cidrs] == ["10.2.0.0/16", "10.3.0.0/16"]


def test_a_spoke_has_only_the_hub_which_carries_the_other_spokes() -> None:
    facts = _facts(
        _site("core", "10.0.0.0/16"),
        _site("east", "10.2.0.0/16"),
        _site("west", "10.3.0.0/16"),
        hub="core",
    )
    assert _allowed(facts["east"]) == {
        "core": ["10.255.255.1/32", "10.255.255.3/32", "10.0.0.0/16", "10.3.0.0/16"]
    }
    assert _allowed(facts["core"]) == {
        "east": ["10.255.255.2/32", "10.2.0.0/16"],
        "west": ["10.255.255.3/32", "10.3.0.0/16"],
    }
    assert facts["core"].is_hub and not facts["east"].is_hub
    # The route tables still send every other site to the spoke's own gateway.
    assert [str(n) for n in facts["east"].remote_cidrs] == ["10.0.0.0/16", "10.3.0.0/16"]


def test_no_endpoint_for_a_natted_office_and_it_keeps_its_mapping_open() -> None:
    office = _site(
        "office",
        "192.168.10.0/24",
        external={"publicKey": OFFICE_KEY, "sourceCidr": "198.51.100.0/28"},
    )
    facts = _facts(_site("core", "10.0.0.0/16"), office)
    core_config = render_wg_config(facts["core"], _endpoints(facts["core"]))
    office_section = core_config.split("# office", 1)[1]
    assert "Endpoint" not in office_section
    assert f"PublicKey = {OFFICE_KEY}" in office_section
    office_config = render_wg_config(facts["office"], _endpoints(facts["office"]))
    assert "Endpoint = 203.0.113.10:51820" in office_config
    assert f"PersistentKeepalive = {NAT_KEEPALIVE_SECONDS}" in office_config
    assert facts["core"].persistent_keepalive is None


def test_an_office_with_a_static_address_is_dialled_there() -> None:
    office = _site(
        "office", "192.168.10.0/24", external={"publicKey": OFFICE_KEY, "publicIp": "198.51.100.7"}
    )
    facts = _facts(_site("core", "10.0.0.0/16"), office)
    assert "Endpoint = 198.51.100.7:51820" in render_wg_config(
        facts["core"], _endpoints(facts["core"])
    )
    assert facts["office"].persistent_keepalive is None


def test_one_preshared_key_parameter_per_pair_and_side() -> None:
    facts = _facts(_site("a", "10.1.0.0/16"), _site("b", "10.2.0.0/16"), _site("c", "10.3.0.0/16"))
    names = {name: f.psk_parameter_names for name, f in facts.items()}
    assert names["a"] == (
        "/wg-site-to-site/t/a/b/wireguard-preshared-key",
        "/wg-site-to-site/t/a/c/wireguard-preshared-key",
    )
    every = [n for group in names.values() for n in group]
    assert len(every) == len(set(every)) == 6
    config = render_wg_config(facts["a"], _endpoints(facts["a"]))
    assert config.count("preshared-key /etc/wireguard/%i.b.psk") == 1
    assert config.count("preshared-key /etc/wireguard/%i.c.psk") == 1


@pytest.mark.parametrize(
    ("cidr", "sites", "first", "last"),
    [
        ("10.255.255.0/31", 2, "10.255.255.0", "10.255.255.1"),
        ("10.255.255.0/30", 2, "10.255.255.1", "10.255.255.2"),
        ("10.255.255.0/29", 6, "10.255.255.1", "10.255.255.6"),
    ],
)
def test_tunnel_addresses_follow_site_order(cidr: str, sites: int, first: str, last: str) -> None:
    raw = {
        "tunnel": {"cidr": cidr, "port": 51820},
        "sites": [_site(f"s{i}", f"10.{i + 1}.0.0/16") for i in range(sites)],
    }
    addresses = [f.tunnel_address.ip for f in gateway_facts(load_stack_config(raw), "t")]
    assert addresses[0] == ipaddress.IPv4Address(first)
    assert addresses[-1] == ipaddress.IPv4Address(last)
    assert len(set(addresses)) == sites


def test_two_gateways_get_the_third_subnet_and_the_tunnel_cidr_routed() -> None:
    facts = _facts(
        _site("alpha", "10.1.0.0/16", gateways=2),
        _site("beta", "10.2.0.0/16"),
    )
    alpha, beta = facts["alpha"], facts["beta"]
    # The existing subnets stay where one gateway had them; the second public one follows.
    assert str(alpha.layout.public_subnet) == "10.1.0.0/24"
    assert str(alpha.layout.private_subnet) == "10.1.1.0/24"
    assert str(alpha.layout.second_public_subnet) == "10.1.2.0/24"
    assert [str(ip) for ip in alpha.gateway_private_ips] == ["10.1.0.4", "10.1.2.4"]
    assert [str(net) for net in alpha.routed_destinations] == ["10.2.0.0/16", "10.255.255.0/24"]
    # A site with one gateway routes only the other sites, as before.
    assert not beta.highly_available
    assert [str(ip) for ip in beta.gateway_private_ips] == ["10.2.0.4"]
    assert [str(net) for net in beta.routed_destinations] == ["10.1.0.0/16"]


def test_only_a_site_with_two_gateways_has_a_failover_entry() -> None:
    facts = _facts(
        _site("alpha", "10.1.0.0/16", gateways=2),
        _site("beta", "10.2.0.0/16"),
        _site("gamma", "10.3.0.0/16"),
    )
    inputs = FailoverInputs(
        allocation_id="eipalloc-0a",
        elastic_ip="203.0.113.10",
        network_interface_ids=("eni-0a", "eni-0b"),
        route_table_ids=("rtb-0pub", "rtb-0prv", "rtb-0pub2"),
    )
    alpha = json.loads(
        render_desired_state(facts["alpha"], _endpoints(facts["alpha"]), failover=inputs).document
    )
    assert alpha["failover"]["gateways"] == [
        {"networkInterfaceId": "eni-0a", "privateIp": "10.1.0.4"},
        {"networkInterfaceId": "eni-0b", "privateIp": "10.1.2.4"},
    ]
    # Every table, every routed destination: the agent moves them all.
    routes = {(r["routeTableId"], r["destination"]) for r in alpha["failover"]["routes"]}
    assert len(routes) == 3 * 3
    assert ("rtb-0pub2", "10.255.255.0/24") in routes
    assert alpha["failover"]["probeTargets"] == ["10.255.255.2", "10.255.255.3"]
    beta = json.loads(render_desired_state(facts["beta"], _endpoints(facts["beta"])).document)
    assert "failover" not in beta
    with pytest.raises(ValueError, match="failover inputs are needed"):
        render_desired_state(facts["alpha"], _endpoints(facts["alpha"]))
    # The parameter's size is bounded with the longest ids AWS could hand out.
    assert desired_state_bound(facts["alpha"]) > len(
        render_desired_state(facts["alpha"], _endpoints(facts["alpha"]), failover=inputs).document
    )
