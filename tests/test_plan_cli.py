"""`python -m plan STACK [--json FILE]`: the tree, the JSON, secrecy and bad input."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.keys import public_key
from plan import cli
from plan.document import dumps, public_document, public_value
from plan.engine import (
    REPO,
    Plan,
    PlannedResource,
    Secret,
    Unknown,
    plan_private_key,
)
from plan.show import tree_lines, value_lines

# Made-up keys, planted for both sites, that no output may contain in any form.
PLANTED = {
    f"{site}-wireguard-key": base64.b64encode(
        hashlib.sha256(f"planted {site}".encode()).digest()
    ).decode()
    for site in ("alpha", "beta")
}


def key_forms(keys: dict[str, str]) -> list[str]:
    return [form for key in keys.values() for form in (key, base64.b64decode(key).hex())]


def leaks(outputs: dict[str, str], keys: list[str]) -> list[str]:
    """Where a key shows up, by output name only, so a failure never prints a key."""
    return sorted(where for where, text in outputs.items() if any(k in text for k in keys))


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plan", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def dev_cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """`python -m plan dev --json FILE`, run once in this process: (stdout, the JSON)."""
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["dev", "--json", str(path)]) == 0
    return out.getvalue(), path.read_text()


def _footer(lines: list[str]) -> str:
    return next(line for line in lines if re.fullmatch(r"\d+ resources: .*", line))


def test_tree_shows_resources_nested_with_inputs_and_user_data(dev_cli):
    out, plan_json = dev_cli
    lines = out.splitlines()

    for type_ in (
        "wg-site-to-site:index:SiteToSite",
        "pulumi:providers:aws",
        "aws:ec2/vpc:Vpc",
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        "aws:ssm/parameter:Parameter",
        "aws:iam/rolePolicy:RolePolicy",
        "aws:ec2/instance:Instance",
    ):
        assert type_ in out
    # Region after the name; children one level below their component.
    assert "    │   ├── aws:ec2/instance:Instance alpha-gateway (us-east-1)" in lines
    assert "    │   ├── aws:ec2/instance:Instance beta-gateway (eu-west-1)" in lines
    # The rendered cloud-init as a readable block, not one escaped string.
    # (EC2 gets it gzipped; the tree shows the cloud-config a reviewer reads.)
    user_data = next(
        i
        for i, line in enumerate(lines)
        if line.endswith("userDataBase64 (gzip+base64, shown decoded): |")
    )
    assert lines[user_data + 1].endswith("    #cloud-config")
    # The desired state (a plain String parameter) shows what the gateway converges to.
    assert any("ListenPort = 51000" in line for line in lines)
    assert any(line.endswith(" sourceDestCheck: false") for line in lines)
    # Secrets are shown as such; the key parameter's value is one.
    assert any(line.endswith(" value: [secret]") for line in lines)
    assert _footer(lines).startswith(f"{len(json.loads(plan_json)['resources'])} resources:")


def test_iam_policies_print_as_indented_blocks(dev_cli):
    lines = dev_cli[0].splitlines()

    start = lines.index(
        "    │   ├── aws:iam/rolePolicy:RolePolicy alpha-read-own-parameters (us-east-1)"
    )
    policy = next(i for i in range(start, len(lines)) if lines[i].endswith(" policy: |"))
    block = [line.strip(" │") for line in lines[policy + 1 : policy + 40]]
    assert block[0] == "{"
    assert '"Action": "ssm:GetParameter",' in block
    assert '"Sid": "ReadOwnParameters"' in block
    assert any(line.endswith(" assumeRolePolicy: |") for line in lines)
    # No escaped JSON anywhere (shell scripts quote JSON themselves: not a document).
    scripts = ("wg-site-to-site-aws", "eval ")
    assert not any('\\"' in line and not any(s in line for s in scripts) for line in lines)


def test_resource_options_show_in_the_tree(dev_cli):
    lines = dev_cli[0].splitlines()

    start = lines.index("    │   ├── aws:ec2/instance:Instance alpha-gateway (us-east-1)")
    end = next(i for i in range(start + 1, len(lines)) if "├── " in lines[i] or "└── " in lines[i])
    shown = [line.strip(" │") for line in lines[start:end]]
    options = shown.index("[options]:")
    assert "deleteBeforeReplace: true" in shown[options:]
    # Nothing is ignored: a new image must replace the gateway (pulumi/pulumi#2657).
    assert "ignoreChanges:" not in shown[options:] or "ignoreChanges: []" in shown[options:]
    assert '- "aws:iam/rolePolicy:RolePolicy alpha-read-own-parameters"' in shown[options:]


def test_footer_counts_cloud_other_providers_and_components_apart(dev_cli):
    out, plan_json = dev_cli
    footer = _footer(out.splitlines())

    resources = json.loads(plan_json)["resources"]
    cloud = sum(1 for r in resources if r["custom"] and r["type"].startswith("aws:"))
    providers = sum(1 for r in resources if r["type"].startswith("pulumi:providers:"))
    # RandomBytes (two keys, the pre-shared key) and pulumi-command's Commands.
    random_bytes = sum(
        1
        for r in resources
        if r["custom"] and not r["type"].startswith(("aws:", "pulumi:providers:"))
    )
    components = sum(1 for r in resources if not r["custom"])
    assert random_bytes == 3 + 3
    assert footer == (
        f"{len(resources)} resources: {cloud} cloud resources, {random_bytes} other provider "
        f"resources, {providers} providers, {components} components"
    )


_MONEY = re.compile(r"\$(\d+)\.(\d\d)")


def test_plan_ends_with_the_monthly_cost_whose_total_is_the_sum_of_its_lines(dev_cli):
    lines = dev_cli[0].splitlines()

    start = next(i for i, line in enumerate(lines) if line.startswith("Monthly cost ("))
    assert start > lines.index(_footer(lines))
    block = lines[start + 1 :]
    total = next(i for i, line in enumerate(block) if line.lstrip().startswith("total "))
    # Every priced line's last figure, in cents; the total is their sum, nothing else.
    figures = [_MONEY.findall(line)[-1] for line in block[:total]]
    cents = [int(d) * 100 + int(c) for d, c in figures]
    (dollars, rest) = _MONEY.findall(block[total])[0]
    assert int(dollars) * 100 + int(rest) == sum(cents)
    for what in ("EC2 t4g.nano (us-east-1)", "public IPv4", "EBS gp3", "KMS keys"):
        assert any(line.lstrip().startswith(what) for line in block[:total]), what
    for what in ("custom metrics", "alarms", "dashboards", "SSM advanced parameters"):
        assert any(what in line for line in block[:total]), what
    # The plan ends there, with the VPN for comparison (not in the total).
    assert block[total + 1 :] == [block[-1]]
    assert "AWS Site-to-Site VPN" in block[-1] and "$36.50" in block[-1]


def test_children_sorted_by_type_then_name():
    def resource(type_: str, name: str, parent: str | None) -> dict[str, Any]:
        return {
            "urn": f"urn:{type_}::{name}",
            "type": type_,
            "name": name,
            "parent": parent,
            "region": None,
            "custom": True,
            "inputs": {},
        }

    root = resource("a:index:Root", "root", None)
    document = {
        "resources": [
            resource("b:index:B", "y", "urn:a:index:Root::root"),
            resource("b:index:B", "x", "urn:a:index:Root::root"),
            resource("a:index:A", "z", "urn:a:index:Root::root"),
            root,
        ]
    }
    assert tree_lines(document, inputs=False) == [
        "└── a:index:Root root",
        "    ├── a:index:A z",
        "    ├── b:index:B x",
        "    └── b:index:B y",
    ]


def test_values_print_secret_unknown_nested_and_blocks():
    lines = value_lines(
        "k", {"b": [1, "[secret]"], "a": "(unknown)", "c": "one\ntwo\n", "d": "false"}
    )
    assert lines == [
        "k:",
        "    a: (unknown)",
        "    b:",
        "        - 1",
        "        - [secret]",
        "    c: |",
        "        one",
        "        two",
        '    d: "false"',
    ]


def test_json_is_deterministic_and_complete(dev_cli, dev_preview_plan):
    plan_json = dev_cli[1]
    # Two plans of the same stack (the session's, and this file's): the same bytes.
    assert plan_json == dumps(public_document(dev_preview_plan))

    document = json.loads(plan_json)
    assert sorted(document) == ["exports", "notes", "resources", "stack"]
    assert document["stack"] == "dev"
    urns = [r["urn"] for r in document["resources"]]
    assert urns == sorted(urns)
    assert len(urns) == len(dev_preview_plan.resources)
    for resource in document["resources"]:
        assert sorted(resource) == [
            "computed",
            "custom",
            "id",
            "inputs",
            "name",
            "options",
            "parent",
            "provider",
            "region",
            "secrets",
            "type",
            "urn",
        ]
    by_name = {(r["type"], r["name"]): r for r in document["resources"]}
    parameter = by_name["aws:ssm/parameter:Parameter", "alpha-wireguard-key"]
    assert parameter["inputs"]["value"] == "[secret]"
    # A fingerprint of the secret input, so two plans can tell it changed; not the key.
    assert re.fullmatch(r"[0-9a-f]{16}", parameter["secrets"]["value"])
    assert parameter["region"] == "us-east-1"
    # Computed outputs are public too, but a secret output stays redacted.
    assert parameter["computed"]["arn"].startswith("arn:aws:ssm:us-east-1:")
    key = by_name["random:index/randomBytes:RandomBytes", "alpha-wireguard-key"]
    assert key["computed"]["base64"] == key["computed"]["hex"] == "[secret]"
    instance = by_name["aws:ec2/instance:Instance", "beta-gateway"]
    assert instance["region"] == "eu-west-1"
    state = by_name["aws:ssm/parameter:Parameter", "beta-desired-state"]
    assert "ListenPort = 51000" in state["inputs"]["insecureValue"]
    assert instance["inputs"]["userDataBase64"]
    assert document["exports"]["sites"]["alpha"]["publicIp"] == "203.0.113.10"


def test_no_private_key_in_tree_or_json(dev_cli):
    out, plan_json = dev_cli
    keys = {site: plan_private_key("dev", f"{site}-wireguard-key") for site in ("alpha", "beta")}
    # These keys were used: each gateway's config names the other's public key.
    assert public_key(keys["alpha"]) in out
    assert public_key(keys["beta"]) in out
    assert leaks({"stdout": out, "json": plan_json}, key_forms(keys)) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no config file for stack 'nope'"),
        (["dev", "--diff", "no-such-ref"], "git ref 'no-such-ref' does not name a commit"),
    ],
    ids=["unknown-stack", "unknown-ref"],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, monkeypatch):
    # In this process (no plan is made for either); test_invalid_config_... runs the CLI.
    monkeypatch.chdir(REPO)
    status = cli.main(args)
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_invalid_config_lists_each_problem_and_exits_2(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("__main__.py", "core", "components", "plan", "cloud-init", "stacks"):
        source = REPO / name
        target = project / name
        if source.is_dir():
            subprocess.run(["cp", "-r", str(source), str(target)], check=True)
        else:
            target.write_text(source.read_text())
    (project / "stacks" / "Pulumi.broken.yaml").write_text(
        (REPO / "stacks" / "Pulumi.dev.yaml")
        .read_text()
        .replace("port: 51000", "port: 0")
        .replace("mtu: 1420", "mtu: 100")
    )
    ran = run("broken", cwd=project)
    assert ran.returncode == 2
    assert "Traceback" not in ran.stderr
    lines = ran.stderr.splitlines()
    assert lines[0] == "python -m plan: invalid stack config:"
    assert any("wg-site-to-site:tunnel.port" in line for line in lines[1:])
    assert any("wg-site-to-site:tunnel.mtu" in line for line in lines[1:])


def test_unwritable_json_is_bad_input(tmp_path, capsys):
    status = cli.main(["dev", "--json", str(tmp_path / "missing-dir" / "plan.json")])
    err = capsys.readouterr().err
    assert status == 2
    assert "cannot write" in err
    assert "Traceback" not in err


def test_each_redaction_layer_works_on_its_own():
    # End to end the two layers cover for each other, so each is checked alone here.
    secret, output = "marked-secret-value", "0123456789abcdef-secret-output"
    plan = Plan(
        stack="t",
        config={},
        resources=[
            PlannedResource(
                urn="urn:t::x",
                type="random:index/randomBytes:RandomBytes",
                name="x",
                parent=None,
                custom=True,
                provider=None,
                inputs={"marked": Secret(secret), "copied": f"a {secret} b", "later": Unknown()},
                outputs={"hex": output},
                options={"additionalSecretOutputs": ["hex"]},
            )
        ],
        exports={"derived": f"key={output}"},
    )
    public = public_document(plan)
    assert public["resources"][0]["inputs"] == {
        "copied": "a [secret] b",
        "later": "(unknown)",
        "marked": "[secret]",
    }
    assert public["exports"] == {"derived": "key=[secret]"}
    assert public_value(Secret("short"), frozenset()) == "[secret]"
