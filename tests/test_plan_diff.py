"""`python -m plan STACK --diff REF`, in throwaway git repositories holding this project."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from plan import cli
from plan.engine import REPO, plan_private_key
from tests.test_plan_cli import PLANTED, key_forms, leaks

GIT = ["git", "-c", "user.name=plan tests", "-c", "user.email=plan@example.invalid"]
GIT += ["-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        [*GIT, *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def copy_project(target: Path) -> None:
    """The working tree as it is now (committed or not), without what git ignores."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if name.startswith("node_modules/") or not source.is_file():
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("pristine")
    copy_project(repo)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the project as it is")
    return repo


@pytest.fixture
def repo(pristine: Path, tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(pristine), str(clone))
    return clone


def change_stack(repo: Path, stack: str, old: str, new: str) -> None:
    path = repo / "stacks" / f"Pulumi.{stack}.yaml"
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    git(repo, "commit", "-q", "-am", f"{stack}: {old} -> {new}")


def plan_diff(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plan", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )


def worktrees(repo: Path) -> list[str]:
    return [
        line
        for line in git(repo, "worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ")
    ]


def test_firewall_change_updates_parameters_and_reapplies_without_replacing_gateways(
    repo, tmp_path
):
    change_stack(repo, "dev", "port: 22\n", "port: 2222\n")
    out = tmp_path / "diff.json"

    ran = plan_diff(repo, "dev", "--diff", "HEAD~1", "--json", str(out))

    assert ran.returncode == 0, ran.stderr
    diff = json.loads(out.read_text())
    changed = {(c["op"], c["type"], c["name"]) for c in diff["changes"]}
    # Day 2: the desired state changes in SSM and the apply runs again; no instance.
    assert changed == {
        ("update", "aws:ssm/parameter:Parameter", "alpha-desired-state"),
        ("update", "aws:ssm/parameter:Parameter", "beta-desired-state"),
        ("replace", "command:local:Command", "alpha-apply"),
        ("replace", "command:local:Command", "beta-apply"),
        ("replace", "command:local:Command", "verify-tunnel"),
    }
    assert not [c for c in diff["changes"] if c["type"] == "aws:ec2/instance:Instance"]
    assert diff["summary"]["create"] == diff["summary"]["delete"] == 0
    # On the terminal: the changed rule in the desired state, nothing else of it.
    assert "~  aws:ssm/parameter:Parameter alpha-desired-state (us-east-1)" in ran.stdout
    assert "+- command:local:Command alpha-apply" in ran.stdout
    assert "--dport 22 " in ran.stdout and "--dport 2222 " in ran.stdout
    assert worktrees(repo) == [f"worktree {repo}"]


def test_architecture_change_replaces_the_instance_with_the_matching_image(repo):
    change_stack(repo, "dev", "interface: wgB\n", "interface: wgB\n      instanceType: t3.micro\n")

    ran = plan_diff(repo, "dev", "--diff", "HEAD~1")

    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    marked = [line for line in lines if line[:2] in ("+ ", "- ", "~ ", "+-")]
    assert "+- aws:ec2/instance:Instance beta-gateway (eu-west-1)" in marked
    # The x86 build replaces the arm64 one: nothing keeps the old image (no ignoreChanges).
    assert any(
        line.strip().startswith("~ ami:") and "[forces replacement]" in line for line in lines
    )
    assert '      ~ instanceType: "t4g.nano" => "t3.micro"' in lines
    # Only the instance and what names its id (its alarms, its apply, the verification)
    # change; the interface, its address, routes and Elastic IP stay.
    for line in marked:
        assert "beta-" in line or "verify-tunnel" in line, line
        assert "networkInterface" not in line and "eip" not in line.lower(), line
        assert "aws:ec2/route:Route" not in line, line


def test_unchanged_stack_reports_no_changes(repo):
    ran = plan_diff(repo, "dev", "--diff", "HEAD")

    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert "No changes." in lines
    assert lines[-1].startswith("Resources: 0 to create, 0 to update, 0 to replace, 0 to delete, ")
    assert not lines[-1].endswith(" 0 unchanged")


def test_stack_missing_at_ref_is_all_create(repo):
    stacks = repo / "stacks"
    shutil.copy(stacks / "Pulumi.dev.yaml", stacks / "Pulumi.fresh.yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a new stack")

    ran = plan_diff(repo, "fresh", "--diff", "HEAD~1")

    assert ran.returncode == 0, ran.stderr
    creates = [line for line in ran.stdout.splitlines() if line.startswith("+  ")]
    summary = ran.stdout.splitlines()[-1]
    assert summary == (
        f"Resources: {len(creates)} to create, 0 to update, 0 to replace, 0 to delete, 0 unchanged"
    )
    assert len(creates) > 40


def test_failing_plan_at_ref_is_bad_input_and_worktree_is_removed(repo):
    change_stack(repo, "dev", "port: 51000", "port: 0")
    change_stack(repo, "dev", "port: 0", "port: 51000")

    ran = plan_diff(repo, "dev", "--diff", "HEAD~1")

    assert ran.returncode == 2
    assert "Traceback" not in ran.stderr
    assert "planning dev at HEAD~1 failed" in ran.stderr
    assert "wg-site-to-site:tunnel.port" in ran.stderr
    assert worktrees(repo) == [f"worktree {repo}"]


def test_unknown_ref_is_one_line_exit_2(repo):
    ran = plan_diff(repo, "dev", "--diff", "no-such-branch")

    assert ran.returncode == 2
    assert ran.stderr.splitlines() == [
        f"python -m plan: git ref 'no-such-branch' does not name a commit in {repo}"
    ]


def test_not_a_git_repository_is_one_line_exit_2(tmp_path):
    project = tmp_path / "no-git"
    project.mkdir()
    copy_project(project)

    ran = plan_diff(project, "dev", "--diff", "HEAD")

    assert ran.returncode == 2
    assert len(ran.stderr.splitlines()) == 1
    assert "needs a git repository" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_diff_never_shows_private_keys(repo, tmp_path, capsys, monkeypatch):
    # Planted keys on this side, the engine's derived keys at REF: both desired states and
    # every key parameter change.
    monkeypatch.chdir(repo)
    out = tmp_path / "diff.json"

    status = cli.main(["dev", "--diff", "HEAD", "--json", str(out)], planted_keys=PLANTED)

    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "~  aws:ssm/parameter:Parameter alpha-desired-state (us-east-1)" in captured.out
    derived = {s: plan_private_key("dev", f"{s}-wireguard-key") for s in ("alpha", "beta")}
    outputs = {"stdout": captured.out, "stderr": captured.err, "json": out.read_text()}
    assert leaks(outputs, key_forms(PLANTED) + key_forms(derived)) == []


def test_site_cidr_change_replaces_the_network_and_gateway_and_changes_what_uses_them(repo):
    change_stack(repo, "dev", "cidr: 10.2.0.0/16\n", "cidr: 10.3.0.0/16\n")

    ran = plan_diff(repo, "dev", "--diff", "HEAD~1")

    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    ops = {
        tuple(line[3:].split(" ")[:2]): line[:2]
        for line in lines
        if line[:2] in ("+ ", "- ", "~ ", "+-")
    }
    replaced = [
        ("aws:ec2/vpc:Vpc", "beta-vpc"),
        ("aws:ec2/subnet:Subnet", "beta-public"),
        ("aws:ec2/subnet:Subnet", "beta-private"),
        ("aws:ec2/routeTable:RouteTable", "beta-public"),
        ("aws:ec2/routeTable:RouteTable", "beta-private"),
        ("aws:ec2/routeTableAssociation:RouteTableAssociation", "beta-public"),
        ("aws:ec2/securityGroup:SecurityGroup", "beta-gateway"),
        ("aws:ec2/networkInterface:NetworkInterface", "beta-gateway"),
        ("aws:ec2/instance:Instance", "beta-gateway"),
        ("aws:ec2/eipAssociation:EipAssociation", "beta-address"),
        ("aws:ec2/route:Route", "beta-to-alpha-0"),
        ("aws:ec2/route:Route", "alpha-to-beta-0"),
    ]
    for resource in replaced:
        assert ops.get(resource) == "+-", resource
    # The other site learns the new CIDR in place: its desired state, applied again.
    assert ("aws:ec2/instance:Instance", "alpha-gateway") not in ops
    assert ops[("aws:ssm/parameter:Parameter", "alpha-desired-state")] == "~ "
    assert ops[("command:local:Command", "alpha-apply")] == "+-"
    # The internet gateway is replaced with its VPC: moved in place, its detach would meet
    # the Elastic IP still mapped in the old VPC (tests/test_lifecycle.py has the order).
    assert ops[("aws:ec2/internetGateway:InternetGateway", "beta-igw")] == "+-"
    # The property that forces it is marked; what a replacement makes unknown says so.
    assert '      ~ cidrBlock: "10.2.0.0/16" => "10.3.0.0/16" [forces replacement]' in lines
    assert any(
        line.startswith('      ~ vpcId: "vpc-')
        and line.endswith('=> "(unknown after replace)" [forces replacement]')
        for line in lines
    )
    assert any(
        line.startswith('      ~ networkInterfaceId: "eni-')
        and line.endswith('=> "(unknown after replace)"')
        for line in lines
    )


def test_option_changes_show_in_the_diff(repo):
    gateway = repo / "components" / "gateway.py"
    text = gateway.read_text()
    assert text.count("delete_before_replace=True") == 1
    gateway.write_text(text.replace("delete_before_replace=True", "delete_before_replace=False"))
    git(repo, "commit", "-q", "-am", "create before delete")

    ran = plan_diff(repo, "dev", "--diff", "HEAD~1")

    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert "~  aws:ec2/instance:Instance alpha-gateway (us-east-1)" in lines
    assert "      ~ options.deleteBeforeReplace: true => false" in lines


def test_every_declared_resource_type_has_a_replacement_entry():
    from plan.engine import plan_stack
    from plan.replacement import TABLE

    declared = {
        r.type
        for stack in sorted(
            p.stem.removeprefix("Pulumi.") for p in (REPO / "stacks").glob("*.yaml")
        )
        for r in plan_stack(stack).resources
        if r.custom
    }
    assert declared
    missing = sorted(declared - TABLE.keys())
    assert missing == [], f"plan/replacement.py lacks {missing}"
    for type_, entry in TABLE.items():
        assert entry.source, type_


def test_region_change_replaces_the_provider_and_everything_it_manages():
    from plan import diff
    from plan.document import public_document
    from plan.engine import read_stack_file, run_program

    config = read_stack_file("dev")
    before = public_document(run_program("dev", config))
    config["sites"][1]["region"] = "eu-central-1"
    after = public_document(run_program("dev", config))

    changes = {(c.type, c.name): c for c in diff.compare(before, after)}

    # The provider's name holds the region, so it is a new one.
    assert changes[("pulumi:providers:aws", "beta-eu-central-1")].op == "create"
    assert changes[("pulumi:providers:aws", "beta-eu-west-1")].op == "delete"
    vpc = changes[("aws:ec2/vpc:Vpc", "beta-vpc")]
    assert vpc.op == "replace"
    assert [(p.key, p.replaces) for p in vpc.properties] == [("provider", True)]
    assert changes[("aws:ec2/eipAssociation:EipAssociation", "beta-address")].op == "replace"
    assert changes[("aws:ec2/vpc:Vpc", "alpha-vpc")].op == "same"
