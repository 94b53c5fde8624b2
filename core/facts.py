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
UBUNTU_CODENAME = "noble"
# Canonical's AWS account, the owner of the official Ubuntu images.
CANONICAL_OWNER = "099720109477"
# Every *.nano type has 512 MiB and no swap, too little for cloud-init, apt and the SSM
# agent at once (aws/amazon-ssm-agent#615); the gateway gets a swap file of this size.
NANO_SWAP_MIB = 1024
SYSCTL_PATH = "/etc/sysctl.d/99-wg-site-to-site.conf"
# The last part of every key parameter's name (policies recognise key parameters by it).
KEY_PARAMETER_LEAF = "wireguard-private-key"
DESIRED_STATE_LEAF = "desired-state"
PRESHARED_KEY_LEAF = "wireguard-preshared-key"
APPLY_UNIT_PATH = "/etc/systemd/system/wg-site-to-site-apply.service"
# A standard SSM parameter holds 4 KB; advanced ones 8 KB at a monthly price.
# https://docs.aws.amazon.com/systems-manager/latest/userguide/parameter-store-advanced-parameters.html
SSM_STANDARD_LIMIT_BYTES = 4096
SSM_ADVANCED_LIMIT_BYTES = 8192
# On-gateway scripts of day 2: converge to the desired state in SSM, check the tunnel,
# and publish its health. The deployer (Run Command) and the lab call them by these paths.
APPLY_PATH = "/usr/local/sbin/wg-site-to-site-apply"
CHECK_PATH = "/usr/local/sbin/wg-site-to-site-check"
PROBE_PATH = "/usr/local/sbin/wg-site-to-site-probe"
# The failover agent of a site with two gateways; `python -m deployer drain` runs its
# `takeover` on the other gateway before a gateway that holds the Elastic IP is replaced.
FAILOVER_AGENT_PATH = "/usr/local/sbin/wg-site-to-site-failover"

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


def ubuntu_image_name(arch: str, serial: str) -> str:
    """The name of Canonical's Ubuntu image of one build: unique per region and owner."""
    release = f"{UBUNTU_CODENAME}-{UBUNTU_RELEASE}"
    return f"ubuntu/images/hvm-ssd-gp3/ubuntu-{release}-{arch}-server-{serial}"


def image_serial(image_name: str) -> str:
    """The build serial at the end of a Canonical image name."""
    return image_name.rsplit("-", 1)[-1]


def swap_mib(instance_type: str) -> int:
    """The swap file a gateway of this type needs (0: none)."""
    return NANO_SWAP_MIB if instance_type.endswith(".nano") else 0


@dataclass(frozen=True)
class IptablesRule:
    """One rule in one of the gateway's own chains (`s2s-fw-<iface>`, `s2s-mss-<iface>`).

    The chains are loaded whole with `iptables-restore --noflush`, which replaces a
    declared chain's rules in one transaction: a changed rule set never has a moment
    with no rules, never duplicates one, and leaves everyone else's rules alone.
    """

    table: str
    chain: str
    spec: str  # match and target
    description: str
    firewall: FirewallRule | None = None  # the configured rule this one enforces, if any

    def restore_line(self) -> str:
        return f"-A {self.chain} {self.spec}"


@dataclass(frozen=True)
class Jump:
    """The one rule in a built-in chain that hands the tunnel's packets to our chain."""

    table: str
    chain: str
    spec: str

    def add_command(self) -> str:
        # Check first so that a repeated `up` (or an `up` after a crash that skipped
        # PreDown) never stacks a second copy of the jump.
        return (
            f"iptables -t {self.table} -C {self.chain} {self.spec} 2>/dev/null"
            f" || iptables -t {self.table} -A {self.chain} {self.spec}"
        )

    def remove_command(self) -> str:
        # Delete only if present, so a jump that was never added cannot abort
        # wg-quick down halfway (wg-quick runs hooks under `set -e`).
        return (
            f"! iptables -t {self.table} -C {self.chain} {self.spec} 2>/dev/null"
            f" || iptables -t {self.table} -D {self.chain} {self.spec}"
        )


def firewall_chain(interface: str) -> str:
    return f"s2s-fw-{interface}"


def mss_chain(interface: str) -> str:
    return f"s2s-mss-{interface}"


def mss_clamp(interface: str) -> IptablesRule:
    return IptablesRule(
        table="mangle",
        chain=mss_chain(interface),
        spec="-p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
        description="clamp TCP MSS to the tunnel MTU",
    )


