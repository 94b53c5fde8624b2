"""Renders a gateway's files from its facts and its peer's deploy-time values.

The templates live in cloud-init/. Everything a gateway runs comes out of
`render_gateway`: the Pulumi component passes the result to EC2 as user data, the
offline plan shows it, and the lab extracts the files from that same user data.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import yaml

from core import health
from core.config import PROJECT, SITE_NAME
from core.facts import (
    APPLY_PATH,
    APPLY_UNIT_PATH,
    AWS_CALL_PATH,
    AWS_ENV_PATH,
    CHECK_PATH,
    FAILOVER_AGENT_PATH,
    FAILOVER_UNIT_PATH,
    PRESHARED_KEY_LEAF,
    PROBE_PATH,
    PROBE_SERVICE_PATH,
    PROBE_STATE_DIR,
    PROBE_TIMER_PATH,
    SSM_ADVANCED_LIMIT_BYTES,
    SSM_STANDARD_LIMIT_BYTES,
    SYSCTL_PATH,
    GatewayFacts,
    PeerFacts,
)
from core.keys import is_key

TEMPLATES = Path(__file__).resolve().parent.parent / "cloud-init"
# EC2 refuses user data over 16 KB (raw, before base64), and only at RunInstances: with
# delete-before-replace the old gateway is gone by then. Checked before anything exists.
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html
USER_DATA_LIMIT_BYTES = 16 * 1024
# A peer's pre-shared key file as the wg-quick config's PostUp names it (%i: the
# interface); the apply feeds each [Peer] the file its PostUp names.
PSK_PATH_TEMPLATE = "/etc/wireguard/%i.{peer}.psk"


@dataclass(frozen=True)
class PeerEndpoint:
    """A peer's public key and the address to dial it on (None: a NATed office, which
    dials in). For an AWS peer both are known only at deploy time."""

    public_key: str
    public_ip: str | None


def configured_endpoint(peer: PeerFacts) -> PeerEndpoint:
    """An office peer's endpoint, all from the stack config."""
    if peer.public_key is None:
        raise ValueError(f"peer {peer.name} is an AWS site: its key is known at deploy time")
    return PeerEndpoint(
        public_key=peer.public_key,
        public_ip=str(peer.static_ip) if peer.static_ip is not None else None,
    )


# A site with two gateways has three subnets, each with its own route table.
HA_ROUTE_TABLES = 3


@dataclass(frozen=True)
class FailoverInputs:
    """What a site's two gateways need to move the site between them; known at deploy.

    Route table ids and interface ids are in the gateways' own order (first gateway
    first), as the program made them.
    """

    allocation_id: str
    elastic_ip: str
    network_interface_ids: tuple[str, str]
    route_table_ids: tuple[str, ...]


def failover_section(facts: GatewayFacts, inputs: FailoverInputs) -> dict[str, object]:
    """The desired state's `failover` entry: the agent's whole view of the site."""
    return {
        "allocationId": inputs.allocation_id,
        "elasticIp": inputs.elastic_ip,
        "region": facts.site.aws_region,
        "gateways": [
            {"networkInterfaceId": eni, "privateIp": str(ip)}
            for eni, ip in zip(inputs.network_interface_ids, facts.gateway_private_ips, strict=True)
        ],
        "routes": [
            {"routeTableId": table, "destination": str(destination)}
            for table in inputs.route_table_ids
            for destination in facts.routed_destinations
        ],
        # The standby pings these through the active (the tunnel cidr is routed to it):
        # one answer from any peer says the active forwards.
        "probeTargets": [str(peer.tunnel_address) for peer in facts.peers],
    }


@dataclass(frozen=True)
class DesiredState:
    """What a gateway converges to on day 2: the value of its desired-state parameter."""

    wg_config: str
    firewall: str
    document: str  # JSON {"config", "firewall", "presharedKey", "peerAddress"}: into SSM

    @property
    def digest(self) -> str:
        """Changes exactly when the document does; safe to show (no secret inside)."""
        return hashlib.sha256(self.document.encode()).hexdigest()


