"""Helpers for the lab tests: root gating and labs that always come down again."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab.build import leftovers
from lab.checks import DATA_PORT, control_port, run_all, services, wait_for_reply
from lab.lifecycle import Lab, down, up
from lab.report import Check
from lab.topology import Office
from plan.engine import Plan, read_stack_file, run_program

# The example stacks (helper aws's): a three-site mesh, two AWS sites and an office
# with a static address, a hub with two spokes and a NATed office.
EXAMPLES = Path(__file__).resolve().parent.parent / "stacks"


def checks_by_name(lab: Lab) -> dict[str, Check]:
    """Every check of the lab (lab.checks.run_all), printed, by name."""
    checks = run_all(lab.topology, lab.state)
    for check in checks:
        print(check.line())
    return {check.name: check for check in checks}


def the_office(lab: Lab) -> Office:
    """The one office of an example stack."""
    (office,) = lab.topology.offices
    return office


@contextmanager
def example_lab(stack: str) -> Iterator[Lab]:
    """The lab of an example stack, its offices played by the lab with keys of its own;
    planned once (the caller's fixture is per module) and removed afterwards."""
    from lab.office import with_lab_keys

    config, keys = with_lab_keys(read_stack_file(stack, EXAMPLES))
    with built(run_program(stack, config), office_keys=keys) as lab:
        yield lab


def require_root() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("lab tests need root and CI is set: run the suite as root")
    pytest.skip("lab tests need root (set CI to turn this skip into a failure)")


class _Shared:
    """The dev stack's lab as built, handed from one test module to the next."""

    lab: Lab | None = None


def shared_lab(plan: Plan, wait: float = 30.0) -> Lab:
    """The shared lab of the dev stack: built on first use, handed on while it still carries
    a1->b1 pings, rebuilt when it does not. Modules that leave the lab as they found it use
    it (tests/lab/conftest.py orders them next to each other); any other lab test takes it
    down first (release_shared, through `built` and the conftest's autouse fixture)."""
    lab = _Shared.lab
    if lab is not None:
        a, b = lab.topology.sites
        if wait_for_reply(a.hosts[0].namespace, str(b.hosts[0].address.ip), 5.0) is not None:
            return lab
        release_shared()
    found = leftovers()
    assert not found, f"leftovers from an earlier lab: {found}"
    lab = up(plan, wait=wait)
    _Shared.lab = lab
    try:
        assert lab.first_reply is not None, "no reply through the tunnel after the build"
    except AssertionError:
        release_shared()
        raise
    return lab


def release_shared() -> None:
    """Takes the shared lab down, if it is up."""
    if _Shared.lab is not None:
        _Shared.lab = None
        down()


@contextmanager
def built(
    plan: Plan, wait: float = 30.0, office_keys: Mapping[str, str] | None = None
) -> Iterator[Lab]:
    """A lab for `plan`, removed afterwards whatever happens; refuses to start on leftovers.
    `office_keys`: the offices' private keys (lab.office.with_lab_keys)."""
    release_shared()
    found = leftovers()
    assert not found, f"leftovers from an earlier lab: {found}"
    lab = up(plan, wait=wait, office_keys=office_keys)
    try:
        yield lab
    finally:
        down()


@contextmanager
def b1_services(lab: Lab) -> Iterator[None]:
    b1 = lab.topology.sites[1].hosts[0]
    with services(b1.namespace, [DATA_PORT, control_port(lab.topology)]):
        yield
