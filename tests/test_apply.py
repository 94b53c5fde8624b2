"""The apply script for N peers, run with bash against moto's SSM (or a local directory),
with fake wg, ip, iptables and systemctl on PATH (the real `wg pubkey` and `wg-quick
strip`), in a sandbox: the script's /etc/wireguard and /run point into a temporary
directory. The lab runs the same script for real (tests/lab/test_day2.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.config import load_stack_config
from core.facts import GatewayFacts, gateway_facts
from core.keys import public_key
from core.render import (
    PeerEndpoint,
    configured_endpoint,
    render_apply,
    render_aws_call,
    render_desired_state,
)
from tests.aws_stand_in import REGION, boto_client, moto_endpoint, script_env
from tests.conftest import stack_config

__all__ = ["moto_endpoint"]  # fixture

ETC = "/etc/wireguard/"


def planted_key(label: str) -> str:
    """A fixed 32-byte key per label (any 32 bytes are a WireGuard private key)."""
    return base64.b64encode(hashlib.sha256(label.encode()).digest()).decode()


OFFICE_KEY = planted_key("office-private")


def mesh_config(*, office: bool = True, gamma: bool = True) -> dict[str, Any]:
    """The dev stack grown to a mesh: alpha, beta, gamma (AWS, gamma with a canary) and an
    office with a static address; alpha then has 3 peers."""
    config = stack_config("dev")
    config["tunnel"]["cidr"] = "10.255.255.0/29"
    if gamma:
        config["sites"].append(
            {
                "name": "gamma",
                "region": "us-west-2",
                "cidr": "10.3.0.0/16",
                "interface": "wgC",
                "image": "20251212",
                "availabilityZone": "us-west-2a",
                "canary": True,
            }
        )
    if office:
        config["sites"].append(
            {
                "name": "office",
                "cidr": "192.168.10.0/24",
                "interface": "wg0",
                "external": {"publicKey": public_key(OFFICE_KEY), "publicIp": "198.51.100.7"},
            }
        )
    return config


def facts_of(config: dict[str, Any], stack: str, site: str) -> GatewayFacts:
    return next(f for f in gateway_facts(load_stack_config(config), stack) if f.name == site)


def endpoints(facts: GatewayFacts) -> dict[str, PeerEndpoint]:
    """Every peer's key and address as `pulumi up` would know them (planted AWS keys)."""
    found = {}
    for index, peer in enumerate(facts.peers):
        if peer.site.is_aws:
            found[peer.name] = PeerEndpoint(
                public_key(planted_key(f"{peer.name}-private")), f"203.0.113.{20 + index}"
            )
        else:
            found[peer.name] = configured_endpoint(peer)
    return found