@dataclass(frozen=True)
class Bootstrap:
    """The user data, and the files it writes (path -> content). Nothing of day 2."""

    user_data: str
    files: dict[str, str]

    @property
    def user_data_base64(self) -> str:
        """What EC2 gets: gzip, then base64. cloud-init unpacks gzip user data itself
        (https://cloudinit.readthedocs.io/en/latest/explanation/format.html), and the
        scripts would not fit EC2's 16 KB as text. mtime=0: equal text, equal bytes."""
        packed = gzip.compress(self.user_data.encode(), compresslevel=9, mtime=0)
        return base64.b64encode(packed).decode()


def decode_user_data(user_data_base64: str) -> str:
    """The cloud-config text of gzip+base64 user data (as cloud-init reads it)."""
    raw = base64.b64decode(user_data_base64, validate=True)
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()


def _literal_block(text: str, indent: int) -> str:
    """A YAML literal block scalar, so reviewers read the files as they will be written.

    Only our own rendered files go through here; render_gateway parses the result back
    and compares, so a file this cannot represent fails loudly instead of changing.
    """
    if not text.endswith("\n") or text.startswith((" ", "\n")):
        raise ValueError("a literal block needs text that ends in a newline and starts flush")
    pad = " " * indent
    return "|\n" + "".join(pad + line if line.strip() else "\n" for line in text.splitlines(True))


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders config files and YAML, never HTML
    )
    environment.filters["literal_block"] = _literal_block
    return environment


def _render(template: str, **values: Any) -> str:
    return _environment().get_template(template).render(**values)


def render_wg_config(
    facts: GatewayFacts,
    endpoints: Mapping[str, PeerEndpoint],
    source: str = "SSM Parameter Store",
) -> str:
    """The wg-quick config: no secret, only PostUps that load the keys from 0600 files.

    `endpoints` has every peer's key and address, by site name."""
    peers = []
    for peer in facts.peers:
        endpoint = endpoints.get(peer.name)
        if endpoint is None:
            raise ValueError(f"no public key and address for peer {peer.name}")
        if not is_key(endpoint.public_key):
            raise ValueError(f"peer public key for {peer.name} is not a WireGuard key")
        address = None
        if peer.has_endpoint:
            if endpoint.public_ip is None:
                raise ValueError(f"peer {peer.name} has a fixed address, but none was given")
            address = f"{ipaddress.IPv4Address(endpoint.public_ip)}:{peer.port}"
        peers.append(
            {
                "name": peer.name,
                "where": peer.site.region
                or ("outside AWS" if peer.has_endpoint else "outside AWS, behind NAT: it dials in"),
                "public_key": endpoint.public_key,
                "allowed_ips": [str(net) for net in peer.allowed_ips],
                "endpoint": address,
                "psk_path_template": PSK_PATH_TEMPLATE.format(peer=peer.name),
            }
        )
    return _render(
        "wg-quick.conf.j2",
        interface=facts.interface,
        site=facts.name,
        peers=peers,
        stack=facts.stack,
        source=source,
        key_path=facts.key_path,
        key_path_template="/etc/wireguard/%i.key",
        preshared_key=facts.preshared_key,
        psk_path_pattern=f"/etc/wireguard/{facts.interface}.<peer>.psk",
        rules_path=facts.rules_path,
        rules_path_template="/etc/wireguard/%i.rules",
        jumps=facts.jumps,
        chains=facts.chains,
        address=str(facts.tunnel_address),
        listen_port=facts.listen_port,
        mtu=facts.mtu,
        persistent_keepalive=facts.persistent_keepalive,
    )


def render_firewall(facts: GatewayFacts) -> str:
    """The interface's own chains, for `iptables-restore --noflush`."""
    return _render(
        "firewall.rules.j2", interface=facts.interface, chains=facts.chains, rules=facts.rules
    )


