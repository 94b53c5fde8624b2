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
from core.render import decode_user_data, parse_user_data, written_files
from plan.engine import (
    Plan,
    PlannedResource,
    Secret,
    _short_hash,
    plan_private_key,
    reveal,
    run_program,
)
from tests.conftest import stack_config

INSTANCE = "aws:ec2/instance:Instance"
INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ROUTE = "aws:ec2/route:Route"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
PARAMETER = "aws:ssm/parameter:Parameter"
SITES = ("alpha", "beta")
PEER = {"alpha": "beta", "beta": "alpha"}


def gateway(plan: Plan, site: str) -> PlannedResource:
    return plan.one(INSTANCE, f"{site}-gateway")


def interface(plan: Plan, site: str) -> PlannedResource:
    return plan.one(INTERFACE, f"{site}-gateway")


def elastic_ip(plan: Plan, site: str) -> str:
    return str(plan.one("aws:ec2/eip:Eip", f"{site}-address").outputs["publicIp"])


def user_data(plan: Plan, site: str) -> str:
    """The gateway's cloud-config, as cloud-init reads it (EC2 gets it gzipped)."""
    return decode_user_data(gateway(plan, site).inputs["userDataBase64"])


def desired_state(plan: Plan, site: str) -> dict[str, Any]:
    """What the gateway's apply converges to: its desired-state parameter."""
    parameter = plan.one(PARAMETER, f"{site}-desired-state")
    return dict(json.loads(parameter.inputs["insecureValue"]))


def wg_config(plan: Plan, site: str) -> str:
    return str(desired_state(plan, site)["config"])


def ingress_rules(plan: Plan, site: str) -> list[dict[str, Any]]:
    group_ids = interface(plan, site).inputs["securityGroups"]
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
def test_source_dest_check_is_disabled_on_the_gateway_interface(dev_plan: Plan, site: str) -> None:
    assert interface(dev_plan, site).inputs["sourceDestCheck"] is False
    # Device 0 through the block the provider's diff suppression covers (plan.provider_model).
    (attached,) = gateway(dev_plan, site).inputs["networkInterfaces"]
    assert attached["deviceIndex"] == 0
    assert attached["networkInterfaceId"] == interface(dev_plan, site).outputs["id"]


@pytest.mark.parametrize("site", SITES)
def test_imdsv2_is_required(dev_plan: Plan, site: str) -> None:
    metadata = gateway(dev_plan, site).inputs["metadataOptions"]
    assert metadata["httpTokens"] == "required"
    assert metadata["httpPutResponseHopLimit"] == 1


@pytest.mark.parametrize("site", SITES)
def test_root_volume_is_encrypted(dev_plan: Plan, site: str) -> None:
    assert gateway(dev_plan, site).inputs["rootBlockDevice"]["encrypted"] is True


@pytest.mark.parametrize("site", SITES)
def test_instance_boots_after_its_path_to_the_internet_exists(dev_plan: Plan, site: str) -> None:
    # cloud-init needs packages and SSM at once; an attached interface gets no launch-time
    # public address, so the Elastic IP and the public route must be there first.
    needed = {
        dev_plan.one("aws:ec2/internetGateway:InternetGateway", f"{site}-igw").urn,
        dev_plan.one(ROUTE, f"{site}-public-internet").urn,
        dev_plan.one("aws:ec2/routeTableAssociation:RouteTableAssociation", f"{site}-public").urn,
        dev_plan.one("aws:ec2/eipAssociation:EipAssociation", f"{site}-address").urn,
    }
    assert needed <= set(gateway(dev_plan, site).options["dependsOn"])


@pytest.mark.parametrize("site", SITES)
def test_user_data_change_replaces_the_instance(dev_plan: Plan, site: str) -> None:
    assert gateway(dev_plan, site).inputs["userDataReplaceOnChange"] is True
    assert "userData" not in gateway(dev_plan, site).inputs
    # ...old one first: the new one takes the same private address.
    assert gateway(dev_plan, site).options["deleteBeforeReplace"] is True


