"""`make site-bundle` / `python -m tools.site_bundle`: an office's bundle (issue 15).

The AWS side is stood in for: the `pulumi` CLI by tests/pulumi_stand_in.py (its `stack
output sites` answers with the AWS peers' public keys and Elastic IPs), SSM by real boto3
clients answered by botocore's Stubber, which also asserts the exact parameter name read
in each region. No network.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from core.keys import public_key
from tests.pulumi_stand_in import FAKE_PULUMI, logged_calls
from tools import site_bundle

REPO = Path(__file__).resolve().parent.parent


def _key(seed: int) -> str:
    return base64.b64encode(bytes([seed]) * 32).decode()


OFFICE_PRIVATE = _key(7)
OFFICE_PUBLIC = public_key(OFFICE_PRIVATE)
# The AWS gateways' public keys and Elastic IPs, as `pulumi stack output sites` gives them.
OUTPUTS = {
    "alpha": {"publicKey": public_key(_key(1)), "publicIp": "203.0.113.10", "region": "us-east-1"},
    "beta": {"publicKey": public_key(_key(2)), "publicIp": "203.0.113.20", "region": "eu-west-1"},
}
# Each pair's pre-shared key, as the AWS peer's copy in SSM holds it.
PSKS = {"alpha": _key(11), "beta": _key(12)}


def stack_document(*, preshared_key: bool = True, hub: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "pulumi:disable-default-providers": ["aws"],
        "wg-site-to-site:tunnel": {
            "cidr": "10.255.255.0/29",
            "port": 51000,
            "presharedKey": preshared_key,
        },
        "wg-site-to-site:sites": [
            {"name": "alpha", "region": "us-east-1", "cidr": "10.1.0.0/16", "interface": "wg0"},
            {"name": "beta", "region": "eu-west-1", "cidr": "10.2.0.0/16", "interface": "wg0"},
            {
                "name": "office",
                "cidr": "192.168.10.0/24",
                "interface": "wg0",
                "external": {"publicKey": OFFICE_PUBLIC, "publicIp": "198.51.100.7"},
            },
        ],
        "wg-site-to-site:firewall": [
            {
                "description": "no ssh between sites",
                "protocol": "tcp",
                "port": 22,
                "action": "reject",
            }
        ],
    }
    if hub is not None:
        config["wg-site-to-site:topology"] = {"hub": hub}
        # Behind NAT: it dials out from its ISP's pool.
        config["wg-site-to-site:sites"][2]["external"] = {
            "publicKey": OFFICE_PUBLIC,
            "sourceCidr": "198.51.100.0/28",
        }
    return {"config": config}


class StubbedSsm:
    """A factory of real boto3 SSM clients answered by Stubber: each region answers
    exactly the get_parameter calls queued for it, with exactly these arguments."""

    def __init__(self, expected: dict[str, list[tuple[str, str]]]) -> None:
        self.expected = expected  # region -> [(parameter name, value)]
        self.stubbers: list[Stubber] = []
        self.regions: list[str] = []

    def __call__(self, service: str, region: str) -> Any:
        assert service == "ssm", service
        self.regions.append(region)
        client = boto3.client(
            "ssm", region_name=region, aws_access_key_id="x", aws_secret_access_key="x"
        )
        stubber = Stubber(client)
        for name, value in self.expected.get(region, []):
            stubber.add_response(
                "get_parameter",
                {"Parameter": {"Name": name, "Type": "SecureString", "Value": value}},
                {"Name": name, "WithDecryption": True},
            )
        stubber.activate()
        self.stubbers.append(stubber)
        return client

    def all_answered(self) -> None:
        for stubber in self.stubbers:
            stubber.assert_no_pending_responses()


MESH_SSM = {
    "us-east-1": [
        ("/wg-site-to-site/lab/alpha/office/wireguard-preshared-key", PSKS["alpha"]),
    ],
    "eu-west-1": [
        ("/wg-site-to-site/lab/beta/office/wireguard-preshared-key", PSKS["beta"]),
    ],
}


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stacks = root / "stacks"
        self.out = root / "out"
        self.bin = root / "bin"
        self.log = root / "pulumi.log"


def _world(root: Path, documents: dict[str, dict[str, Any]]) -> World:
    world = World(root)
    world.stacks.mkdir()
    for stack, document in documents.items():
        (world.stacks / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(document))
    world.bin.mkdir()
    fake = world.bin / "pulumi"
    fake.write_text(FAKE_PULUMI.format(python=sys.executable))
    fake.chmod(0o755)
    (root / "outputs.json").write_text(json.dumps(OUTPUTS))
    return world


def _environment(monkeypatch: pytest.MonkeyPatch, world: World, *, pulumi: bool = True) -> None:
    """No AWS credentials anywhere botocore looks (no instance metadata call either), and
    the stand-in pulumi on PATH, or no pulumi at all."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "PULUMI_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(world.root / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(world.root / "no-aws-credentials"))
    path = [d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "pulumi").exists()]
    if pulumi:
        path.insert(0, str(world.bin))
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(world.log))
    monkeypatch.setenv("FAKE_PULUMI_STATE", str(world.root / "pulumi-state.json"))
    monkeypatch.setenv("FAKE_PULUMI_OUTPUTS", str(world.root / "outputs.json"))
    monkeypatch.setattr(site_bundle, "STACKS", world.stacks)


