"""What the lab builds, derived from a Plan and the core's facts and nothing else.

The plan says which route tables, routes, security-group rules, Elastic IPs, source/dest
checks, user data and keys exist; the core says where things sit in each site. This
module reads both and returns plain data. It does not touch the system, so it can be
checked without root.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from core.config import load_stack_config
from core.facts import KEY_PARAMETER_LEAF, GatewayFacts, first_host, gateway_facts, vpc_router
from core.render import decode_user_data
from lab import PREFIX, LabError
from plan import provider_model
from plan.engine import Plan, PlannedResource, Unknown, reveal

IPv4Address = ipaddress.IPv4Address
IPv4Interface = ipaddress.IPv4Interface
IPv4Network = ipaddress.IPv4Network

EC2_MTU = 9001  # what EC2 reports on its interfaces (jumbo frames inside a VPC)
INTERNET_MTU = 1500  # what an internet gateway or an inter-region path carries
# The lab's own "public" addresses come from the documentation ranges only (RFC 5737),
# so nothing it sends could ever be meant for a real host.
DOCUMENTATION = tuple(
    IPv4Network(net) for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
EDGE_LINKS = IPv4Network("192.0.2.0/24")  # /30 per site between its IGW and the internet
# On the internet, not a peer; high in its range, clear of the example offices' NAT pools
# (derive refuses a stack that admits it).
STRANGER = IPv4Interface("198.51.100.200/24")
STRANGER_ROUTER = IPv4Interface("198.51.100.1/24")
# Each gateway of a site with two gateways has an auto-assigned public IPv4 address of its
# own (the interface's AssociatePublicIpAddress attribute), used for its own egress (SSM,
# EC2, CloudWatch) whenever it does not hold the site's Elastic IP: two per site, in site
# order, out of the top of 192.0.2.0/24 (the edge links take its lower half, the AWS
# stand-in 192.0.2.128/30); derive refuses a stack that admits one.
AUTO_PUBLIC = IPv4Network("192.0.2.192/26")
# A NATed office's uplink, between its gateway and its masquerading router: private
# (RFC 6598 shared address space, as a carrier's NAT would hand out), one /30 per office.
NAT_INSIDE = IPv4Network("100.64.0.0/16")
# Names of links inside the lab's namespaces (IFNAMSIZ leaves 15 characters).
LINK_PUBLIC = f"{PREFIX}pub"
LINK_PUBLIC2 = f"{PREFIX}pub2"  # the second gateway's public subnet (gateways: 2)
LINK_PRIVATE = f"{PREFIX}prv"
LINK_IGW = f"{PREFIX}igw"
LINK_HOST = f"{PREFIX}eth0"
LINK_STRANGER = f"{PREFIX}x"
LINK_UPLINK = f"{PREFIX}up"  # an office gateway's (or its NAT router's) internet uplink
LINK_LAN = f"{PREFIX}lan"  # an office gateway's (or NAT router's) inside link
PROBE_INTERFACE = f"{PREFIX}probe"

TYPE_VPC = "aws:ec2/vpc:Vpc"
TYPE_SUBNET = "aws:ec2/subnet:Subnet"
TYPE_IGW = "aws:ec2/internetGateway:InternetGateway"
TYPE_ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
TYPE_ASSOCIATION = "aws:ec2/routeTableAssociation:RouteTableAssociation"
TYPE_ROUTE = "aws:ec2/route:Route"
TYPE_INSTANCE = "aws:ec2/instance:Instance"
TYPE_INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
TYPE_EIP = "aws:ec2/eip:Eip"
TYPE_EIP_ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
TYPE_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
TYPE_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
TYPE_PARAMETER = "aws:ssm/parameter:Parameter"


@dataclass(frozen=True)
class SecurityGroupRule:
    """One security-group rule as declared (`-1` means every protocol).

    `cidr` is the source of an ingress rule and the destination of an egress rule. For
    ICMP, AWS puts the ICMP type in from_port and the code in to_port, -1 meaning any
    (SecurityGroupIngressRule / SecurityGroupEgressRule in the AWS provider's docs).
    """

    name: str
    direction: Literal["ingress", "egress"]
    protocol: str
    from_port: int | None
    to_port: int | None
    cidr: IPv4Network

    def describe(self) -> str:
        ports = ""
        if self.protocol in ("tcp", "udp") and self.from_port is not None:
            ports = f"/{self.from_port}"
            if self.to_port not in (None, self.from_port):
                ports += f"-{self.to_port}"
        elif self.protocol == "icmp" and self.from_port not in (None, -1):
            ports = f" type {self.from_port}"
            if self.to_port not in (None, -1):
                ports += f" code {self.to_port}"
        proto = "all" if self.protocol == "-1" else self.protocol
        return f"{proto}{ports} {'from' if self.direction == 'ingress' else 'to'} {self.cidr}"


@dataclass(frozen=True)
class Route:
    """One route of a route table, resolved to what it means inside the lab."""

    name: str
    destination: IPv4Network
    kind: Literal["local", "gateway", "internet", "unknown"]
    via: IPv4Address | None  # the gateway's private address for an ENI target
    target: str

    def describe(self) -> str:
        return f"{self.destination} -> {self.target}"


@dataclass(frozen=True)
class RouteTable:
    id: str
    name: str
    table: int  # the Linux routing table that stands for it in the VPC router
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class Host:
    name: str  # a1, b1, ...
    namespace: str
    address: IPv4Interface
    router: IPv4Address
    # The workloads' security group, if the plan declares one; None leaves the host open.
    ingress: tuple[SecurityGroupRule, ...] | None
    egress: tuple[SecurityGroupRule, ...] | None


@dataclass(frozen=True)
class Gateway:
    namespace: str
    instance: str  # the plan's resource name
    eni: str
    private_address: IPv4Interface
    elastic_ip: IPv4Address
    source_dest_check: bool
    ingress: tuple[SecurityGroupRule, ...]
    egress: tuple[SecurityGroupRule, ...]
    user_data: str = field(repr=False)  # the cloud-config text (EC2 gets it gzipped)
    # What `pulumi up` puts in SSM for this gateway: name -> (type, value); never printed.
    parameters: dict[str, tuple[str, str]] = field(repr=False, default_factory=dict)
    # The instance's id (the mocks'): what the lab's IMDS answers, and the probe's metrics name.
    instance_id: str = ""
    # With two gateways per site (gateways: 2): which one (0 or 1), its subnet's link on the
    # VPC router and that subnet's router address, and its auto-assigned public address
    # (None with one gateway: it always holds the Elastic IP).
    index: int = 0
    link: str = LINK_PUBLIC
    router: IPv4Interface | None = None
    auto_public_ip: IPv4Address | None = None

    @property
    def private_key(self) -> str:
        """The key in its SSM parameter (the name's last part says which it is)."""
        for name, (_, value) in self.parameters.items():
            if name.endswith("/" + KEY_PARAMETER_LEAF):
                return value
        raise LabError(f"plan: no key parameter for gateway {self.instance}")


@dataclass(frozen=True)
class Site:
    index: int
    letter: str
    facts: GatewayFacts = field(repr=False)
    vpc_namespace: str
    public_router: IPv4Interface  # the VPC router in the gateway's subnet
    private_router: IPv4Interface  # the VPC router in the workloads' subnet
    edge: IPv4Interface  # the internet gateway's side of the link to the internet
    edge_peer: IPv4Interface  # the internet's side of that link
    edge_link: str  # its name inside the internet namespace
    public_table: RouteTable
    private_table: RouteTable
    gateway: Gateway
    hosts: tuple[Host, ...]
    notes: tuple[str, ...]
    # A site with two gateways: the second one, its public subnet's route table, and the
    # plan's Elastic IP allocation (no EipAssociation: the gateways associate it).
    second: Gateway | None = None
    second_public_table: RouteTable | None = None
    allocation_id: str = ""

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def gateways(self) -> tuple[Gateway, ...]:
        """Every gateway of the site, the first first."""
        return (self.gateway,) if self.second is None else (self.gateway, self.second)

    @property
    def tables(self) -> tuple[RouteTable, ...]:
        """Its route tables, each once (an existing VPC may give both subnets one)."""
        tables = [self.public_table, self.private_table]
        if self.second_public_table is not None:
            tables.append(self.second_public_table)
        return tuple(dict.fromkeys(tables))

    @property
    def highly_available(self) -> bool:
        return self.second is not None

    def gateway_router(self, gateway: Gateway) -> IPv4Interface:
        """The VPC router's address in the gateway's subnet."""
        return gateway.router or self.public_router

    @property
    def interface(self) -> str:
        return self.facts.interface


@dataclass(frozen=True)
class NatRouter:
    """A NATed office's router on its uplink: it masquerades what the office gateway sends
    to the internet behind `outside` (an address in the office's sourceCidr). It sits
    outside the tunnel path: it only ever sees the outer, encrypted packets."""

    namespace: str
    outside: IPv4Address  # on its internet uplink, inside the office's sourceCidr
    inside: IPv4Interface  # towards the office gateway


@dataclass(frozen=True)
class OfficeGateway:
    """An office's gateway host (Ubuntu, as in the guide), configured only by its bundle."""

    namespace: str
    private_address: IPv4Interface  # on the office LAN: its hosts' router
    # Its uplink: the office's publicIp (/32, on the internet link), or behind NAT its
    # address on the link to the NAT router.
    uplink: IPv4Interface
    uplink_router: IPv4Address


@dataclass(frozen=True)
class Office:
    """A site outside AWS: a LAN with hosts behind a gateway host, on the internet
    directly (publicIp) or behind a masquerading router (sourceCidr)."""

    index: int
    letter: str
    facts: GatewayFacts = field(repr=False)
    gateway: OfficeGateway
    nat: NatRouter | None
    edge_peer: IPv4Interface  # the internet's side of its uplink
    edge_link: str  # its uplink's name inside the internet namespace
    hosts: tuple[Host, ...]

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def interface(self) -> str:
        return self.facts.interface

    @property
    def public_address(self) -> IPv4Address:
        """Where its packets come from on the internet."""
        return self.nat.outside if self.nat is not None else self.gateway.uplink.ip


@dataclass(frozen=True)
class Topology:
    stack: str
    sites: tuple[Site, ...]  # the AWS sites, in site order
    internet_namespace: str
    stranger_namespace: str
    offices: tuple[Office, ...] = ()  # the sites outside AWS, in site order
    hub: str | None = None

    @property
    def namespaces(self) -> list[str]:
        names = [self.internet_namespace, self.stranger_namespace]
        for site in self.sites:
            names += [site.vpc_namespace, *(gateway.namespace for gateway in site.gateways)]
            names += [host.namespace for host in site.hosts]
        for office in self.offices:
            names.append(office.gateway.namespace)
            if office.nat is not None:
                names.append(office.nat.namespace)
            names += [host.namespace for host in office.hosts]
        return names

    @property
    def members(self) -> tuple[Site | Office, ...]:
        """Every site, AWS or not, in the stack's site order."""
        return tuple(sorted((*self.sites, *self.offices), key=lambda member: member.index))

    def member(self, name: str) -> Site | Office:
        return next(member for member in self.members if member.name == name)

    @property
    def gateway_namespaces(self) -> list[str]:
        """Every namespace that runs a WireGuard gateway (each gets its own
        /var/run/wireguard: lab.netns)."""
        names = []
        for member in self.members:
            if isinstance(member, Site):
                names += [gateway.namespace for gateway in member.gateways]
            else:
                names.append(member.gateway.namespace)
        return names


def resource_id(resource: PlannedResource) -> str:
    """The id the mocks gave a resource (the engine records it with every output)."""
    id_ = resource.outputs.get("id")
    if not isinstance(id_, str):
        raise LabError(f"plan: {resource.type} {resource.name} has no id")
    return id_


def _value(resource: PlannedResource, key: str) -> Any:
    value = reveal(resource.inputs.get(key))
    if isinstance(value, Unknown):
        raise LabError(f"plan: {resource.type} {resource.name}: {key} is unknown at plan time")
    if value is None:
        value = reveal(resource.outputs.get(key))
    return value


def _documentation_address(value: Any, what: str) -> IPv4Address:
    try:
        address = IPv4Address(str(value))
    except ValueError:
        raise LabError(f"plan: {what} is not an IPv4 address: {value!r}") from None
    if not any(address in net for net in DOCUMENTATION):
        raise LabError(
            f"plan: {what} {address} is not a documentation address (RFC 5737);"
            " the lab sends traffic only to those"
        )
    return address


def _ingress_rules(plan: Plan, group_ids: list[str]) -> tuple[SecurityGroupRule, ...]:
    return _rules(plan, "ingress", group_ids)


def _egress_rules(plan: Plan, group_ids: list[str]) -> tuple[SecurityGroupRule, ...]:
    # A group the provider creates has no egress rule at all: "By default, AWS creates an
    # ALLOW ALL egress rule when creating a new Security Group inside of a VPC. When
    # creating a new Security Group inside a VPC, [the provider] will remove this default
    # rule" (aws.ec2.SecurityGroup / aws_security_group docs, "NOTE on Egress rules").
    return _rules(plan, "egress", group_ids)


def _rules(
    plan: Plan, direction: Literal["ingress", "egress"], group_ids: list[str]
) -> tuple[SecurityGroupRule, ...]:
    rules = []
    for rule in plan.by_type(TYPE_INGRESS if direction == "ingress" else TYPE_EGRESS):
        if _value(rule, "securityGroupId") not in group_ids:
            continue
        cidr = _value(rule, "cidrIpv4")
        if not isinstance(cidr, str):
            # Rules by prefix list or referenced group have no lab equivalent yet.
            raise LabError(f"plan: {direction} rule {rule.name} has no cidrIpv4 the lab can apply")
        from_port, to_port = _value(rule, "fromPort"), _value(rule, "toPort")
        rules.append(
            SecurityGroupRule(
                name=rule.name,
                direction=direction,
                protocol=str(_value(rule, "ipProtocol")).lower(),
                from_port=int(from_port) if from_port is not None else None,
                to_port=int(to_port) if to_port is not None else None,
                cidr=IPv4Network(cidr),
            )
        )
    return tuple(rules)


def _site_vpc_id(plan: Plan, facts: GatewayFacts) -> str | None:
    if facts.site.vpc_id:
        return facts.site.vpc_id
    for vpc in plan.by_type(TYPE_VPC):
        if _value(vpc, "cidrBlock") == str(facts.site.cidr):
            return resource_id(vpc)
    return None


def _subnet_id(plan: Plan, vpc_id: str | None, cidr: IPv4Network) -> str | None:
    for subnet in plan.by_type(TYPE_SUBNET):
        if _value(subnet, "vpcId") == vpc_id and _value(subnet, "cidrBlock") == str(cidr):
            return resource_id(subnet)
    return None


def _gateway_interface(plan: Plan, facts: GatewayFacts, subnet_id: str | None) -> PlannedResource:
    """The gateway's standalone interface: in the site's public subnet."""
    wanted = facts.site.subnet_id or subnet_id
    found = [i for i in plan.by_type(TYPE_INTERFACE) if _value(i, "subnetId") == wanted]
    if len(found) != 1:
        raise LabError(
            f"plan: expected one gateway network interface in site {facts.name}'s public"
            f" subnet, found {len(found)}"
        )
    return found[0]


def _gateway_instance(plan: Plan, facts: GatewayFacts, interface_id: str) -> PlannedResource:
    """The instance whose device 0 is the gateway's interface."""
    found = []
    for instance in plan.by_type(TYPE_INSTANCE):
        # Device 0: the deprecated block the program uses (see components/gateway.py),
        # or primaryNetworkInterface.
        attached = [
            a
            for a in _value(instance, "networkInterfaces") or []
            if isinstance(a, dict) and a.get("deviceIndex") == 0
        ] + [_value(instance, "primaryNetworkInterface")]
        if any(
            isinstance(a, dict) and a.get("networkInterfaceId") == interface_id for a in attached
        ):
            found.append(instance)
    if len(found) != 1:
        raise LabError(
            f"plan: expected one instance on site {facts.name}'s gateway interface,"
            f" found {len(found)}"
        )
    return found[0]


def _elastic_ip(plan: Plan, interface_id: str, site: str) -> IPv4Address:
    for association in plan.by_type(TYPE_EIP_ASSOCIATION):
        if _value(association, "networkInterfaceId") != interface_id:
            continue
        allocation = _value(association, "allocationId")
        for eip in plan.by_type(TYPE_EIP):
            if reveal(eip.outputs.get("allocationId")) == allocation:
                return _documentation_address(
                    eip.outputs.get("publicIp"), f"Elastic IP of site {site}"
                )
    raise LabError(f"plan: no Elastic IP is associated with site {site}'s gateway interface")


def _parameters(plan: Plan, facts: GatewayFacts) -> dict[str, tuple[str, str]]:
    """Every SSM parameter this gateway reads, with what `pulumi up` would store."""
    found: dict[str, tuple[str, str]] = {}
    for parameter in plan.by_type(TYPE_PARAMETER):
        name = _value(parameter, "name")
        if name in facts.parameter_names:
            value = _value(parameter, "value") or _value(parameter, "insecureValue")
            if not isinstance(value, str) or not value:
                raise LabError(f"plan: SSM parameter {name} has no value")
            found[str(name)] = (str(_value(parameter, "type")), value)
    missing = sorted(set(facts.parameter_names) - found.keys())
    if missing:
        raise LabError(f"plan: no SSM parameter {', '.join(missing)}")
    return found


def _route_tables(
    plan: Plan, facts: GatewayFacts, vpc_id: str | None, public: str | None, private: str | None
) -> tuple[tuple[str, str], tuple[str, str], list[str]]:
    """(id, name) of the public and the private subnet's route tables, and notes."""
    names = {resource_id(t): t.name for t in plan.by_type(TYPE_ROUTE_TABLE)}
    associated: dict[str, str] = {}
    for association in plan.by_type(TYPE_ASSOCIATION):
        associated[str(_value(association, "subnetId"))] = str(_value(association, "routeTableId"))
    if public in associated and private in associated:
        pub, prv = associated[str(public)], associated[str(private)]
        return (pub, names.get(pub, pub)), (prv, names.get(prv, prv)), []
    if facts.site.route_table_ids:
        # An existing VPC: the plan cannot say which table serves which subnet.
        ids = facts.site.route_table_ids
        note = (
            f"existing VPC: {ids[0]} assumed for the gateway's subnet, {ids[-1]} for the"
            " workloads', with the VPC's own internet route"
        )
        return (ids[0], ids[0]), (ids[-1], ids[-1]), [note]
    raise LabError(f"plan: site {facts.name}'s subnets have no route tables")


def _routes(
    plan: Plan,
    table_id: str,
    *,
    facts: GatewayFacts,
    gateways_by_eni: dict[str, tuple[str, IPv4Address]],  # eni -> (label, address)
    igw_ids: set[str],
    assume_internet: bool,
) -> tuple[Route, ...]:
    # AWS's implicit local route: the whole VPC stays inside it.
    routes = [Route("local", facts.site.cidr, "local", None, "local")]
    for route in plan.by_type(TYPE_ROUTE):
        if _value(route, "routeTableId") != table_id:
            continue
        destination = IPv4Network(str(_value(route, "destinationCidrBlock")))
        eni, igw = _value(route, "networkInterfaceId"), _value(route, "gatewayId")
        if isinstance(eni, str) and eni in gateways_by_eni:
            label, address = gateways_by_eni[eni]
            routes.append(Route(route.name, destination, "gateway", address, label))
        elif isinstance(igw, str) and igw in igw_ids:
            routes.append(Route(route.name, destination, "internet", None, "internet gateway"))
        else:
            # A target the lab does not model: packets for it go nowhere, as they would
            # with a broken route.
            routes.append(Route(route.name, destination, "unknown", None, str(eni or igw)))
    if assume_internet and not any(r.kind == "internet" for r in routes):
        routes.append(Route("assumed", IPv4Network("0.0.0.0/0"), "internet", None, "internet"))
    return tuple(routes)


def _vpc_router(net: IPv4Network) -> IPv4Interface:
    return IPv4Interface(f"{vpc_router(net)}/{net.prefixlen}")


def derive(plan: Plan) -> Topology:
    """The lab's topology for a plan; LabError if the plan lacks something the lab needs."""
    config = load_stack_config(plan.config)
    every = gateway_facts(config, plan.stack)
    if len(every) > len(LETTERS):
        raise LabError(f"the lab builds at most {len(LETTERS)} sites, not {len(every)}")
    for facts in every:
        if not facts.site.cidr.is_private:
            raise LabError(f"site {facts.name}: {facts.site.cidr} is not a private range")
        external = facts.site.external
        if external is not None and STRANGER.ip in external.admitted:
            raise LabError(
                f"site {facts.name}: the lab's stranger {STRANGER.ip} is inside"
                f" {external.admitted}, which the security groups admit"
            )
        if external is not None and external.admitted.overlaps(AUTO_PUBLIC):
            raise LabError(
                f"site {facts.name}: {external.admitted} overlaps {AUTO_PUBLIC}, the lab's"
                " auto-assigned public addresses of the gateways"
            )
    both = [facts for facts in every if facts.is_aws]
    indexes = {facts.name: index for index, facts in enumerate(every)}
    instances = {f.name: _instance_for(plan, f) for f in both}
    seconds = {f.name: _second_interface(plan, f, instances[f.name][1]) for f in both}
    gateways_by_eni: dict[str, tuple[str, IPv4Address]] = {}
    for facts in both:
        interface = instances[facts.name][0]
        second = seconds[facts.name]
        name = f"{facts.name} gateway" + (" 0" if second else "")
        gateways_by_eni[resource_id(interface)] = (name, _private_ip(interface, facts))
        if second is not None:
            address = _private_ip(second[0], facts, second=True)
            gateways_by_eni[resource_id(second[0])] = (f"{facts.name} gateway 1", address)
    igw_ids = {resource_id(igw) for igw in plan.by_type(TYPE_IGW)}
    workload_groups = _workload_groups(plan)

    sites = []
    edges = list(EDGE_LINKS.subnets(new_prefix=30))
    for facts in both:
        index = indexes[facts.name]
        letter = LETTERS[index]
        interface, vpc_id, public_id, private_id = instances[facts.name]
        (pub_id, pub_name), (prv_id, prv_name), notes = _route_tables(
            plan, facts, vpc_id, public_id, private_id
        )
        existing = facts.site.uses_existing_vpc
        wanted = [(pub_id, pub_name, True), (prv_id, prv_name, False)]
        second = seconds[facts.name]
        if second is not None:
            wanted.append((*_second_route_table(plan, facts, second[1]), False))
        tables = []
        for number, (table_id, table_name, public) in enumerate(wanted):
            routes = _routes(
                plan,
                table_id,
                facts=facts,
                gateways_by_eni=gateways_by_eni,
                igw_ids=igw_ids,
                assume_internet=existing and public,
            )
            tables.append(RouteTable(table_id, table_name, 101 + number, routes))
        if pub_id == prv_id:
            tables[1] = tables[0]
        second_gateway = None
        if second is None:
            gateway = _gateway(plan, facts, interface, facts.layout.public_subnet)
        else:
            # Without an EipAssociation in the plan (the gateways associate the Elastic IP
            # themselves), the site's Elastic IP is the one its outputs name.
            elastic_ip, allocation_id = _site_elastic_ip(plan, facts)
            subnet = facts.layout.second_public_subnet
            assert subnet is not None
            auto = list(AUTO_PUBLIC)[2 * index : 2 * index + 2]
            gateway = _gateway(
                plan,
                facts,
                interface,
                facts.layout.public_subnet,
                elastic_ip=elastic_ip,
                auto_public_ip=auto[0],
            )
            second_gateway = _gateway(
                plan,
                facts,
                second[0],
                subnet,
                elastic_ip=elastic_ip,
                index=1,
                auto_public_ip=auto[1],
            )
        private = facts.layout.private_subnet
        workload_group = workload_groups.get(facts.name)
        host = Host(
            name=f"{letter}1",
            namespace=f"{PREFIX}{letter}1",
            # A site's canary (sites[].canary) is its workload host, at the core's address.
            address=IPv4Interface(f"{facts.canary or first_host(private)}/{private.prefixlen}"),
            router=_vpc_router(private).ip,
            ingress=_ingress_rules(plan, [workload_group]) if workload_group else None,
            egress=_egress_rules(plan, [workload_group]) if workload_group else None,
        )
        edge_net = edges[index]
        edge_hosts = list(edge_net.hosts())
        sites.append(
            Site(
                index=index,
                letter=letter,
                facts=facts,
                vpc_namespace=f"{PREFIX}{facts.name}-vpc",
                public_router=_vpc_router(facts.layout.public_subnet),
                private_router=_vpc_router(private),
                edge=IPv4Interface(f"{edge_hosts[1]}/{edge_net.prefixlen}"),
                edge_peer=IPv4Interface(f"{edge_hosts[0]}/{edge_net.prefixlen}"),
                edge_link=f"{PREFIX}{letter}",
                public_table=tables[0],
                private_table=tables[1],
                gateway=gateway,
                hosts=(host,),
                notes=tuple(notes),
                second=second_gateway,
                second_public_table=tables[2] if second is not None else None,
                allocation_id=allocation_id if second is not None else "",
            )
        )
    offices = [
        _office(facts, indexes[facts.name], edges[indexes[facts.name]])
        for facts in every
        if not facts.is_aws
    ]
    return Topology(
        stack=plan.stack,
        sites=tuple(sites),
        internet_namespace=f"{PREFIX}inet",
        stranger_namespace=f"{PREFIX}stranger",
        offices=tuple(offices),
        hub=config.topology.hub,
    )


def _gateway(
    plan: Plan,
    facts: GatewayFacts,
    interface: PlannedResource,
    subnet: IPv4Network,
    *,
    elastic_ip: IPv4Address | None = None,
    index: int = 0,
    auto_public_ip: IPv4Address | None = None,
) -> Gateway:
    """A gateway: its interface, the instance on it, its group, user data and keys."""
    interface_id = resource_id(interface)
    instance = _gateway_instance(plan, facts, interface_id)
    group_ids = [str(g) for g in _value(interface, "securityGroups") or []]
    check = _value(interface, "sourceDestCheck")
    packed = _value(instance, "userDataBase64")
    if not isinstance(packed, str):
        raise LabError(f"plan: site {facts.name}'s gateway has no user data")
    return Gateway(
        namespace=f"{PREFIX}{facts.name}-gw" + ("2" if index else ""),
        instance=instance.name,
        instance_id=resource_id(instance),
        eni=interface_id,
        private_address=IPv4Interface(
            f"{_private_ip(interface, facts, second=index == 1)}/{subnet.prefixlen}"
        ),
        elastic_ip=elastic_ip or _elastic_ip(plan, interface_id, facts.name),
        # AWS turns the check on unless told otherwise, and an instance whose check
        # the provider does not suppress writes it on at the next `pulumi up`.
        source_dest_check=provider_model.effective_source_dest_check(
            reveal(instance.inputs), {"sourceDestCheck": check}
        ),
        ingress=_ingress_rules(plan, group_ids),
        egress=_egress_rules(plan, group_ids),
        user_data=decode_user_data(packed),
        parameters=_parameters(plan, facts),
        index=index,
        link=LINK_PUBLIC2 if index else LINK_PUBLIC,
        router=_vpc_router(subnet) if index else None,
        auto_public_ip=auto_public_ip,
    )


def _second_interface(
    plan: Plan, facts: GatewayFacts, vpc_id: str | None
) -> tuple[PlannedResource, str] | None:
    """A site with two gateways: the second gateway's interface and its subnet's id."""
    subnet = facts.layout.second_public_subnet
    if not facts.highly_available or subnet is None:
        return None
    subnet_id = _subnet_id(plan, vpc_id, subnet)
    found = [i for i in plan.by_type(TYPE_INTERFACE) if _value(i, "subnetId") == subnet_id]
    if subnet_id is None or len(found) != 1:
        raise LabError(
            f"plan: expected one network interface in site {facts.name}'s second public"
            f" subnet {subnet}, found {len(found)}"
        )
    return found[0], subnet_id


def _second_route_table(plan: Plan, facts: GatewayFacts, subnet_id: str) -> tuple[str, str]:
    """(id, name) of the route table of the second gateway's subnet."""
    names = {resource_id(t): t.name for t in plan.by_type(TYPE_ROUTE_TABLE)}
    for association in plan.by_type(TYPE_ASSOCIATION):
        if _value(association, "subnetId") == subnet_id:
            table = str(_value(association, "routeTableId"))
            return table, names.get(table, table)
    raise LabError(f"plan: site {facts.name}'s second public subnet has no route table")


def _site_elastic_ip(plan: Plan, facts: GatewayFacts) -> tuple[IPv4Address, str]:
    """(address, allocation id) of the site's Elastic IP: the one its `publicIp` output
    names (a site with two gateways has no EipAssociation in the plan)."""
    sites = plan.exports.get("sites")
    wanted = sites.get(facts.name, {}).get("publicIp") if isinstance(sites, dict) else None
    for eip in plan.by_type(TYPE_EIP):
        public = reveal(eip.outputs.get("publicIp"))
        if public is not None and str(public) == str(wanted):
            allocation = reveal(eip.outputs.get("allocationId")) or resource_id(eip)
            address = _documentation_address(public, f"Elastic IP of site {facts.name}")
            return address, str(allocation)
    raise LabError(f"plan: no Elastic IP is site {facts.name}'s publicIp output")


# One letter per site in site order (hosts a1, b1, ...); the internet links take one
# /30 each out of 192.0.2.0/25 (the AWS stand-in sits at 192.0.2.128/30).
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEF"


def _office(facts: GatewayFacts, index: int, edge: IPv4Network) -> Office:
    """An office: its LAN is the site's cidr, the gateway at its first host, one host at
    the fourth (as AWS sites' first workload addresses); its uplink as configured."""
    external = facts.site.external
    assert external is not None
    letter = LETTERS[index]
    lan = facts.site.cidr
    router = IPv4Interface(f"{lan.network_address + 1}/{lan.prefixlen}")
    edge_peer = IPv4Interface(f"{next(edge.hosts())}/{edge.prefixlen}")
    nat = None
    if external.public_ip is not None:
        address = _documentation_address(external.public_ip, f"site {facts.name}'s publicIp")
        uplink = IPv4Interface(f"{address}/32")
        uplink_router = edge_peer.ip
    else:
        assert external.source_cidr is not None
        hosts = [
            h for h in external.source_cidr.hosts() if h not in (STRANGER.ip, STRANGER_ROUTER.ip)
        ] or list(external.source_cidr)
        outside = _documentation_address(hosts[-1], f"site {facts.name}'s sourceCidr")
        inside = list(NAT_INSIDE.subnets(new_prefix=30))[index]
        router_side, gateway_side = list(inside.hosts())
        nat = NatRouter(
            namespace=f"{PREFIX}{facts.name}-nat",
            outside=outside,
            inside=IPv4Interface(f"{router_side}/30"),
        )
        uplink = IPv4Interface(f"{gateway_side}/30")
        uplink_router = router_side
    host = Host(
        name=f"{letter}1",
        namespace=f"{PREFIX}{letter}1",
        address=IPv4Interface(f"{lan.network_address + 4}/{lan.prefixlen}"),
        router=router.ip,
        ingress=None,
        egress=None,
    )
    return Office(
        index=index,
        letter=letter,
        facts=facts,
        gateway=OfficeGateway(
            namespace=f"{PREFIX}{facts.name}-gw",
            private_address=router,
            uplink=uplink,
            uplink_router=uplink_router,
        ),
        nat=nat,
        edge_peer=edge_peer,
        edge_link=f"{PREFIX}{letter}",
        hosts=(host,),
    )


def _instance_for(
    plan: Plan, facts: GatewayFacts
) -> tuple[PlannedResource, str | None, str | None, str | None]:
    vpc_id = _site_vpc_id(plan, facts)
    public_id = _subnet_id(plan, vpc_id, facts.layout.public_subnet)
    private_id = _subnet_id(plan, vpc_id, facts.layout.private_subnet)
    return _gateway_interface(plan, facts, public_id), vpc_id, public_id, private_id


def _private_ip(
    interface: PlannedResource, facts: GatewayFacts, *, second: bool = False
) -> IPv4Address:
    declared = reveal(interface.inputs.get("privateIps"))
    if isinstance(declared, list) and declared and isinstance(declared[0], str):
        return IPv4Address(declared[0])
    if second:
        address = facts.layout.second_gateway_private_ip
        assert address is not None
        return address
    # An instance in an existing subnet gets its address from AWS; the lab uses the
    # nominal layout's.
    return facts.layout.gateway_private_ip


def _workload_groups(plan: Plan) -> dict[str, str]:
    """site -> the workloads' security group id, if the program exports one."""
    sites = plan.exports.get("sites")
    groups: dict[str, str] = {}
    if isinstance(sites, dict):
        for name, values in sites.items():
            group = values.get("workloadSecurityGroupId") if isinstance(values, dict) else None
            if isinstance(group, str):
                groups[str(name)] = group
    return groups
