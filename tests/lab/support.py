"""Helpers for the lab tests: root gating and labs that always come down again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lab.build import leftovers
from lab.checks import DATA_PORT, control_port, services
from lab.lifecycle import Lab, down, up
from plan.engine import Plan


def require_root() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("lab tests need root and CI is set: run the suite as root")
    pytest.skip("lab tests need root (set CI to turn this skip into a failure)")


@contextmanager
def built(plan: Plan, wait: float = 30.0) -> Iterator[Lab]:
    """A lab for `plan`, removed afterwards whatever happens; refuses to start on leftovers."""
    found = leftovers()
    assert not found, f"leftovers from an earlier lab: {found}"
    lab = up(plan, wait=wait)
    try:
        yield lab
    finally:
        down()


@contextmanager
def b1_services(lab: Lab) -> Iterator[None]:
    b1 = lab.topology.sites[1].hosts[0]
    with services(b1.namespace, [DATA_PORT, control_port(lab.topology)]):
        yield
