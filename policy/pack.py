"""The rules of policy/rules.py as pulumi-policy policies: mandatory, except the rules
marked advisory (the CLI prints their findings as warnings and fails nothing).

The engine hands a policy its props behind a proxy that raises on values not known
during a preview; here they become rules.UNKNOWN, so a rule can say "cannot tell yet"
instead of the whole policy being skipped as unrunnable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from policy import rules

PACK_NAME = "wg-site-to-site"


def plain(value: Any) -> Any:
    """Props as plain dicts and lists, with values unknown during a preview as UNKNOWN."""
    if isinstance(value, Mapping):
        return {key: _item(value, key) for key in value}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_item(value, index) for index in range(len(value))]
    return value


def _item(container: Any, key: Any) -> Any:
    try:
        return plain(container[key])
    except UnknownValueError:
        return rules.UNKNOWN


def enforcement(rule: rules.ResourceRule | rules.StackRule) -> EnforcementLevel:
    # A policy's own level wins over the pack's (pulumi_policy PolicyPack
    # _get_enforcement_level), so the pack's MANDATORY default leaves these advisory.
    return EnforcementLevel.ADVISORY if rule.advisory else EnforcementLevel.MANDATORY


def resource_policy(rule: rules.ResourceRule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in rule.check(args.resource_type, plain(args.props)):
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=enforcement(rule),
    )


def stack_policy(rule: rules.StackRule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [
            rules.Resource(
                type=r.resource_type,
                name=r.name,
                urn=r.urn,
                props=plain(r.props),
                dependencies=frozenset(d.urn for d in r.dependencies),
            )
            for r in args.resources
        ]
        for resource, message in rule.check(resources):
            report_violation(message, resource.urn)

    return StackValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=enforcement(rule),
    )


def policies() -> list[Policy]:
    """Every rule, in the order `make policy` reports them."""
    return [
        *(resource_policy(rule) for rule in rules.RESOURCE_RULES),
        *(stack_policy(rule) for rule in rules.STACK_RULES),
    ]