@pytest.mark.parametrize("site", SITES)
def test_gateway_sits_at_the_computed_address_in_the_public_subnet(
    dev_plan: Plan, site: str
) -> None:
    eni = interface(dev_plan, site)
    public = dev_plan.one("aws:ec2/subnet:Subnet", f"{site}-public")
    assert eni.inputs["subnetId"] == public.outputs["id"]
    subnet = ipaddress.IPv4Network(public.inputs["cidrBlock"])
    (address,) = eni.inputs["privateIps"]
    assert ipaddress.IPv4Address(address) == subnet.network_address + 4


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


def test_no_changes_to_the_image_are_ignored(dev_plan: Plan) -> None:
    # ignore_changes would make Pulumi reuse the recorded AMI on every replacement,
    # `--replace` included (pulumi/pulumi#2657).
    for site in SITES:
        assert gateway(dev_plan, site).options["ignoreChanges"] == []


def test_a_pinned_image_is_the_image_a_replaced_gateway_boots() -> None:
    config = stack_config("dev")
    config["sites"][0]["image"] = "20251113"
    before = run_program("dev", config, preview=True)
    config["sites"][0]["image"] = "20251201"
    after = run_program("dev", config, preview=True)
    old, new = gateway(before, "alpha").inputs["ami"], gateway(after, "alpha").inputs["ami"]
    assert old != new
    # Exactly that build: the mock answers an image id derived from the name asked for.
    name = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20251201"
    assert new == f"ami-{_short_hash('us-east-1', name)}"
    assert gateway(after, "beta").inputs["ami"] == gateway(before, "beta").inputs["ami"]


def test_switching_architecture_picks_the_matching_build_of_the_pinned_image() -> None:
    config = stack_config("dev")
    config["sites"][0]["image"] = "20251113"
    arm = gateway(run_program("dev", config), "alpha").inputs["ami"]
    config["sites"][0]["instanceType"] = "t3.nano"
    x86 = gateway(run_program("dev", config), "alpha").inputs["ami"]
    name = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20251113"
    assert arm != x86 == f"ami-{_short_hash('us-east-1', name)}"


# --- routes ---------------------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_every_route_table_sends_the_peer_site_to_the_gateway_interface(
    dev_plan: Plan, site: str
) -> None:
    eni = interface(dev_plan, site).outputs["id"]
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
    eni = interface(plan, "beta").outputs["id"]
    routed = sorted(
        r.inputs["routeTableId"]
        for r in plan.by_type(ROUTE)
        if r.inputs.get("networkInterfaceId") == eni
    )
    assert routed == ["rtb-0123456789abcdef0", "rtb-0fedcba9876543210"]
    assert interface(plan, "beta").inputs["subnetId"] == "subnet-0123456789abcdef0"
    # AWS picks the address in a subnet the project does not lay out.
    assert "privateIps" not in interface(plan, "beta").inputs
    group = plan.one("aws:ec2/securityGroup:SecurityGroup", "beta-gateway")
    assert group.inputs["vpcId"] == "vpc-0123456789abcdef0"


# --- Elastic IPs ----------------------------------------------------------------------


def test_elastic_ips_are_allocated_alone_and_associated_afterwards(dev_plan: Plan) -> None:
    for site in SITES:
        address = dev_plan.one("aws:ec2/eip:Eip", f"{site}-address")
        assert "instance" not in address.inputs and address.inputs["domain"] == "vpc"
        association = dev_plan.one("aws:ec2/eipAssociation:EipAssociation", f"{site}-address")
        assert association.inputs["allocationId"] == address.outputs["allocationId"]
        # On the interface, not the instance: a replaced instance leaves it untouched.
        assert association.inputs["networkInterfaceId"] == interface(dev_plan, site).outputs["id"]
        assert "instanceId" not in association.inputs
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
    files = written_files(user_data(dev_plan, site))
    sysctl = [f for path, f in files.items() if path.startswith("/etc/sysctl.d/")]
    assert len(sysctl) == 1
    assert re.search(r"^net\.ipv4\.ip_forward = 1$", sysctl[0]["content"], re.MULTILINE)
    assert "sysctl" in json.dumps(parse_user_data(user_data(dev_plan, site)))