def render_desired_state(
    facts: GatewayFacts,
    endpoints: Mapping[str, PeerEndpoint],
    source: str = "SSM Parameter Store",
    failover: FailoverInputs | None = None,
) -> DesiredState:
    wg_config = render_wg_config(facts, endpoints, source=source)
    firewall = render_firewall(facts)
    peers = []
    for peer in facts.peers:
        entry: dict[str, str | bool] = {
            "name": peer.name,
            # What the probe and the check ping: in the desired state, not the user
            # data, so a tunnel cidr change or a new site never replaces the gateway.
            "address": str(peer.tunnel_address),
            "publicKey": endpoints[peer.name].public_key,
        }
        if not peer.site.is_aws:
            entry["outside"] = True
        if peer.canary is not None:
            # The peer site's canary: the probe pings it through the tunnel and the
            # peer's forwarding path, so TunnelUp means "site to site works" (source/dest
            # check, routes and security groups on the far side included).
            entry["probeTarget"] = str(peer.canary)
        peers.append(entry)
    state: dict[str, object] = {
        "config": wg_config,
        "firewall": firewall,
        "presharedKey": facts.preshared_key,
        "peers": peers,
    }
    if facts.highly_available:
        if failover is None:
            raise ValueError(f"site {facts.name} has two gateways: the failover inputs are needed")
        state["failover"] = failover_section(facts, failover)
    document = json.dumps(state, sort_keys=True)
    return DesiredState(wg_config=wg_config, firewall=firewall, document=document)


def render_sysctl(facts: GatewayFacts) -> str:
    return _render("sysctl.conf.j2", interface=facts.interface)


def _sbin() -> str:
    return str(PurePosixPath(APPLY_PATH).parent)


def render_apply(facts: GatewayFacts) -> str:
    """The apply script: installed at APPLY_PATH, run at boot, by Run Command, by the probe.

    It names no peer: each peer's pre-shared key parameter and file are made from the
    peer's name in the desired state, so adding a site is day 2 and never changes the
    user data."""
    psk_prefix = f"/{PROJECT}/{facts.stack}/{facts.name}/"
    psk_base = f"/etc/wireguard/{facts.interface}."
    for peer in facts.peers:
        # The script's rule for the names must be the core's (facts.py).
        if f"{psk_prefix}{peer.name}/{PRESHARED_KEY_LEAF}" != peer.psk_parameter_name:
            raise ValueError(f"peer {peer.name}: pre-shared key parameter name mismatch")
        if f"{psk_base}{peer.name}.psk" != peer.psk_path(facts.interface):
            raise ValueError(f"peer {peer.name}: pre-shared key file mismatch")
    return _render(
        "apply.sh.j2",
        name=PurePosixPath(APPLY_PATH).name,
        sbin=_sbin(),
        aws_call=PurePosixPath(AWS_CALL_PATH).name,
        interface=facts.interface,
        config_path=facts.config_path,
        rules_path=facts.rules_path,
        key_path=facts.key_path,
        peer_path=facts.peer_path,
        outside_path=facts.outside_path,
        state_parameter=facts.desired_state_parameter_name,
        key_parameter=facts.key_parameter_name,
        # Always named: whether to use them is part of the desired state, so turning the
        # pre-shared keys on or off, or adding a peer, is a day-2 change, not a new instance.
        psk_prefix=psk_prefix,
        psk_leaf=PRESHARED_KEY_LEAF,
        psk_base=psk_base,
        psk_base_template=PSK_PATH_TEMPLATE.format(peer="")[: -len(".psk")],
        site_name_pattern=SITE_NAME.pattern.removeprefix("^").removesuffix("$"),
        jumps=facts.jumps,
        # Two gateways: the failover agent's facts from the desired state, and the tunnel
        # left down unless the agent has brought it up (only the active's is up).
        failover_path=facts.failover_path if facts.highly_available else None,
    )


