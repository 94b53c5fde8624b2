"""A site's network: a new VPC laid out from the site facts, or an existing one."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from core.config import SiteConfig
from core.facts import SiteLayout


@dataclass
class SiteNetworkArgs:
    site: SiteConfig
    """The site's config; with vpcId set, nothing is created and its ids are used."""
    layout: SiteLayout
    """Subnets computed by the core (public for the gateway, private for workloads)."""
    availability_zone: pulumi.Input[str]
    """Where both subnets go: one that offers the gateway's instance type."""
    zone_pinned: bool
    """True if the zone comes from the stack config. Otherwise the zone chosen on the first
    run is kept: a later run that would choose another never moves the subnets."""
    remote_sites: list[RemoteSite]
    """Every other site, in config order: the workloads' security group admits their
    CIDRs."""
    tunnel_cidr: str
    """The tunnel cidr: the workloads admit the ICMP errors the gateways send from their
    tunnel addresses."""
    tags: dict[str, str]
    """Tags for every resource."""
    second_availability_zone: pulumi.Input[str] | None = None
    """With two gateways (site.gateways 2): the second public subnet's zone, another zone
    offering the type; None for one gateway."""
    second_zone_pinned: bool = False
    """As zone_pinned, for the second zone (secondAvailabilityZone)."""


@dataclass(frozen=True)
class RemoteSite:
    """Another site, as this site's workload security group sees it."""

    name: str
    cidr: str