def _hooks(text: str, kind: str) -> list[str]:
    return [line.split(" = ", 1)[1] for line in text.splitlines() if line.startswith(f"{kind} = ")]


@pytest.mark.parametrize("site", SITES)
def test_firewall_lives_in_the_interfaces_own_chains(dev_plan: Plan, site: str) -> None:
    interface = {"alpha": "wgA", "beta": "wgB"}[site]
    firewall = desired_state(dev_plan, site)["firewall"]
    # Declared chains: iptables-restore --noflush empties and refills each in one step.
    assert f":s2s-fw-{interface} - [0:0]" in firewall.splitlines()
    assert f":s2s-mss-{interface} - [0:0]" in firewall.splitlines()
    assert f"-A s2s-fw-{interface} -p tcp --dport 22 -j REJECT --reject-with tcp-reset" in (
        firewall.splitlines()
    )
    assert any("TCPMSS --clamp-mss-to-pmtu" in line for line in firewall.splitlines())
    # Nothing but our own chains: other people's rules are never touched.
    assert [line for line in firewall.splitlines() if line.startswith("-A ")] == [
        line for line in firewall.splitlines() if line.startswith("-A s2s-")
    ]


@pytest.mark.parametrize("site", SITES)
def test_every_jump_added_in_postup_is_removed_exactly_in_predown(
    dev_plan: Plan, site: str
) -> None:
    text = wg_config(dev_plan, site)
    added = [h for h in _hooks(text, "PostUp") if " -A " in h]
    removed = [h for h in _hooks(text, "PreDown") if " -D " in h]
    spec = re.compile(r"iptables -t (\S+) -[AD] (\S+) (.*)$")

    def specs(hooks: list[str]) -> list[tuple[str, ...]]:
        return [spec.search(h).groups() for h in hooks]  # type: ignore[union-attr]

    interface = {"alpha": "wgA", "beta": "wgB"}[site]
    assert len(added) == 2
    assert specs(removed) == list(reversed(specs(added)))
    assert ("filter", "FORWARD", f"-i {interface} -j s2s-fw-{interface}") in specs(added)
    assert ("mangle", "FORWARD", f"-o {interface} -j s2s-mss-{interface}") in specs(added)
    # Adds are guarded by a check so a second `up` cannot duplicate them.
    assert all(" -C " in h.split("||")[0] for h in added + removed)
    assert "PostUp = iptables-restore --noflush /etc/wireguard/%i.rules" in text.splitlines()


@pytest.mark.parametrize("site", SITES)
def test_no_nat_anywhere(dev_plan: Plan, site: str) -> None:
    everything = user_data(dev_plan, site) + json.dumps(desired_state(dev_plan, site))
    for word in ("MASQUERADE", "SNAT", "DNAT", "-t nat"):
        assert word not in everything


