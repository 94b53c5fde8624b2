"""Helpers for the lab tests: root gating and labs that always come down again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lab.build import leftovers
from lab.checks import DATA_PORT, control_port, services, wait_for_reply
from lab.lifecycle import Lab, down, up
from plan.engine import Plan


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
def built(plan: Plan, wait: float = 30.0) -> Iterator[Lab]:
    """A lab for `plan`, removed afterwards whatever happens; refuses to start on leftovers."""
    release_shared()
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
