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
    world.stacks.mkdir(parents=True)
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


# ------------------------------------------------------------------- install.sh, for real

# Two throw-away namespaces (network and mount, no names: nothing of the shared lab's),
# joined by a veth: the office at its publicIp and an AWS peer at its Elastic IP, which
# runs WireGuard (wireguard-go, as the lab) with the keys the stand-ins handed out.
TWO_SITES = {
    "config": {
        "pulumi:disable-default-providers": ["aws"],
        "wg-site-to-site:tunnel": {"cidr": "10.255.255.0/31", "port": 51000},
        "wg-site-to-site:sites": [
            {"name": "alpha", "region": "us-east-1", "cidr": "10.1.0.0/16", "interface": "wg0"},
            {
                "name": "office",
                "cidr": "192.168.10.0/24",
                "interface": "wg0",
                "external": {"publicKey": OFFICE_PUBLIC, "publicIp": "198.51.100.7"},
            },
        ],
        "wg-site-to-site:firewall": [
            {"description": "no ssh", "protocol": "tcp", "port": 22, "action": "reject"}
        ],
    }
}
RDP_RULE = {"description": "no rdp", "protocol": "tcp", "port": 3389, "action": "reject"}


class Namespaces:
    """Two holders (`unshare --net --mount`, each with its own /run), and commands run in
    them with nsenter."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.holders: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        self.holders[name] = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "sleep", "300"]
        )
        # The holder is ready once both its namespaces differ from ours.
        for _ in range(500):
            if self._own(name):
                break
            subprocess.run(["sleep", "0.01"], check=True)
        # wireguard-go's control socket and the apply's lock and work files go in /run.
        self.run(name, "mount -t tmpfs tmpfs /run && mkdir -p /run/wireguard")

    def _own(self, name: str) -> bool:
        pid = self.holders[name].pid
        return all(
            os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
            for kind in ("net", "mnt")
        )

    def run(
        self, name: str, script: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # Never this machine's own namespaces: a mount here would cover the host's /run.
        assert self._own(name), f"{name}: the holder has not left this machine's namespaces"
        pid = str(self.holders[name].pid)
        result = subprocess.run(
            ["nsenter", "-t", pid, "-n", "-m", "bash", "-c", script],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**os.environ, **(env or {})},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{name}: {script}: {result.stdout}{result.stderr}")
        return result

    def stop(self) -> None:
        for name, holder in self.holders.items():
            # wireguard-go outlives its namespace's holder, and exits when its interface goes.
            if holder.poll() is None:
                self.run(name, "ip link del wg0 2>/dev/null; true", check=False)
        for holder in self.holders.values():
            holder.kill()
            holder.wait()


@pytest.fixture
def office_and_peer(tmp_path: Path) -> Iterator[tuple[Namespaces, Path]]:
    from lab.build import SYSTEMCTL_SHIM
    from tests.lab.support import require_root

    require_root()
    spaces = Namespaces(tmp_path)
    try:
        spaces.start("alpha")
        spaces.start("office")
        alpha_pid, office_pid = (str(spaces.holders[n].pid) for n in ("alpha", "office"))
        link = f"s2sb{os.getpid() % 100000}"
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                link,
                "netns",
                alpha_pid,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                office_pid,
            ],
            check=True,
        )
        spaces.run(
            "alpha",
            f"ip link set {link} name uplink && ip address add 203.0.113.10/32 dev uplink && "
            "ip link set uplink up && ip link set lo up && "
            "ip route add 198.51.100.7/32 dev uplink",
        )
        spaces.run(
            "office",
            "ip address add 198.51.100.7/32 dev uplink && ip link set uplink up && "
            "ip link set lo up && ip route add 203.0.113.10/32 dev uplink",
        )
        # The AWS peer, as its apply would leave it: its key, the pair's pre-shared key,
        # the office as its peer.
        (tmp_path / "alpha.key").write_text(_key(1) + "\n")
        (tmp_path / "alpha.psk").write_text(PSKS["alpha"] + "\n")
        spaces.run(
            "alpha",
            "wireguard-go wg0 >/dev/null 2>&1 && "
            f"wg set wg0 listen-port 51000 private-key {tmp_path}/alpha.key "
            f"peer {OFFICE_PUBLIC} preshared-key {tmp_path}/alpha.psk "
            "allowed-ips 10.255.255.1/32,192.168.10.0/24 && "
            "ip address add 10.255.255.0/31 dev wg0 && ip link set wg0 up",
        )
        # The office's /etc/wireguard and /etc/sysctl.d are its own; its key is made
        # (wg genkey in the guide) and named in the stack.
        for directory in ("etc-wireguard", "sysctl.d", "sbin", "shims"):
            (tmp_path / directory).mkdir(mode=0o700)
        (tmp_path / "etc-wireguard" / "wg0.key").write_text(OFFICE_PRIVATE + "\n")
        (tmp_path / "etc-wireguard" / "wg0.key").chmod(0o600)
        (tmp_path / "shims" / "systemctl").write_text(SYSTEMCTL_SHIM)
        (tmp_path / "shims" / "systemctl").chmod(0o755)
        spaces.run(
            "office",
            f"mount --bind {tmp_path}/etc-wireguard /etc/wireguard && "
            f"mount --bind {tmp_path}/sysctl.d /etc/sysctl.d",
        )
        yield spaces, tmp_path
    finally:
        spaces.stop()


def _install(spaces: Namespaces, root: Path, bundle: Path) -> subprocess.CompletedProcess[str]:
    return spaces.run(
        "office",
        f"bash {bundle}/install.sh",
        env={
            "PATH": f"{root}/shims:{os.environ['PATH']}",
            "WG_S2S_SBIN": f"{root}/sbin",
            "WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go",
        },
        check=False,
    )


@pytest.mark.lab
def test_install_sh_brings_the_office_up_then_changes_nothing_then_takes_day_2(
    office_and_peer: tuple[Namespaces, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spaces, root = office_and_peer
    world = _world(root / "world", {"lab": TWO_SITES})
    _environment(monkeypatch, world)
    _credentials(monkeypatch)
    ssm = {"us-east-1": MESH_SSM["us-east-1"]}
    assert _run(world, capsys, "lab", "office", client=StubbedSsm(ssm))[0] == 0
    bundle = world.out / "lab" / "office"

    first = _install(spaces, root, bundle)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "check ping ok alpha 10.255.255.0" in first.stdout, first.stdout
    last = first.stdout.splitlines()[-1]
    assert last.startswith("install.sh: site office: changed: forwarding, "), last
    etc = root / "etc-wireguard"
    assert (etc / "wg0.alpha.psk").read_text() == PSKS["alpha"] + "\n"
    assert stat.S_IMODE((etc / "wg0.alpha.psk").stat().st_mode) == 0o600
    assert (etc / "wg0.key").read_text() == OFFICE_PRIVATE + "\n", "the key was replaced"
    forwarding = spaces.run("office", "sysctl -n net.ipv4.ip_forward").stdout.strip()
    assert forwarding == "1"

    installed = {path: path.stat().st_mtime_ns for path in etc.rglob("*") if path.is_file()}
    second = _install(spaces, root, bundle)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.splitlines()[-1] == (
        "install.sh: site office: nothing changed; wg0 up, 1 peer(s) checked"
    ), second.stdout
    assert installed == {p: p.stat().st_mtime_ns for p in etc.rglob("*") if p.is_file()}

    # Day 2: a firewall rule added to the stack, a new bundle, install.sh again.
    TWO_SITES_DAY2 = json.loads(json.dumps(TWO_SITES))
    TWO_SITES_DAY2["config"]["wg-site-to-site:firewall"].append(RDP_RULE)
    (world.stacks / "Pulumi.lab.yaml").write_text(yaml.safe_dump(TWO_SITES_DAY2))
    assert _run(world, capsys, "lab", "office", client=StubbedSsm(ssm))[0] == 0
    third = _install(spaces, root, bundle)
    assert third.returncode == 0, third.stdout + third.stderr
    assert third.stdout.splitlines()[-1].startswith(
        "install.sh: site office: changed: desired state, wg0;"
    ), third.stdout
    chain = spaces.run("office", "iptables -S s2s-fw-wg0").stdout
    assert "--dport 3389 -j REJECT" in chain, chain


@pytest.mark.lab
def test_install_sh_makes_a_missing_key_once_and_stops_until_the_stack_has_it(
    office_and_peer: tuple[Namespaces, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spaces, root = office_and_peer
    world = _world(root / "world", {"lab": TWO_SITES})
    _environment(monkeypatch, world)
    _credentials(monkeypatch)
    ssm = {"us-east-1": MESH_SSM["us-east-1"]}
    assert _run(world, capsys, "lab", "office", client=StubbedSsm(ssm))[0] == 0
    bundle = world.out / "lab" / "office"
    key = root / "etc-wireguard" / "wg0.key"
    key.unlink()

    first = _install(spaces, root, bundle)
    assert first.returncode == 1, first.stdout + first.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    made = public_key(key.read_text().strip())
    assert "install.sh: made /etc/wireguard/wg0.key (wg genkey, 0600)" in first.stdout
    (error,) = first.stderr.splitlines()
    assert error.startswith(
        f"install.sh: /etc/wireguard/wg0.key's public key is {made}; the stack has "
        f"{OFFICE_PUBLIC}: put it in the stack as the external.publicKey of site office"
    ), error
    # Stopped before the tunnel: nothing of it was installed.
    assert sorted(p.name for p in key.parent.iterdir()) == ["wg0.key"]

    again = _install(spaces, root, bundle)
    assert again.returncode == 1
    assert public_key(key.read_text().strip()) == made, "an existing key was overwritten"
    assert f"public key is {made};" in again.stderr


def test_the_renderer_makes_no_bundle_for_an_aws_site() -> None:
    from core.config import load_stack_config, project_config_from_stack_file
    from core.facts import gateway_facts
    from core.render import render_site_bundle

    config = load_stack_config(project_config_from_stack_file(stack_document()))
    alpha = gateway_facts(config, "lab")[0]
    with pytest.raises(ValueError, match="site alpha is an AWS site"):
        render_site_bundle(alpha, {})


# ------------------------------------------------- against what the program itself declares


class PlannedSsm:
    """SSM as `pulumi up` would leave it: every parameter of the plan, in its region;
    anything else is ParameterNotFound."""

    def __init__(self, parameters: dict[tuple[str, str], str]) -> None:
        self.parameters = parameters
        self.read: list[tuple[str, str]] = []

    def __call__(self, service: str, region: str) -> Any:
        client = boto3.client(  # type: ignore[call-overload]
            service, region_name=region, aws_access_key_id="x", aws_secret_access_key="x"
        )
        stubber = Stubber(client)
        original = client.get_parameter

        def get_parameter(**kwargs: Any) -> Any:
            name = kwargs["Name"]
            self.read.append((region, name))
            if (region, name) in self.parameters:
                stubber.add_response(
                    "get_parameter",
                    {"Parameter": {"Name": name, "Value": self.parameters[(region, name)]}},
                    {"Name": name, "WithDecryption": True},
                )
            else:
                stubber.add_client_error("get_parameter", "ParameterNotFound", http_status_code=400)
            return original(**kwargs)

        client.get_parameter = get_parameter
        stubber.activate()
        return client


def test_a_planned_stacks_office_bundle_pairs_with_its_aws_gateways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from plan.engine import read_stack_file, reveal
    from tests.conftest import planned

    stacks = REPO / "tests" / "stacks"
    # The session's plan of the example (tests/test_plan_sites.py plans it too).
    plan = planned("office-static", read_stack_file("office-static", stacks), shared=True)
    parameters = {}
    for resource in plan.by_type("aws:ssm/parameter:Parameter"):
        value = resource.inputs.get("value", resource.inputs.get("insecureValue"))
        region = plan.region_of(resource)
        assert region is not None
        parameters[(region, reveal(resource.inputs["name"]))] = reveal(value)
    world = _world(tmp_path, {})
    (tmp_path / "outputs.json").write_text(json.dumps(reveal(plan.exports["sites"])))
    _environment(monkeypatch, world)
    monkeypatch.setattr(site_bundle, "STACKS", stacks)
    _credentials(monkeypatch)
    ssm = PlannedSsm(parameters)
    status, _, output = _run(world, capsys, "office-static", "office", client=ssm)
    assert status == 0, output

    prefix = "/wg-site-to-site/office-static"
    assert ssm.read == [
        ("us-east-1", f"{prefix}/alpha/office/wireguard-preshared-key"),
        ("eu-west-1", f"{prefix}/beta/office/wireguard-preshared-key"),
    ]
    bundle = world.out / "office-static" / "office"
    office = json.loads((bundle / "state" / prefix[1:] / "office" / "desired-state").read_text())
    office_key = "3EeDzdKW8qr3H8hAmdqtXoYft3W+tM1mTKnz1CW5qCI="
    for site, region, address, cidr, eip in (
        ("alpha", "us-east-1", "10.255.255.1", "10.1.0.0/16", "203.0.113.10"),
        ("beta", "eu-west-1", "10.255.255.2", "10.2.0.0/16", "203.0.113.20"),
    ):
        psk = parameters[(region, f"{prefix}/{site}/office/wireguard-preshared-key")]
        assert (
            bundle / "state" / prefix[1:] / "office" / site / "wireguard-preshared-key"
        ).read_text() == psk + "\n"
        # The office's peer key is the key the gateway holds (its private key parameter).
        gateway_key = public_key(parameters[(region, f"{prefix}/{site}/wireguard-private-key")])
        assert (
            f"PublicKey = {gateway_key}\nAllowedIPs = {address}/32, {cidr}\n"
            f"Endpoint = {eip}:51000" in office["config"]
        )
        # And the gateway's own desired state has the office: its key, its addresses.
        aws = json.loads(parameters[(region, f"{prefix}/{site}/desired-state")])
        assert (
            f"PublicKey = {office_key}\nAllowedIPs = 10.255.255.3/32, 192.168.10.0/24\n"
            "Endpoint = 198.51.100.7:51000"
        ) in aws["config"], aws["config"]
    assert "Address = 10.255.255.3/29" in office["config"]


def test_refuses_a_pair_of_offices_with_preshared_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In a mesh two offices peer directly: no AWS gateway holds their pair's key in SSM.
    document = stack_document()
    document["config"]["wg-site-to-site:sites"].append(
        {
            "name": "branch",
            "cidr": "192.168.20.0/24",
            "interface": "wg0",
            "external": {"publicKey": public_key(_key(8)), "publicIp": "198.51.100.8"},
        }
    )
    world = _world(tmp_path, {"lab": document})
    _environment(monkeypatch, world)
    _credentials(monkeypatch)
    ssm = StubbedSsm({})
    status, lines, _ = _run(world, capsys, "lab", "office", client=ssm)
    _refused(
        world,
        lines,
        status,
        r"site office's peer branch is outside AWS too: the pair has no pre-shared key in SSM",
    )
    assert ssm.regions == [], "refused, yet SSM was asked"