def render_check(facts: GatewayFacts) -> str:
    """The check `pulumi up` runs through Run Command after an apply (CHECK_PATH)."""
    return _render(
        "check.sh.j2",
        name=PurePosixPath(CHECK_PATH).name,
        sbin=_sbin(),
        aws_call=PurePosixPath(AWS_CALL_PATH).name,
        interface=facts.interface,
        # The peers and their tunnel addresses are day 2: the apply writes them here from
        # the desired state, so nothing in the user data changes with the tunnel cidr or
        # a new site.
        peer_path=facts.peer_path,
        outside_path=facts.outside_path,
        # Outside AWS there is no interface whose source/dest check could be on.
        aws=facts.is_aws,
        # WireGuard drops a session 180 s after its last handshake (REJECT_AFTER_TIME).
        max_handshake_age=health.HANDSHAKE_STALE_SECONDS,
        # Two gateways: the standby's tunnel is down by design (the failover agent's role,
        # in facts.role_path: the state directory, which WG_S2S_STATE_DIR moves).
        highly_available=facts.highly_available,
        state_dir=PROBE_STATE_DIR,
    )


def render_apply_unit(facts: GatewayFacts) -> str:
    return _render("apply.service.j2", interface=facts.interface, apply_path=APPLY_PATH)


# The failover agent's source: a typed, linted, unit-tested Python module (tests import it);
# render_failover installs it with its site's settings.
FAILOVER_SOURCE = TEMPLATES / "failover.py"


def without_comments(text: str) -> str:
    """`text` without its comment-only lines (`#` first; a `#!` first line and shellcheck's
    directives stay).

    Only for scripts whose `#` lines are all comments (shell, Python, awk and systemd; no
    here-document of ours carries a `#` line as data): the user data of a site with two
    gateways holds the failover agent too, and would not fit EC2's 16 KB with them.
    """
    lines = text.splitlines(keepends=True)
    kept = [
        line
        for number, line in enumerate(lines)
        if not line.lstrip().startswith("#")
        or line.lstrip().startswith("# shellcheck ")
        or (number == 0 and line.startswith("#!"))
    ]
    return "".join(kept)


def render_failover(facts: GatewayFacts) -> str:
    """The failover agent of a site with two gateways, installed at FAILOVER_AGENT_PATH:
    cloud-init/failover.py without its comment and blank lines (the same program: a test
    compares their syntax trees), then its site's settings and the call of its main."""
    body = "".join(
        line
        for line in without_comments(FAILOVER_SOURCE.read_text()).splitlines(True)
        if line.strip()
    )
    return _render(
        "failover.py.j2",
        name=PurePosixPath(FAILOVER_AGENT_PATH).name,
        body=body,
        sbin=_sbin(),
        site=facts.name,
        stack=facts.stack,
        interface=facts.interface,
        failover_path=facts.failover_path,
        state_dir=PROBE_STATE_DIR,
        aws_call=PurePosixPath(AWS_CALL_PATH).name,
        namespace=health.NAMESPACE,
        dimensions={
            "Stack": health.DIMENSION_STACK,
            "Site": health.DIMENSION_SITE,
            "InstanceId": health.DIMENSION_INSTANCE,
        },
        metrics={
            "Active": health.ACTIVE,
            "StandbyReady": health.STANDBY_READY,
            "Failovers": health.FAILOVERS,
        },
    )


def render_failover_unit(facts: GatewayFacts) -> str:
    return _render(
        "failover.service.j2",
        interface=facts.interface,
        site=facts.name,
        apply_unit=PurePosixPath(APPLY_UNIT_PATH).name,
        agent_path=FAILOVER_AGENT_PATH,
    )


