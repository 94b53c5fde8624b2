"""`lab down` removes host directories only when its record says the lab made them.

Without root: the paths are redirected to a temporary directory and the namespace
commands stubbed, so only the decision about the host directories runs. The lab tests
(tests/lab/test_teardown.py) check the same on the real host, as root.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import lab.state
import lab.teardown
from lab.state import State, record_created_host_dirs


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    paths = SimpleNamespace(
        etc=tmp_path / "etc" / "netns",
        run=tmp_path / "run" / "wireguard",
        state=tmp_path / "lab-state",
    )
    monkeypatch.setattr(lab.teardown, "NETNS_ETC", paths.etc)
    monkeypatch.setattr(lab.teardown, "WIREGUARD_RUN", paths.run)
    monkeypatch.setattr(lab.teardown, "STATE_DIR", paths.state)
    monkeypatch.setattr(lab.state, "STATE_DIR", paths.state)
    monkeypatch.setattr(lab.state, "STATE_FILE", paths.state / "state.json")
    monkeypatch.setattr(lab.state, "HOST_DIRS_FILE", paths.state / "created-host-dirs.json")
    no_output = subprocess.CompletedProcess([], 0, stdout="", stderr="")
    monkeypatch.setattr(
        lab.teardown,
        "netns",
        SimpleNamespace(
            list_namespaces=list,
            namespace_pids=lambda _ns: [],
            delete_namespace=lambda _ns: None,
            run=lambda *_a, **_k: no_output,
        ),
    )
    return paths


def _make_dirs(host: SimpleNamespace) -> None:
    host.etc.mkdir(parents=True)
    host.run.mkdir(parents=True)


def test_without_a_record_existing_empty_host_dirs_stay(host: SimpleNamespace) -> None:
    _make_dirs(host)  # an earlier lab or another tool made them; nobody recorded it

    assert lab.teardown.teardown() == []

    assert host.etc.is_dir() and host.run.is_dir()


def test_dirs_the_lab_recorded_go_even_if_the_state_file_is_lost(host: SimpleNamespace) -> None:
    record_created_host_dirs([str(host.etc), str(host.run)])
    State(stack="dev").save()
    _make_dirs(host)
    (host.state / "state.json").unlink()  # a crash

    lab.teardown.teardown()

    assert not host.etc.exists() and not host.run.exists()
    assert not host.state.exists()


def test_dirs_that_existed_before_the_lab_stay(host: SimpleNamespace) -> None:
    _make_dirs(host)
    record_created_host_dirs([])  # up() found both present
    State(stack="dev").save()

    lab.teardown.teardown()
    lab.teardown.teardown()

    assert host.etc.is_dir() and host.run.is_dir()