def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x" * 40)


def _run(
    world: World, capsys: pytest.CaptureFixture[str], *argv: str, client: Any = None
) -> tuple[int, list[str], str]:
    status = site_bundle.main([*argv, "--out", str(world.out)], client=client)
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    return status, lines, captured.out + captured.err


# ----------------------------------------------------------------------------- the bundle


class Made:
    def __init__(self, world: World, status: int, output: str, ssm: StubbedSsm) -> None:
        self.world, self.status, self.output, self.ssm = world, status, output, ssm
        self.dir = world.out / "lab" / "office"

    def file(self, relative: str) -> Path:
        return self.dir / relative


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    """The full bundle of the mesh's office, made once for the module."""
    world = _world(tmp_path_factory.mktemp("bundle"), {"lab": stack_document()})
    monkeypatch = pytest.MonkeyPatch()
    try:
        _environment(monkeypatch, world)
        _credentials(monkeypatch)
        ssm = StubbedSsm(MESH_SSM)
        status = site_bundle.main(["lab", "office", "--out", str(world.out)], client=ssm)
        yield Made(world, status, "", ssm)
    finally:
        monkeypatch.undo()


def test_the_bundle_is_written_with_every_file(made: Made) -> None:
    assert made.status == 0
    files = sorted(
        str(path.relative_to(made.dir)) for path in made.dir.rglob("*") if path.is_file()
    )
    state = "state/wg-site-to-site/lab/office"
    assert files == sorted(
        [
            "99-wg-site-to-site.conf",
            "install.sh",
            "wg-site-to-site-apply",
            "wg-site-to-site-check",
            "wg0.conf",
            "wg0.rules",
            f"{state}/desired-state",
            f"{state}/alpha/wireguard-preshared-key",
            f"{state}/beta/wireguard-preshared-key",
        ]
    )
    # The office's private key is never in the bundle: install.sh makes it on the office.
    assert not (made.dir / state / "wireguard-private-key").exists()
    assert OFFICE_PRIVATE not in "".join(p.read_text() for p in made.dir.rglob("*") if p.is_file())


def test_the_preshared_keys_come_from_each_aws_peers_copy_in_its_region(made: Made) -> None:
    # Stubber answered exactly one get_parameter per region, with these names and
    # WithDecryption: the AWS peer's copy (/<stack>/<aws site>/<office>/...).
    made.ssm.all_answered()
    assert sorted(made.ssm.regions) == ["eu-west-1", "us-east-1"]
    state = made.dir / "state/wg-site-to-site/lab/office"
    for peer in ("alpha", "beta"):
        psk = state / peer / "wireguard-preshared-key"
        assert psk.read_text() == PSKS[peer] + "\n"
        assert stat.S_IMODE(psk.stat().st_mode) == 0o600, peer


