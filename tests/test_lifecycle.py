"""A gateway's lifecycle on AWS: nothing a replacement, resize or destroy does may strand
a site. Each test names the AWS behaviour it guards against (issue 7)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import load_stack_config
from core.facts import gateway_facts
from core.render import USER_DATA_LIMIT_BYTES, decode_user_data, limit_problems, parse_user_data
from plan.diff import compare
from plan.document import public_document
from plan.engine import STACKS, Plan, PlanError, run_program
from tests.conftest import stack_config

INSTANCE = "aws:ec2/instance:Instance"
PARAMETER = "aws:ssm/parameter:Parameter"
SUBNET = "aws:ec2/subnet:Subnet"
SITES = ("alpha", "beta")


def test_every_shipped_stack_disables_the_default_aws_provider() -> None:
    for path in sorted(STACKS.glob("Pulumi.*.yaml")):
        config = yaml.safe_load(path.read_text())["config"]
        assert config["pulumi:disable-default-providers"] == ["aws"], path.name


def test_a_resource_without_a_provider_fails_the_plan(tmp_path: Path) -> None:
    # What `pulumi:disable-default-providers: [aws]` makes the engine do: a resource that
    # forgot its site's provider would otherwise land in the ambient AWS_REGION.
    program = tmp_path / "__main__.py"
    program.write_text(
        "import pulumi_aws as aws\n"
        "from components import SiteToSite, SiteToSiteArgs, read_stack_config\n"
        "import pulumi\n"
        "SiteToSite('site-to-site', SiteToSiteArgs(config=read_stack_config(),"
        " project=pulumi.get_project(), stack=pulumi.get_stack()))\n"
        "aws.ec2.Vpc('stray', cidr_block='10.9.0.0/16')\n"
    )
    with pytest.raises(PlanError, match=r"aws:ec2/vpc:Vpc stray has no explicit provider"):
        run_program("dev", stack_config("dev"), program=program)
    # The same program passes with the default provider allowed: the failure is that rule.
    run_program("dev", stack_config("dev"), program=program, disabled_default_providers=())


def test_an_invoke_without_a_provider_fails_the_plan(tmp_path: Path) -> None:
    program = tmp_path / "__main__.py"
    program.write_text("import pulumi_aws as aws\naws.get_caller_identity_output()\n")
    with pytest.raises(PlanError, match="invoke aws:index/getCallerIdentity"):
        run_program("dev", stack_config("dev"), program=program)


def test_destroy_deletes_the_gateway_before_its_path_to_the_internet(dev_plan: Plan) -> None:
    # Detaching an internet gateway while an Elastic IP is still mapped fails with
    # "has some mapped public address(es)"; the instance must also go before its route.
    order = dev_plan.destroy_order()
    for site in SITES:
        position = {r.name + "|" + r.type: order.index(r.urn) for r in dev_plan.resources}
        igw = position[f"{site}-igw|aws:ec2/internetGateway:InternetGateway"]
        route = position[f"{site}-public-internet|aws:ec2/route:Route"]
        association = position[f"{site}-public|aws:ec2/routeTableAssociation:RouteTableAssociation"]
        instance = position[f"{site}-gateway|{INSTANCE}"]
        eip = position[f"{site}-address|aws:ec2/eipAssociation:EipAssociation"]
        assert instance < min(igw, route, association)
        assert eip < igw


@pytest.fixture(scope="module")
def unpinned_plan() -> Plan:
    """The dev stack as it is before `make pin`: no image, no zone (the shipped one pins)."""
    config = stack_config("dev")
    for site in config["sites"]:
        del site["image"], site["availabilityZone"]
    return run_program("dev", config)


def test_unpinned_zones_are_kept_once_chosen(unpinned_plan: Plan) -> None:
    # A zone that moved would replace both subnets create-before-delete with the same
    # CIDR, which AWS refuses (InvalidSubnet.Conflict, pulumi-awsx#910).
    for subnet in unpinned_plan.by_type(SUBNET):
        assert subnet.options["ignoreChanges"] == ["availabilityZone"], subnet.name


@pytest.mark.parametrize(("site", "zone"), [("alpha", "us-east-1a"), ("beta", "eu-west-1a")])
def test_a_pinned_zone_is_used_and_honoured(dev_plan: Plan, site: str, zone: str) -> None:
    assert {s["name"]: s["availabilityZone"] for s in stack_config("dev")["sites"]}[site] == zone
    subnets = [s for s in dev_plan.by_type(SUBNET) if s.name.startswith(f"{site}-")]
    assert {s.inputs["availabilityZone"] for s in subnets} == {zone}
    # Configured, so a change to it is a reviewed change and must take effect.
    assert all(s.options["ignoreChanges"] == [] for s in subnets)


def test_a_zone_outside_the_site_region_is_refused() -> None:
    config = stack_config("dev")
    config["sites"][1]["availabilityZone"] = "us-east-1a"
    with pytest.raises(
        PlanError,
        match=r"sites\[1\]\.availabilityZone: 'us-east-1a' is not in region eu-west-1",
    ):
        run_program("dev", config)


def _many_rules(count: int) -> list[dict[str, object]]:
    return [
        {
            "description": f"rule {n} for the service on port {1000 + n} between the sites",
            "protocol": "tcp",
            "port": 1000 + n,
            "action": "reject",
        }
        for n in range(count)
    ]


def test_many_firewall_rules_leave_the_user_data_alone_and_fit_ec2s_limit() -> None:
    # EC2 refuses more than 16 KB only at RunInstances, after the old gateway is gone;
    # 30 rules made 19.9 KB when the firewall was in the user data.
    config = stack_config("dev")
    config["firewall"] = _many_rules(30)
    many = run_program("dev", config)
    few = run_program("dev", stack_config("dev"))
    for site in SITES:
        packed = many.one(INSTANCE, f"{site}-gateway").inputs["userDataBase64"]
        assert packed == few.one(INSTANCE, f"{site}-gateway").inputs["userDataBase64"]
        assert len(base64.b64decode(packed)) <= USER_DATA_LIMIT_BYTES
        # Over the free tier's 4 KB: an advanced parameter (8 KB) holds it.
        state = many.one(PARAMETER, f"{site}-desired-state")
        assert state.inputs["tier"] == "Advanced"
        assert few.one(PARAMETER, f"{site}-desired-state").inputs["tier"] == "Standard"


def test_a_firewall_over_ssms_limit_fails_before_anything_is_declared() -> None:
    config = stack_config("dev")
    config["firewall"] = _many_rules(80)
    with pytest.raises(PlanError) as raised:
        run_program("dev", config)
    lines = str(raised.value).splitlines()
    assert len(lines) == 2  # one per site
    assert all("over an SSM parameter's limit of 8192 bytes" in line for line in lines)


def test_user_data_over_ec2s_limit_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.render

    monkeypatch.setattr(core.render, "USER_DATA_LIMIT_BYTES", 1000)
    with pytest.raises(PlanError) as raised:
        run_program("dev", stack_config("dev"))
    lines = str(raised.value).splitlines()
    assert len(lines) == 2
    assert all("over EC2's limit of 1000 bytes" in line for line in lines)


def test_user_data_within_the_limit_passes_the_check() -> None:
    config = load_stack_config(stack_config("dev"))
    for facts in gateway_facts(config, "dev"):
        assert limit_problems(facts) == []


def test_nano_gateways_get_a_swap_file_and_larger_ones_do_not() -> None:
    config = stack_config("dev")
    config["sites"][1]["instanceType"] = "t4g.micro"
    plan = run_program("dev", config)
    nano = parse_user_data(
        decode_user_data(plan.one(INSTANCE, "alpha-gateway").inputs["userDataBase64"])
    )
    micro = parse_user_data(
        decode_user_data(plan.one(INSTANCE, "beta-gateway").inputs["userDataBase64"])
    )
    assert nano["swap"] == {"filename": "/swapfile", "size": 1 << 30, "maxsize": 1 << 30}
    assert "swap" not in micro


def test_a_stack_without_a_pinned_image_plans_and_says_which_it_used(
    unpinned_plan: Plan, dev_plan: Plan
) -> None:
    plan = unpinned_plan
    amis = {site: plan.one(INSTANCE, f"{site}-gateway").inputs["ami"] for site in SITES}
    for site, ami in amis.items():
        (note,) = [n for n in plan.notes if n.startswith(f"site {site}:")]
        assert "image not pinned" in note and ami in note
    # The shipped stack pins its images: nothing to say there.
    assert not [n for n in dev_plan.notes if "image not pinned" in n]


# What a running gateway can change (issue 13, point 3): none of it may touch an instance.
IN_PLACE = [
    "firewall-rule-added",
    "keepalive",
    "mtu",
    "key-rotation",
    "preshared-key-off",
    "tunnel-cidr",
    "port",
]


@pytest.mark.parametrize("change", IN_PLACE)
def test_day2_changes_leave_every_instance_as_it_was(
    change: str, dev_preview_plan: Plan, dev_variant: Callable[[str], Plan]
) -> None:
    # A changed instance input would replace the gateway (user data) or stop it: day 2
    # goes through the desired state and the apply command instead.
    before, after = dev_preview_plan, dev_variant(change)
    for site in SITES:
        name = f"{site}-gateway"
        assert after.one(INSTANCE, name).inputs == before.one(INSTANCE, name).inputs
    # ...and the apply runs again: its triggers changed.
    for site in SITES:
        name = f"{site}-apply"
        old = before.one("command:local:Command", name).inputs["triggers"]
        assert after.one("command:local:Command", name).inputs["triggers"] != old


# --- issue 13, point 4: a site cidr change that AWS accepts ----------------------------

IGW = "aws:ec2/internetGateway:InternetGateway"
EIP_ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"


@pytest.fixture(scope="module")
def dev_preview(dev_preview_plan: Plan) -> Plan:
    return dev_preview_plan


def test_a_site_cidr_change_lets_the_address_go_before_the_internet_gateway(
    dev_preview: Plan,
) -> None:
    # resourceInternetGatewayUpdate detaches the gateway from the old VPC while the
    # Elastic IP is still mapped there: DependencyViolation for 20 minutes, then failure.
    # Replaced instead, the old gateway is deleted with the old VPC, after the old
    # association, which depends on it (Pulumi deletes replaced resources dependents
    # first, once their replacements exist).
    config = stack_config("dev")
    config["sites"][0]["cidr"] = "10.3.0.0/16"
    after = run_program("dev", config)
    changes = compare(public_document(dev_preview), public_document(after))
    by_name = {(c.type, c.name): c for c in changes}
    igw, association = by_name[(IGW, "alpha-igw")], by_name[(EIP_ASSOCIATION, "alpha-address")]
    assert igw.op == "replace", [p.key for p in igw.properties]
    assert association.op == "replace"
    replaced = {c.urn for c in changes if c.op == "replace"}
    old_deleted = [urn for urn in dev_preview.destroy_order() if urn in replaced]
    assert old_deleted.index(association.urn) < old_deleted.index(igw.urn)
    # Nothing of the site is changed in place while the old VPC still holds the address.
    alpha = [c for c in changes if c.name.startswith("alpha-") and c.op == "update"]
    assert [c.type for c in alpha if c.type in (IGW, EIP_ASSOCIATION)] == []
    # The peer keeps its gateway: only its desired state and routes follow the new cidr.
    assert by_name[(INSTANCE, "beta-gateway")].op == "same"
    assert by_name[(INSTANCE, "alpha-gateway")].op == "replace"


# --- issue 13, point 8: refuse at plan time what AWS would refuse after a delete --------


def _plan_problem(config: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(PlanError) as raised:
        run_program("dev", config, **kwargs)
    (line,) = str(raised.value).splitlines()
    return line


def test_an_unknown_instance_type_in_a_pinned_zone_stops_the_plan() -> None:
    config = stack_config("dev")
    config["sites"][0].update(instanceType="t4g.nanoo", availabilityZone="us-east-1b")
    line = _plan_problem(config)
    assert line.startswith("wg-site-to-site:sites[0].instanceType: t4g.nanoo is not offered")


def test_a_type_the_pinned_zone_does_not_offer_stops_the_plan() -> None:
    # The mock's us-east-1e offers no Graviton type (plan.provider_model).
    config = stack_config("dev")
    config["sites"][0]["availabilityZone"] = "us-east-1e"
    line = _plan_problem(config)
    assert line.startswith("wg-site-to-site:sites[0].availabilityZone: us-east-1e does not offer")
    assert "t4g.nano" in line


def _beta_public_subnet(zone: str) -> dict[str, Any]:
    """beta's public subnet as an earlier `pulumi up` of dev left it in eu-west-1."""
    return {
        "id": "subnet-0a1b2c3d4e5f60718",
        "region": "eu-west-1",
        "vpcId": "vpc-0a1b2c3d4e5f60718",
        "availabilityZone": zone,
        "cidrBlock": "10.2.0.0/24",
        "tags": {"project": "wg-site-to-site", "stack": "dev", "Name": "beta-public"},
    }