FAKE_WG = r"""#!/usr/bin/env python3
# The real wg for key arithmetic; the interface as a file the test reads and controls:
# $FAKE/interface.json holds the private key and each peer's settings, set by `wg-quick
# up` (fake-up, from the fake systemctl) and by `wg set`, which records its arguments.
import json, os, subprocess, sys

fake, state_file = os.environ["FAKE"], os.path.join(os.environ["FAKE"], "interface.json")
args = sys.argv[1:]
if args[0] in ("pubkey", "genkey"):
    os.execv(os.environ["REAL_WG"], ["wg", *args])


def read(path):
    with open(path) as file:
        return file.read().strip()


def save(state):
    with open(state_file, "w") as file:
        json.dump(state, file)


if args[0] == "fake-up":  # wg-quick up CONF: the config's peers, the installed key
    conf, iface = args[1], os.path.basename(args[1])[: -len(".conf")]
    peers, peer = {}, None
    for line in open(conf):
        name, _, value = (part.strip() for part in line.partition("="))
        if line.startswith("[Peer]"):
            peer = None
        elif name == "PublicKey":
            peer = peers.setdefault(value, {"allowed-ips": []})
        elif name == "AllowedIPs" and peer is not None:
            peer["allowed-ips"] = [p.strip() for p in value.split(",") if p.strip()]
    save({"private-key": read(os.path.join(os.path.dirname(conf), iface + ".key")), "peers": peers})
    sys.exit(0)
if not os.path.exists(os.path.join(fake, "up")):
    sys.exit("Unable to access interface: No such device")
state = json.load(open(state_file))
if args[0] == "show":
    what = args[2] if len(args) > 2 else ""
    if what == "public-key":
        print(subprocess.run([os.environ["REAL_WG"], "pubkey"], input=state["private-key"],
                             capture_output=True, text=True, check=True).stdout.strip())
    elif what == "allowed-ips":
        for key, peer in state["peers"].items():
            print(key + "\t" + (" ".join(peer["allowed-ips"]) or "(none)"))
    sys.exit(0)
if args[0] != "set":
    sys.exit(f"unexpected: wg {' '.join(args)}")
with open(os.path.join(fake, "wg-calls"), "a") as calls:
    calls.write("set " + " ".join(args[2:]) + "\n")
if os.path.exists(os.path.join(fake, "set-fails")):
    sys.exit("set: failed")
words, peer = args[2:], None
while words:
    name, words = words[0], words[1:]
    if name == "remove":
        del state["peers"][peer_key]
        continue
    value, words = words[0], words[1:]
    if name == "private-key":
        state["private-key"] = read(value)  # wg reads the file: missing is an error
    elif name == "peer":
        peer_key, peer = value, state["peers"].setdefault(value, {"allowed-ips": []})
    elif name == "preshared-key":
        peer[name] = "" if value == "/dev/null" else read(value)
    elif name == "allowed-ips":
        peer[name] = [p for p in value.split(",") if p]
    else:
        peer[name] = value
save(state)
"""
FAKE_WG_QUICK = """#!/bin/sh
[ "$1" = strip ] || { echo "unexpected: wg-quick $*" >&2; exit 3; }
exec "$REAL_WG_QUICK" "$@"
"""
FAKE_IP = """#!/bin/sh
# ip link show dev IFACE: there while the fake interface is up.
[ -e "$FAKE/up" ]
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> "$FAKE/systemctl"
case "$1" in
    # wg-quick@IFACE up: the interface runs the installed config and key.
    restart | start) : > "$FAKE/up"; wg fake-up "$ETC_DIR/${2#wg-quick@}.conf" ;;
esac
"""
FAKE_IPTABLES = """#!/bin/sh
cat > /dev/null
"""
RECORDING_AWS = """#!/bin/sh
# Any AWS call: recorded, and refused.
echo "$*" >> "$FAKE/aws-calls"
exit 1
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@dataclass
class Gateway:
    """One gateway's sandbox: its apply script and the fakes around it."""

    facts: GatewayFacts
    root: Path
    env: dict[str, str]
    endpoint: str
    # Parameters as files, read with --from-dir (and any AWS call recorded and refused):
    # the same script past its reads, without moto's round trips.
    local: bool = False

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "wireguard"

    @property
    def fake(self) -> Path:
        return self.root / "fake"

    def sandboxed(self, text: str) -> str:
        """The gateway's paths, moved into the sandbox (scripts and configs alike)."""
        return text.replace(ETC, f"{self.etc}/")

    def desired_state(self, facts: GatewayFacts) -> str:
        state = json.loads(render_desired_state(facts, endpoints(facts)).document)
        state["config"] = self.sandboxed(state["config"])
        return json.dumps(state)

    def parameters(self, facts: GatewayFacts, psks: dict[str, str]) -> dict[str, str]:
        """Parameter name -> value, as `pulumi up` writes them for this gateway."""
        values = {
            facts.desired_state_parameter_name: self.desired_state(facts),
            facts.key_parameter_name: planted_key(f"{facts.name}-private"),
        }
        for peer in facts.peers:
            values[peer.psk_parameter_name] = psks[peer.name]
        return values

    def put(self, values: dict[str, str]) -> None:
        """Into moto's SSM, or with `local` into the directory `--from-dir` reads: DIR/NAME,
        NAME with its slashes (what the office bundle writes)."""
        if self.local:
            for name, value in values.items():
                path = self.bundle / name.lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(value + "\n")
            return
        ssm = boto_client(self.endpoint, "ssm")
        for name, value in values.items():
            kind = "String" if name.endswith("/desired-state") else "SecureString"
            ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        if self.local and not args:
            args = ("--from-dir", str(self.bundle))
        return subprocess.run(
            ["bash", str(self.root / "bin" / "wg-site-to-site-apply"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    def interface(self) -> dict[str, Any]:
        """What the fake interface runs: private-key, and peers: key -> settings."""
        state: dict[str, Any] = json.loads((self.fake / "interface.json").read_text())
        return state

    def peer_psks(self) -> dict[str, str]:
        """Each running peer's pre-shared key."""
        return {key: peer["preshared-key"] for key, peer in self.interface()["peers"].items()}

    def wg_calls(self) -> list[str]:
        """The `wg set` calls the script made, in order, each with its arguments."""
        calls = self.fake / "wg-calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def psk_files(self) -> dict[str, str]:
        found = {}
        for path in sorted(self.etc.glob(f"{self.facts.interface}.*.psk")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            found[path.name] = path.read_text().strip()
        return found


def make_gateway(root: Path, endpoint: str, facts: GatewayFacts, *, local: bool) -> Gateway:
    real_wg, real_wg_quick = shutil.which("wg"), shutil.which("wg-quick")
    assert real_wg and real_wg_quick, "wireguard-tools (make deps) provides wg and wg-quick"
    (root / "etc" / "wireguard").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "fake").mkdir()
    bin_dir = root / "bin"
    bin_dir.mkdir()
    g = Gateway(facts=facts, root=root, env={}, endpoint=endpoint, local=local)
    script = g.sandboxed(render_apply(facts)).replace('"/run/', f'"{root}/run/')
    assert "/run/" not in script.replace(f"{root}/run/", "")
    _executable(bin_dir / "wg-site-to-site-apply", script)
    _executable(bin_dir / "wg-site-to-site-aws", RECORDING_AWS if local else render_aws_call(facts))
    _executable(bin_dir / "wg", FAKE_WG)
    _executable(bin_dir / "wg-quick", FAKE_WG_QUICK)
    _executable(bin_dir / "ip", FAKE_IP)
    _executable(bin_dir / "systemctl", FAKE_SYSTEMCTL)
    _executable(bin_dir / "iptables-restore", FAKE_IPTABLES)
    _executable(bin_dir / "iptables", FAKE_IPTABLES)
    g.env = script_env(
        endpoint,
        # The system's python3 first, as on the gateway (a version manager's shim would
        # cost a tenth of a second per call).
        PATH=f"{bin_dir}:/usr/bin:{os.environ['PATH']}",
        FAKE=str(g.fake),
        ETC_DIR=str(g.etc),
        REAL_WG=real_wg,
        REAL_WG_QUICK=real_wg_quick,
    )
    if local:
        g.env = {k: v for k, v in g.env.items() if not k.startswith(("AWS_", "WG_S2S_"))}
    return g


# alpha of the mesh: peers beta, gamma (with a canary: a probe target) and the office.
MESH = mesh_config()
PSKS = {name: planted_key(f"alpha-{name}-psk") for name in ("beta", "gamma", "office")}


def _alpha(tmp_path: Path, endpoint: str, *, local: bool) -> Gateway:
    stack = f"apply-{uuid.uuid4().hex[:8]}"  # parameters of its own in the shared moto
    facts = facts_of(MESH, stack, "alpha")
    assert facts.site.region == REGION
    assert [peer.name for peer in facts.peers] == ["beta", "gamma", "office"]
    return make_gateway(tmp_path, endpoint, facts, local=local)


@pytest.fixture
def alpha(tmp_path: Path, moto_endpoint: str) -> Gateway:
    """alpha reading SSM (moto)."""
    return _alpha(tmp_path, moto_endpoint, local=False)


@pytest.fixture
def local_alpha(tmp_path: Path) -> Gateway:
    """alpha reading a directory (--from-dir); no AWS at all."""
    return _alpha(tmp_path, "http://127.0.0.1:9", local=True)


def test_three_peers_each_get_their_own_preshared_key(alpha: Gateway) -> None:
    alpha.put(alpha.parameters(alpha.facts, PSKS))

    started = alpha.run()
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "wg-site-to-site-apply: wgA: started"
    # In place: `wg set` gets each peer's pre-shared key file, the one holding its key.
    applied = alpha.run()

    assert applied.returncode == 0, applied.stderr
    assert "applied in place" in applied.stdout
    keys = endpoints(alpha.facts)
    assert alpha.peer_psks() == {keys[name].public_key: PSKS[name] for name in PSKS}
    assert alpha.interface()["private-key"] == planted_key("alpha-private")
    assert alpha.psk_files() == {f"wgA.{name}.psk": PSKS[name] for name in PSKS}
    # The peers file: name, tunnel address and (gamma's canary) the probe target.
    assert (alpha.etc / "wgA.peers").read_text() == (
        "beta 10.255.255.2\ngamma 10.255.255.3 10.3.1.10\noffice 10.255.255.4\n"
    )
    # The peers outside AWS, whom the check waits for until they first connect.
    assert (alpha.etc / "wgA.outside").read_text() == "office\n"
    for secret in PSKS.values():
        assert secret not in started.stdout + started.stderr + applied.stdout + applied.stderr


def test_a_removed_peer_loses_its_preshared_key_file(local_alpha: Gateway) -> None:
    alpha = local_alpha
    alpha.put(alpha.parameters(alpha.facts, PSKS))
    assert alpha.run().returncode == 0
    before = {p.name: p.read_bytes() for p in alpha.etc.iterdir()}
    without_office = facts_of(mesh_config(office=False), alpha.facts.stack, "alpha")
    alpha.put(alpha.parameters(without_office, PSKS))

    # A `wg set` that fails: every file back as it was, the removed key file too.
    (alpha.fake / "set-fails").touch()
    failed = alpha.run()
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == (
        "wg-site-to-site-apply: wgA: applying in place failed; the previous config is restored"
    )
    assert {p.name: p.read_bytes() for p in alpha.etc.iterdir()} == before
    (alpha.fake / "set-fails").unlink()

    result = alpha.run()

    assert result.returncode == 0, result.stderr
    assert "applied in place" in result.stdout
    assert alpha.psk_files() == {f"wgA.{name}.psk": PSKS[name] for name in ("beta", "gamma")}
    keys = endpoints(without_office)
    assert alpha.peer_psks() == {keys[n].public_key: PSKS[n] for n in ("beta", "gamma")}
    office_key = endpoints(alpha.facts)["office"].public_key
    assert alpha.wg_calls()[-1].endswith(f"peer {office_key} remove")
    assert "office" not in (alpha.etc / "wgA.peers").read_text()

    # Back on day 2: the same script reads the new peer's key (it renders no peer name).
    assert render_apply(without_office) == render_apply(alpha.facts)
    alpha.put(alpha.parameters(alpha.facts, PSKS))
    added = alpha.run()
    assert added.returncode == 0, added.stderr
    assert alpha.psk_files() == {f"wgA.{name}.psk": PSKS[name] for name in PSKS}
    assert alpha.peer_psks() == {endpoints(alpha.facts)[n].public_key: PSKS[n] for n in PSKS}
    office = alpha.interface()["peers"][office_key]
    assert office["allowed-ips"] == [str(n) for n in alpha.facts.peer("office").allowed_ips]
    assert not (alpha.fake / "aws-calls").exists()


def test_a_change_that_keeps_every_peers_allowed_ips_leaves_them_alone(
    local_alpha: Gateway,
) -> None:
    alpha = local_alpha
    alpha.put(alpha.parameters(alpha.facts, PSKS))
    assert alpha.run().returncode == 0
    config = mesh_config()
    config["tunnel"]["persistentKeepalive"] = 10
    alpha.put(alpha.parameters(facts_of(config, alpha.facts.stack, "alpha"), PSKS))

    result = alpha.run()

    assert result.returncode == 0, result.stderr
    assert "applied in place" in result.stdout
    # One `wg set` that names no AllowedIPs (replacing them drops packets meanwhile) and no
    # key, only key files.
    calls = alpha.wg_calls()
    assert len(calls) == 1, calls
    assert "allowed-ips" not in calls[0]
    for secret in [*PSKS.values(), planted_key("alpha-private")]:
        assert secret not in calls[0]
    assert f"private-key {alpha.etc}/wgA.key" in calls[0]
    keys = endpoints(alpha.facts)
    peers = alpha.interface()["peers"]
    assert set(peers) == {endpoint.public_key for endpoint in keys.values()}
    assert {peer["persistent-keepalive"] for peer in peers.values()} == {"10"}
    # The peers' endpoints as configured (the office has a static address too).
    assert {key: peer.get("endpoint") for key, peer in peers.items()} == {
        e.public_key: f"{e.public_ip}:{alpha.facts.peer(name).port}" for name, e in keys.items()
    }


def test_only_the_peer_whose_allowed_ips_change_gets_them_set(local_alpha: Gateway) -> None:
    alpha = local_alpha
    alpha.put(alpha.parameters(alpha.facts, PSKS))
    assert alpha.run().returncode == 0
    config = mesh_config()
    gamma = next(site for site in config["sites"] if site["name"] == "gamma")
    gamma["cidr"] = "10.4.0.0/16"
    moved = facts_of(config, alpha.facts.stack, "alpha")
    alpha.put(alpha.parameters(moved, PSKS))

    result = alpha.run()

    assert result.returncode == 0, result.stderr
    [call] = alpha.wg_calls()
    gamma_key = endpoints(moved)["gamma"].public_key
    wanted = ",".join(str(net) for net in moved.peer("gamma").allowed_ips)
    assert "10.4.0.0/16" in wanted
    # Each peer's part of the call: only gamma's names AllowedIPs.
    parts = {part.split()[0]: part for part in call.split(" peer ")[1:]}
    assert [key for key, part in parts.items() if "allowed-ips" in part] == [gamma_key]
    assert f"allowed-ips {wanted}" in parts[gamma_key]
    assert alpha.interface()["peers"][gamma_key]["allowed-ips"] == wanted.split(",")


def test_a_missing_preshared_key_is_one_line_and_changes_nothing(alpha: Gateway) -> None:
    values = alpha.parameters(alpha.facts, PSKS)
    del values[alpha.facts.peer("gamma").psk_parameter_name]
    alpha.put(values)

    result = alpha.run()

    assert result.returncode == 1
    name = f"/wg-site-to-site/{alpha.facts.stack}/alpha/gamma/wireguard-preshared-key"
    # The AWS call's own line, then the apply's: no traceback.
    assert result.stderr.splitlines() == [
        f"wg-site-to-site-aws: ssm GetParameter failed: HTTP 400 ParameterNotFound: Parameter"
        f" {name} not found.",
        f"wg-site-to-site-apply: wgA: cannot read {name} (the pre-shared key of peer gamma)",
    ]
    assert list(alpha.etc.iterdir()) == []


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda s: s["peers"].pop(), "are not the peers'"),
        (lambda s: s["peers"][0].update(name="Beta!"), "ValueError: peer name 'Beta!'"),
        (
            lambda s: s.update(config=s["config"].replace(".gamma.psk", ".beta.psk")),
            "peer gamma: no PostUp loading its pre-shared key from",
        ),
    ],
    ids=["a-peer-missing-from-peers", "a-bad-peer-name", "a-peer-loading-another-peers-key"],
)
def test_a_desired_state_whose_peers_disagree_is_rejected(
    local_alpha: Gateway, edit: Callable[[dict[str, Any]], None], problem: str
) -> None:
    values = local_alpha.parameters(local_alpha.facts, PSKS)
    state = json.loads(values[local_alpha.facts.desired_state_parameter_name])
    edit(state)
    values[local_alpha.facts.desired_state_parameter_name] = json.dumps(state)
    local_alpha.put(values)

    result = local_alpha.run()

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert problem in result.stderr
    assert list(local_alpha.etc.iterdir()) == []


