"""Teardown leaves the host as it found it, twice in a row, and after a crash."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from lab import NETNS_ETC, REPO, STATE_FILE, WIREGUARD_RUN, LabError
from lab.build import leftovers
from lab.faults import wireguard_go_pids
from lab.lifecycle import down, up
from tests.conftest import planned

pytestmark = pytest.mark.lab


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def snapshot() -> dict[str, str]:
    """The host's namespaces, links and firewall (iptables-save without its timestamps)."""
    saved = re.sub(r"^#.*\n", "", _run("iptables-save"), flags=re.MULTILINE)
    return {
        "netns": _run("ip", "netns", "list"),
        "links": _run("ip", "-o", "link", "show"),
        "iptables": saved,
        "nft": _run("nft", "list", "ruleset"),
        "etc_netns": str(sorted(os.listdir(NETNS_ETC))) if NETNS_ETC.is_dir() else "absent",
        "wireguard_run": (
            str(sorted(os.listdir(WIREGUARD_RUN))) if WIREGUARD_RUN.is_dir() else "absent"
        ),
    }


@pytest.fixture
def dev_plan(root):
    assert not leftovers()
    return planned("dev")


@pytest.fixture(params=["host dirs present", "host dirs absent"])
def host_dirs(request, root):
    """/etc/netns and /var/run/wireguard made to exist, or not, before the lab; restored after.

    A machine that has run a lab (or other namespace tools) has them; a fresh one has not.
    Teardown must leave either state as it found it.
    """
    present = request.param == "host dirs present"
    changed = []
    for directory in (NETNS_ETC, WIREGUARD_RUN):
        if present and not directory.exists():
            directory.mkdir(mode=0o755, parents=True)
            changed.append(directory)
        elif not present and directory.exists():
            if any(directory.iterdir()):
                pytest.fail(f"{directory} is not empty, so its absence cannot be tested here")
            directory.rmdir()
            changed.append(directory)
    yield present
    for directory in changed:
        if present and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        elif not present:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)


def test_down_restores_the_host_and_is_idempotent(dev_plan, host_dirs):
    before = snapshot()
    expected = "[]" if host_dirs else "absent"
    assert (before["etc_netns"], before["wireguard_run"]) == (expected, expected)
    sockets_before = set(WIREGUARD_RUN.glob("*.sock")) if WIREGUARD_RUN.is_dir() else set()
    lab = up(dev_plan)
    assert lab.first_reply is not None
    assert snapshot()["netns"] != before["netns"]
    down()
    assert snapshot() == before
    assert not STATE_FILE.exists()
    assert (set(WIREGUARD_RUN.glob("*.sock")) if WIREGUARD_RUN.is_dir() else set()) == (
        sockets_before
    )
    assert down() == []
    assert snapshot() == before


def test_down_cleans_up_after_a_crash(dev_plan, host_dirs):
    before = snapshot()
    lab = up(dev_plan)
    # A crash: the state file is gone and wireguard-go died without cleaning up.
    STATE_FILE.unlink()
    for site in lab.topology.sites:
        for pid in wireguard_go_pids(site):
            os.kill(pid, signal.SIGKILL)
    result = subprocess.run(
        [sys.executable, "-m", "lab", "down"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert leftovers() == []
    for site in lab.topology.sites:
        assert not (WIREGUARD_RUN / f"{site.interface}.sock").exists()
    assert snapshot() == before


def test_a_failed_build_leaves_nothing(dev_plan, monkeypatch):
    before = snapshot()

    def broken(*_args, **_kwargs):
        raise LabError("injected failure after the namespaces exist")

    monkeypatch.setattr("lab.build.boot_gateway", broken)
    with pytest.raises(LabError, match="removed again: injected failure"):
        up(dev_plan)
    assert leftovers() == []
    assert snapshot() == before
