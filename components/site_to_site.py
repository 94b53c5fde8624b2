"""The whole deployment: N sites; each AWS site with its network, identity and gateway."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_command as command
import pulumi_random as random

from components.canary import Canary, CanaryArgs
from components.gateway import (
    DEPLOYER,
    PeerInputs,
    WireGuardGateway,
    WireGuardGatewayArgs,
    tunnel_rule_name,
)
from components.site_network import RemoteSite, SiteNetwork, SiteNetworkArgs
from components.tunnel_health import HealthSite, TunnelHealth, TunnelHealthArgs
from components.wireguard_identity import WireGuardIdentity, WireGuardIdentityArgs
from core.config import PROJECT, StackConfig
from core.facts import GatewayFacts, PeerFacts, gateway_facts, peer_names
from core.render import configured_endpoint, limit_problems


@dataclass(frozen=True)
class _Account:
    account_id: pulumi.Output[str]
    partition: pulumi.Output[str]
    deployer_arn: pulumi.Output[str]


@dataclass
class SiteToSiteArgs:
    config: StackConfig
    """The validated stack config."""
    project: str
    stack: str
    """Go into every resource's tags and into the key parameter's path."""


class SiteToSite(pulumi.ComponentResource):
    """N sites joined by WireGuard: a full mesh, or hub and spokes (`topology.hub`).

    Only an AWS site gets AWS resources (its own provider for its region, so one stack
    spans many regions); a site outside AWS (an office, `external`) has none here: its
    AWS peers admit, route to and key it from its config. Identities (key pair and
    Elastic IP) are made for every AWS site before any gateway, because each gateway's
    security group and config name its peers'.
    """

    sites: dict[str, pulumi.Output[dict[str, Any]]]
    """Per AWS site: publicIp, tunnelAddress, publicKey, vpcId, region, cidr, wgConfig,
    workloadSecurityGroupId, canaryIp and canaryInstanceId (sites with a canary), alarms
    (site rule -> alarm name) and peerAlarms (peer -> rule -> alarm name)."""
    dashboard_url: pulumi.Output[str]
    """The stack's CloudWatch dashboard: one row per site, a line per peer."""

    def __init__(
        self, name: str, args: SiteToSiteArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        # Each office's declared sources and the tunnel rules that admit them, for the
        # port policy: it accepts a sourceCidr only on that office's own rules.
        external = {
            site.name: {
                **{
                    key: str(value)
                    for key, value in (
                        ("publicIp", site.external.public_ip),
                        ("sourceCidr", site.external.source_cidr),
                    )
                    if value is not None
                },
                "tunnelRules": sorted(
                    tunnel_rule_name(other.name, site.name, index)
                    for other in args.config.sites
                    if other.is_aws and site.name in peer_names(args.config, other)
                    for index in range(2)
                ),
            }
            for site in args.config.sites
            if site.external is not None
        }
        super().__init__(
            "wg-site-to-site:index:SiteToSite", name, {"externalSites": external}, opts
        )
        tags = {**args.config.tags, "project": args.project, "stack": args.stack}
        clashes = name_clashes([site.name for site in args.config.sites])
        if clashes:
            raise pulumi.RunError("\n".join(clashes))
        every = gateway_facts(args.config, args.stack)
        index_of = {facts.name: index for index, facts in enumerate(every)}
        aws_sites = tuple(facts for facts in every if facts.is_aws)
        # EC2's limits fail only at RunInstances, after delete-before-replace has removed
        # the old gateway: check them before anything is declared.
        problems = [line for facts in aws_sites for line in limit_problems(facts)]
        if problems:
            raise pulumi.RunError("\n".join(problems))

        providers = {facts.name: self._regional_provider(facts) for facts in aws_sites}
        account = self._account(providers[aws_sites[0].name], args.config.deployer)
        networks = {
            facts.name: self._site_network(index_of[facts.name], facts, every, providers, tags)
            for facts in aws_sites
        }
        identities = {
            facts.name: WireGuardIdentity(
                facts.name,
                WireGuardIdentityArgs(key_generation=args.config.tunnel.key_generation, tags=tags),
                opts=pulumi.ResourceOptions(parent=self, providers=[providers[facts.name]]),
            )
            for facts in aws_sites
        }
        preshared_keys = self._preshared_keys(args.config, aws_sites)
        names_by_cidr = {str(site.cidr): site.name for site in args.config.sites}

        def peer_inputs(facts: GatewayFacts, peer: PeerFacts) -> PeerInputs:
            psk = preshared_keys.get(frozenset((facts.name, peer.name)))
            if peer.site.external is None:
                identity = identities[peer.name]
                return PeerInputs(
                    public_key=identity.public_key,
                    public_ip=identity.public_ip,
                    sources=[identity.public_ip.apply(lambda ip: f"{ip}/32")],
                    preshared_key=psk,
                )
            # An office: all from its config (its key, its static address if any).
            office, endpoint = peer.site.external, configured_endpoint(peer)
            sources: list[pulumi.Input[str]] = []
            if office.public_ip is not None:
                sources.append(f"{office.public_ip}/32")
            if office.source_cidr is not None:
                sources.append(str(office.source_cidr))
            return PeerInputs(
                public_key=endpoint.public_key,
                public_ip=endpoint.public_ip,
                sources=sources,
                preshared_key=psk,
            )

        self.sites = {}
        gateways = []
        for facts in aws_sites:
            own, network = identities[facts.name], networks[facts.name]
            gateway = WireGuardGateway(
                facts.name,
                WireGuardGatewayArgs(
                    facts=facts,
                    vpc_id=network.vpc_id,
                    subnet_id=network.gateway_subnet_id,
                    route_table_ids=network.route_table_ids,
                    remote_sites={names_by_cidr[str(c)]: str(c) for c in facts.remote_cidrs},
                    private_key=own.private_key,
                    deadline_seconds=args.config.deadline_seconds,
                    allocation_id=own.allocation_id,
                    peers={peer.name: peer_inputs(facts, peer) for peer in facts.peers},
                    internet_path=network.internet_path,
                    workload_security_group_id=network.workload_security_group_id,
                    deployer_arn=account.deployer_arn,
                    account_id=account.account_id,
                    partition=account.partition,
                    tags=tags,
                    public_ip=own.public_ip,
                    second_subnet_id=network.second_gateway_subnet_id,
                ),
                opts=pulumi.ResourceOptions(parent=self, providers=[providers[facts.name]]),
            )
            gateways.append(gateway)
            canary: dict[str, pulumi.Input[str]] = {}
            if facts.canary is not None and network.workload_subnet_id is not None:
                made = Canary(
                    facts.name,
                    CanaryArgs(
                        facts=facts,
                        vpc_id=network.vpc_id,
                        subnet_id=network.workload_subnet_id,
                        workload_security_group_id=network.workload_security_group_id,
                        tags=tags,
                    ),
                    opts=pulumi.ResourceOptions(parent=self, providers=[providers[facts.name]]),
                )
                # Where `make e2e` sends its checks (SSM Run Command), and what they aim at.
                canary = {"canaryIp": made.private_ip, "canaryInstanceId": made.instance_id}
            self.sites[facts.name] = pulumi.Output.all(
                **canary,
                publicIp=own.public_ip,
                publicKey=own.public_key,
                vpcId=network.vpc_id,
                workloadSecurityGroupId=network.workload_security_group_id,
                wgConfig=gateway.wg_config,
                tunnelAddress=str(facts.tunnel_address.ip),
                region=facts.site.aws_region,
                cidr=str(facts.site.cidr),
            )
        if args.config.verify:
            self._verify(aws_sites, gateways, args.config.deadline_seconds)
        self.health = TunnelHealth(
            "tunnel-health",
            TunnelHealthArgs(
                stack=args.stack,
                sites=[
                    HealthSite(
                        facts=facts,
                        provider=providers[facts.name],
                        instance_id=g.instance_id,
                        second_instance_id=g.instance_ids[1] if facts.highly_available else None,
                    )
                    for facts, g in zip(aws_sites, gateways, strict=True)
                ],
                alerts=args.config.alerts,
                tags=tags,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        for facts in aws_sites:
            self.sites[facts.name] = pulumi.Output.all(
                self.sites[facts.name],
                self.health.alarm_names[facts.name],
                self.health.peer_alarm_names[facts.name],
            ).apply(lambda parts: {**parts[0], "alarms": parts[1], "peerAlarms": parts[2]})
        self.dashboard_url = self.health.dashboard_url
        self.register_outputs({"sites": self.sites, "dashboardUrl": self.dashboard_url})

    def _preshared_keys(
        self, config: StackConfig, aws_sites: tuple[GatewayFacts, ...]
    ) -> dict[frozenset[str], pulumi.Output[str]]:
        """One pre-shared key per pair (unordered: both AWS sides of a pair store the same
        key, each in its own region), renewed with the key generation."""
        if not config.tunnel.preshared_key:
            return {}
        order = {site.name: index for index, site in enumerate(config.sites)}
        # A two-site stack had one key, "preshared-key": its pair keeps it (the alias).
        first_pair = frozenset(site.name for site in config.sites[:2])
        keys: dict[frozenset[str], pulumi.Output[str]] = {}
        for facts in aws_sites:
            for peer in facts.peers:
                pair = frozenset((facts.name, peer.name))
                if pair in keys:
                    continue
                first, second = sorted(pair, key=order.__getitem__)
                key_bytes = random.RandomBytes(
                    f"preshared-key-{first}-{second}",
                    length=32,
                    keepers={"generation": str(config.tunnel.key_generation)},
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        aliases=[pulumi.Alias(name="preshared-key")]
                        if pair == first_pair
                        else None,
                    ),
                )
                keys[pair] = pulumi.Output.secret(key_bytes.base64)
        return keys

    def _verify(
        self,
        both: tuple[GatewayFacts, ...],
        gateways: list[WireGuardGateway],
        deadline: int,
    ) -> command.local.Command:
        """After every apply: do the tunnels carry traffic? Fails `pulumi up` if not."""
        # Every gateway of every site: with two, the standby's check says so and passes
        # (`check role standby ok`), the active's checks the tunnels.
        targets = pulumi.Output.json_dumps(
            [
                {
                    "site": facts.name,
                    "region": facts.site.aws_region,
                    "instanceId": instance_id,
                    "interface": facts.interface,
                }
                for facts, gateway in zip(both, gateways, strict=True)
                for instance_id in gateway.instance_ids
            ]
        )
        return command.local.Command(
            "verify-tunnel",
            create=f"{DEPLOYER} verify",
            environment={"WG_S2S_GATEWAYS": targets, "WG_S2S_DEADLINE_SECONDS": str(deadline)},
            # Runs again whenever any gateway was applied again.
            triggers=[gateway.desired_state_digest for gateway in gateways]
            + [apply.id for gateway in gateways for apply in gateway.applies],
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[apply for gateway in gateways for apply in gateway.applies]
            ),
        )

    def _account(self, provider: aws.Provider, deployer: str | None) -> _Account:
        """The account, and who deploys: the configured ARN, else the caller's own role.

        Unset, the key policies name whoever runs the program, so a preview by the
        read-only role and an `up` by the deploy role (or a person) rewrite both keys'
        policies every time; the committed stacks set it (README, "Who can read the
        private keys").
        """
        invoke = pulumi.InvokeOutputOptions(provider=provider, parent=self)
        caller = aws.get_caller_identity_output(opts=invoke)
        deployer_arn: pulumi.Output[str]
        if deployer is not None:
            configured = deployer

            def in_this_account(account_id: str) -> str:
                # A placeholder (the committed stacks') or another account's role would
                # only fail at `up`, in KMS, after the network exists: refuse it here.
                if configured.split(":")[4] != account_id:
                    raise pulumi.RunError(
                        f"wg-site-to-site:deployer: {configured} is not in account "
                        f"{account_id}, where this stack deploys: set it to the role that "
                        "runs `pulumi up` (pulumi config set wg-site-to-site:deployer ARN)"
                    )
                return configured

            deployer_arn = caller.account_id.apply(in_this_account)
        else:
            # An assumed role's session ARN cannot be a key-policy principal; its role can.
            session = aws.iam.get_session_context_output(arn=caller.arn, opts=invoke)
            deployer_arn = session.issuer_arn
        partition = caller.arn.apply(lambda arn: arn.split(":")[1])
        return _Account(
            account_id=caller.account_id, partition=partition, deployer_arn=deployer_arn
        )

    def _regional_provider(self, facts: GatewayFacts) -> aws.Provider:
        return aws.Provider(
            f"{facts.name}-{facts.site.aws_region}",
            region=facts.site.aws_region,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _site_network(
        self,
        index: int,
        facts: GatewayFacts,
        every: tuple[GatewayFacts, ...],
        providers: dict[str, aws.Provider],
        tags: dict[str, str],
    ) -> SiteNetwork:
        provider = providers[facts.name]
        zone, second_zone = self._zones(index, facts, provider, tags)
        return SiteNetwork(
            facts.name,
            SiteNetworkArgs(
                site=facts.site,
                layout=facts.layout,
                availability_zone=zone,
                zone_pinned=facts.site.availability_zone is not None,
                second_availability_zone=second_zone,
                second_zone_pinned=facts.site.second_availability_zone is not None,
                remote_sites=[
                    RemoteSite(name=other.name, cidr=str(other.site.cidr))
                    for other in every
                    if other.name != facts.name
                ],
                tunnel_cidr=str(facts.tunnel_address.network),
                tags=tags,
            ),
            opts=pulumi.ResourceOptions(parent=self, providers=[provider]),
        )

    def _zones(
        self, index: int, facts: GatewayFacts, provider: aws.Provider, tags: dict[str, str]
    ) -> tuple[str, str | None]:
        """The site's zone, and with two gateways the second gateway's (else None), each
        checked against what AWS would refuse only after a delete.

        Blocking invokes, so a refusal stops the program before anything of the site is
        declared, with one line naming the key.
        """
        key = f"{PROJECT}:sites[{index}]"
        invoke = pulumi.InvokeOptions(provider=provider, parent=self)
        # Looked up even for a pinned zone: EC2 refuses a type it does not know, or one
        # the zone does not offer, only at RunInstances, after delete-before-replace has
        # removed the old gateway. Not every zone offers every type (us-east-1e has no
        # t4g), and an unknown type is offered nowhere (DescribeInstanceTypeOfferings
        # answers it with no offering, not an error).
        offerings = aws.ec2.get_instance_type_offerings(
            location_type="availability-zone",
            filters=[
                aws.ec2.GetInstanceTypeOfferingsFilterArgs(
                    name="instance-type", values=[facts.site.instance_type]
                )
            ],
            opts=invoke,
        )
        zones = list(offerings.locations)
        zone = _offered_zone(zones, facts, key)
        if facts.site.availability_zone and not facts.site.uses_existing_vpc:
            _refuse_moved_zone(zone, _existing_public_subnet(facts, tags, invoke), facts, key)
        if not facts.highly_available:
            # An existing VPC's subnets are not this program's: the zone is unused there.
            return zone, None
        second = _second_zone(zones, zone, facts, key)
        if facts.site.second_availability_zone:
            existing = _existing_public_subnet(facts, tags, invoke, role="public-2")
            _refuse_moved_zone(
                second,
                existing,
                facts,
                key,
                zone_key="secondAvailabilityZone",
                subnet=facts.layout.second_public_subnet,
            )
        return zone, second


def name_clashes(names: list[str]) -> list[str]:
    """Pairs of sites whose joined names are the same ("a" + "b-c" and "a-b" + "c"): the
    resources of one pair (routes, alarms, keys: "<site>-<peer>-...") would take the
    other's names. One line per clash, naming the key."""
    seen: dict[str, tuple[str, str]] = {}
    problems = []
    for first in names:
        for second in names:
            if first == second:
                continue
            joined = f"{first}-{second}"
            if joined in seen and seen[joined] != (first, second):
                other = seen[joined]
                problems.append(
                    f"{PROJECT}:sites: the names {other[0]} and {other[1]} and the names "
                    f"{first} and {second} both join to {joined}, which would give two "
                    "pairs' resources the same names: rename one of these sites"
                )
            seen.setdefault(joined, (first, second))
    return problems


def _existing_public_subnet(
    facts: GatewayFacts, tags: dict[str, str], invoke: pulumi.InvokeOptions, role: str = "public"
) -> tuple[str, str] | None:
    """(zone, cidr) of the site's public subnet (`role` public-2: the second gateway's) if
    an earlier `up` made it, else None.

    The program cannot read its own state; AWS can tell by the tags the program set
    (project, stack and the subnet's Name, as SiteNetwork writes them).
    """
    found = aws.ec2.get_subnets(
        tags={"project": tags["project"], "stack": tags["stack"], "Name": f"{facts.name}-{role}"},
        opts=invoke,
    )
    if not found.ids:
        return None
    subnet = aws.ec2.get_subnet(id=sorted(found.ids)[0], opts=invoke)
    return subnet.availability_zone, subnet.cidr_block


def _shown(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _offered_zone(zones: list[str], facts: GatewayFacts, key: str) -> str:
    """The pinned zone if it offers the instance type, else the first zone that does."""
    site, type_ = facts.site, _shown(facts.site.instance_type)
    if not zones:
        raise pulumi.RunError(
            f"{key}.instanceType: {type_} is not offered in any zone of {site.region} "
            "(a typo, or a type this region lacks); choose another instanceType"
        )
    if site.availability_zone is None:
        return sorted(zones)[0]
    if site.availability_zone not in zones:
        raise pulumi.RunError(
            f"{key}.availabilityZone: {site.availability_zone} does not offer {type_} "
            f"(zones that do: {', '.join(sorted(zones))}); pin one of those or choose "
            "another instanceType"
        )
    return site.availability_zone


def _second_zone(zones: list[str], first: str, facts: GatewayFacts, key: str) -> str:
    """The second gateway's zone: the pinned one if it offers the type, else the first
    other zone that does (kept afterwards: SiteNetwork ignores its later changes)."""
    site, type_ = facts.site, _shown(facts.site.instance_type)
    pinned = site.second_availability_zone
    if pinned is not None:
        if pinned not in zones:
            raise pulumi.RunError(
                f"{key}.secondAvailabilityZone: {pinned} does not offer {type_} "
                f"(zones that do: {', '.join(sorted(zones))}); pin one of those or choose "
                "another instanceType"
            )
        if pinned == first:
            raise pulumi.RunError(
                f"{key}.secondAvailabilityZone: {pinned} is the first gateway's zone too; "
                "two gateways need two zones"
            )
        return pinned
    others = sorted(zone for zone in zones if zone != first)
    if not others:
        raise pulumi.RunError(
            f"{key}.gateways: 2 needs a second zone offering {type_}, and {site.region} has "
            f"only {first}; choose another instanceType or leave gateways at 1"
        )
    return others[0]


def _refuse_moved_zone(
    zone: str,
    existing: tuple[str, str] | None,
    facts: GatewayFacts,
    key: str,
    *,
    zone_key: str = "availabilityZone",
    subnet: ipaddress.IPv4Network | None = None,
) -> None:
    """Refuses a pinned zone that moves a subnet AWS would refuse to make anew.

    A changed zone replaces the subnets create-before-delete with the same CIDR in the
    same VPC, which AWS refuses (InvalidSubnet.Conflict), after the old gateway is gone.
    `zone_key` and `subnet`: the second gateway's (secondAvailabilityZone, its subnet).
    """
    if existing is None:
        return
    old_zone, cidr = existing
    if old_zone == zone or cidr != str(subnet or facts.layout.public_subnet):
        # Same zone, or a new site cidr: the subnets go into a new VPC, no conflict.
        return
    raise pulumi.RunError(
        f"{key}.{zone_key}: {zone}, but site {facts.name}'s subnets exist in {old_zone}, "
        f"and AWS refuses a second subnet {cidr} while the old one exists "
        f"(InvalidSubnet.Conflict): keep {zone_key} {old_zone}, or change the site's "
        "cidr as well, or destroy the site first"
    )
