"""Edits a copy of a Plan, to build labs from deliberately broken plans."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

from plan.engine import Plan, PlannedResource, Secret, reveal

TYPE_INSTANCE = "aws:ec2/instance:Instance"
TYPE_PARAMETER = "aws:ssm/parameter:Parameter"
TYPE_INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
TYPE_ROUTE = "aws:ec2/route:Route"
TYPE_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
TYPE_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"


def mutated(plan: Plan, *changes: Callable[[Plan], None]) -> Plan:
    copied = copy.deepcopy(plan)
    for change in changes:
        change(copied)
    return copied


def _set(resource: PlannedResource, key: str, value: Any) -> None:
    # Keep a secret secret: the lab must reveal() it like the real thing.
    old = resource.inputs.get(key)
    resource.inputs[key] = Secret(value) if isinstance(old, Secret) else value
    resource.outputs[key] = value


def source_dest_check_on(site: str) -> Callable[[Plan], None]:
    def change(plan: Plan) -> None:
        _set(plan.one(TYPE_INTERFACE, f"{site}-gateway"), "sourceDestCheck", True)

    return change


def attached_as_primary(site: str) -> Callable[[Plan], None]:
    """d82e7db's attachment: device 0 through primaryNetworkInterface, whose check the
    provider writes back on at the next `pulumi up` (plan.provider_model)."""

    def change(plan: Plan) -> None:
        instance = plan.one(TYPE_INSTANCE, f"{site}-gateway")
        (attached,) = instance.inputs.pop("networkInterfaces")
        instance.inputs["primaryNetworkInterface"] = {
            "networkInterfaceId": attached["networkInterfaceId"]
        }

    return change


def no_routes_to_gateways(plan: Plan) -> None:
    enis = {r.outputs.get("id") for r in plan.by_type(TYPE_INTERFACE)}
    plan.resources = [
        r
        for r in plan.resources
        if not (r.type == TYPE_ROUTE and reveal(r.inputs.get("networkInterfaceId")) in enis)
    ]


def tunnel_open_to_all(site: str) -> Callable[[Plan], None]:
    """Every tunnel rule of the site's group (one per peer, `<site>-tunnel-from-<peer>`)
    opened to the whole internet."""

    def change(plan: Plan) -> None:
        rules = [
            rule
            for rule in plan.by_type(TYPE_INGRESS)
            if rule.name.startswith(f"{site}-tunnel-from-")
        ]
        assert rules, f"no tunnel rule for site {site}"
        for rule in rules:
            _set(rule, "cidrIpv4", "0.0.0.0/0")

    return change


def no_mtu_line(site: str) -> Callable[[Plan], None]:
    """The desired state without its pinned MTU: wg-quick derives 8921 from EC2's 9001."""

    def change(plan: Plan) -> None:
        parameter = plan.one(TYPE_PARAMETER, f"{site}-desired-state")
        state = json.loads(parameter.inputs["insecureValue"])
        state["config"], count = re.subn(
            r"^[ \t]*MTU = \d+\n", "", state["config"], flags=re.MULTILINE
        )
        assert count == 1, "the desired state should pin the MTU exactly once"
        _set(parameter, "insecureValue", json.dumps(state))

    return change


def _workload_group(plan: Plan, site: str) -> str:
    group = plan.exports["sites"][site]["workloadSecurityGroupId"]
    assert isinstance(group, str), f"site {site} exports no workload security group"
    return group


def _drop_rules(plan: Plan, site: str, wanted: Callable[[PlannedResource], bool]) -> None:
    group = _workload_group(plan, site)
    kept = [
        r
        for r in plan.resources
        if not (reveal(r.inputs.get("securityGroupId")) == group and wanted(r))
    ]
    # A control that removes nothing would pass for the wrong reason.
    assert len(kept) < len(plan.resources), f"no such rule on site {site}'s workload group"
    plan.resources = kept


def no_workload_egress(site: str) -> Callable[[Plan], None]:
    """The workload group as it was before it had egress: the provider's empty one."""

    def change(plan: Plan) -> None:
        _drop_rules(plan, site, lambda r: r.type == TYPE_EGRESS)

    return change


def _admits_frag_needed(rule: PlannedResource) -> bool:
    # ICMP rules carry the type in fromPort and the code in toPort; -1 is any.
    return (
        rule.type == TYPE_INGRESS
        and reveal(rule.inputs.get("ipProtocol")) == "icmp"
        and reveal(rule.inputs.get("fromPort")) in (3, -1)
        and reveal(rule.inputs.get("toPort")) in (4, -1)
    )


def no_frag_needed_rule(site: str) -> Callable[[Plan], None]:
    """The workload group without the ICMP rule(s) admitting fragmentation needed."""

    def change(plan: Plan) -> None:
        _drop_rules(plan, site, _admits_frag_needed)

    return change