def test_from_dir_reads_files_and_calls_no_aws(local_alpha: Gateway) -> None:
    alpha = local_alpha
    assert not any(name.startswith(("AWS_", "WG_S2S_")) for name in alpha.env)
    alpha.put(alpha.parameters(alpha.facts, PSKS))
    state = alpha.bundle / "wg-site-to-site" / alpha.facts.stack / "alpha" / "desired-state"
    assert state.exists()

    result = alpha.run()

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "wg-site-to-site-apply: wgA: started"
    assert alpha.psk_files() == {f"wgA.{name}.psk": PSKS[name] for name in PSKS}
    assert (alpha.etc / "wgA.key").read_text().strip() == planted_key("alpha-private")
    assert not (alpha.fake / "aws-calls").exists()


def test_from_dir_without_a_key_keeps_the_sites_own(local_alpha: Gateway) -> None:
    # An office made its key once with `wg genkey`; the bundle has none.
    alpha = local_alpha
    values = alpha.parameters(alpha.facts, PSKS)
    del values[alpha.facts.key_parameter_name]
    alpha.put(values)

    missing = alpha.run()
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        f"wg-site-to-site-apply: wgA: no private key: neither {alpha.bundle}"
        f"{alpha.facts.key_parameter_name} nor {alpha.etc}/wgA.key exists"
        f" (make it once: wg genkey > {alpha.etc}/wgA.key)"
    ]
    own = planted_key("the-office-made-this")
    (alpha.etc / "wgA.key").write_text(own + "\n")

    result = alpha.run()

    assert result.returncode == 0, result.stderr
    assert (alpha.etc / "wgA.key").read_text().strip() == own
    assert not (alpha.fake / "aws-calls").exists()


@pytest.mark.parametrize(
    "args", [("--from-dir",), ("--from-dir", ""), ("--nope",), ("--from-dir", "/nonexistent/x")]
)
def test_bad_arguments_are_one_line_and_exit_2(local_alpha: Gateway, args: tuple[str, ...]) -> None:
    result = local_alpha.run(*args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert not (local_alpha.fake / "systemctl").exists()


def test_the_script_names_the_cores_parameters_and_files() -> None:
    facts = facts_of(MESH, "dev", "alpha")
    script = render_apply(facts)
    assert "psk_prefix=/wg-site-to-site/dev/alpha/\n" in script
    assert "psk_leaf=wireguard-preshared-key\n" in script
    assert "psk_base=/etc/wireguard/wgA.\n" in script
    for peer in facts.peers:
        assert f"/wg-site-to-site/dev/alpha/{peer.name}/wireguard-preshared-key" == (
            peer.psk_parameter_name
        )
