"""The issue's two AWS sites and an office on a static address
(tests/stacks/Pulumi.office-static.yaml) in the lab, built once: every pair carries
traffic, and the office is configured only by running its bundle's install.sh."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from core.keys import public_key
from core.render import BUNDLE_INSTALL
from lab import netns
from lab.build import in_etc
from lab.checks import directions
from lab.lifecycle import Lab
from lab.office import bundle_dir, install
from lab.report import Check
from tests.lab.support import checks_by_name, example_lab, the_office

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(root: None) -> Iterator[Lab]:
    with example_lab("office-static") as built:
        yield built


@pytest.fixture(scope="module")
def report(lab: Lab) -> dict[str, Check]:
    return checks_by_name(lab)


def test_every_pair_carries_traffic(lab: Lab, report: dict[str, Check]) -> None:
    labels = [d.label for d in directions(lab.topology)]
    assert labels == ["a1->b1", "a1->c1", "b1->a1", "b1->c1", "c1->a1", "c1->b1"]
    failed = [c.line() for c in report.values() if not c.ok]
    assert not failed, failed
    for label in labels:
        assert report[f"ping {label}"].ok and report[f"no-nat {label}"].ok


def test_the_office_is_configured_only_by_its_install_sh(lab: Lab) -> None:
    office = the_office(lab)
    # install.sh's own summary: it made the office's files and brought wg0 up.
    (said,) = [note for note in lab.notes if note.startswith("office:")]
    assert re.search(r"changed: .*desired state.*; wg0 up, 2 peer\(s\) checked", said), said
    installed = in_etc(office.gateway.namespace, "/etc/wireguard/wg0.conf").read_text()
    assert installed == (bundle_dir(office) / "wg0.conf").read_text()
    assert "PrivateKey" not in installed
    # Its own key, never in the bundle: the interface holds the key the stack names.
    shown = netns.ns_run(office.gateway.namespace, ["wg", "show", "wg0", "public-key"])
    assert shown.stdout.strip() == office.facts.site.external.public_key  # type: ignore[union-attr]
    for path in bundle_dir(office).rglob("*"):
        if path.is_file():
            assert "private" not in path.name, path


def test_running_install_sh_again_changes_nothing(lab: Lab) -> None:
    office = the_office(lab)
    key = in_etc(office.gateway.namespace, office.facts.key_path).read_text().strip()
    assert public_key(key) == office.facts.site.external.public_key  # type: ignore[union-attr]
    said = install(lab.topology, office, lab.state, key)
    assert said.endswith("nothing changed; wg0 up, 2 peer(s) checked"), said
    assert (bundle_dir(office) / BUNDLE_INSTALL).exists()
