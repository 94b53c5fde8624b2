"""The rendered files, checked by the real tools that will read them."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import load_stack_config
from core.facts import architecture, gateway_facts, site_layout
from core.keys import public_key
from core.render import (
    PeerEndpoint,
    decode_user_data,
    render_bootstrap,
    render_desired_state,
)
from plan.engine import Plan
from tests.conftest import stack_config
from tests.test_program import desired_state, gateway, wg_config


def _instances(plan: Plan) -> list[str]:
    return [
        decode_user_data(r.inputs["userDataBase64"])
        for r in plan.by_type("aws:ec2/instance:Instance")
    ]


def _cloud_init_schema(path: Path, document: str) -> subprocess.CompletedProcess[str]:
    """The real cloud-init's verdict on a user-data document."""
    path.write_text(document)
    return subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_user_data_passes_cloud_init_schema(
    dev_plan: Plan, single_region_plan: Plan, tmp_path: Path
) -> None:
    every = _instances(dev_plan) + _instances(single_region_plan)
    assert len(every) == 4
    for index, user_data in enumerate(every):
        result = _cloud_init_schema(tmp_path / f"user-data-{index}.yaml", user_data)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Valid cloud-config" in result.stdout


def test_cloud_init_schema_rejects_a_broken_document(tmp_path: Path) -> None:
    # Proves the check above can fail: the same tool on a document with a bad module.
    broken = "#cloud-config\nruncmd: 42\nwrite_files: [{path: 1, permissions: 600}]\n"
    assert _cloud_init_schema(tmp_path / "broken.yaml", broken).returncode != 0