class SiteNetwork(pulumi.ComponentResource):
    """The VPC, subnets, internet gateway and route tables of one site.

    Routes to the peer site are not here: they point at the gateway's interface, so the
    gateway adds them to `route_table_ids`.
    """

    vpc_id: pulumi.Output[str]
    gateway_subnet_id: pulumi.Output[str]
    route_table_ids: list[pulumi.Output[str]]
    """Every route table of the site: public, private, and with two gateways the second
    public one, in that order."""
    second_gateway_subnet_id: pulumi.Output[str] | None = None
    """The second gateway's public subnet (two gateways only)."""
    internet_path: list[pulumi.Resource]
    """The internet gateway, the public default route and its association: what the
    gateway needs at boot and must outlive it on destroy (empty for an existing VPC)."""
    workload_subnet_id: pulumi.Output[str] | None = None
    """The private subnet for workloads (None for an existing VPC: the program knows none)."""
    workload_security_group_id: pulumi.Output[str]
    """Attach to hosts that talk with the other site: admits the peer CIDR (no NAT hides
    it) and lets connections out to it."""

    def __init__(
        self, name: str, args: SiteNetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("wg-site-to-site:network:SiteNetwork", name, None, opts)
        self._site = name
        self._inputs = args
        if args.site.uses_existing_vpc:
            self._use_existing(args.site)
        else:
            self._create_vpc()
        self.workload_security_group_id = self._workload_security_group()
        self.register_outputs(
            {
                "vpcId": self.vpc_id,
                "gatewaySubnetId": self.gateway_subnet_id,
                "routeTableIds": self.route_table_ids,
                "workloadSecurityGroupId": self.workload_security_group_id,
            }
        )

    def _use_existing(self, site: SiteConfig) -> None:
        assert site.vpc_id and site.subnet_id and site.route_table_ids
        self.vpc_id = pulumi.Output.from_input(site.vpc_id)
        self.gateway_subnet_id = pulumi.Output.from_input(site.subnet_id)
        self.route_table_ids = [pulumi.Output.from_input(rtb) for rtb in site.route_table_ids]
        self.internet_path = []

    def _workload_security_group(self) -> pulumi.Output[str]:
        # Security groups apply to forwarded packets, and the tunnel keeps the other
        # site's real source addresses, so workloads must admit the peer CIDR itself.
        child = pulumi.ResourceOptions(parent=self)
        group = aws.ec2.SecurityGroup(
            f"{self._site}-from-peer-site",
            vpc_id=self.vpc_id,
            description=f"Workloads of site {self._inputs.site.name} reachable from the peer site",
            tags=self._tags("from-peer-site"),
            opts=child,
        )
        # In a two-site stack these were single rules for "the peer site"; the alias
        # keeps the first remote site's rule the same resource (its old name).
        for position, remote in enumerate(self._inputs.remote_sites):
            first = position == 0
            aws.vpc.SecurityGroupIngressRule(
                f"{self._site}-from-{remote.name}-site",
                security_group_id=group.id,
                description=f"everything from site {remote.name}, through the tunnel",
                ip_protocol="-1",
                cidr_ipv4=remote.cidr,
                tags=self._tags(f"from-{remote.name}-site"),
                opts=self._renamed(f"{self._site}-from-peer-site" if first else None),
            )
            # The provider deletes AWS's default allow-all egress from a group it creates
            # (aws.ec2.SecurityGroup docs, "NOTE on Egress rules"): without this rule a
            # host with only this group could answer other sites but never start a
            # connection.
            aws.vpc.SecurityGroupEgressRule(
                f"{self._site}-to-{remote.name}-site",
                security_group_id=group.id,
                description=f"everything to site {remote.name}, through the tunnel",
                ip_protocol="-1",
                cidr_ipv4=remote.cidr,
                tags=self._tags(f"to-{remote.name}-site"),
                opts=self._renamed(f"{self._site}-to-peer-site" if first else None),
            )
        # AWS admits no ICMP error as "related" to a tracked flow (only fragmentation
        # needed is documented, and it needs a rule: see the gateway's), so a workload sees
        # the errors another site's gateway sends about its traffic only where a rule
        # admits them: a trace's time exceeded and a UDP REJECT's port unreachable, from
        # that gateway's tunnel address (a hub's too, for spoke-to-spoke traffic). The
        # tunnel cidr holds the gateways' tunnel addresses and nothing else (AllowedIPs
        # admit only those /32s from the tunnel), so one rule per kind admits them all
        # (not one per site: at ten sites that was 160 rules). The own gateway's errors
        # come from its private address: the gateway component's rules.
        for kind, icmp_type in (("time-exceeded", 11), ("unreachable", 3)):
            aws.vpc.SecurityGroupIngressRule(
                f"{self._site}-{kind}-from-tunnel",
                security_group_id=group.id,
                description=f"ICMP {kind.replace('-', ' ')} from the gateway tunnel addresses",
                ip_protocol="icmp",
                from_port=icmp_type,
                to_port=-1,
                cidr_ipv4=self._inputs.tunnel_cidr,
                tags=self._tags(f"{kind}-from-tunnel"),
                # A two-site stack's rule (from the peer's tunnel address) is this one.
                opts=self._renamed(f"{self._site}-{kind}-from-peer-tunnel"),
            )
        return group.id

    def _tags(self, role: str) -> dict[str, str]:
        return {**self._inputs.tags, "Name": f"{self._site}-{role}"}

    def _renamed(self, old_name: str | None) -> pulumi.ResourceOptions:
        """A child's options; `old_name`: its name before N sites (see the callers)."""
        if old_name is None:
            return pulumi.ResourceOptions(parent=self)
        return pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(name=old_name)])

    def _create_vpc(self) -> None:
        name, args, child = self._site, self._inputs, pulumi.ResourceOptions(parent=self)
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=str(args.layout.cidr),
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=self._tags("vpc"),
            opts=child,
        )
        igw = aws.ec2.InternetGateway(
            f"{name}-igw",
            vpc_id=vpc.id,
            tags=self._tags("igw"),
            # A new VPC (a site cidr change) gets a new internet gateway, and the old one
            # is deleted with the old VPC, after the Elastic IP's old association (which
            # depends on it). Updated in place instead, the provider detaches it from the
            # old VPC first (terraform-provider-aws internal/service/ec2/
            # vpc_internet_gateway.go, resourceInternetGatewayUpdate: if
            # d.HasChange("vpc_id") -> detachInternetGateway, then attach) while the
            # Elastic IP is still mapped there: AWS answers DependencyViolation "has some
            # mapped public address(es)", which detachInternetGateway retries for the
            # 20-minute Update timeout before the update fails, the tunnel down.
            opts=pulumi.ResourceOptions(parent=self, replace_on_changes=["vpcId"]),
        )
        public, public_routes, public_association = self._subnet(
            vpc, "public", args.layout.public_subnet
        )
        default_route = aws.ec2.Route(
            f"{name}-public-internet",
            route_table_id=public_routes.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=igw.id,
            opts=child,
        )
        # Workloads have no route to the internet: no NAT anywhere in this design.
        private, private_routes, _ = self._subnet(vpc, "private", args.layout.private_subnet)
        self.vpc_id = vpc.id
        self.workload_subnet_id = private.id
        self.gateway_subnet_id = public.id
        self.route_table_ids = [public_routes.id, private_routes.id]
        self.internet_path = [igw, default_route, public_association]
        if args.site.gateways == 2:
            self._second_public_subnet(vpc, igw)

    def _second_public_subnet(self, vpc: aws.ec2.Vpc, igw: aws.ec2.InternetGateway) -> None:
        """The second gateway's public subnet, in the second zone, with its own route table
        (the third of the site: the gateway routes the other sites in it too) and its own
        default route to the internet gateway."""
        name, args = self._site, self._inputs
        cidr, zone = args.layout.second_public_subnet, args.second_availability_zone
        # core.config refuses gateways 2 on a cidr with no room for a third subnet.
        assert cidr is not None and zone is not None
        subnet, routes, association = self._subnet(
            vpc, "public-2", cidr, zone=zone, pinned=args.second_zone_pinned
        )
        default_route = aws.ec2.Route(
            f"{name}-public-2-internet",
            route_table_id=routes.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=igw.id,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.second_gateway_subnet_id = subnet.id
        self.route_table_ids.append(routes.id)
        self.internet_path += [default_route, association]

    def _subnet(
        self,
        vpc: aws.ec2.Vpc,
        role: str,
        cidr: ipaddress.IPv4Network,
        *,
        zone: pulumi.Input[str] | None = None,
        pinned: bool | None = None,
    ) -> tuple[aws.ec2.Subnet, aws.ec2.RouteTable, aws.ec2.RouteTableAssociation]:
        """A subnet with a route table of its own (the gateway adds the peer route), in the
        site's zone unless `zone` names another (the second gateway's)."""
        name, child = f"{self._site}-{role}", pulumi.ResourceOptions(parent=self)
        pinned = self._inputs.zone_pinned if pinned is None else pinned
        subnet = aws.ec2.Subnet(
            name,
            vpc_id=vpc.id,
            cidr_block=str(cidr),
            availability_zone=self._inputs.availability_zone if zone is None else zone,
            # Only the gateway gets a public address, and it asks for one itself.
            map_public_ip_on_launch=False,
            tags=self._tags(role),
            opts=child
            if pinned
            # A zone that moved would replace the subnet create-before-delete with the
            # same CIDR, which AWS refuses (InvalidSubnet.Conflict, pulumi-awsx#910).
            else pulumi.ResourceOptions(parent=self, ignore_changes=["availabilityZone"]),
        )
        routes = aws.ec2.RouteTable(name, vpc_id=vpc.id, tags=self._tags(role), opts=child)
        association = aws.ec2.RouteTableAssociation(
            name, subnet_id=subnet.id, route_table_id=routes.id, opts=child
        )
        return subnet, routes, association
