"""Lab fixtures. Lab tests need root; they skip without it only outside CI (CI unset), and
fail in CI, so a CI runner that lost root cannot turn the lab suite green by skipping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.lifecycle import Lab
from plan.engine import plan_stack
from tests.lab.support import built, require_root


@pytest.fixture(scope="session")
def root() -> None:
    require_root()


@pytest.fixture(scope="module")
def dev_lab(root: None) -> Iterator[Lab]:
    with built(plan_stack("dev")) as lab:
        assert lab.first_reply is not None, "no reply through the tunnel after the build"
        yield lab
