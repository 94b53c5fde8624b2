"""Renders a gateway's files from its facts and its peer's deploy-time values.

The templates live in cloud-init/. Everything a gateway runs comes out of
`render_gateway`: the Pulumi component passes the result to EC2 as user data, the
offline plan shows it, and the lab extracts the files from that same user data.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import yaml

from core import health
from core.facts import (
    APPLY_PATH,
    AWS_CALL_PATH,
    AWS_ENV_PATH,
    FETCH_KEY_PATH,
    PROBE_PATH,
    PROBE_SERVICE_PATH,
    PROBE_STATE_DIR,
    PROBE_TIMER_PATH,
    SYSCTL_PATH,
    GatewayFacts,
)
from core.keys import is_key

TEMPLATES = Path(__file__).resolve().parent.parent / "cloud-init"
# EC2 refuses user data over 16 KB (raw, before base64), and only at RunInstances: with
# delete-before-replace the old gateway is gone by then. Checked before anything exists.
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html
USER_DATA_LIMIT_BYTES = 16 * 1024
# The longest values a peer can contribute: a key is always 44 characters, an IPv4
# address at most 15. Rendering with them bounds the size before the peer exists.


@dataclass(frozen=True)
class PeerEndpoint:
    """What a gateway learns about its peer only at deploy time."""

    public_key: str
    public_ip: str


@dataclass(frozen=True)
class RenderedGateway:
    wg_config: str
    sysctl: str
    fetch_key: str
    user_data: str


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


def render_wg_config(facts: GatewayFacts, peer: PeerEndpoint) -> str:
    """The wg-quick config: no private key, only the PostUp that loads it from a file."""
    if not is_key(peer.public_key):
        raise ValueError(f"peer public key for {facts.peer.name} is not a WireGuard key")
    endpoint = ipaddress.IPv4Address(peer.public_ip)
    return _render(
        "wg-quick.conf.j2",
        interface=facts.interface,
        site=facts.name,
        peer=facts.peer.name,
        peer_region=facts.peer.region,
        stack=facts.stack,
        key_path=facts.key_path,
        key_path_template="/etc/wireguard/%i.key",
        address=str(facts.tunnel_address),
        listen_port=facts.listen_port,
        mtu=facts.mtu,
        rules=facts.rules,
        peer_public_key=peer.public_key,
        allowed_ips=[str(net) for net in facts.allowed_ips],
        peer_endpoint=f"{endpoint}:{facts.peer_port}",
        persistent_keepalive=facts.persistent_keepalive,
    )


def render_sysctl(facts: GatewayFacts) -> str:
    return _render("sysctl.conf.j2", interface=facts.interface)


def render_fetch_key(facts: GatewayFacts) -> str:
    return _render(
        "fetch-key.sh.j2",
        key_path=facts.key_path,
        region=facts.site.region,
        parameter=facts.key_parameter_name,
    )


def render_gateway(facts: GatewayFacts, peer: PeerEndpoint) -> RenderedGateway:
    wg_config = render_wg_config(facts, peer)
    sysctl = render_sysctl(facts)
    fetch_key = render_fetch_key(facts)
    user_data = _render(
        "user-data.yaml.j2",
        instance_type=facts.site.instance_type,
        swap_mib=facts.swap_mib,
        site=facts.name,
        stack=facts.stack,
        interface=facts.interface,
        config_path=facts.config_path,
        wg_config=wg_config,
        sysctl_path=SYSCTL_PATH,
        sysctl=sysctl,
        fetch_key_path=FETCH_KEY_PATH,
        fetch_key=fetch_key,
    )
    # Parsing the document back proves it says what we meant before it reaches an instance.
    written = {path: entry["content"] for path, entry in written_files(user_data).items()}
    if written != {facts.config_path: wg_config, SYSCTL_PATH: sysctl, FETCH_KEY_PATH: fetch_key}:
        raise ValueError(f"rendered user data for {facts.name} does not round-trip")
    return RenderedGateway(
        wg_config=wg_config, sysctl=sysctl, fetch_key=fetch_key, user_data=user_data
    )


def user_data_problems(facts: GatewayFacts) -> list[str]:
    """One line if this gateway's user data could exceed EC2's limit, else nothing.

    Rendered against the longest peer values possible, so the check holds for any peer.
    """
    longest = PeerEndpoint(public_key="A" * 43 + "=", public_ip="255.255.255.255")
    size = len(render_gateway(facts, longest).user_data.encode())
    if size <= USER_DATA_LIMIT_BYTES:
        return []
    return [
        f"site {facts.name}: the gateway's user data would be {size} bytes, over EC2's limit"
        f" of {USER_DATA_LIMIT_BYTES} bytes (16 KB); use fewer or shorter firewall rules"
    ]


def parse_user_data(user_data: str) -> dict[str, Any]:
    """The cloud-config document, as cloud-init will read it."""
    if not user_data.startswith("#cloud-config\n"):
        raise ValueError("user data is not a #cloud-config document")
    document = yaml.safe_load(user_data)
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
        peer=facts.peer.name,
        peer_address=str(facts.peer_tunnel_address),
        stack=facts.stack,
        state_dir=PROBE_STATE_DIR,
        namespace=health.NAMESPACE,
        dimension_stack=health.DIMENSION_STACK,
        dimension_site=health.DIMENSION_SITE,
        tunnel_up=health.TUNNEL_UP,
        handshake_age=health.HANDSHAKE_AGE,
        probe_rtt=health.PROBE_RTT,
        received_bytes=health.RECEIVED_BYTES,
        sent_bytes=health.SENT_BYTES,
        units=health.METRICS,
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
        "peer": facts.peer.name,
        "probe_path": PROBE_PATH,
        "interval": interval,
        # Longer than pings (3 s) plus the API call (20 s), whatever the interval.
        "timeout": 60,
    }
    return {
        PROBE_SERVICE_PATH: _render("probe.service.j2", **values),
        PROBE_TIMER_PATH: _render("probe.timer.j2", **values),
    }
