"""Per-gateway facts: everything about a gateway that follows from the config alone.

Addresses, subnets, peers, AllowedIPs and firewall rules are computed here once. The
Pulumi components, the offline plan and the lab read them; none of them re-derives an
address. What only exists at deploy time (the peer's public key and Elastic IP) is
passed to the renderer separately.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from core.config import PROJECT, FirewallRule, SiteConfig, StackConfig

# Graviton families carry a "g" right after their generation number: t4g, m7g, c7gn,
# r8g, x2gd, im4gn, is4gen; a1 is the first Graviton. Everything else is x86_64.
_ARM_FAMILY = re.compile(r"^(a1|[a-z]+\d+g[a-z]*)$")

UBUNTU_RELEASE = "24.04"
SYSCTL_PATH = "/etc/sysctl.d/99-wg-site-to-site.conf"
# The last part of every key parameter's name (policies recognise key parameters by it).
KEY_PARAMETER_LEAF = "wireguard-private-key"
FETCH_KEY_PATH = "/usr/local/sbin/wg-site-to-site-fetch-key"
# On-gateway scripts of day 2: converge to the desired state in SSM, check the tunnel,
# and publish its health. The deployer (Run Command) and the lab call them by these paths.
APPLY_PATH = "/usr/local/sbin/wg-site-to-site-apply"
CHECK_PATH = "/usr/local/sbin/wg-site-to-site-check"
PROBE_PATH = "/usr/local/sbin/wg-site-to-site-probe"

_IPTABLES_TARGET = {"reject": "REJECT", "drop": "DROP", "accept": "ACCEPT"}


def architecture(instance_type: str) -> str:
    """The Ubuntu image architecture ('arm64' or 'amd64') an instance type needs."""
    family = instance_type.split(".", 1)[0]
    return "arm64" if _ARM_FAMILY.fullmatch(family) else "amd64"


def ubuntu_ami_parameter(arch: str) -> str:
    """Canonical's public SSM parameter holding the current Ubuntu LTS AMI id."""
    return (
        f"/aws/service/canonical/ubuntu/server/{UBUNTU_RELEASE}/stable/current/"
        f"{arch}/hvm/ebs-gp3/ami-id"
    )


@dataclass(frozen=True)
class IptablesRule:
    """A rule the gateway adds in PostUp and removes, exactly, in PreDown.

    `spec` is the rule's match and target, with wg-quick's `%i` for the interface.
    """

    table: str
    chain: str
    spec: str
    description: str
    firewall: FirewallRule | None = None  # the configured rule this one enforces, if any

    def add_command(self) -> str:
        # Check first so that a repeated `up` (or an `up` after a crash that skipped
        # PreDown) never stacks a second copy of the rule.
        return (
            f"iptables -t {self.table} -C {self.chain} {self.spec} 2>/dev/null"
            f" || iptables -t {self.table} -A {self.chain} {self.spec}"
        )

    def remove_command(self) -> str:
        # Delete only if present, so a rule that was never added cannot abort
        # wg-quick down halfway (wg-quick runs hooks under `set -e`).
        return (
            f"! iptables -t {self.table} -C {self.chain} {self.spec} 2>/dev/null"
            f" || iptables -t {self.table} -D {self.chain} {self.spec}"
        )


MSS_CLAMP = IptablesRule(
    table="mangle",
    chain="FORWARD",
    spec="-o %i -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
    description="clamp TCP MSS to the tunnel MTU",
)


def firewall_rule(rule: FirewallRule) -> IptablesRule:
    """A configured FORWARD rule for traffic arriving from the tunnel."""
    spec = f"-i %i -p {rule.protocol}"
    if rule.port is not None:
        spec += f" --dport {str(rule.port).replace('-', ':')}"
    spec += f" -j {_IPTABLES_TARGET[rule.action]}"
    return IptablesRule(
        table="filter", chain="FORWARD", spec=spec, description=rule.description, firewall=rule
    )


@dataclass(frozen=True)
class SiteLayout:
    """Where things sit inside a site's network.

    For a site whose VPC the project creates these are the subnets it creates; for an
    existing VPC they are the nominal layout the lab uses.
    """

    cidr: ipaddress.IPv4Network
    public_subnet: ipaddress.IPv4Network
    private_subnet: ipaddress.IPv4Network
    router: ipaddress.IPv4Address  # AWS's VPC router: the subnet's base address + 1
    gateway_private_ip: ipaddress.IPv4Address  # first address AWS does not reserve


