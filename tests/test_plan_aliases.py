"""Existing two-site stacks after N sites: every resource renamed for N sites names its
old name as an alias, so `pulumi up` keeps it (state, physical resource) instead of
deleting and creating it; the offline diff matches renamed resources the same way."""

from __future__ import annotations

import copy
from typing import Any

from plan import diff, document
from plan.engine import Plan

# The dev stack's resources as they were named before N sites (type, old name, new name).
RENAMED = [
    ("random:index/randomBytes:RandomBytes", "preshared-key", "preshared-key-alpha-beta"),
    ("aws:ssm/parameter:Parameter", "alpha-preshared-key", "alpha-preshared-key-beta"),
    ("aws:ssm/parameter:Parameter", "beta-preshared-key", "beta-preshared-key-alpha"),
    (
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "alpha-tunnel-from-peer",
        "alpha-tunnel-from-beta",
    ),
    (
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "beta-from-peer-site",
        "beta-from-alpha-site",
    ),
    (
        "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
        "alpha-to-peer-site",
        "alpha-to-beta-site",
    ),
    (
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "alpha-time-exceeded-from-peer-tunnel",
        "alpha-time-exceeded-from-tunnel",
    ),
    (
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "beta-unreachable-from-peer-tunnel",
        "beta-unreachable-from-tunnel",
    ),
    ("aws:cloudwatch/metricAlarm:MetricAlarm", "alpha-tunnel-down", "alpha-beta-tunnel-down"),
    (
        "aws:cloudwatch/metricAlarm:MetricAlarm",
        "beta-handshake-stale",
        "beta-alpha-handshake-stale",
    ),
]
# Named as before: the routes (to the one peer), every network, instance and address.
KEPT = ["alpha-to-beta-0", "beta-to-alpha-1", "alpha-vpc", "alpha-gateway", "beta-address"]


def test_each_renamed_resource_names_its_old_urn(dev_preview_plan: Plan) -> None:
    for type_, old, new in RENAMED:
        resource = dev_preview_plan.one(type_, new)
        old_urn = resource.urn.rsplit("::", 1)[0] + "::" + old
        assert resource.options["aliases"] == [old_urn], new
    names = {r.name for r in dev_preview_plan.resources}
    assert set(KEPT) <= names


def _as_before(public: dict[str, Any], aliases: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(old document, new document): the old one with the pre-N-site names; the new one
    with or without its aliases."""
    old, new = copy.deepcopy(public), copy.deepcopy(public)
    renames = {}
    for resource in old["resources"]:
        for type_, was, now in RENAMED:
            if (resource["type"], resource["name"]) == (type_, now):
                urn = resource["urn"].rsplit("::", 1)[0] + "::" + was
                renames[resource["urn"]] = urn
                resource.update(urn=urn, name=was)
    for resource in old["resources"]:
        depends = resource["options"]["dependsOn"]
        resource["options"]["dependsOn"] = sorted(renames.get(d, d) for d in depends)
        resource["options"].pop("aliases", None)
    if not aliases:
        for resource in new["resources"]:
            resource["options"]["aliases"] = []
    return old, new


def test_the_diff_matches_a_renamed_resource_by_its_alias(dev_preview_plan: Plan) -> None:
    public = document.public_document(dev_preview_plan)

    matched = diff.summary(diff.compare(*_as_before(public, aliases=True)))
    unmatched = diff.summary(diff.compare(*_as_before(public, aliases=False)))

    assert (matched["create"], matched["delete"]) == (0, 0)
    assert matched["replace"] == 0 and matched["update"] == 0
    assert (unmatched["create"], unmatched["delete"]) == (len(RENAMED), len(RENAMED))
