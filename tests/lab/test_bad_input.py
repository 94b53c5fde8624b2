"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab import REPO, netns
from lab.__main__ import main
from lab.build import leftovers
from lab.preflight import REQUIRED
from plan.engine import plan_stack

pytestmark = pytest.mark.lab


def lab_cli(*args: str, env: dict[str, str] | None = None):
    result = subprocess.run(
        [sys.executable, "-m", "lab", *args],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env or dict(os.environ),
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_not_root(root):
    # A whole process that believes it is not root (setpriv to nobody would also lose read
    # access to a checkout in a private temporary directory, as CI's may be).
    pretend = (
        "import os, runpy, sys; os.geteuid = lambda: 65534; sys.argv = ['lab', 'up', 'dev'];"
        " runpy.run_module('lab', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", pretend],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "lab: the lab needs root (network namespaces, iptables, /etc/netns): run it as root"
    ]


def test_not_root_in_process(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["down"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs root" in err


def test_leftovers_from_a_crashed_run(root):
    subprocess.run(["ip", "netns", "add", "wgs2s-leftover"], check=True, timeout=10)
    try:
        result = lab_cli("up", "dev")
    finally:
        subprocess.run(["ip", "netns", "del", "wgs2s-leftover"], check=True, timeout=10)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "wgs2s-leftover" in lines[0] and "make lab-down" in lines[0]
    assert leftovers() == []


def test_invalid_stack(root, tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "Pulumi.bad.yaml").write_text(
        "config:\n"
        "  wg-site-to-site:tunnel: {cidr: 10.255.255.0/31, port: 51000}\n"
        "  wg-site-to-site:sites:\n"
        "    - {name: alpha, region: us-east-1, cidr: 10.1.0.0/16, interface: wgA}\n"
        "    - {name: beta, region: eu-west-1, cidr: 10.1.0.0/16, interface: wgB}\n"
    )
    monkeypatch.setattr(
        "lab.cli.plan_stack", lambda stack, **_: plan_stack(stack, stacks_dir=tmp_path)
    )
    assert main(["up", "bad"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "lab: stack bad: invalid stack config: wg-site-to-site:sites[1].cidr"
    )
    assert leftovers() == []


def test_unknown_stack(root):
    result = lab_cli("up", "no-such-stack")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no config file for stack 'no-such-stack'" in result.stderr


def test_missing_program(root, tmp_path: Path):
    # A PATH with every tool the lab needs but mtr.
    for tool in [*REQUIRED, "wireguard-go"]:
        found = shutil.which(tool)
        if found and tool != "mtr":
            (tmp_path / tool).symlink_to(found)
    result = lab_cli("up", "dev", env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "lab: required program(s) not found: mtr (make deps installs them on Debian)"
    ]
    assert leftovers() == []


def test_no_namespace_support(root, monkeypatch, capsys):
    monkeypatch.setattr("lab.netns.has_namespace_support", lambda: False)
    assert main(["up", "dev"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["lab: this kernel has no network namespace support (/proc/self/ns/net)"]


def test_no_wireguard_at_all(root, monkeypatch, capsys):
    # No kernel module here, and wireguard-go "missing": the build stops and is undone.
    real_which = shutil.which
    monkeypatch.setattr(
        "lab.build.shutil.which", lambda name: None if name == "wireguard-go" else real_which(name)
    )
    monkeypatch.setattr("lab.build.netns.run", _failing_wireguard_link(netns.run))
    assert main(["up", "dev"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "no WireGuard module and wireguard-go is not installed" in lines[0]
    assert leftovers() == []


def _failing_wireguard_link(run: Callable[..., Any]) -> Callable[..., Any]:
    """Makes the kernel-module probe fail even on a machine that has the module."""

    def patched(argv: list[str], **kwargs: Any) -> Any:
        if "type" in argv and "wireguard" in argv:
            return subprocess.CompletedProcess(argv, 2, "", "Error: Unknown device type.")
        return run(argv, **kwargs)

    return patched