def render_bootstrap(facts: GatewayFacts) -> Bootstrap:
    """The user data: packages, scripts and the units that apply the desired state.

    Nothing in it changes on day 2 (firewall, keepalive, MTU, keys, the peer), so a day-2
    change never replaces the instance. A site with two gateways also gets the failover
    agent and its unit (and no wg-quick@ at boot: the agent brings the tunnel up on the
    active only), every file without its comment lines (EC2's 16 KB).
    """
    files = {
        SYSCTL_PATH: (render_sysctl(facts), "0644"),
        AWS_CALL_PATH: (render_aws_call(facts), "0755"),
        APPLY_PATH: (render_apply(facts), "0700"),
        CHECK_PATH: (render_check(facts), "0700"),
        PROBE_PATH: (render_probe(facts), "0700"),
        APPLY_UNIT_PATH: (render_apply_unit(facts), "0644"),
        **{path: (text, "0644") for path, text in render_probe_units(facts).items()},
    }
    if facts.highly_available:
        files[FAILOVER_AGENT_PATH] = (render_failover(facts), "0700")
        files[FAILOVER_UNIT_PATH] = (render_failover_unit(facts), "0644")
        files = {path: (without_comments(text), mode) for path, (text, mode) in files.items()}
    user_data = _render(
        "user-data.yaml.j2",
        instance_type=facts.site.instance_type,
        swap_mib=facts.swap_mib,
        site=facts.name,
        stack=facts.stack,
        interface=facts.interface,
        files=[(path, content, mode) for path, (content, mode) in files.items()],
        apply_unit=PurePosixPath(APPLY_UNIT_PATH).name,
        probe_timer=PurePosixPath(PROBE_TIMER_PATH).name,
        failover_unit=(PurePosixPath(FAILOVER_UNIT_PATH).name if facts.highly_available else None),
    )
    # Parsing the document back proves it says what we meant before it reaches an instance.
    written = {path: entry["content"] for path, entry in written_files(user_data).items()}
    if written != {path: content for path, (content, _) in files.items()}:
        raise ValueError(f"rendered user data for {facts.name} does not round-trip")
    return Bootstrap(user_data=user_data, files=written)


# The longest values a peer can contribute: a key is always 44 characters, an IPv4
# address at most 15. Rendering with them bounds the size before the peer exists.
_LONGEST_PEER = PeerEndpoint(public_key="A" * 43 + "=", public_ip="255.255.255.255")


def _longest_endpoints(facts: GatewayFacts) -> dict[str, PeerEndpoint]:
    return {peer.name: _LONGEST_PEER for peer in facts.peers}


def limit_problems(facts: GatewayFacts) -> list[str]:
    """One line per limit this gateway's rendered files could exceed, else nothing."""
    problems = []
    packed = base64.b64decode(render_bootstrap(facts).user_data_base64)
    if len(packed) > USER_DATA_LIMIT_BYTES:
        problems.append(
            f"site {facts.name}: the gateway's user data would be {len(packed)} bytes"
            f" (gzip), over EC2's limit of {USER_DATA_LIMIT_BYTES} bytes (16 KB)"
        )
    size = desired_state_bound(facts)
    if size > SSM_ADVANCED_LIMIT_BYTES:
        problems.append(
            f"site {facts.name}: the desired state (wg-quick config and firewall) would be"
            f" {size} bytes, over an SSM parameter's limit of {SSM_ADVANCED_LIMIT_BYTES}"
            " bytes (8 KB, advanced tier); use fewer or shorter firewall rules"
        )
    return problems


# The longest ids AWS hands out (17 hex digits), for a site with two gateways: its three
# route tables (two public subnets and the private one) are all it can have.
_LONGEST_FAILOVER = FailoverInputs(
    allocation_id="eipalloc-" + "f" * 17,
    elastic_ip="255.255.255.255",
    network_interface_ids=("eni-" + "f" * 17, "eni-" + "f" * 17),
    route_table_ids=("rtb-" + "f" * 17,) * HA_ROUTE_TABLES,
)


def desired_state_bound(facts: GatewayFacts) -> int:
    """The most bytes this gateway's desired state can take, whoever the peer is."""
    failover = _LONGEST_FAILOVER if facts.highly_available else None
    state = render_desired_state(facts, _longest_endpoints(facts), failover=failover)
    return len(state.document.encode())