def test_a_moved_pinned_zone_of_an_existing_site_is_refused() -> None:
    # AWS refuses the new subnet with the same CIDR while the old one exists
    # (InvalidSubnet.Conflict), after the gateway was deleted.
    config = stack_config("dev")
    config["sites"][1]["availabilityZone"] = "eu-west-1c"
    line = _plan_problem(config, existing_subnets=[_beta_public_subnet("eu-west-1a")])
    assert line.startswith("wg-site-to-site:sites[1].availabilityZone: eu-west-1c, but site beta")
    assert "exist in eu-west-1a" in line
    assert "keep availabilityZone eu-west-1a, or change the site's cidr as well" in line


@pytest.mark.parametrize(
    ("zone", "cidr"),
    [("eu-west-1a", None), ("eu-west-1c", "10.3.0.0/16")],
    ids=["same-zone", "new-cidr-too"],
)
def test_a_pinned_zone_that_moves_no_subnet_plans(zone: str, cidr: str | None) -> None:
    # With a new cidr the subnets go into a new VPC: no conflict to refuse.
    config = stack_config("dev")
    config["sites"][1]["availabilityZone"] = zone
    if cidr:
        config["sites"][1]["cidr"] = cidr
    plan = run_program("dev", config, existing_subnets=[_beta_public_subnet("eu-west-1a")])
    beta = [s for s in plan.by_type(SUBNET) if s.name.startswith("beta-")]
    assert {s.inputs["availabilityZone"] for s in beta} == {zone}
