"""Shared fixtures: plans of the shipped stacks, made by the real program under mocks."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import yaml

from plan.engine import STACKS, Plan, plan_stack, read_stack_file, run_program
from tests.plan_variants import DAY2


def stack_config(stack: str) -> dict[str, Any]:
    """The project's keys from a shipped stack file (a fresh copy a test may change)."""
    document = yaml.safe_load((STACKS / f"Pulumi.{stack}.yaml").read_text())
    prefix = "wg-site-to-site:"
    return {
        key.removeprefix(prefix): copy.deepcopy(value)
        for key, value in document["config"].items()
        if key.startswith(prefix)
    }


# Plans already made in this process: a plan is a pure function of the program, the stack,
# its config, preview or update, and the planted keys (the mocks answer from those alone).
_PLANS: dict[tuple[str, ...], Plan] = {}


def planned(
    stack: str,
    config: Mapping[str, Any] | None = None,
    *,
    preview: bool = True,
    planted_keys: Mapping[str, str] | None = None,
    shared: bool = False,
) -> Plan:
    """The plan of `stack`, from its shipped file or from `config` (the project's keys),
    made once per process for each distinct input; every caller gets its own deep copy,
    so a test may change it. For a test that changes something else the plan depends on
    (a monkeypatched limit, another program), call plan_stack or run_program directly.
    `shared` hands out the cached plan itself, for callers that only read it."""
    source = (STACKS / f"Pulumi.{stack}.yaml").read_text() if config is None else ""
    key = (
        stack,
        source,
        json.dumps(config, sort_keys=True, default=str),
        str(preview),
        json.dumps(dict(planted_keys or {}), sort_keys=True),
    )
    if key not in _PLANS:
        if config is None:
            _PLANS[key] = plan_stack(stack, preview=preview, planted_keys=planted_keys)
        else:
            _PLANS[key] = run_program(stack, config, preview=preview, planted_keys=planted_keys)
    return _PLANS[key] if shared else copy.deepcopy(_PLANS[key])


def shipped_plan(stack: str, preview: bool = True) -> Plan:
    """A shipped stack, planned once per process: shared, so a test must not change it."""
    return planned(stack, preview=preview, shared=True)


@pytest.fixture(scope="session")
def dev_preview_plan() -> Plan:
    """The dev stack as `pulumi preview` runs it (also `dev_plan`'s preview case)."""
    return shipped_plan("dev", preview=True)


@pytest.fixture(scope="session", params=[True, False], ids=["preview", "update"])
def dev_plan(request: pytest.FixtureRequest) -> Plan:
    """The dev stack, planned once as `pulumi preview` and once as `pulumi up` would run it."""
    return shipped_plan("dev", preview=request.param)


@pytest.fixture(scope="session")
def dev_variant() -> Callable[[str], Plan]:
    """The dev stack with one day-2 change (tests.plan_variants.DAY2), planned once per
    session whichever test asks first."""
    made: dict[str, Plan] = {}

    def variant(name: str) -> Plan:
        if name not in made:
            config = read_stack_file("dev")
            DAY2[name](config)
            made[name] = run_program("dev", config)
        return made[name]

    return variant


@pytest.fixture(scope="session")
def single_region_plan() -> Plan:
    return shipped_plan("single-region", preview=True)