@pytest.mark.parametrize("site", SITES)
def test_user_data_only_bootstraps_the_apply(dev_plan: Plan, site: str) -> None:
    document = parse_user_data(user_data(dev_plan, site))
    commands = [" ".join(c) if isinstance(c, list) else c for c in document["runcmd"]]
    assert commands[0] == "sysctl --system"
    assert "systemctl enable --now --no-block wg-site-to-site-apply.service" in commands
    assert commands[-1] == "systemctl enable --now --no-block wg-site-to-site-probe.timer"
    assert "wireguard-tools" in document["packages"]
    files = written_files(user_data(dev_plan, site))
    assert files["/usr/local/sbin/wg-site-to-site-apply"]["permissions"] == "0700"
    unit = files["/etc/systemd/system/wg-site-to-site-apply.service"]["content"]
    interface = {"alpha": "wgA", "beta": "wgB"}[site]
    # Before the tunnel at every boot, retried until it works.
    assert f"Before=wg-quick@{interface}.service" in unit
    assert "Restart=on-failure" in unit
    assert "WantedBy=multi-user.target" in unit
    # No wg-quick config, key or firewall rule in the user data: those are day 2.
    assert not any(path.startswith("/etc/wireguard/") for path in files)
    state = desired_state(dev_plan, site)
    assert state["config"] not in user_data(dev_plan, site)
    assert "AllowedIPs = " not in user_data(dev_plan, site)


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
def test_each_role_reads_exactly_its_own_parameters(dev_plan: Plan, site: str) -> None:
    peer = next(s for s in SITES if s != site)
    own = [
        dev_plan.one(PARAMETER, f"{site}-{what}")
        for what in ("wireguard-key", f"preshared-key-{peer}", "desired-state")
    ]
    policy = json.loads(
        dev_plan.one("aws:iam/rolePolicy:RolePolicy", f"{site}-read-own-parameters").inputs[
            "policy"
        ]
    )
    reads = [s for s in policy["Statement"] if "ssm:GetParameter" in s["Action"]]
    assert len(reads) == 1 and reads[0]["Effect"] == "Allow"
    assert reads[0]["Action"] == "ssm:GetParameter"
    assert sorted(reads[0]["Resource"]) == sorted(p.outputs["arn"] for p in own)
    # The SSM agent's own actions, for Run Command; never a parameter read on "*".
    agent = [s for s in policy["Statement"] if s["Resource"] == "*"]
    assert all(not a.startswith("ssm:GetParameter") for s in agent for a in s["Action"])
    assert "ssm:UpdateInstanceInformation" in agent[0]["Action"]
    # The gateway's apply script asks for those same parameters: the pre-shared keys' by
    # the name it makes from each peer's (prefix, peer, leaf), so it names no peer.
    apply = written_files(user_data(dev_plan, site))["/usr/local/sbin/wg-site-to-site-apply"]
    content = apply["content"]
    prefix = content.split("\npsk_prefix=", 1)[1].split("\n", 1)[0]
    leaf = content.split("\npsk_leaf=", 1)[1].split("\n", 1)[0]
    for parameter in own:
        name = parameter.inputs["name"]
        assert name in content or name == f"{prefix}{peer}/{leaf}", name


# --- regions, tags, outputs, structure ------------------------------------------------


def test_each_site_is_built_in_its_own_region(dev_plan: Plan) -> None:
    expected = {"alpha": "us-east-1", "beta": "eu-west-1"}
    for resource in dev_plan.resources:
        if resource.type.startswith("aws:"):
            site = resource.name.split("-")[0]
            if site in expected:
                assert dev_plan.region_of(resource) == expected[site], resource.urn
            else:
                # Stack-wide (the health topics, the dashboard): a site's region, by name.
                assert dev_plan.region_of(resource) in expected.values(), resource.urn
                assert resource.provider, resource.urn


# Resources AWS cannot tag.
UNTAGGABLE = {
    "aws:ec2/route:Route",
    "aws:ec2/routeTableAssociation:RouteTableAssociation",
    "aws:ec2/eipAssociation:EipAssociation",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:cloudwatch/dashboard:Dashboard",
    "aws:sns/topicSubscription:TopicSubscription",
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


@pytest.mark.parametrize("site", SITES)
def test_workloads_admit_fragmentation_needed_from_their_gateway(dev_plan: Plan, site: str) -> None:
    # Path MTU discovery for DF packets over the tunnel MTU: AWS admits the ICMP only with
    # an explicit rule (type 3 code 4) from the gateway that sends it.
    group = dev_plan.one("aws:ec2/securityGroup:SecurityGroup", f"{site}-from-peer-site")
    gateway_ip = interface(dev_plan, site).inputs["privateIps"][0]
    frag = [
        r.inputs
        for r in dev_plan.by_type(INGRESS)
        if r.inputs["securityGroupId"] == group.outputs["id"]
        and r.inputs["ipProtocol"] == "icmp"
        and r.inputs.get("fromPort") == 3
        and r.inputs.get("toPort") == 4
    ]
    assert [r["cidrIpv4"] for r in frag] == [f"{gateway_ip}/32"]


def test_components_are_typed_and_own_their_children(dev_plan: Plan) -> None:
    components = {r.type for r in dev_plan.resources if not r.custom}
    assert components == {
        "wg-site-to-site:index:SiteToSite",
        "wg-site-to-site:network:SiteNetwork",
        "wg-site-to-site:gateway:WireGuardIdentity",
        "wg-site-to-site:gateway:WireGuardGateway",
        "wg-site-to-site:health:TunnelHealth",
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
