"""Canaries (sites[].canary): one workload host per site, planned with the properties the
issue asks for, covered by the policies, fixed at the core's address."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import pytest

from components.gateway import SSM_AGENT_ACTIONS
from core.config import ConfigError, load_stack_config
from core.facts import gateway_facts
from plan.cost import monthly_cost
from plan.document import Document, public_document
from plan.engine import Plan, PlannedResource, read_stack_file, reveal, run_program
from policy import offline, rules
from tests.conftest import shipped_plan
from tests.test_program import desired_state

INSTANCE = "aws:ec2/instance:Instance"


def with_canaries(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for site in config["sites"]:
        site["canary"] = True
    return config


@pytest.fixture(scope="module")
def canary_plan() -> Plan:
    # One plan of dev with canaries on both sites, shared by this module.
    return run_program("e2e-canary", with_canaries(read_stack_file("dev")))


@pytest.fixture(scope="module")
def canary_document(canary_plan: Plan) -> Document:
    return public_document(canary_plan)


def canaries(plan: Plan) -> list[PlannedResource]:
    return [r for r in plan.by_type(INSTANCE) if r.name.endswith("-canary")]


def test_canary_on_both_sites_plans_four_instances(canary_plan: Plan) -> None:
    assert len(canary_plan.by_type(INSTANCE)) == 4
    assert sorted(r.name for r in canaries(canary_plan)) == ["alpha-canary", "beta-canary"]


def test_canary_is_a_private_ssm_managed_nano_on_an_encrypted_disk(canary_plan: Plan) -> None:
    facts = {f.name: f for f in gateway_facts(load_stack_config(canary_plan.config), "x")}
    for canary in canaries(canary_plan):
        site = canary.name.removesuffix("-canary")
        inputs = reveal(canary.inputs)
        assert inputs["instanceType"] == "t4g.nano"
        assert inputs["associatePublicIpAddress"] is False
        assert inputs["metadataOptions"]["httpTokens"] == "required"
        assert inputs["rootBlockDevice"]["encrypted"] is True
        assert "userData" not in inputs and "userDataBase64" not in inputs
        # The site's private subnet, at the core's fixed address.
        subnet = canary_plan.one("aws:ec2/subnet:Subnet", f"{site}-private")
        assert inputs["subnetId"] == subnet.outputs["id"]
        address = ipaddress.IPv4Address(inputs["privateIp"])
        assert address in facts[site].layout.private_subnet
        assert address == facts[site].canary
        assert canary.outputs["privateIp"] == str(address)
        # The site's workload security group.
        workload = canary_plan.one("aws:ec2/securityGroup:SecurityGroup", f"{site}-from-peer-site")
        assert workload.outputs["id"] in inputs["vpcSecurityGroupIds"]
        # The arm64 image of the site's pinned build: the same as its t4g gateway's (the
        # mocks derive AMI ids from the image name and region).
        gateway = canary_plan.one(INSTANCE, f"{site}-gateway")
        assert inputs["ami"] == reveal(gateway.inputs)["ami"]


def test_canary_role_has_only_the_ssm_agent_actions(canary_plan: Plan) -> None:
    for site in ("alpha", "beta"):
        policy = canary_plan.one("aws:iam/rolePolicy:RolePolicy", f"{site}-canary-ssm-agent")
        document = json.loads(reveal(policy.inputs)["policy"])
        actions = [a for s in document["Statement"] for a in s["Action"]]
        assert actions == SSM_AGENT_ACTIONS
        role = canary_plan.one("aws:iam/role:Role", f"{site}-canary")
        assert "managedPolicyArns" not in reveal(role.inputs)
    attachments = canary_plan.by_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert attachments == []


def test_canary_reaches_ssm_through_endpoints_in_its_subnet(canary_plan: Plan) -> None:
    endpoints = canary_plan.by_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    services = sorted(reveal(e.inputs)["serviceName"] for e in endpoints)
    assert services == sorted(
        f"com.amazonaws.{region}.{service}"
        for region in ("us-east-1", "eu-west-1")
        for service in ("ssm", "ssmmessages", "ec2messages")
    )


def test_canary_ip_in_the_sites_export(canary_plan: Plan) -> None:
    sites = canary_plan.exports["sites"]
    assert sites["alpha"]["canaryIp"] == "10.1.1.10"
    assert sites["beta"]["canaryIp"] == "10.2.1.10"


def test_stack_with_canaries_passes_every_mandatory_policy(canary_document: Document) -> None:
    found = rules.evaluate(offline.resources_from_document(canary_document, "e2e-canary"))
    assert rules.mandatory(found) == []


def _canary_input(document: Document, path: tuple[str, str], value: Any) -> Document:
    changed = copy.deepcopy(document)
    for resource in changed["resources"]:
        if resource["type"] == INSTANCE and resource["name"] == "alpha-canary":
            resource["inputs"][path[0]][path[1]] = value
    return changed


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("metadataOptions", "httpTokens"), "optional", "httpTokens is 'optional'"),
        (("rootBlockDevice", "encrypted"), False, "rootBlockDevice.encrypted is False"),
    ],
    ids=["imdsv2", "encrypted-root-volume"],
)
def test_instance_policies_cover_canaries(
    canary_document: Document, path: tuple[str, str], value: Any, message: str
) -> None:
    changed = _canary_input(canary_document, path, value)
    found = rules.mandatory(rules.evaluate(offline.resources_from_document(changed, "e2e-canary")))
    assert [v.message for v in found if "alpha-canary" in v.urn and message in v.message]


def test_canary_costs_its_instance_and_endpoints_but_no_metrics(
    canary_document: Document,
) -> None:
    lines = {line.item: line for line in monthly_cost(canary_document).lines}
    without = {line.item: line for line in monthly_cost(public_document(shipped_plan("dev"))).lines}
    assert lines["EC2 t4g.nano (us-east-1)"].quantity.startswith("2 x")
    # The same custom metrics as without canaries: only gateways publish.
    assert lines["CloudWatch custom metrics"] == without["CloudWatch custom metrics"]
    assert lines["VPC interface endpoints (us-east-1)"].quantity.startswith("3 x")


def test_canary_needs_the_programs_own_subnets() -> None:
    config = with_canaries(read_stack_file("dev"))
    config["sites"][1] |= {
        "vpcId": "vpc-0123456789abcdef0",
        "subnetId": "subnet-0123456789abcdef0",
        "routeTableIds": ["rtb-0123456789abcdef0"],
    }
    with pytest.raises(ConfigError) as raised:
        load_stack_config(config)
    assert raised.value.problems[0].startswith("wg-site-to-site:sites[1].canary: true needs")


def test_canary_must_be_a_boolean() -> None:
    config = read_stack_file("dev")
    config["sites"][0]["canary"] = "yes"
    with pytest.raises(ConfigError) as raised:
        load_stack_config(config)
    assert raised.value.problems[0].startswith("wg-site-to-site:sites[0].canary:")


def test_probe_targets_the_peer_canary(canary_plan: Plan, dev_preview_plan: Plan) -> None:
    # Each gateway's desired state names the other site's canary; the apply writes it as
    # the peer file's second line, and the probe pings it (tests/lab/test_e2e_lab.py runs it).
    for site, peer_canary in (("alpha", "10.2.1.10"), ("beta", "10.1.1.10")):
        (peer,) = desired_state(canary_plan, site)["peers"]
        assert peer["probeTarget"] == peer_canary
        # Without canaries the document is what it was: the probe pings the tunnel address.
        (peer,) = desired_state(dev_preview_plan, site)["peers"]
        assert "probeTarget" not in peer
