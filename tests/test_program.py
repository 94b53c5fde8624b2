"""The Pulumi program under the mock engine: what `pulumi up` would declare on AWS.

Every test reads the resources the real program registered (plan.engine records them)
and checks one property the tunnel depends on. Each runs twice: as a preview and as
an update.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import pytest

from core.config import load_stack_config
from core.facts import gateway_facts
from core.keys import public_key
from core.render import parse_user_data, written_files
from plan.engine import Plan, PlannedResource, Secret, plan_private_key, reveal, run_program
from tests.conftest import stack_config

INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ROUTE = "aws:ec2/route:Route"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
PARAMETER = "aws:ssm/parameter:Parameter"
SITES = ("alpha", "beta")
PEER = {"alpha": "beta", "beta": "alpha"}


def gateway(plan: Plan, site: str) -> PlannedResource:
    return plan.one(INSTANCE, f"{site}-gateway")


def elastic_ip(plan: Plan, site: str) -> str:
    return str(plan.one("aws:ec2/eip:Eip", f"{site}-address").outputs["publicIp"])


def wg_config(plan: Plan, site: str) -> str:
    user_data = gateway(plan, site).inputs["userData"]
    interface = {"alpha": "wgA", "beta": "wgB"}[site]
    return written_files(user_data)[f"/etc/wireguard/{interface}.conf"]["content"]


def ingress_rules(plan: Plan, site: str) -> list[dict[str, Any]]:
    group_ids = gateway(plan, site).inputs["vpcSecurityGroupIds"]
    return [r.inputs for r in plan.by_type(INGRESS) if r.inputs["securityGroupId"] in group_ids]


def all_strings(value: Any) -> list[str]:
    """Every string in a structure, secrets included (to prove where a key is not)."""
    value = reveal(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in all_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in all_strings(v)]
    return []


def without_secrets(value: Any) -> Any:
    if isinstance(value, Secret):
        return None
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


# --- security group -------------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_tunnel_port_is_open_only_to_the_peer_elastic_ip(dev_plan: Plan, site: str) -> None:
    udp = [r for r in ingress_rules(dev_plan, site) if r["ipProtocol"] in ("udp", "-1")]
    assert udp, "no ingress rule admits the tunnel"
    tunnel = [r for r in udp if r.get("fromPort") == 51000]
    assert [r["cidrIpv4"] for r in tunnel] == [f"{elastic_ip(dev_plan, PEER[site])}/32"]
    assert all(r["toPort"] == 51000 for r in tunnel)


def test_nothing_is_open_to_the_internet(dev_plan: Plan) -> None:
    for rule in dev_plan.by_type(INGRESS):
        assert rule.inputs.get("cidrIpv4") != "0.0.0.0/0", rule.name
        assert rule.inputs.get("cidrIpv6") is None, rule.name
        assert rule.inputs.get("fromPort") != 22, "SSH must not be open"


@pytest.mark.parametrize("site", SITES)
def test_gateway_accepts_forwarded_traffic_from_its_own_site(dev_plan: Plan, site: str) -> None:
    site_cidr = {"alpha": "10.1.0.0/16", "beta": "10.2.0.0/16"}[site]
    from_site = [r for r in ingress_rules(dev_plan, site) if r["cidrIpv4"] == site_cidr]
    assert [r["ipProtocol"] for r in from_site] == ["-1"]


@pytest.mark.parametrize("site", SITES)
def test_workloads_may_start_connections_to_the_peer_site(dev_plan: Plan, site: str) -> None:
    # The provider removes AWS's default allow-all egress; only declared rules let out.
    group = dev_plan.exports["sites"][site]["workloadSecurityGroupId"]
    egress = [
        r.inputs
        for r in dev_plan.by_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
        if r.inputs["securityGroupId"] == group
    ]
    peer_cidr = {"alpha": "10.2.0.0/16", "beta": "10.1.0.0/16"}[site]
    assert [(r["ipProtocol"], r["cidrIpv4"]) for r in egress] == [("-1", peer_cidr)]


# AWS accepts only these characters in security group and rule descriptions.
SG_DESCRIPTION = re.compile(r"^[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{0,255}$")


def test_security_group_descriptions_use_only_what_aws_accepts(dev_plan: Plan) -> None:
    described = [
        r
        for r in dev_plan.resources
        if r.type in (INGRESS, "aws:ec2/securityGroup:SecurityGroup")
        or r.type == "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
    ]
    assert len(described) >= 10
    for resource in described:
        assert SG_DESCRIPTION.match(resource.inputs.get("description", "")), resource.urn


# --- instance -------------------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_source_dest_check_is_disabled(dev_plan: Plan, site: str) -> None:
    assert gateway(dev_plan, site).inputs["sourceDestCheck"] is False


@pytest.mark.parametrize("site", SITES)
def test_imdsv2_is_required(dev_plan: Plan, site: str) -> None:
    metadata = gateway(dev_plan, site).inputs["metadataOptions"]
    assert metadata["httpTokens"] == "required"
    assert metadata["httpPutResponseHopLimit"] == 1


@pytest.mark.parametrize("site", SITES)
def test_root_volume_is_encrypted(dev_plan: Plan, site: str) -> None:
    assert gateway(dev_plan, site).inputs["rootBlockDevice"]["encrypted"] is True


@pytest.mark.parametrize("site", SITES)
def test_gateway_reaches_the_internet_before_its_elastic_ip_arrives(
    dev_plan: Plan, site: str
) -> None:
    assert gateway(dev_plan, site).inputs["associatePublicIpAddress"] is True


@pytest.mark.parametrize("site", SITES)
def test_user_data_change_replaces_the_instance(dev_plan: Plan, site: str) -> None:
    assert gateway(dev_plan, site).inputs["userDataReplaceOnChange"] is True
    # ...old one first: the new one takes the same private address.
    assert gateway(dev_plan, site).options["deleteBeforeReplace"] is True


@pytest.mark.parametrize("site", SITES)
def test_gateway_sits_at_the_computed_address_in_the_public_subnet(
    dev_plan: Plan, site: str
) -> None:
    instance = gateway(dev_plan, site)
    public = dev_plan.one("aws:ec2/subnet:Subnet", f"{site}-public")
    assert instance.inputs["subnetId"] == public.outputs["id"]
    subnet = ipaddress.IPv4Network(public.inputs["cidrBlock"])
    assert ipaddress.IPv4Address(instance.inputs["privateIp"]) in subnet


def test_ami_is_looked_up_for_the_instance_architecture(
    dev_plan: Plan, single_region_plan: Plan
) -> None:
    # t4g (Graviton) and t3 (x86) must get different images; the ids come from Canonical's
    # SSM parameters (mocked), never a literal in the program.
    arm = gateway(dev_plan, "alpha").inputs["ami"]
    x86 = single_region_plan.one(INSTANCE, "prod-gateway").inputs["ami"]
    assert arm.startswith("ami-") and x86.startswith("ami-") and arm != x86
    # Each site asks its own region (same architecture, other region, other image).
    assert gateway(dev_plan, "beta").inputs["ami"] not in (arm, x86)
    assert "ami" in gateway(dev_plan, "alpha").options["ignoreChanges"]


# --- routes ---------------------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_every_route_table_sends_the_peer_site_to_the_gateway_interface(
    dev_plan: Plan, site: str
) -> None:
    eni = gateway(dev_plan, site).outputs["primaryNetworkInterfaceId"]
    peer_cidr = {"alpha": "10.2.0.0/16", "beta": "10.1.0.0/16"}[site]
    tables = {
        r.outputs["id"] for r in dev_plan.by_type(ROUTE_TABLE) if r.name.startswith(f"{site}-")
    }
    assert len(tables) == 2
    routed = {
        r.inputs["routeTableId"]
        for r in dev_plan.by_type(ROUTE)
        if r.inputs.get("destinationCidrBlock") == peer_cidr
        and r.inputs.get("networkInterfaceId") == eni
    }
    assert routed == tables


def test_existing_vpc_gets_routes_and_no_new_network() -> None:
    config = stack_config("dev")
    config["sites"][1].update(
        vpcId="vpc-0123456789abcdef0",
        subnetId="subnet-0123456789abcdef0",
        routeTableIds=["rtb-0123456789abcdef0", "rtb-0fedcba9876543210"],
    )
    plan = run_program("dev", config)
    assert [r.name for r in plan.by_type("aws:ec2/vpc:Vpc")] == ["alpha-vpc"]
    assert not [r for r in plan.by_type("aws:ec2/subnet:Subnet") if r.name.startswith("beta")]
    eni = gateway(plan, "beta").outputs["primaryNetworkInterfaceId"]
    routed = sorted(
        r.inputs["routeTableId"]
        for r in plan.by_type(ROUTE)
        if r.inputs.get("networkInterfaceId") == eni
    )
    assert routed == ["rtb-0123456789abcdef0", "rtb-0fedcba9876543210"]
    assert gateway(plan, "beta").inputs["subnetId"] == "subnet-0123456789abcdef0"
    group = plan.one("aws:ec2/securityGroup:SecurityGroup", "beta-gateway")
    assert group.inputs["vpcId"] == "vpc-0123456789abcdef0"


# --- Elastic IPs ----------------------------------------------------------------------


def test_elastic_ips_are_allocated_alone_and_associated_afterwards(dev_plan: Plan) -> None:
    for site in SITES:
        address = dev_plan.one("aws:ec2/eip:Eip", f"{site}-address")
        assert "instance" not in address.inputs and address.inputs["domain"] == "vpc"
        association = dev_plan.one("aws:ec2/eipAssociation:EipAssociation", f"{site}-address")
        assert association.inputs["allocationId"] == address.outputs["allocationId"]
        assert association.inputs["instanceId"] == gateway(dev_plan, site).outputs["id"]
        igw = dev_plan.one("aws:ec2/internetGateway:InternetGateway", f"{site}-igw")
        assert igw.urn in association.options["dependsOn"]


# --- rendered config ------------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_wg_config_pins_the_mtu(dev_plan: Plan, site: str) -> None:
    assert re.search(r"^MTU = 1420$", wg_config(dev_plan, site), re.MULTILINE)


def test_wg_config_pins_a_configured_mtu() -> None:
    config = stack_config("dev")
    config["tunnel"]["mtu"] = 1380
    plan = run_program("dev", config)
    assert re.search(r"^MTU = 1380$", wg_config(plan, "alpha"), re.MULTILINE)


@pytest.mark.parametrize("site", SITES)
def test_wg_config_names_the_peer(dev_plan: Plan, site: str) -> None:
    text = wg_config(dev_plan, site)
    peer = PEER[site]
    peer_key = plan_private_key("dev", f"{peer}-wireguard-key")
    address = {"alpha": "10.255.255.0/31", "beta": "10.255.255.1/31"}[site]
    allowed = {"alpha": "10.255.255.1/32, 10.2.0.0/16", "beta": "10.255.255.0/32, 10.1.0.0/16"}
    assert f"Address = {address}\n" in text
    assert "ListenPort = 51000\n" in text
    assert f"PublicKey = {public_key(peer_key)}\n" in text
    assert f"AllowedIPs = {allowed[site]}\n" in text
    assert f"Endpoint = {elastic_ip(dev_plan, peer)}:51000\n" in text
    assert "PersistentKeepalive = 25\n" in text
    assert "PostUp = wg set %i private-key /etc/wireguard/%i.key\n" in text


@pytest.mark.parametrize("site", SITES)
def test_forwarding_is_enabled_by_a_sysctl_file(dev_plan: Plan, site: str) -> None:
    files = written_files(gateway(dev_plan, site).inputs["userData"])
    sysctl = [f for path, f in files.items() if path.startswith("/etc/sysctl.d/")]
    assert len(sysctl) == 1
    assert re.search(r"^net\.ipv4\.ip_forward = 1$", sysctl[0]["content"], re.MULTILINE)
    assert "sysctl" in json.dumps(parse_user_data(gateway(dev_plan, site).inputs["userData"]))


def _hooks(text: str, kind: str) -> list[str]:
    return [line.split(" = ", 1)[1] for line in text.splitlines() if line.startswith(f"{kind} = ")]


@pytest.mark.parametrize("site", SITES)
def test_every_rule_added_in_postup_is_removed_exactly_in_predown(
    dev_plan: Plan, site: str
) -> None:
    text = wg_config(dev_plan, site)
    added = [h for h in _hooks(text, "PostUp") if " -A " in h]
    removed = [h for h in _hooks(text, "PreDown") if " -D " in h]
    spec = re.compile(r"iptables -t (\S+) -[AD] (\S+) (.*)$")

    def specs(hooks: list[str]) -> list[tuple[str, ...]]:
        return [spec.search(h).groups() for h in hooks]  # type: ignore[union-attr]

    # The MSS clamp plus the one configured firewall rule, removed in reverse order.
    assert len(added) == 2
    assert specs(removed) == list(reversed(specs(added)))
    assert ("filter", "FORWARD", "-i %i -p tcp --dport 22 -j REJECT") in specs(added)
    assert any("TCPMSS --clamp-mss-to-pmtu" in s[2] for s in specs(added))
    # Adds are guarded by a check so a second `up` cannot duplicate them.
    assert all(" -C " in h.split("||")[0] for h in added + removed)


@pytest.mark.parametrize("site", SITES)
def test_no_nat_anywhere(dev_plan: Plan, site: str) -> None:
    user_data = gateway(dev_plan, site).inputs["userData"]
    for word in ("MASQUERADE", "SNAT", "DNAT", "-t nat"):
        assert word not in user_data


@pytest.mark.parametrize("site", SITES)
def test_tunnel_starts_after_the_key_is_fetched(dev_plan: Plan, site: str) -> None:
    document = parse_user_data(gateway(dev_plan, site).inputs["userData"])
    commands = [" ".join(c) if isinstance(c, list) else c for c in document["runcmd"]]
    fetch = next(i for i, c in enumerate(commands) if "fetch-key" in c)
    start = next(i for i, c in enumerate(commands) if "wg-quick@" in c)
    assert fetch < start
    assert "wireguard-tools" in document["packages"]
    files = written_files(gateway(dev_plan, site).inputs["userData"])
    assert files[f"/etc/wireguard/{'wgA' if site == 'alpha' else 'wgB'}.conf"]["permissions"] == (
        "0600"
    )


# --- keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_private_key_is_a_secret_in_a_securestring(dev_plan: Plan, site: str) -> None:
    parameter = dev_plan.one(PARAMETER, f"{site}-wireguard-key")
    assert parameter.inputs["type"] == "SecureString"
    assert isinstance(parameter.inputs["value"], Secret)
    key = plan_private_key("dev", f"{site}-wireguard-key")
    holds_the_key = parameter.inputs["value"].value == key  # (not printed if it fails)
    assert holds_the_key
    source = dev_plan.one("random:index/randomBytes:RandomBytes", f"{site}-wireguard-key")
    assert source.inputs["length"] == 32


def test_private_keys_appear_nowhere_but_in_their_secret_parameters(dev_plan: Plan) -> None:
    keys = [plan_private_key("dev", f"{site}-wireguard-key") for site in SITES]
    for resource in dev_plan.resources:
        visible = " ".join(all_strings(without_secrets(resource.inputs)))
        for key in keys:
            assert key not in visible, f"{resource.type} {resource.name} shows a private key"
    exported = json.dumps(dev_plan.exports)
    assert not any(key in exported for key in keys)


def test_a_secret_never_shows_in_a_repr(dev_plan: Plan) -> None:
    # What pytest prints when an assertion about a resource fails.
    # (Booleans first: pytest would print both operands of a failing `in`.)
    key = plan_private_key("dev", "alpha-wireguard-key")
    in_parameter = key in repr(dev_plan.one(PARAMETER, "alpha-wireguard-key"))
    in_random_bytes = key in repr(
        dev_plan.one("random:index/randomBytes:RandomBytes", "alpha-wireguard-key")
    )
    anywhere = key in repr(dev_plan)
    assert not in_parameter and not in_random_bytes and not anywhere


def test_a_planted_key_is_used_and_never_shown() -> None:
    planted = "YWxwaGEtcGxhbnRlZC1rZXktZm9yLXRoZS10ZXN0cyE="
    plan = run_program("dev", stack_config("dev"), planted_keys={"alpha-wireguard-key": planted})
    stored = reveal(plan.one(PARAMETER, "alpha-wireguard-key").inputs["value"]) == planted
    assert stored  # (a boolean: a failure must not print the key)
    assert plan.exports["sites"]["alpha"]["publicKey"] == public_key(planted)
    assert f"PublicKey = {public_key(planted)}" in wg_config(plan, "beta")
    for resource in plan.resources:
        assert planted not in " ".join(all_strings(without_secrets(resource.inputs)))


@pytest.mark.parametrize("site", SITES)
def test_each_role_reads_only_its_own_key(dev_plan: Plan, site: str) -> None:
    parameter = dev_plan.one(PARAMETER, f"{site}-wireguard-key")
    policy = json.loads(
        dev_plan.one("aws:iam/rolePolicy:RolePolicy", f"{site}-read-own-key").inputs["policy"]
    )
    [statement] = policy["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "ssm:GetParameter"
    assert statement["Resource"] == parameter.outputs["arn"]
    assert "*" not in statement["Resource"]
    # The gateway's fetch script asks for that same parameter, in its own region.
    fetch = written_files(gateway(dev_plan, site).inputs["userData"])[
        "/usr/local/sbin/wg-site-to-site-fetch-key"
    ]["content"]
    assert f"--name {parameter.inputs['name']} " in fetch
    assert f"--region {dev_plan.region_of(parameter)} " in fetch


# --- regions, tags, outputs, structure ------------------------------------------------


def test_each_site_is_built_in_its_own_region(dev_plan: Plan) -> None:
    expected = {"alpha": "us-east-1", "beta": "eu-west-1"}
    for resource in dev_plan.resources:
        if resource.type.startswith("aws:"):
            site = resource.name.split("-")[0]
            assert dev_plan.region_of(resource) == expected[site], resource.urn


# Resources AWS cannot tag.
UNTAGGABLE = {
    "aws:ec2/route:Route",
    "aws:ec2/routeTableAssociation:RouteTableAssociation",
    "aws:ec2/eipAssociation:EipAssociation",
    "aws:iam/rolePolicy:RolePolicy",
}


def test_every_taggable_resource_carries_stack_and_project(dev_plan: Plan) -> None:
    tagged = [
        r for r in dev_plan.resources if r.type.startswith("aws:") and r.type not in UNTAGGABLE
    ]
    assert len(tagged) > 20
    for resource in tagged:
        tags = resource.inputs.get("tags") or {}
        assert tags.get("stack") == "dev", resource.urn
        assert tags.get("project") == "wg-site-to-site", resource.urn


def test_extra_tags_from_config_reach_every_resource() -> None:
    config = stack_config("dev")
    config["tags"] = {"owner": "ops@example.com", "expires-at": "2026-12-01T00:00:00Z"}
    plan = run_program("dev", config)
    for resource in plan.resources:
        if resource.type.startswith("aws:") and resource.type not in UNTAGGABLE:
            assert resource.inputs["tags"]["owner"] == "ops@example.com", resource.urn


def test_outputs_per_site(dev_plan: Plan) -> None:
    sites = dev_plan.exports["sites"]
    assert set(sites) == set(SITES)
    alpha = sites["alpha"]
    assert alpha["publicIp"] == elastic_ip(dev_plan, "alpha")
    assert alpha["tunnelAddress"] == "10.255.255.0"
    assert alpha["publicKey"] == public_key(plan_private_key("dev", "alpha-wireguard-key"))
    assert alpha["vpcId"] == dev_plan.one("aws:ec2/vpc:Vpc", "alpha-vpc").outputs["id"]
    assert alpha["region"] == "us-east-1" and alpha["cidr"] == "10.1.0.0/16"
    assert alpha["wgConfig"] == wg_config(dev_plan, "alpha")
    assert sites["beta"]["tunnelAddress"] == "10.255.255.1"
    workloads = dev_plan.one("aws:ec2/securityGroup:SecurityGroup", "alpha-from-peer-site")
    assert alpha["workloadSecurityGroupId"] == workloads.outputs["id"]


@pytest.mark.parametrize("site", SITES)
def test_workloads_can_admit_the_peer_site_by_its_real_addresses(dev_plan: Plan, site: str) -> None:
    group = dev_plan.one("aws:ec2/securityGroup:SecurityGroup", f"{site}-from-peer-site")
    rules = [
        r.inputs
        for r in dev_plan.by_type(INGRESS)
        if r.inputs["securityGroupId"] == group.outputs["id"]
    ]
    peer_cidr = {"alpha": "10.2.0.0/16", "beta": "10.1.0.0/16"}[site]
    # ICMP rules (errors from the gateways, e.g. fragmentation needed) are tested apart.
    admitted = [(r["cidrIpv4"], r["ipProtocol"]) for r in rules if r["ipProtocol"] != "icmp"]
    assert admitted == [(peer_cidr, "-1")]


def test_components_are_typed_and_own_their_children(dev_plan: Plan) -> None:
    components = {r.type for r in dev_plan.resources if not r.custom}
    assert components == {
        "wg-site-to-site:index:SiteToSite",
        "wg-site-to-site:network:SiteNetwork",
        "wg-site-to-site:gateway:WireGuardIdentity",
        "wg-site-to-site:gateway:WireGuardGateway",
    }
    top = dev_plan.one("wg-site-to-site:index:SiteToSite", "site-to-site")
    component_urns = {r.urn for r in dev_plan.resources if not r.custom}
    for resource in dev_plan.resources:
        if resource is top:
            continue
        # parent=self everywhere: nothing hangs off the stack but the top component.
        assert resource.parent in component_urns, resource.urn
        if not resource.custom or resource.type.startswith("pulumi:providers:"):
            assert resource.parent == top.urn, resource.urn


def test_tunnel_addresses_of_a_slash_30(single_region_plan: Plan) -> None:
    config = load_stack_config(stack_config("single-region"))
    first, second = gateway_facts(config, "single-region")
    assert str(first.tunnel_address) == "10.255.254.1/30"
    assert str(second.tunnel_address) == "10.255.254.2/30"
    sites = single_region_plan.exports["sites"]
    assert sites["prod"]["tunnelAddress"] == "10.255.254.1"
    assert sites["shared"]["tunnelAddress"] == "10.255.254.2"
