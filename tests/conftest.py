"""Shared fixtures: plans of the shipped stacks, made by the real program under mocks."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
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


def shipped_plan(stack: str, preview: bool = True) -> Plan:
    """A shipped stack, planned once per session: shared, so a test must not change it."""
    return _planned(stack, preview)


@functools.cache
def _planned(stack: str, preview: bool) -> Plan:
    return plan_stack(stack, preview=preview)


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