def desired_state_tier(facts: GatewayFacts) -> str:
    """Standard holds 4 KB for free; a bigger firewall needs an advanced parameter."""
    return "Standard" if desired_state_bound(facts) <= SSM_STANDARD_LIMIT_BYTES else "Advanced"


def parse_user_data(user_data: str) -> dict[str, Any]:
    """The cloud-config document, as cloud-init will read it."""
    if not user_data.startswith("#cloud-config\n"):
        raise ValueError("user data is not a #cloud-config document")
    # libyaml's parser with PyYAML's safe constructor, when built in: what yaml.safe_load
    # reads, at a tenth of the time (the plan parses each gateway's user data twice).
    document = yaml.load(user_data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    if not isinstance(document, dict):
        raise ValueError("user data is not a YAML mapping")
    return document


def written_files(user_data: str) -> dict[str, dict[str, str]]:
    """path -> {content, permissions} for every file the user data writes."""
    return {
        entry["path"]: {"content": entry["content"], "permissions": entry.get("permissions", "")}
        for entry in parse_user_data(user_data).get("write_files", [])
    }


def render_aws_call(facts: GatewayFacts) -> str:
    """The gateway's signed AWS API call helper, installed at AWS_CALL_PATH."""
    return _render(
        "aws-call.sh.j2",
        name=PurePosixPath(AWS_CALL_PATH).name,
        region=facts.site.region,
        env_path=AWS_ENV_PATH,
    )


def _probe_interval(interval_seconds: int) -> int:
    if isinstance(interval_seconds, bool) or not isinstance(interval_seconds, int):
        raise ValueError(f"probe interval must be whole seconds, got {interval_seconds!r}")
    if not 1 <= interval_seconds <= 3600:
        raise ValueError(f"probe interval must be 1..3600 s, got {interval_seconds}")
    return interval_seconds


def render_probe(
    facts: GatewayFacts, interval_seconds: int = health.DEFAULT_PROBE_INTERVAL_SECONDS
) -> str:
    """The health probe, installed at PROBE_PATH and run by the units of render_probe_units."""
    return _render(
        "probe.sh.j2",
        name=PurePosixPath(PROBE_PATH).name,
        sbin=str(PurePosixPath(AWS_CALL_PATH).parent),
        aws_call=PurePosixPath(AWS_CALL_PATH).name,
        apply=PurePosixPath(APPLY_PATH).name,
        interval=_probe_interval(interval_seconds),
        interface=facts.interface,
        site=facts.name,
        peer_path=facts.peer_path,
        stack=facts.stack,
        state_dir=PROBE_STATE_DIR,
        namespace=health.NAMESPACE,
        dimension_stack=health.DIMENSION_STACK,
        dimension_site=health.DIMENSION_SITE,
        dimension_instance=health.DIMENSION_INSTANCE,
        dimension_peer=health.DIMENSION_PEER,
        tunnel_up=health.TUNNEL_UP,
        source_dest_check=health.SOURCE_DEST_CHECK,
        handshake_age=health.HANDSHAKE_AGE,
        probe_rtt=health.PROBE_RTT,
        received_bytes=health.RECEIVED_BYTES,
        sent_bytes=health.SENT_BYTES,
        units=health.METRICS,
        # Two gateways: the standby measures no tunnel (the failover agent publishes its
        # Active and StandbyReady).
        highly_available=facts.highly_available,
    )


def render_probe_units(
    facts: GatewayFacts, interval_seconds: int = health.DEFAULT_PROBE_INTERVAL_SECONDS
) -> dict[str, str]:
    """The probe's systemd service and timer: unit file path -> text.

    Enable with `systemctl enable --now wg-site-to-site-probe.timer`.
    """
    interval = _probe_interval(interval_seconds)
    values = {
        "interface": facts.interface,
        "site": facts.name,
        "probe_path": PROBE_PATH,
        "interval": interval,
        # Longer than pings (3 s) plus the API call (20 s), whatever the interval.
        "timeout": 60,
    }
    return {
        PROBE_SERVICE_PATH: _render("probe.service.j2", **values),
        PROBE_TIMER_PATH: _render("probe.timer.j2", **values),
    }


# ------------------------------------------------------------------ the office bundle

# What `make site-bundle` writes for a site outside AWS (out/<stack>/<site>/): its gateway
# runs the same apply and check scripts as an AWS gateway, reading its desired state from
# a directory instead of SSM (`--from-dir DIR`: parameter NAME is the file DIR/NAME).
BUNDLE_STATE_DIR = "state"  # in the bundle: the from-dir tree install.sh installs
BUNDLE_INSTALL = "install.sh"
BUNDLE_SOURCE = "the site bundle (make site-bundle)"


def from_dir_path(parameter_name: str) -> str:
    """Where parameter NAME lives in a from-dir tree: NAME keeps its slashes."""
    return parameter_name.lstrip("/")


def bundle_state_dir(facts: GatewayFacts) -> str:
    """Where install.sh keeps the office's desired state (the apply's --from-dir)."""
    return f"/etc/wireguard/{facts.interface}.desired"


@dataclass(frozen=True)
class SiteBundle:
    """An office's bundle: relative path -> (text, mode) for every file without a secret,
    and, per AWS peer, the relative path its pair's pre-shared key goes to (0600, written
    by the tool that fetches it; never rendered here)."""

    files: dict[str, tuple[str, int]]
    psk_paths: dict[str, str]


def render_site_bundle(facts: GatewayFacts, endpoints: Mapping[str, PeerEndpoint]) -> SiteBundle:
    """The files of a site outside AWS (`facts` of an external site): the wg-quick config,
    firewall and sysctl to read, the desired state the apply reads in local mode, the
    apply and check scripts, and install.sh. No key: the office makes its own private key,
    and the pre-shared keys are fetched and written by tools.site_bundle."""
    external = facts.site.external
    if external is None:
        raise ValueError(f"site {facts.name} is an AWS site: pulumi up configures its gateway")
    state = render_desired_state(facts, endpoints, source=BUNDLE_SOURCE)
    sysctl_name = PurePosixPath(SYSCTL_PATH).name
    apply_name = PurePosixPath(APPLY_PATH).name
    check_name = PurePosixPath(CHECK_PATH).name
    state_leaf = from_dir_path(facts.desired_state_parameter_name)
    install = _render(
        "install.sh.j2",
        site=facts.name,
        stack=facts.stack,
        interface=facts.interface,
        key_path=facts.key_path,
        public_key=external.public_key,
        public_key_setting=f"the external.publicKey of site {facts.name}",
        sysctl_path=SYSCTL_PATH,
        sysctl_name=sysctl_name,
        sbin=_sbin(),
        apply_name=apply_name,
        check_name=check_name,
        state_source=BUNDLE_STATE_DIR,
        desired_state=state_leaf,
        state_dir=bundle_state_dir(facts),
        peer_count=len(facts.peers),
    )
    files = {
        f"{facts.interface}.conf": (state.wg_config, 0o644),
        f"{facts.interface}.rules": (state.firewall, 0o644),
        sysctl_name: (render_sysctl(facts), 0o644),
        f"{BUNDLE_STATE_DIR}/{state_leaf}": (state.document + "\n", 0o644),
        apply_name: (render_apply(facts), 0o755),
        check_name: (render_check(facts), 0o755),
        BUNDLE_INSTALL: (install, 0o755),
    }
    psk_paths = {}
    if facts.preshared_key:
        psk_paths = {
            peer.name: f"{BUNDLE_STATE_DIR}/{from_dir_path(peer.psk_parameter_name)}"
            for peer in facts.peers
        }
    return SiteBundle(files=files, psk_paths=psk_paths)
