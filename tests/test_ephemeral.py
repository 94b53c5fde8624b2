"""tools/ephemeral.py against a fake `pulumi` that logs its arguments and keeps a tiny state.

The fake stands in for the CLI and a backend: it knows which stacks exist, their tags and
whether they still have resources, refuses `stack rm` of a stack with resources (as
Pulumi does) and, like Pulumi, deletes the stack's config file on `stack rm` unless
given --preserve-config. Each test works on a copy of the project in tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import load_stack_config, project_config_from_stack_file
from tests.pulumi_stand_in import FAKE_PULUMI, logged_calls
from tools import ephemeral

REPO = Path(__file__).resolve().parent.parent


@dataclass
class World:
    root: Path
    log: Path
    state_file: Path

    @property
    def stacks_dir(self) -> Path:
        return self.root / "stacks"

    def calls(self) -> list[list[str]]:
        return logged_calls(self.log)

    def commands(self) -> list[str]:
        """The calls without their options: ['stack init', 'up', ...]."""
        shown = []
        for call in self.calls():
            size = 3 if call[:2] == ["stack", "tag"] else 2 if call[0] == "stack" else 1
            shown.append(" ".join(call[:size]))
        return shown

    def state(self) -> dict[str, Any]:
        stacks: dict[str, Any] = json.loads(self.state_file.read_text())["stacks"]
        return stacks

    def seed(self, **stacks: dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps({"stacks": stacks}))

    def run(self, *argv: str) -> int:
        return ephemeral.main(["--repo-root", str(self.root), *argv])


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "Pulumi.yaml", root)
    (root / "stacks").mkdir()
    for name in ("Pulumi.dev.yaml", "Pulumi.single-region.yaml"):
        shutil.copy(REPO / "stacks" / name, root / "stacks")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(FAKE_PULUMI.format(python=sys.executable))
    fake.chmod(0o755)
    world = World(root=root, log=tmp_path / "pulumi.log", state_file=tmp_path / "state.json")
    world.seed()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(world.log))
    monkeypatch.setenv("FAKE_PULUMI_STATE", str(world.state_file))
    monkeypatch.delenv("FAKE_PULUMI_FAIL", raising=False)
    monkeypatch.delenv(ephemeral.ALERTS_EMAIL_ENV, raising=False)
    # No developer's git identity leaks into the owner tag.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    yield world


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- create ------------------------------------------------------------------------------


def test_create_writes_a_tagged_valid_stack_and_deploys_it(world: World) -> None:
    before = datetime.now(UTC)
    assert world.run("create", "--name", "alice", "--owner", "alice@example.com") == 0

    target = world.stacks_dir / "Pulumi.test-alice.yaml"
    document = yaml.safe_load(target.read_text())
    base = yaml.safe_load((world.stacks_dir / "Pulumi.dev.yaml").read_text())
    tags = document["config"].pop("wg-site-to-site:tags")
    # The base's deployer is its deploy role; a test stack's is whoever deploys it.
    assert base["config"].pop("wg-site-to-site:deployer").startswith("arn:aws:iam::")
    assert "wg-site-to-site:deployer" not in document["config"]
    assert document["config"] == base["config"]  # every other key copied as is
    assert tags["owner"] == "alice@example.com"
    assert tags["ephemeral"] == "true"
    assert tags["base-stack"] == "dev"
    expires = datetime.fromisoformat(tags["expires-at"])
    assert tags["expires-at"].endswith("Z")
    assert timedelta(hours=23, minutes=59) < expires - before < timedelta(hours=24, minutes=1)
    document["config"]["wg-site-to-site:tags"] = tags
    config = load_stack_config(project_config_from_stack_file(document))
    assert config.tags["owner"] == "alice@example.com"

    assert world.commands() == ["stack init", "stack tag set", "stack tag set", "up"]
    calls = world.calls()
    assert calls[0] == ["stack", "init", "test-alice", "--no-select"]
    assert calls[1][3:] == ["owner", "alice@example.com", "--stack", "test-alice"]
    assert ["expires-at", tags["expires-at"], "--stack", "test-alice"] == calls[2][3:]
    assert calls[3] == ["up", "--yes", "--stack", "test-alice"]
    assert world.state()["test-alice"]["tags"]["expires-at"] == tags["expires-at"]


def test_create_keeps_the_base_tags_and_honours_options(world: World) -> None:
    base = world.stacks_dir / "Pulumi.single-region.yaml"
    document = yaml.safe_load(base.read_text())
    document["config"]["wg-site-to-site:tags"] = {"team": "net", "owner": "someone-else"}
    base.write_text(yaml.safe_dump(document))

    argv = ["--name", "test-b", "--base", "single-region", "--ttl-hours", "2", "--no-up"]
    assert world.run("create", *argv, "--owner", "bob") == 0

    tags = yaml.safe_load((world.stacks_dir / "Pulumi.test-b.yaml").read_text())["config"][
        "wg-site-to-site:tags"
    ]
    assert tags["team"] == "net"
    assert tags["owner"] == "bob"  # the test stack's owner, not the base's
    assert tags["base-stack"] == "single-region"
    assert "up" not in world.commands()


def test_create_takes_the_owner_from_the_environment(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    assert world.run("create", "--name", "ci", "--no-up") == 0
    tags = yaml.safe_load((world.stacks_dir / "Pulumi.test-ci.yaml").read_text())["config"][
        "wg-site-to-site:tags"
    ]
    assert tags["owner"] == "octocat"


ON_CALL = {"emails": ["oncall@example.com"], "topicArn": "arn:aws:sns:us-east-1:123456789012:pager"}


def _base_with_on_call_alerts(world: World) -> None:
    base = world.stacks_dir / "Pulumi.dev.yaml"
    document = yaml.safe_load(base.read_text())
    document["config"]["wg-site-to-site:alerts"] = ON_CALL
    base.write_text(yaml.safe_dump(document, sort_keys=False))
    load_stack_config(project_config_from_stack_file(document))  # a valid base


def _test_stack_config(world: World, name: str) -> dict[str, Any]:
    document = yaml.safe_load((world.stacks_dir / f"Pulumi.test-{name}.yaml").read_text())
    config: dict[str, Any] = document["config"]
    return config


def test_create_never_copies_the_base_stacks_alerts(world: World) -> None:
    _base_with_on_call_alerts(world)
    assert world.run("create", "--name", "quiet", "--owner", "me", "--no-up") == 0
    config = _test_stack_config(world, "quiet")
    assert "wg-site-to-site:alerts" not in config
    assert "oncall@example.com" not in json.dumps(config)
    assert "pager" not in json.dumps(config)


def test_create_sends_alerts_to_the_address_given_for_tests(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _base_with_on_call_alerts(world)
    argv = ["--owner", "me", "--no-up"]
    assert world.run("create", "--name", "flag", *argv, "--alerts-email", "me@example.com") == 0
    monkeypatch.setenv(ephemeral.ALERTS_EMAIL_ENV, "ci@example.com")
    assert world.run("create", "--name", "env", *argv) == 0

    for name, address in (("flag", "me@example.com"), ("env", "ci@example.com")):
        config = _test_stack_config(world, name)
        # Only the given address: the on-call's mail and topic are both gone.
        assert config["wg-site-to-site:alerts"] == {"emails": [address]}
        load_stack_config(project_config_from_stack_file({"config": config}))


def test_create_refuses_a_bad_alerts_address_with_one_line(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--name", "x", "--owner", "me", "--alerts-email", "not-an-address"]
    assert world.run("create", *argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "wg-site-to-site:alerts.emails[0]" in line
    assert world.calls() == []


def test_a_failing_up_is_rolled_back(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "up")
    assert world.run("create", "--name", "broken", "--owner", "me") == 1

    assert not (world.stacks_dir / "Pulumi.test-broken.yaml").exists()
    assert "test-broken" not in world.state()
    # What the failed update made goes first; `stack rm` would refuse the stack otherwise.
    assert world.commands()[-3:] == ["up", "destroy", "stack rm"]
    assert "--preserve-config" in world.calls()[-1]
    line = one_line(capsys.readouterr().err)
    assert "`pulumi up --yes --stack test-broken` failed (exit 1)" in line
    assert "rolled back" in line


def test_a_failing_stack_init_removes_only_the_file(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.seed(**{"test-taken": {"tags": {}, "resources": 4}})
    assert world.run("create", "--name", "taken", "--owner", "me") == 1

    assert not (world.stacks_dir / "Pulumi.test-taken.yaml").exists()
    # The stack was someone else's: neither destroyed nor removed.
    assert world.commands() == ["stack init"]
    assert world.state()["test-taken"]["resources"] == 4
    assert "stack init test-taken" in one_line(capsys.readouterr().err)


def test_a_failed_roll_back_keeps_the_stack_and_says_how_to_remove_it(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "up")
    real_call = ephemeral.Pulumi.call

    def destroy_fails(self: ephemeral.Pulumi, *args: str) -> int:
        return 1 if args[0] == "destroy" else real_call(self, *args)

    monkeypatch.setattr(ephemeral.Pulumi, "call", destroy_fails)
    assert world.run("create", "--name", "stuck", "--owner", "me") == 1
    # Resources may exist, so the stack and its file stay for a later destroy.
    assert (world.stacks_dir / "Pulumi.test-stuck.yaml").exists()
    assert "test-stuck" in world.state()
    assert "make test-stack-destroy NAME=stuck" in one_line(capsys.readouterr().err)


def test_create_refuses_an_existing_stack_file(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = world.stacks_dir / "Pulumi.test-mine.yaml"
    existing.write_text("# mine\n")
    assert world.run("create", "--name", "mine", "--owner", "me") == 2
    assert existing.read_text() == "# mine\n"
    assert "already exists" in one_line(capsys.readouterr().err)
    assert world.calls() == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "Bad_Name"], "invalid name 'Bad_Name'"),
        (["--name", ""], "invalid name ''"),
        (["--name=-x"], "invalid name"),
        (["--name", "a" * 31], "invalid name"),
        (["--name", "dev"], "names the committed stack"),
        (["--name", "x", "--base", "nope"], "base stack 'nope' not found"),
        (["--name", "x", "--ttl-hours", "0"], "--ttl-hours must be between 1 and 168"),
        (["--name", "x", "--owner", "a;b"], "invalid owner"),
    ],
)
def test_create_refuses_bad_input_with_one_line(
    world: World, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    owner = [] if "--owner" in argv else ["--owner", "me"]
    assert world.run("create", *argv, *owner) == 2
    assert message in one_line(capsys.readouterr().err)
    assert world.calls() == []
    assert sorted(p.name for p in world.stacks_dir.iterdir()) == [
        "Pulumi.dev.yaml",
        "Pulumi.single-region.yaml",
    ]


def test_create_refuses_an_invalid_base_config(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = world.stacks_dir / "Pulumi.bad.yaml"
    document = yaml.safe_load((world.stacks_dir / "Pulumi.dev.yaml").read_text())
    document["config"]["wg-site-to-site:sites"][1]["cidr"] = "10.1.0.0/16"  # overlaps alpha
    bad.write_text(yaml.safe_dump(document))
    assert world.run("create", "--name", "x", "--base", "bad", "--owner", "me") == 2
    line = one_line(capsys.readouterr().err)
    assert "base stack 'bad' gives an invalid test stack" in line
    assert "wg-site-to-site:sites[1].cidr" in line
    assert not (world.stacks_dir / "Pulumi.test-x.yaml").exists()
    assert world.calls() == []


def test_create_refuses_secret_config_it_could_not_decrypt(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    base = world.stacks_dir / "Pulumi.dev.yaml"
    document = yaml.safe_load(base.read_text())
    document["config"]["wg-site-to-site:tags"] = {"cost-centre": {"secure": "v1:abc"}}
    base.write_text(yaml.safe_dump(document))
    assert world.run("create", "--name", "x", "--owner", "me") == 2
    assert "secret config (wg-site-to-site:tags.cost-centre)" in one_line(capsys.readouterr().err)


def test_missing_cli_is_one_line_and_exit_2(tmp_path: Path, world: World) -> None:
    # A PATH with git but without pulumi, and a real process, to see what a user sees.
    only_git = tmp_path / "only-git"
    only_git.mkdir()
    git_path = shutil.which("git")
    assert git_path
    (only_git / "git").symlink_to(git_path)
    env = {**os.environ, "PATH": str(only_git)}
    for argv in (["create", "--name", "x", "--owner", "me"], ["destroy", "--name", "x"], ["sweep"]):
        result = subprocess.run(
            [sys.executable, "-m", "tools.ephemeral", "--repo-root", str(world.root), *argv],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert one_line(result.stderr) == (
            "tools.ephemeral: the Pulumi CLI is not installed (https://www.pulumi.com/docs/install/)"
        )
        assert result.stdout == ""
    assert not (world.stacks_dir / "Pulumi.test-x.yaml").exists()


# --- destroy -----------------------------------------------------------------------------


def test_destroy_destroys_then_removes_the_stack_keeping_config_for_itself(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.run("create", "--name", "gone", "--owner", "me") == 0
    world.log.unlink()
    assert world.run("destroy", "--name", "gone") == 0

    assert world.commands() == ["stack ls", "destroy", "stack rm"]
    assert world.calls()[1] == ["destroy", "--yes", "--stack", "test-gone"]
    assert world.calls()[2] == ["stack", "rm", "--yes", "--preserve-config", "--stack", "test-gone"]
    assert "test-gone" not in world.state()
    assert not (world.stacks_dir / "Pulumi.test-gone.yaml").exists()
    assert "destroyed test-gone and removed stacks/Pulumi.test-gone.yaml" in capsys.readouterr().out


def test_destroy_is_idempotent(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.run("destroy", "--name", "never-made") == 0
    assert world.commands() == ["stack ls"]
    assert "does not exist, nothing to destroy" in capsys.readouterr().out

    # A leftover file without a stack behind it is cleaned up too.
    leftover = world.stacks_dir / "Pulumi.test-leftover.yaml"
    leftover.write_text("config: {}\n")
    assert world.run("destroy", "--name", "test-leftover") == 0
    assert not leftover.exists()


@pytest.mark.parametrize("name", ["dev", "single-region", "test-dev"])
def test_destroy_refuses_committed_stacks(
    world: World, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert world.run("destroy", "--name", name) == 2
    assert "names the committed stack" in one_line(capsys.readouterr().err)
    assert world.calls() == []
    assert (world.stacks_dir / "Pulumi.dev.yaml").exists()


def test_destroy_refuses_a_stack_file_tracked_by_git(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    git(world.root, "init", "-q")
    tracked = world.stacks_dir / "Pulumi.test-shared.yaml"
    tracked.write_text("config: {}\n")
    git(world.root, "add", "stacks/Pulumi.test-shared.yaml")
    world.seed(**{"test-shared": {"tags": {}, "resources": 2}})

    assert world.run("destroy", "--name", "shared") == 2
    assert "is tracked by git" in one_line(capsys.readouterr().err)
    assert tracked.exists()
    assert world.calls() == []
    assert world.state()["test-shared"]["resources"] == 2


def test_destroy_in_a_repository_accepts_an_untracked_file(world: World) -> None:
    git(world.root, "init", "-q")
    assert world.run("create", "--name", "mine", "--owner", "me", "--no-up") == 0
    assert world.run("destroy", "--name", "mine") == 0
    assert not (world.stacks_dir / "Pulumi.test-mine.yaml").exists()


def test_the_remove_pitfall_is_real_in_the_fake(world: World) -> None:
    # Why destroy passes --preserve-config: without it the fake, like Pulumi, deletes the
    # stack's config file, which for a mistaken name would be a committed one.
    world.seed(dev={"tags": {}, "resources": 0})
    subprocess.run(["pulumi", "stack", "rm", "--yes", "--stack", "dev"], cwd=world.root, check=True)
    assert not (world.stacks_dir / "Pulumi.dev.yaml").exists()


def test_a_failing_destroy_keeps_the_file(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.run("create", "--name", "sticky", "--owner", "me") == 0
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "destroy")
    assert world.run("destroy", "--name", "sticky") == 1
    assert (world.stacks_dir / "Pulumi.test-sticky.yaml").exists()
    assert "test-sticky" in world.state()
    assert "`pulumi destroy --yes --stack test-sticky` failed" in capsys.readouterr().err


# --- sweep -------------------------------------------------------------------------------

PAST = "2000-01-01T00:00:00Z"
FUTURE = "2999-01-01T00:00:00Z"


def test_sweep_destroys_only_expired_test_stacks(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.seed(
        **{
            "dev": {"tags": {"expires-at": PAST}, "resources": 9},
            "test-old": {"tags": {"expires-at": PAST}, "resources": 5},
            "test-new": {"tags": {"expires-at": FUTURE}, "resources": 5},
            "test-untagged": {"tags": {}, "resources": 5},
            "test-naive": {"tags": {"expires-at": "2000-01-01T00:00:00"}, "resources": 5},
            "test-busy": {"tags": {"expires-at": PAST}, "resources": 5, "busy": True},
        }
    )
    (world.stacks_dir / "Pulumi.test-old.yaml").write_text("config: {}\n")

    assert world.run("sweep") == 0

    assert set(world.state()) == {"dev", "test-new", "test-untagged", "test-naive", "test-busy"}
    assert not (world.stacks_dir / "Pulumi.test-old.yaml").exists()
    destroyed = [c for c in world.calls() if c[0] == "destroy"]
    assert destroyed == [["destroy", "--yes", "--stack", "test-old"]]
    out = capsys.readouterr().out
    assert "test-old: expired 2000-01-01T00:00:00Z, destroyed test-old" in out
    assert "test-new: expires 2999-01-01T00:00:00Z, kept" in out
    assert "test-untagged: no readable expires-at tag, left alone" in out
    assert "test-naive: no readable expires-at tag, left alone" in out
    assert "test-busy: an update is in progress, left alone" in out
    assert "dev" not in out.replace("test-", "")


def test_sweep_falls_back_to_the_stack_file_expiry(world: World) -> None:
    world.seed(**{"test-local": {"tags": {}, "resources": 1}})
    (world.stacks_dir / "Pulumi.test-local.yaml").write_text(
        yaml.safe_dump({"config": {"wg-site-to-site:tags": {"expires-at": PAST}}})
    )
    assert world.run("sweep") == 0
    assert "test-local" not in world.state()


def test_sweep_dry_run_destroys_nothing(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.seed(**{"test-old": {"tags": {"expires-at": PAST}, "resources": 5}})
    assert world.run("sweep", "--dry-run") == 0
    assert "test-old: expired 2000-01-01T00:00:00Z, would be destroyed" in capsys.readouterr().out
    assert world.state()["test-old"]["resources"] == 5
    assert [c for c in world.commands() if c not in ("stack ls", "stack tag ls")] == []


def test_sweep_goes_on_after_a_failure_and_exits_1(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.seed(
        **{
            "test-a": {"tags": {"expires-at": PAST}, "resources": 1},
            "test-b": {"tags": {"expires-at": PAST}, "resources": 1},
        }
    )
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "destroy --yes --stack test-a")
    assert world.run("sweep") == 1
    assert set(world.state()) == {"test-a"}
    assert "test-a: expired 2000-01-01T00:00:00Z, not destroyed" in capsys.readouterr().out


def test_the_makefile_targets_call_this_tool() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert '-m tools.ephemeral create --name "$(NAME)"' in makefile
    assert '-m tools.ephemeral destroy --name "$(NAME)"' in makefile


def test_generated_stack_files_are_ignored_by_git() -> None:
    result = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "-q", "stacks/Pulumi.test-anything.yaml"],
        check=False,
    )
    assert result.returncode == 0
