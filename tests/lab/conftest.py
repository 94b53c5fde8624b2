"""Lab fixtures. Lab tests need root; they skip without it only outside CI (CI unset), and
fail in CI, so a CI runner that lost root cannot turn the lab suite green by skipping.

One lab of the dev stack is shared by the modules that use `dev_lab` and leave it as they
found it (tests/lab/support.py: shared_lab); they run next to each other, and every other
lab test finds no lab up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.lifecycle import Lab
from tests.conftest import planned
from tests.lab.support import release_shared, require_root, shared_lab

# Modules that use the shared lab, in the order they run: the report's checks first, on
# the lab as built; then the faults, the health probe and day 2, each of which restores
# what it breaks (day 2's `baseline` pushes the shipped stack again after every test).
SHARED = ["test_report.py", "test_faults.py", "test_health.py", "test_day2.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Moves the shared lab's modules together, at the place of the first of them."""
    shared = [item for item in items if item.path.parent.name == "lab" and item.path.name in SHARED]
    if not shared:
        return
    first = min(items.index(item) for item in shared)
    rest = [item for item in items if item not in shared]
    shared.sort(key=lambda item: SHARED.index(item.path.name))  # stable within a module
    items[:] = rest[:first] + shared + rest[first:]


@pytest.fixture(scope="session")
def root() -> None:
    require_root()


@pytest.fixture(scope="package", autouse=True)
def _shared_lab_down_at_the_end() -> Iterator[None]:
    yield
    release_shared()


@pytest.fixture(autouse=True)
def _no_shared_lab_unless_used(request: pytest.FixtureRequest) -> None:
    """A lab test that does not use the shared lab finds no lab up."""
    if "dev_lab" not in request.fixturenames:
        release_shared()


@pytest.fixture(scope="module")
def dev_lab(root: None) -> Lab:
    return shared_lab(planned("dev"))