def firewall_rule(rule: FirewallRule, interface: str) -> IptablesRule:
    """A configured rule for traffic arriving from the tunnel (in the FORWARD path)."""
    spec = f"-p {rule.protocol}"
    if rule.port is not None:
        spec += f" --dport {str(rule.port).replace('-', ':')}"
    spec += f" -j {_IPTABLES_TARGET[rule.action]}"
    if rule.action == "reject" and rule.protocol == "tcp":
        # A reset belongs to the refused connection, so the sender's security group lets
        # it in as part of that flow; an ICMP error from the gateway would need a rule.
        spec += " --reject-with tcp-reset"
    return IptablesRule(
        table="filter",
        chain=firewall_chain(interface),
        spec=spec,
        description=rule.description,
        firewall=rule,
    )


def jumps(interface: str) -> tuple[Jump, ...]:
    return (
        Jump("mangle", "FORWARD", f"-o {interface} -j {mss_chain(interface)}"),
        Jump("filter", "FORWARD", f"-i {interface} -j {firewall_chain(interface)}"),
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
    canary_ip: ipaddress.IPv4Address  # the canary's fixed address in the private subnet
    # The second gateway's public subnet (gateways: 2), after the private one, so that a
    # site going from one gateway to two keeps its subnets; None if the cidr has no room.
    second_public_subnet: ipaddress.IPv4Network | None = None

    @property
    def second_gateway_private_ip(self) -> ipaddress.IPv4Address | None:
        if self.second_public_subnet is None:
            return None
        return first_host(self.second_public_subnet)


def vpc_router(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """AWS's VPC router answers on the second address of every subnet."""
    return subnet.network_address + 1


def first_host(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The first address AWS hands out: it reserves the first four and the last."""
    return subnet.network_address + 4


def canary_address(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The canary's fixed private address: the subnet's 10th host, clear of AWS's reserved
    first four and of the first addresses AWS hands out to other instances. Set on the
    instance (`private_ip`), so the probe, the lab and the e2e checks all know it."""
    return subnet.network_address + 10


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
        canary_ip=canary_address(private),
        second_public_subnet=next(subnets, None),
    )


@dataclass(frozen=True)
class PeerFacts:
    """One peer of a gateway: a site it has a WireGuard [Peer] section for."""

    site: SiteConfig
    tunnel_address: ipaddress.IPv4Address
    # The sites reached through this peer, the peer first: itself, or for a spoke's hub
    # the hub and every other spoke. Their tunnel addresses and CIDRs are its AllowedIPs.
    reached_tunnel_addresses: tuple[ipaddress.IPv4Address, ...]
    reached_cidrs: tuple[ipaddress.IPv4Network, ...]
    port: int
    # The gateway's parameter holding this pair's pre-shared key (in the gateway's region).
    psk_parameter_name: str
    canary: ipaddress.IPv4Address | None = None  # the peer site's canary: a probe target

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def has_endpoint(self) -> bool:
        """A fixed address to dial (an Elastic IP or the office's publicIp); a NATed
        office has none and dials in itself."""
        return self.site.external is None or not self.site.external.behind_nat

    @property
    def static_ip(self) -> ipaddress.IPv4Address | None:
        """An office's configured address (an AWS peer's Elastic IP is known at deploy)."""
        return self.site.external.public_ip if self.site.external is not None else None

    @property
    def public_key(self) -> str | None:
        """An office's configured key (an AWS peer's is made by the program)."""
        return self.site.external.public_key if self.site.external is not None else None

    @property
    def allowed_ips(self) -> tuple[ipaddress.IPv4Network, ...]:
        """What this peer may send and be sent: tunnel /32s first, then site CIDRs."""
        return (
            *(ipaddress.IPv4Network(f"{address}/32") for address in self.reached_tunnel_addresses),
            *self.reached_cidrs,
        )

    def psk_path(self, interface: str) -> str:
        return f"/etc/wireguard/{interface}.{self.name}.psk"


@dataclass(frozen=True)
class GatewayFacts:
    """Everything about one site's gateway that the config decides."""

    stack: str
    site: SiteConfig
    peers: tuple[PeerFacts, ...]  # in site order
    layout: SiteLayout
    interface: str
    tunnel_address: ipaddress.IPv4Interface  # this gateway's address with the tunnel prefix
    listen_port: int
    mtu: int
    persistent_keepalive: int | None
    rules: tuple[IptablesRule, ...]  # MSS clamp first, then the configured firewall
    architecture: str
    preshared_key: bool
    key_generation: int
    canary: ipaddress.IPv4Address | None = None  # this site's canary, if it has one
    # Every other site's CIDR: what the site's route tables send to this gateway.
    remote_cidrs: tuple[ipaddress.IPv4Network, ...] = ()
    is_hub: bool = False

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def is_aws(self) -> bool:
        return self.site.is_aws

    def peer(self, name: str) -> PeerFacts:
        return next(peer for peer in self.peers if peer.name == name)

    @property
    def gateway_count(self) -> int:
        """How many gateways carry this site's identity (sites[].gateways; 1 outside AWS)."""
        return self.site.gateways if self.is_aws else 1

    @property
    def highly_available(self) -> bool:
        return self.gateway_count == 2

    @property
    def gateway_private_ips(self) -> tuple[ipaddress.IPv4Address, ...]:
        """Each gateway's fixed private address, first gateway first."""
        second = self.layout.second_gateway_private_ip
        if self.highly_available and second is not None:
            return (self.layout.gateway_private_ip, second)
        return (self.layout.gateway_private_ip,)

    @property
    def routed_destinations(self) -> tuple[ipaddress.IPv4Network, ...]:
        """What the site's route tables send to its (active) gateway: every other site's
        CIDR, and with two gateways the tunnel cidr too, so that the standby's probes of
        the peers' tunnel addresses take the forwarding path through the active."""
        if self.highly_available:
            return (*self.remote_cidrs, self.tunnel_address.network)
        return self.remote_cidrs

    @property
    def failover_path(self) -> str:
        """The failover agent's facts (allocation, interfaces, routes), from the desired
        state; only with two gateways."""
        return f"/etc/wireguard/{self.interface}.failover"

    @property
    def role_path(self) -> str:
        """The role, active or standby (two gateways): written by the failover agent, read by
        the check and the probe; in the probe's state directory (WG_S2S_STATE_DIR
        moves both, as in the lab)."""
        return f"{PROBE_STATE_DIR}/{self.interface}.role"

    @property
    def key_path(self) -> str:
        return f"/etc/wireguard/{self.interface}.key"

    @property
    def config_path(self) -> str:
        return f"/etc/wireguard/{self.interface}.conf"

    @property
    def rules_path(self) -> str:
        return f"/etc/wireguard/{self.interface}.rules"

    @property
    def peer_path(self) -> str:
        """The peers' names, tunnel addresses and probe targets, one line per peer
        ("name address [target]"), written by the apply from the desired state: the probe
        and the check read it, so a tunnel cidr change or a new site is day 2."""
        return f"/etc/wireguard/{self.interface}.peers"

    @property
    def outside_path(self) -> str:
        """The names of the peers outside AWS, one a line (written by the apply): the
        check waits for one that never connected instead of failing `pulumi up`, since only
        its own install.sh brings it up, and that needs this `up`'s outputs."""
        return f"/etc/wireguard/{self.interface}.outside"

    @property
    def jumps(self) -> tuple[Jump, ...]:
        return jumps(self.interface)

    @property
    def chains(self) -> dict[str, str]:
        """table -> this interface's own chain in it."""
        return {"mangle": mss_chain(self.interface), "filter": firewall_chain(self.interface)}

    def _parameter(self, leaf: str) -> str:
        return f"/{PROJECT}/{self.stack}/{self.site.name}/{leaf}"

    @property
    def desired_state_parameter_name(self) -> str:
        """This gateway's wg-quick config and firewall (no secret), applied in place."""
        return self._parameter(DESIRED_STATE_LEAF)

    @property
    def psk_parameter_names(self) -> tuple[str, ...]:
        """The pairs' pre-shared keys, one per peer, in this gateway's region."""
        return tuple(peer.psk_parameter_name for peer in self.peers)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Every parameter this gateway reads, and nothing else."""
        names = [self.desired_state_parameter_name, self.key_parameter_name]
        if self.preshared_key:
            names += self.psk_parameter_names
        return tuple(names)

    @property
    def key_parameter_name(self) -> str:
        """The SSM parameter that holds this gateway's private key (and nothing under it)."""
        return f"/{PROJECT}/{self.stack}/{self.site.name}/{KEY_PARAMETER_LEAF}"

    @property
    def ami_parameter(self) -> str:
        return ubuntu_ami_parameter(self.architecture)

    @property
    def image_name(self) -> str | None:
        """The pinned image's name for this gateway's architecture (None: not pinned)."""
        if self.site.image is None:
            return None
        return ubuntu_image_name(self.architecture, self.site.image)

    @property
    def swap_mib(self) -> int:
        return swap_mib(self.site.instance_type)


def tunnel_addresses(cidr: ipaddress.IPv4Network, count: int) -> list[ipaddress.IPv4Address]:
    """One gateway address per site in site order: both addresses of a /31 (RFC 3021),
    otherwise the usable hosts from the first."""
    hosts = cidr.hosts() if cidr.prefixlen < 31 else iter(cidr)
    addresses = [address for _, address in zip(range(count), hosts, strict=False)]
    if len(addresses) < count:
        raise ValueError(f"{cidr} holds {len(addresses)} addresses, not {count}")
    return addresses


def psk_parameter_name(stack: str, site: str, peer: str) -> str:
    """The pair's pre-shared key as `site`'s gateway reads it (each side has its copy)."""
    return f"/{PROJECT}/{stack}/{site}/{peer}/{PRESHARED_KEY_LEAF}"


def peer_names(config: StackConfig, site: SiteConfig) -> tuple[str, ...]:
    """The sites `site` has a [Peer] for: in a mesh every other; with a hub, a spoke has
    the hub and the hub every spoke."""
    hub = config.topology.hub
    others = tuple(other.name for other in config.sites if other.name != site.name)
    if hub is None or site.name == hub:
        return others
    return (hub,)


def gateway_facts(config: StackConfig, stack: str) -> tuple[GatewayFacts, ...]:
    """Facts for every site's gateway (an office's too), in site order: the first site
    takes the first tunnel address."""
    sites = config.sites
    addresses = dict(
        zip(
            (site.name for site in sites),
            tunnel_addresses(config.tunnel.cidr, len(sites)),
            strict=True,
        )
    )
    by_name = {site.name: site for site in sites}
    hub = config.topology.hub

    def reached_through(site: SiteConfig, peer: SiteConfig) -> list[SiteConfig]:
        # A spoke reaches every site but itself through the hub.
        if hub is not None and peer.name == hub and site.name != hub:
            return [peer, *(s for s in sites if s.name not in (site.name, hub))]
        return [peer]

    facts = []
    for site in sites:
        peers = []
        for name in peer_names(config, site):
            peer = by_name[name]
            via = reached_through(site, peer)
            peers.append(
                PeerFacts(
                    site=peer,
                    tunnel_address=addresses[name],
                    reached_tunnel_addresses=tuple(addresses[s.name] for s in via),
                    reached_cidrs=tuple(s.cidr for s in via),
                    port=config.tunnel.port,
                    psk_parameter_name=psk_parameter_name(stack, site.name, name),
                    canary=site_layout(peer.cidr).canary_ip if peer.canary else None,
                )
            )
        facts.append(
            GatewayFacts(
                stack=stack,
                site=site,
                peers=tuple(peers),
                layout=site_layout(site.cidr),
                interface=site.interface,
                tunnel_address=ipaddress.IPv4Interface(
                    f"{addresses[site.name]}/{config.tunnel.cidr.prefixlen}"
                ),
                listen_port=config.tunnel.port,
                mtu=config.tunnel.mtu,
                persistent_keepalive=_keepalive(config, site),
                rules=(
                    mss_clamp(site.interface),
                    *(firewall_rule(rule, site.interface) for rule in config.firewall),
                ),
                preshared_key=config.tunnel.preshared_key,
                key_generation=config.tunnel.key_generation,
                architecture=architecture(site.instance_type),
                canary=site_layout(site.cidr).canary_ip if site.canary else None,
                remote_cidrs=tuple(s.cidr for s in sites if s.name != site.name),
                is_hub=site.name == hub,
            )
        )
    return tuple(facts)


# A NATed office keeps its NAT mapping open so that its peers can answer: WireGuard's
# recommended interval for that (wg(8), PersistentKeepalive: "a sensible interval ... is 25").
NAT_KEEPALIVE_SECONDS = 25


def _keepalive(config: StackConfig, site: SiteConfig) -> int | None:
    if site.external is not None and site.external.behind_nat:
        return config.tunnel.persistent_keepalive or NAT_KEEPALIVE_SECONDS
    return config.tunnel.persistent_keepalive


def aws_gateway_facts(config: StackConfig, stack: str) -> tuple[GatewayFacts, ...]:
    """The gateways this program builds: every AWS site's."""
    return tuple(facts for facts in gateway_facts(config, stack) if facts.is_aws)


# The gateway's AWS API calls (SSM reads, CloudWatch metrics): curl --aws-sigv4 with
# the instance role's credentials. The optional env file points it elsewhere (the lab's
# local AWS stand-in); on AWS it does not exist.
AWS_CALL_PATH = "/usr/local/sbin/wg-site-to-site-aws"
AWS_ENV_PATH = "/etc/wg-site-to-site/aws.env"
# The health probe's systemd units, and where the probe keeps its byte counters.
PROBE_SERVICE_PATH = "/etc/systemd/system/wg-site-to-site-probe.service"
PROBE_TIMER_PATH = "/etc/systemd/system/wg-site-to-site-probe.timer"
PROBE_STATE_DIR = "/run/wg-site-to-site"
# The failover agent's unit (only on a site with two gateways): Type=simple, always restarted.
FAILOVER_UNIT_PATH = "/etc/systemd/system/wg-site-to-site-failover.service"
