"""`python -m policy.offline STACK [--plan-json FILE]`: the policy pack without Pulumi.

Runs the same rules as policy/__main__.py over the offline plan of STACK (or over a
plan written by `python -m plan STACK --json FILE`). Mandatory violations print as
`policy: type name: message`; findings of advisory policies (EnforcementLevel.ADVISORY
in the pack: the CLI warns and goes on) print after them, each line starting with
`advisory:`, and fail nothing. Exit status: 0 if every mandatory policy passes (advisory
findings or not), 1 on any mandatory violation, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plan.document import REDACTED, UNKNOWN, redact_text, secret_values
from plan.engine import Plan, PlanError, Secret, Unknown, plan_stack
from policy import rules

EXIT_VIOLATIONS = 1
EXIT_BAD_INPUT = 2


class InputError(Exception):
    """The plan to check could not be read."""


def _from_plan_value(value: Any) -> Any:
    # The real engine gives policies secret values in the clear, and so does this.
    if isinstance(value, Secret):
        return _from_plan_value(value.value)
    if isinstance(value, Unknown):
        return rules.UNKNOWN
    if isinstance(value, dict):
        return {k: _from_plan_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_plan_value(v) for v in value]
    return value


def _from_json_value(value: Any) -> Any:
    # A redacted value cannot be read back, so a rule treats it like one not known yet.
    if value in (UNKNOWN, REDACTED):
        return rules.UNKNOWN
    if isinstance(value, dict):
        return {k: _from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json_value(v) for v in value]
    return value


def resources_from_plan(plan: Plan) -> list[rules.Resource]:
    return [
        rules.Resource(
            type=r.type,
            name=r.name,
            urn=r.urn,
            props=_from_plan_value(r.inputs),
            dependencies=frozenset(r.options.get("dependsOn", [])),
        )
        for r in plan.resources
    ]


def resources_from_document(document: Any, stack: str) -> list[rules.Resource]:
    """The resources of a `python -m plan --json` document, which must be for `stack`."""
    try:
        if document["stack"] != stack:
            raise InputError(f"the plan is of stack {document['stack']!r}, not {stack!r}")
        return [
            rules.Resource(
                type=str(r["type"]),
                name=str(r["name"]),
                urn=str(r["urn"]),
                props=_from_json_value(dict(r["inputs"])),
                dependencies=frozenset(r["options"].get("dependsOn", [])),
            )
            for r in document["resources"]
        ]
    except (KeyError, TypeError, AttributeError, ValueError):
        raise InputError("not a plan written by `python -m plan --json`") from None


def _load(stack: str, plan_json: Path | None) -> tuple[list[rules.Resource], frozenset[str]]:
    """The resources to check, and the secrets their messages must not show."""
    if plan_json is None:
        plan = plan_stack(stack)
        return resources_from_plan(plan), secret_values(plan)
    try:
        document = json.loads(plan_json.read_text())
    except OSError as error:
        raise InputError(f"cannot read {plan_json}: {error.strerror or error}") from None
    except ValueError as error:
        raise InputError(f"{plan_json} is not JSON ({error})") from None
    try:
        return resources_from_document(document, stack), frozenset()
    except InputError as error:
        raise InputError(f"{plan_json}: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m policy.offline",
        description="Check a stack's offline plan against the project's policy pack.",
    )
    parser.add_argument("stack", help="a stack with a config file stacks/Pulumi.<stack>.yaml")
    parser.add_argument(
        "--plan-json",
        metavar="FILE",
        type=Path,
        help="check this plan (from `python -m plan STACK --json FILE`) instead of planning",
    )
    args = parser.parse_args(argv)
    try:
        resources, secrets = _load(args.stack, args.plan_json)
    except (PlanError, InputError) as error:
        for line in str(error).splitlines():
            print(f"python -m policy.offline: {line}" if line[:1] != " " else line, file=sys.stderr)
        return EXIT_BAD_INPUT

    found = rules.evaluate(resources)
    violations, findings = rules.mandatory(found), rules.advisory(found)
    for v in violations:
        print(redact_text(f"{v.policy}: {v.type} {v.name}: {v.message}", secrets))
    for v in findings:
        print(redact_text(f"advisory: {v.policy}: {v.type} {v.name}: {v.message}", secrets))
    every = rules.all_rules()
    checked = sum(not rule.advisory for rule in every)
    advisories = len(every) - checked
    noted = (
        f"; {len(findings)} advisory findings of {len({v.policy for v in findings})} of "
        f"{advisories} advisory policies"
        if findings
        else f"; no finding of {advisories} advisory policies"
    )
    if violations:
        failed = len({v.policy for v in violations})
        print(
            f"stack {args.stack}: {len(violations)} violations of {failed} of {checked} "
            f"mandatory policies{noted} ({len(resources)} resources)"
        )
        return EXIT_VIOLATIONS
    print(
        f"stack {args.stack}: all {checked} mandatory policies pass{noted} "
        f"({len(resources)} resources)"
    )
    return 0


if __name__ == "__main__":
    from plan.cli import close_event_loops

    try:
        status = main()
    finally:
        close_event_loops()
    raise SystemExit(status)
