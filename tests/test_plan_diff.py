"""`python -m plan STACK --diff REF`: through a throwaway git clone where it takes git (the
ref, the worktree, REF's own planner), and otherwise on plans made in this process."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from plan import cli, diff
from plan.cost import monthly_cost
from plan.document import Document, public_document
from plan.engine import REPO, Plan, plan_private_key, read_stack_file, run_program
from plan.review import CLIPPED, MAX_LINE
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


def worktrees(repo: Path) -> list[str]:
    return [
        line
        for line in git(repo, "worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ")
    ]


COMMIT = "0" * 40


@pytest.fixture(scope="module")
def base(dev_preview_plan: Plan) -> Document:
    return public_document(dev_preview_plan)


def diff_of(before: Document | None, after: Document) -> tuple[list[diff.ResourceChange], str]:
    changes = diff.compare(before, after)
    text = diff.render("dev", "HEAD", COMMIT, changes, after=after, before=before)
    return changes, text


def marked(text: str) -> dict[tuple[str, str], str]:
    """(type, name) -> the change mark, for every resource line of a rendered diff."""
    return {
        tuple(line[3:].split(" ")[:2]): line[:2]  # type: ignore[misc]
        for line in text.splitlines()
        if line[:2] in ("+ ", "- ", "~ ", "+-")
    }


def run_cli(monkeypatch, capsys, cwd: Path, *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ------------------------------------------------------------- through a git clone


def test_firewall_port_change_through_git_with_planted_keys(repo, tmp_path, monkeypatch, capsys):
    # REF (the clone's HEAD) has the firewall rule on port 2222 and is planned by REF's own
    # `python -m plan` in a temporary worktree; the working tree's side is this project's
    # dev stack (port 22), planned in this process with planted keys. So the diff moves
    # the rule back to 22, and the keys change too: secret, never shown.
    change_stack(repo, "dev", "port: 22\n", "port: 2222\n")
    out = tmp_path / "diff.json"
    monkeypatch.chdir(repo)

    status = cli.main(["dev", "--diff", "HEAD", "--json", str(out)], planted_keys=PLANTED)

    captured = capsys.readouterr()
    assert status == 0, captured.err
    document = json.loads(out.read_text())
    changed = {(c["op"], c["type"], c["name"]) for c in document["changes"]}
    # Day 2: the desired state and the keys change in SSM and the applies run again; no
    # instance is replaced.
    assert changed == {
        ("update", "aws:ssm/parameter:Parameter", "alpha-desired-state"),
        ("update", "aws:ssm/parameter:Parameter", "beta-desired-state"),
        ("update", "aws:ssm/parameter:Parameter", "alpha-wireguard-key"),
        ("update", "aws:ssm/parameter:Parameter", "beta-wireguard-key"),
        ("replace", "command:local:Command", "alpha-apply"),
        ("replace", "command:local:Command", "beta-apply"),
        ("replace", "command:local:Command", "verify-tunnel"),
    }
    lines = captured.out.splitlines()
    assert max(len(line) for line in lines) <= MAX_LINE
    assert "This change replaces 0 gateways" in " ".join(lines[2:6])
    # The desired state decoded: per site, the rule line and the lines naming the peer's
    # (planted) public key, nothing else.
    changed_lines = [
        line.strip()[0] + line.strip()[5:]
        for line in lines
        if re.match(r"^ {10}[-+] ", line) and not line.strip().startswith(("---", "+++"))
    ]
    rules = [
        f"{sign}-A s2s-fw-{iface} -p tcp --dport {port} -j REJECT --reject-with tcp-reset"
        for iface in ("wgA", "wgB")
        for sign, port in (("-", 2222), ("+", 22))
    ]
    assert [line for line in changed_lines if "s2s-fw-wg" in line] == rules
    others = [line for line in changed_lines if line not in rules]
    # Per site, its PublicKey and PostUp lines, and the desired state's peers[].publicKey.
    assert len(others) == 12
    assert all(
        re.match(r"[-+](PublicKey = |PostUp = wg set %i peer |\s*publicKey: )", x) for x in others
    )
    assert lines.count("      ~ value: [secret changed]") == 2
    derived = {s: plan_private_key("dev", f"{s}-wireguard-key") for s in ("alpha", "beta")}
    outputs = {"stdout": captured.out, "stderr": captured.err, "json": out.read_text()}
    assert leaks(outputs, key_forms(PLANTED) + key_forms(derived)) == []
    assert worktrees(repo) == [f"worktree {repo}"]


def test_failing_plan_at_ref_is_bad_input_and_worktree_is_removed(repo, monkeypatch, capsys):
    change_stack(repo, "dev", "port: 51000", "port: 0")
    change_stack(repo, "dev", "port: 0", "port: 51000")

    status, stdout, stderr = run_cli(monkeypatch, capsys, repo, "dev", "--diff", "HEAD~1")

    assert status == 2
    assert stdout == ""
    assert "Traceback" not in stderr
    assert "planning dev at HEAD~1 failed" in stderr
    assert "wg-site-to-site:tunnel.port" in stderr
    assert worktrees(repo) == [f"worktree {repo}"]


def test_unknown_ref_is_one_line_exit_2(repo, monkeypatch, capsys):
    status, _, stderr = run_cli(monkeypatch, capsys, repo, "dev", "--diff", "no-such-branch")

    assert status == 2
    assert stderr.splitlines() == [
        f"python -m plan: git ref 'no-such-branch' does not name a commit in {repo}"
    ]


def test_not_a_git_repository_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    status, _, stderr = run_cli(monkeypatch, capsys, tmp_path, "dev", "--diff", "HEAD")

    assert status == 2
    assert len(stderr.splitlines()) == 1
    assert "needs a git repository" in stderr
    assert "Traceback" not in stderr


# ---------------------------------------------------------------- plans in process


def test_unchanged_stack_reports_no_changes(base):
    _changes, text = diff_of(base, base)

    lines = text.splitlines()
    assert "No changes." in lines
    assert "This change changes nothing." in lines
    summary = next(line for line in lines if line.startswith("Resources: "))
    assert summary.startswith("Resources: 0 to create, 0 to update, 0 to replace, 0 to delete, ")
    assert not summary.endswith(" 0 unchanged")


def test_stack_missing_at_ref_is_all_create_with_main_properties(base):
    _changes, text = diff_of(None, base)

    lines = text.splitlines()
    creates = [line for line in lines if line.startswith("+  ")]
    summary = next(line for line in lines if line.startswith("Resources: "))
    assert summary == (
        f"Resources: {len(creates)} to create, 0 to update, 0 to replace, 0 to delete, 0 unchanged"
    )
    assert len(creates) > 40
    # A created resource shows what it is, not just its name.
    start = lines.index("+  aws:ec2/instance:Instance beta-gateway (eu-west-1)")
    assert lines[start + 1] == "      = new"
    assert '      + instanceType: "t4g.nano"' in lines[start + 2 : start + 10]
    start = lines.index("+  aws:ssm/parameter:Parameter beta-wireguard-key (eu-west-1)")
    assert '      + type: "SecureString"' in lines[start + 2 : start + 8]
    assert "      + value: [secret]" in lines[start + 2 : start + 8]


def test_architecture_change_replaces_the_instance_with_the_matching_image(base, dev_variant):
    _changes, text = diff_of(base, public_document(dev_variant("instance-type")))

    lines = text.splitlines()
    ops = marked(text)
    assert ops[("aws:ec2/instance:Instance", "beta-gateway")] == "+-"
    # The x86 build replaces the arm64 one: nothing keeps the old image (no ignoreChanges).
    assert any(
        line.strip().startswith("~ ami:") and "[forces replacement]" in line for line in lines
    )
    assert '      ~ instanceType: "t4g.nano" => "t3.micro"' in lines
    assert "      = gateway replaced: site beta down for its boot (about 1-3 min on AWS)" in lines
    assert "This change replaces 1 gateway (beta: down for the boot" in text
    # Only the instance and what names its id (its alarms, its apply, the verification)
    # change; the interface, its address, routes and Elastic IP stay.
    for type_, name in ops:
        assert "beta-" in name or name == "verify-tunnel", name
        assert "networkInterface" not in type_ and "eip" not in type_.lower(), type_
        assert type_ != "aws:ec2/route:Route", name


def test_site_cidr_change_replaces_the_network_and_gateway_and_changes_what_uses_them(
    base, dev_variant
):
    _changes, text = diff_of(base, public_document(dev_variant("site-cidr")))

    lines = text.splitlines()
    ops = marked(text)
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


def test_option_changes_show_in_the_diff_with_short_names(base):
    after = copy.deepcopy(base)
    instance = next(r for r in after["resources"] if r["name"] == "alpha-gateway")
    instance["options"]["deleteBeforeReplace"] = False
    dropped = instance["options"]["dependsOn"].pop(0)

    _changes, text = diff_of(base, after)

    lines = text.splitlines()
    assert "~  aws:ec2/instance:Instance alpha-gateway (us-east-1)" in lines
    assert "      ~ options.deleteBeforeReplace: true => false" in lines
    # URNs as `Type name`, only the one that left the list.
    at = lines.index("      ~ options.dependsOn:")
    qualified, _, name = dropped.rpartition("::")
    assert lines[at + 1] == f"          - {qualified.rsplit(':', 1)[-1]} {name}"
    assert "urn:pulumi:" not in text


def test_key_rotation_lists_the_four_key_parameters_as_secret_changed(base, dev_variant):
    changes, text = diff_of(base, public_document(dev_variant("key-rotation")))

    secret = sorted(c.name for c in changes for p in c.properties if p.secret and p.key == "value")
    assert secret == [
        "alpha-preshared-key-beta",
        "alpha-wireguard-key",
        "beta-preshared-key-alpha",
        "beta-wireguard-key",
    ]
    lines = text.splitlines()
    for name in secret:
        region = "us-east-1" if name.startswith("alpha") else "eu-west-1"
        at = lines.index(f"~  aws:ssm/parameter:Parameter {name} ({region})")
        assert "      ~ value: [secret changed]" in lines[at + 1 : at + 4]
    # As preview would: the four keys and the two desired states (new public keys).
    assert diff.summary(changes)["update"] == 6
    assert "4 secret inputs change" in " ".join(lines)


@pytest.fixture(scope="module")
def advanced(base: Document) -> Document:
    """dev with alpha's desired state in the Advanced tier (what a long firewall gets:
    core.render.desired_state_tier), the rest as it is."""
    document: Document = copy.deepcopy(base)
    state = next(r for r in document["resources"] if r["name"] == "alpha-desired-state")
    assert state["inputs"]["tier"] == "Standard"
    state["inputs"]["tier"] = "Advanced"
    return document


def _tier_change(changes: list[diff.ResourceChange]) -> diff.ResourceChange:
    return next(c for c in changes if c.name == "alpha-desired-state")


def test_tier_downgrade_replaces_the_desired_state(base, advanced):
    # Cutting a long firewall back: Advanced -> Standard, which SSM refuses in place, so
    # the provider replaces the parameter (plan.replacement.CONDITIONAL).
    changes, text = diff_of(advanced, base)

    state = _tier_change(changes)
    assert state.op == "replace"
    tier = next(p for p in state.properties if p.key == "tier")
    assert (tier.old, tier.new, tier.replaces) == ("Advanced", "Standard", True)
    assert '      ~ tier: "Advanced" => "Standard" [forces replacement]' in text.splitlines()


def test_tier_upgrade_is_in_place(base, advanced):
    changes, text = diff_of(base, advanced)

    state = _tier_change(changes)
    assert state.op == "update"
    assert '      ~ tier: "Standard" => "Advanced"' in text.splitlines()
    # An advanced parameter is priced: the cost says so ($0.05 a month).
    assert monthly_cost(advanced).total_cents == monthly_cost(base).total_cents + 5


def test_triggers_carry_no_python_repr_and_secret_outputs_are_listed_once(base):
    for resource in base["resources"]:
        outputs = resource["options"].get("additionalSecretOutputs", [])
        assert len(outputs) == len(set(outputs)), resource["name"]
        if resource["type"] != "command:local:Command":
            continue
        for trigger in resource["inputs"].get("triggers", []):
            assert "True" not in trigger and "False" not in trigger, trigger
    apply = next(r for r in base["resources"] if r["name"] == "alpha-apply")
    assert apply["inputs"]["triggers"][1:] == ["key-generation=1", "preshared-key=on"]


def test_every_declared_resource_type_has_a_replacement_entry(base, single_region_plan):
    from plan.replacement import TABLE

    declared = {r["type"] for r in base["resources"] if r["custom"]}
    declared |= {r.type for r in single_region_plan.resources if r.custom}
    assert declared
    missing = sorted(declared - TABLE.keys())
    assert missing == [], f"plan/replacement.py lacks {missing}"
    for type_, entry in TABLE.items():
        assert entry.source, type_


def test_region_change_replaces_the_provider_and_everything_it_manages(base):
    config = read_stack_file("dev")
    config["sites"][1]["region"] = "eu-central-1"
    config["sites"][1]["availabilityZone"] = "eu-central-1a"  # the pinned zone moves with it
    after = public_document(run_program("dev", config))

    changes = {(c.type, c.name): c for c in diff.compare(base, after)}

    # The provider's name holds the region, so it is a new one.
    assert changes[("pulumi:providers:aws", "beta-eu-central-1")].op == "create"
    assert changes[("pulumi:providers:aws", "beta-eu-west-1")].op == "delete"
    vpc = changes[("aws:ec2/vpc:Vpc", "beta-vpc")]
    assert vpc.op == "replace"
    assert [(p.key, p.replaces) for p in vpc.properties] == [("provider", True)]
    assert changes[("aws:ec2/eipAssociation:EipAssociation", "beta-address")].op == "replace"
    assert changes[("aws:ec2/vpc:Vpc", "alpha-vpc")].op == "same"
    text = diff.render("dev", "HEAD", COMMIT, list(changes.values()), after=after, before=base)
    assert "~ provider: provider:aws beta-eu-west-1 => " in text
    assert "urn:pulumi:" not in text
    assert max(len(line) for line in text.splitlines()) <= MAX_LINE
    assert CLIPPED not in text


def test_long_values_are_cut_never_a_line_over_the_limit():
    document: Any = {
        "resources": [
            {
                "urn": "urn:pulumi:dev::p::t:index:T::x",
                "type": "t:index:T",
                "name": "x",
                "region": None,
                "custom": True,
                "inputs": {"note": "x" * 500},
                "options": {},
            }
        ]
    }
    after = copy.deepcopy(document)
    after["resources"][0]["inputs"]["note"] = "y" * 500

    text = diff.render("dev", "HEAD", COMMIT, diff.compare(document, after))

    lines = text.splitlines()
    assert max(len(line) for line in lines) <= MAX_LINE
    assert "      ~ note:" in lines
    assert any(
        line.startswith('          - "xxxx') and "(502 characters)" in line for line in lines
    )