def test_key_files_are_0600_and_every_directory_0700(made: Made) -> None:
    for path in [made.dir, *made.dir.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.name == "wireguard-preshared-key":
            assert mode == 0o600, path
        else:
            assert mode & 0o077 in (0, 0o044, 0o055), (path, oct(mode))


def test_the_aws_peers_come_from_plain_stack_outputs(made: Made) -> None:
    calls = logged_calls(made.world.log)
    assert calls == [["stack", "output", "sites", "--json", "--stack", "lab"]], calls
    assert not any("--show-secrets" in call for call in calls)
    state = json.loads(made.file("state/wg-site-to-site/lab/office/desired-state").read_text())
    assert state["presharedKey"] is True
    assert [(p["name"], p["publicKey"]) for p in state["peers"]] == [
        ("alpha", OUTPUTS["alpha"]["publicKey"]),
        ("beta", OUTPUTS["beta"]["publicKey"]),
    ]
    config = made.file("wg0.conf").read_text()
    assert config == state["config"]
    assert "Endpoint = 203.0.113.10:51000" in config
    assert "Endpoint = 203.0.113.20:51000" in config
    # The office's own tunnel address (third site, third host of the /29), and each AWS
    # peer's /32 with its site.
    assert "Address = 10.255.255.3/29" in config
    assert "AllowedIPs = 10.255.255.1/32, 10.1.0.0/16" in config
    assert "AllowedIPs = 10.255.255.2/32, 10.2.0.0/16" in config
    assert "PostUp = wg set %i private-key /etc/wireguard/%i.key" in config
    for peer in ("alpha", "beta"):
        assert (
            f"PostUp = wg set %i peer {OUTPUTS[peer]['publicKey']} preshared-key "
            f"/etc/wireguard/%i.{peer}.psk"
        ) in config
    assert "from the site bundle (make site-bundle)" in config
    assert made.file("wg0.rules").read_text() == state["firewall"]
    assert "-A s2s-fw-wg0 -p tcp --dport 22 -j REJECT" in state["firewall"]
    assert "net.ipv4.ip_forward = 1" in made.file("99-wg-site-to-site.conf").read_text()


def test_no_secret_in_what_the_tool_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world(tmp_path, {"lab": stack_document()})
    _environment(monkeypatch, world)
    _credentials(monkeypatch)
    status, lines, output = _run(world, capsys, "lab", "office", client=StubbedSsm(MESH_SSM))
    assert status == 0, output
    assert lines[0] == f"site office of stack lab: 9 files in {world.out}/lab/office/"
    assert lines[-1].startswith("copy it to the site's gateway"), lines[-1]
    for psk in PSKS.values():
        assert psk not in output


def test_the_config_passes_wg_quick_strip(made: Made, tmp_path: Path) -> None:
    # wg-quick reads the interface name from the file name.
    config = tmp_path / "wg0.conf"
    shutil.copy(made.file("wg0.conf"), config)
    result = subprocess.run(
        ["wg-quick", "strip", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("[Peer]") == 2, result.stdout


def test_install_sh_passes_bash_n_and_shellcheck(made: Made) -> None:
    install = made.file("install.sh")
    assert install.read_text().startswith("#!/bin/bash\n")
    assert stat.S_IMODE(install.stat().st_mode) == 0o755
    syntax = subprocess.run(
        ["bash", "-n", str(install)], check=False, capture_output=True, text=True
    )
    assert syntax.returncode == 0, syntax.stderr
    # shellcheck comes with `make deps` (APT_PACKAGES).
    lint = subprocess.run(["shellcheck", str(install)], check=False, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_install_sh_names_the_sites_own_key_and_state(made: Made) -> None:
    install = made.file("install.sh").read_text()
    assert f"expected_public_key='{OFFICE_PUBLIC}'" in install
    assert "key=/etc/wireguard/wg0.key" in install
    assert "state_dir=/etc/wireguard/wg0.desired" in install
    assert '--from-dir "$state_dir"' in install


def test_a_hub_spoke_behind_nat_gets_only_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world(tmp_path, {"lab": stack_document(hub="alpha")})
    _environment(monkeypatch, world)
    _credentials(monkeypatch)
    ssm = StubbedSsm({"us-east-1": MESH_SSM["us-east-1"]})
    status, _, output = _run(world, capsys, "lab", "office", client=ssm)
    assert status == 0, output
    ssm.all_answered()
    assert ssm.regions == ["us-east-1"]
    bundle = world.out / "lab" / "office"
    config = (bundle / "wg0.conf").read_text()
    assert config.count("[Peer]") == 1
    # The hub carries every other site: its tunnel /32s and CIDRs are all the hub's.
    assert "AllowedIPs = 10.255.255.1/32, 10.255.255.2/32, 10.1.0.0/16, 10.2.0.0/16" in config
    # Behind NAT it dials out, and keeps its NAT mapping open.
    assert "Endpoint = 203.0.113.10:51000" in config
    assert "PersistentKeepalive = 25" in config
    assert not (bundle / "state/wg-site-to-site/lab/office/beta").exists()


def test_without_preshared_keys_no_aws_credentials_are_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world(tmp_path, {"lab": stack_document(preshared_key=False)})
    _environment(monkeypatch, world)
    status, _, output = _run(world, capsys, "lab", "office")
    assert status == 0, output
    state = world.out / "lab" / "office" / "state/wg-site-to-site/lab/office"
    assert json.loads((state / "desired-state").read_text())["presharedKey"] is False
    assert [p.name for p in state.iterdir()] == ["desired-state"]


def test_a_new_bundle_replaces_the_old_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world(tmp_path, {"lab": stack_document()})
    _environment(monkeypatch, world)
    _credentials(monkeypatch)
    assert _run(world, capsys, "lab", "office", client=StubbedSsm(MESH_SSM))[0] == 0
    # Day 2: the pre-shared keys off; the old key files must not linger.
    (world.stacks / "Pulumi.lab.yaml").write_text(
        yaml.safe_dump(stack_document(preshared_key=False))
    )
    assert _run(world, capsys, "lab", "office")[0] == 0
    bundle = world.out / "lab" / "office"
    assert not list(bundle.rglob("wireguard-preshared-key"))
    assert sorted(p.name for p in (world.out / "lab").iterdir()) == ["office"]


# ----------------------------------------------------------------------------- refusals


def _refused(world: World, lines: list[str], status: int, pattern: str) -> None:
    assert status == 2, lines
    assert len(lines) == 1, lines
    assert re.match(rf"^tools\.site_bundle: {pattern}", lines[0]), lines[0]
    assert not world.out.exists(), "a refusal wrote something"


@pytest.mark.parametrize(
    ("site", "pattern"),
    [
        ("nope", r"site 'nope' is not in stack lab \(sites: alpha, beta, office\)$"),
        ("alpha", r"site 'alpha' is an AWS site: pulumi up configures its gateway"),
    ],
)
def test_refuses_a_site_that_is_not_an_office(
    site: str,
    pattern: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = _world(tmp_path, {"lab": stack_document()})
    _environment(monkeypatch, world)
    _credentials(monkeypatch)
    status, lines, _ = _run(world, capsys, "lab", site, client=StubbedSsm({}))
    _refused(world, lines, status, pattern)


def test_refuses_an_unknown_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world(tmp_path, {})
    _environment(monkeypatch, world)
    status, lines, _ = _run(world, capsys, "nostack", "office")
    _refused(world, lines, status, r"no config file for stack 'nostack'")


def test_refuses_without_the_pulumi_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world(tmp_path, {"lab": stack_document()})
    _environment(monkeypatch, world, pulumi=False)
    _credentials(monkeypatch)
    status, lines, _ = _run(world, capsys, "lab", "office")
    _refused(world, lines, status, r"the Pulumi CLI is not installed")


def test_refuses_without_aws_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world(tmp_path, {"lab": stack_document()})
    _environment(monkeypatch, world)
    status, lines, _ = _run(world, capsys, "lab", "office")
    _refused(world, lines, status, r"no AWS credentials \(botocore found none")
    assert logged_calls(world.log) == [], "refused, yet pulumi was asked"


def test_refuses_a_peer_missing_from_the_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world(tmp_path, {"lab": stack_document()})
    (tmp_path / "outputs.json").write_text(json.dumps({"alpha": OUTPUTS["alpha"]}))
    _environment(monkeypatch, world)
    _credentials(monkeypatch)
    status, lines, _ = _run(world, capsys, "lab", "office", client=StubbedSsm({}))
    _refused(world, lines, status, r"stack lab's output sites has no 'beta': run pulumi up")


def test_refuses_a_missing_parameter_without_showing_any_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world = _world(tmp_path, {"lab": stack_document()})
    _environment(monkeypatch, world)
    _credentials(monkeypatch)
    ssm = StubbedSsm({"us-east-1": MESH_SSM["us-east-1"]})
    original = ssm.__call__

    def factory(service: str, region: str) -> Any:
        client = original(service, region)
        if region == "eu-west-1":
            ssm.stubbers[-1].add_client_error(
                "get_parameter", service_error_code="ParameterNotFound", http_status_code=400
            )
        return client

    status, lines, output = _run(world, capsys, "lab", "office", client=factory)
    _refused(
        world,
        lines,
        status,
        r"cannot read SSM parameter /wg-site-to-site/lab/beta/office/wireguard-preshared-key "
        r"in eu-west-1: ParameterNotFound",
    )
    assert PSKS["alpha"] not in output