def vpc_router(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """AWS's VPC router answers on the second address of every subnet."""
    return subnet.network_address + 1


def first_host(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The first address AWS hands out: it reserves the first four and the last."""
    return subnet.network_address + 4


def site_layout(cidr: ipaddress.IPv4Network) -> SiteLayout:
    """Splits a site into a public (gateway) and a private (workload) subnet."""
    prefix = max(cidr.prefixlen + 1, 24)
    subnets = cidr.subnets(new_prefix=prefix)
    public, private = next(subnets), next(subnets)
    return SiteLayout(
        cidr=cidr,
        public_subnet=public,
        private_subnet=private,
        router=vpc_router(public),
        gateway_private_ip=first_host(public),
    )


@dataclass(frozen=True)
class GatewayFacts:
    """Everything about one site's gateway that the config decides."""

    stack: str
    site: SiteConfig
    peer: SiteConfig
    layout: SiteLayout
    interface: str
    tunnel_address: ipaddress.IPv4Interface  # this gateway's address with the tunnel prefix
    peer_tunnel_address: ipaddress.IPv4Address
    listen_port: int
    peer_port: int
    mtu: int
    persistent_keepalive: int | None
    allowed_ips: tuple[ipaddress.IPv4Network, ...]  # what the peer may send and be sent
    rules: tuple[IptablesRule, ...]  # MSS clamp first, then the configured firewall
    architecture: str

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def key_path(self) -> str:
        return f"/etc/wireguard/{self.interface}.key"

    @property
    def config_path(self) -> str:
        return f"/etc/wireguard/{self.interface}.conf"

    @property
    def key_parameter_name(self) -> str:
        """The SSM parameter that holds this gateway's private key (and nothing under it)."""
        return f"/{PROJECT}/{self.stack}/{self.site.name}/{KEY_PARAMETER_LEAF}"

    @property
    def ami_parameter(self) -> str:
        return ubuntu_ami_parameter(self.architecture)


def tunnel_addresses(
    cidr: ipaddress.IPv4Network,
) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """The two gateway addresses of a /31 (both addresses) or /30 (its usable hosts)."""
    first, second = list(cidr.hosts())[:2]
    return first, second


def gateway_facts(config: StackConfig, stack: str) -> tuple[GatewayFacts, GatewayFacts]:
    """Facts for both gateways, in site order: the first site takes the first address."""
    addresses = tunnel_addresses(config.tunnel.cidr)
    rules = (MSS_CLAMP, *(firewall_rule(rule) for rule in config.firewall))
    facts = []
    for index, site in enumerate(config.sites):
        peer_index = 1 - index
        peer = config.sites[peer_index]
        facts.append(
            GatewayFacts(
                stack=stack,
                site=site,
                peer=peer,
                layout=site_layout(site.cidr),
                interface=site.interface,
                tunnel_address=ipaddress.IPv4Interface(
                    f"{addresses[index]}/{config.tunnel.cidr.prefixlen}"
                ),
                peer_tunnel_address=addresses[peer_index],
                listen_port=config.tunnel.port,
                peer_port=config.tunnel.port,
                mtu=config.tunnel.mtu,
                persistent_keepalive=config.tunnel.persistent_keepalive,
                allowed_ips=(
                    ipaddress.IPv4Network(f"{addresses[peer_index]}/32"),
                    peer.cidr,
                ),
                rules=rules,
                architecture=architecture(site.instance_type),
            )
        )
    return facts[0], facts[1]


# The gateway's AWS API calls (SSM reads, CloudWatch metrics): curl --aws-sigv4 with
# the instance role's credentials. The optional env file points it elsewhere (the lab's
# local AWS stand-in); on AWS it does not exist.
AWS_CALL_PATH = "/usr/local/sbin/wg-site-to-site-aws"
AWS_ENV_PATH = "/etc/wg-site-to-site/aws.env"
# The health probe's systemd units, and where the probe keeps its byte counters.
PROBE_SERVICE_PATH = "/etc/systemd/system/wg-site-to-site-probe.service"
PROBE_TIMER_PATH = "/etc/systemd/system/wg-site-to-site-probe.timer"
PROBE_STATE_DIR = "/run/wg-site-to-site"