@pytest.mark.parametrize("site", ["alpha", "beta"])
def test_wg_config_passes_wg_quick_strip(dev_plan: Plan, site: str, tmp_path: Path) -> None:
    interface = {"alpha": "wgA", "beta": "wgB"}[site]
    path = tmp_path / f"{interface}.conf"
    path.write_text(wg_config(dev_plan, site))
    path.chmod(0o600)
    result = subprocess.run(
        ["wg-quick", "strip", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    stripped = result.stdout
    # What remains is what `wg setconf` gets: the wg-quick-only keys are gone.
    assert "ListenPort = 51000" in stripped
    assert "[Peer]" in stripped and "Endpoint = " in stripped
    for wg_quick_only in ("Address", "MTU", "PostUp", "PreDown"):
        assert f"{wg_quick_only} =" not in stripped
    assert "PrivateKey" not in stripped


def test_user_data_and_desired_state_are_the_core_renderings(dev_plan: Plan) -> None:
    config = load_stack_config(stack_config("dev"))
    alpha = gateway_facts(config, "dev")[0]
    bootstrap = render_bootstrap(alpha)
    assert gateway(dev_plan, "alpha").inputs["userDataBase64"] == bootstrap.user_data_base64
    assert decode_user_data(bootstrap.user_data_base64) == bootstrap.user_data
    beta_key = dev_plan.exports["sites"]["beta"]["publicKey"]
    beta_ip = dev_plan.exports["sites"]["beta"]["publicIp"]
    state = render_desired_state(
        alpha, {"beta": PeerEndpoint(public_key=beta_key, public_ip=beta_ip)}
    )
    assert desired_state(dev_plan, "alpha") == {
        "config": state.wg_config,
        "firewall": state.firewall,
        "presharedKey": True,
        # What the apply writes into the peers file, for the probe and the check.
        "peers": [{"name": "beta", "address": "10.255.255.1", "publicKey": beta_key}],
    }


def test_user_data_is_the_same_bytes_for_the_same_text() -> None:
    # gzip with mtime=0: a plan made tomorrow must not show a changed user data.
    alpha = gateway_facts(load_stack_config(stack_config("dev")), "dev")[0]
    assert render_bootstrap(alpha).user_data_base64 == render_bootstrap(alpha).user_data_base64


def test_renderer_refuses_a_bad_peer_key() -> None:
    alpha = gateway_facts(load_stack_config(stack_config("dev")), "dev")[0]
    with pytest.raises(ValueError, match="not a WireGuard key"):
        render_desired_state(
            alpha, {"beta": PeerEndpoint(public_key="not-a-key", public_ip="203.0.113.20")}
        )


def test_each_peer_loads_its_own_preshared_key_file() -> None:
    # The apply feeds each [Peer] the file its PostUp names (cloud-init/apply.sh.j2 feed()).
    config = stack_config("dev")
    config["tunnel"]["cidr"] = "10.255.255.0/29"
    config["sites"].append(
        {
            "name": "gamma",
            "region": "us-west-2",
            "cidr": "10.3.0.0/16",
            "interface": "wgC",
        }
    )
    alpha = gateway_facts(load_stack_config(config), "dev")[0]
    keys = {"beta": "B" * 43 + "=", "gamma": "C" * 43 + "="}
    text = render_desired_state(
        alpha, {name: PeerEndpoint(key, "203.0.113.9") for name, key in keys.items()}
    ).wg_config
    for name, key in keys.items():
        assert f"PostUp = wg set %i peer {key} preshared-key /etc/wireguard/%i.{name}.psk" in (
            text.splitlines()
        )
        assert alpha.peer(name).psk_path("wgA") == f"/etc/wireguard/wgA.{name}.psk"


def test_public_key_matches_wg_pubkey() -> None:
    private = "YWxwaGEtcGxhbnRlZC1rZXktZm9yLXRoZS10ZXN0cyE="
    result = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, timeout=10, check=True
    )
    assert public_key(private) == result.stdout.strip()


@pytest.mark.parametrize(
    ("instance_type", "arch"),
    [
        ("t4g.nano", "arm64"),
        ("c7gn.medium", "arm64"),
        ("x2gd.large", "arm64"),
        ("im4gn.large", "arm64"),
        ("a1.medium", "arm64"),
        ("t3.micro", "amd64"),
        ("c7i.large", "amd64"),
        ("g5.xlarge", "amd64"),
        ("m6a.large", "amd64"),
    ],
)
def test_architecture_follows_the_instance_family(instance_type: str, arch: str) -> None:
    assert architecture(instance_type) == arch


@pytest.mark.parametrize("cidr", ["10.1.0.0/16", "10.30.0.0/20", "172.16.5.0/24", "10.9.9.0/27"])
def test_site_layout_fits_two_aws_subnets(cidr: str) -> None:
    layout = site_layout(ipaddress.IPv4Network(cidr))
    assert layout.public_subnet.subnet_of(layout.cidr)
    assert layout.private_subnet.subnet_of(layout.cidr)
    assert not layout.public_subnet.overlaps(layout.private_subnet)
    assert layout.public_subnet.prefixlen <= 28  # AWS's smallest subnet
    # AWS reserves .0-.3 and the last address; the gateway takes the first free one.
    assert layout.gateway_private_ip == layout.public_subnet.network_address + 4


# --- PostUp/PreDown executed for real, in a throw-away network namespace ---------------


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must run this as root")
        pytest.skip("needs root for a network namespace")
    name = f"wgs2s-hooks-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


def _hook_commands(text: str, kind: str, interface: str) -> list[str]:
    return [
        line.split(" = ", 1)[1].replace("%i", interface)
        for line in text.splitlines()
        if line.startswith(f"{kind} = iptables") or line.startswith(f"{kind} = !")
    ]


def _rules(netns: str) -> list[str]:
    saved = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables-save"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return sorted(line for line in saved.splitlines() if line.startswith(("-A ", ":s2s-")))


def _run_hooks(netns: str, commands: list[str]) -> None:
    bash = shutil.which("bash") or "/bin/bash"
    for command in commands:
        # wg-quick runs each hook with `set -e`: any failure would abort up or down.
        subprocess.run(
            ["ip", "netns", "exec", netns, bash, "-e", "-c", command], check=True, timeout=10
        )


@pytest.mark.lab
def test_hooks_load_the_chains_once_and_remove_exactly_them(
    dev_plan: Plan, netns: str, tmp_path: Path
) -> None:
    text = wg_config(dev_plan, "alpha")
    rules_file = tmp_path / "wgA.rules"
    rules_file.write_text(desired_state(dev_plan, "alpha")["firewall"])
    up = [
        c.replace("/etc/wireguard/wgA.rules", str(rules_file))
        for c in _hook_commands(text, "PostUp", "wgA")
    ]
    down = _hook_commands(text, "PreDown", "wgA")
    assert len(up) == 3 and len(down) == 4
    # A rule of someone else's in the same chain must survive our down.
    subprocess.run(
        ["ip", "netns", "exec", netns, "iptables", "-A", "FORWARD", "-i", "eth9", "-j", "DROP"],
        check=True,
        timeout=10,
    )
    before = _rules(netns)
    _run_hooks(netns, up)
    after_up = _rules(netns)
    assert "-A FORWARD -i wgA -j s2s-fw-wgA" in after_up
    assert "-A FORWARD -o wgA -j s2s-mss-wgA" in after_up
    assert any("TCPMSS" in rule for rule in after_up)
    assert "-A s2s-fw-wgA -p tcp -m tcp --dport 22 -j REJECT --reject-with tcp-reset" in after_up
    _run_hooks(netns, up)  # a second up (e.g. after a crash skipped PreDown)
    assert _rules(netns) == after_up
    _run_hooks(netns, down)
    assert _rules(netns) == before
    _run_hooks(netns, down)  # a down for rules that are gone must not fail
    assert _rules(netns) == before


def test_tests_that_make_a_namespace_are_marked_lab() -> None:
    """`pytest -m 'not lab'` promises no network namespaces (and no root)."""
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not lab", "tests"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert "test_hooks_add_each_rule_once_and_remove_exactly_it" not in collected.stdout
    assert "tests/lab/" not in collected.stdout
