"""Materializes a Topology in network namespaces, each piece behaving as its AWS part.

- VPC router (one namespace per site): one Linux routing table per declared route table,
  chosen by the subnet a packet arrives from; the source/dest check; the internet
  gateway's 1:1 Elastic IP translation on its uplink. It does not decrement TTL, like
  AWS's router, which never shows up in a traceroute.
- Gateway: an instance in the public subnet (MTU 9001) whose security group is applied
  on its interface as AWS enforces it (ingress and egress, stateful, nothing "related"),
  in its own nftables table so that `iptables-save` in the namespace shows only what the
  instance itself configured. It boots from its user data:
  the files it writes and its runcmd, whose apply unit runs the gateway's own apply
  script, which reads its desired state and keys from SSM (moto, lab/aws.py) and starts
  wg-quick. systemd is the one stand-in: a `systemctl` that starts and stops wg-quick.
- Internet: links of 9001 bytes that drop anything over 1500, so a tunnel MTU that is
  too big is a black hole, as between AWS regions; plus a host that is not a peer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.render import parse_user_data, written_files
from lab import (
    GATEWAY_RUN,
    NETNS_ETC,
    PREFIX,
    REPO,
    STATE_DIR,
    LabError,
    aws,
    controller,
    netns,
)
from lab.state import State
from lab.topology import (
    EC2_MTU,
    INTERNET_MTU,
    LINK_HOST,
    LINK_IGW,
    LINK_LAN,
    LINK_PRIVATE,
    LINK_PUBLIC,
    LINK_PUBLIC2,
    LINK_STRANGER,
    LINK_UPLINK,
    PROBE_INTERFACE,
    STRANGER,
    STRANGER_ROUTER,
    Gateway,
    Office,
    RouteTable,
    SecurityGroupRule,
    Site,
    Topology,
)

EDGE_TABLE = 100  # inbound from the internet gateway: the VPC's local routes only
WG_QUICK_TIMEOUT = 30.0

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def etc_dir(namespace: str) -> Path:
    return NETNS_ETC / namespace


def in_etc(namespace: str, path: str) -> Path:
    """Where a file the instance would write under /etc lives for `ip netns exec`."""
    if not path.startswith("/etc/"):
        raise ValueError(f"{path} is not under /etc")
    return etc_dir(namespace) / path.removeprefix("/etc/")


def wg_env(state: State) -> dict[str, str]:
    if state.implementation == "wireguard-go":
        return {"WG_QUICK_USERSPACE_IMPLEMENTATION": "wireguard-go"}
    return {}


def build(
    topology: Topology,
    state: State,
    progress: Progress = _quiet,
    office_keys: Mapping[str, str] | None = None,
) -> list[str]:
    """Builds everything, recording each piece in `state` first; returns notes to show.
    `office_keys`: each office's private key (lab.office.with_lab_keys)."""
    notes: list[str] = []
    progress("namespaces and links")
    # moto's server takes a second or two to start: it starts first, on the internet, and
    # gets the parameters and interfaces beside the rest of the build.
    _namespaces(topology, state)
    moto = _aws_stand_in(topology, state)
    with ThreadPoolExecutor(max_workers=1) as pool:
        stand_in = pool.submit(_aws_contents, topology, moto)
        _links(topology)
        _addresses_and_routes(topology)
        progress("VPC routers, internet gateways, security groups, the internet")
        notes += _network(topology)
        stand_in.result()
    if any(site.highly_available for site in topology.sites):
        progress("the lab's controller: VPC routers and internet gateways follow moto's EC2")
        controller.start(state)
    state.implementation = _wireguard_implementation(topology.internet_namespace)
    state.save()
    names = ", ".join(site.name for site in topology.sites)
    progress(f"booting the gateways ({names}) from their user data ({state.implementation})")
    notes += boot_gateways(topology.sites, state)
    if topology.offices:
        names = ", ".join(office.name for office in topology.offices)
        progress(f"installing the offices ({names}) from their bundles (install.sh)")
        notes += install_offices(topology, state, office_keys or {})
    return notes


def _network(topology: Topology) -> list[str]:
    notes: list[str] = []
    for site in topology.sites:
        _vpc_router_rules(site)
        security_groups(site)
        notes += [f"{site.name}: {note}" for note in site.notes]
    for office in topology.offices:
        _nat_router(office)
    _internet_carries_packets(topology)
    netns.iptables_restore(
        topology.internet_namespace,
        f"*filter\n-A FORWARD -m length --length {INTERNET_MTU + 1}:65535 -j DROP\nCOMMIT\n",
    )
    return notes


def install_offices(topology: Topology, state: State, office_keys: Mapping[str, str]) -> list[str]:
    """Each office's gateway, configured only by its bundle's install.sh, side by side."""
    from lab import office as offices

    missing = [office.name for office in topology.offices if office.name not in office_keys]
    if missing:
        raise LabError(
            f"site {missing[0]} is an office: the lab plays it with a key of its own"
            " (plan the config from lab.office.with_lab_keys)"
        )
    for office in topology.offices:
        state.add("etc_dirs", str(etc_dir(office.gateway.namespace)))
        state.add("interfaces", office.facts.interface)

    def one(office: Office) -> str:
        line = offices.install(topology, office, state, office_keys[office.name])
        return f"{office.name}: {line}"

    with ThreadPoolExecutor(max_workers=len(topology.offices)) as pool:
        return list(pool.map(one, topology.offices))


def boot_gateways(sites: tuple[Site, ...], state: State) -> list[str]:
    """Boots the gateways side by side, as EC2 boots instances; notes in site order."""
    gateways = [(site, gateway) for site in sites for gateway in site.gateways]
    for site, gateway in gateways:
        state.add("etc_dirs", str(etc_dir(gateway.namespace)))
        state.add("interfaces", site.facts.interface)
    with ThreadPoolExecutor(max_workers=max(1, len(gateways))) as pool:
        booted = list(pool.map(lambda pair: boot_gateway(pair[0], pair[1], state), gateways))
    return [note for notes in booted for note in notes]


def _aws_stand_in(topology: Topology, state: State) -> subprocess.Popen[bytes]:
    """SSM and CloudWatch (moto) on the internet, started (not yet answering)."""
    state.add("namespaces", aws.NAMESPACE)
    netns.add_namespace(aws.NAMESPACE)
    inet = topology.internet_namespace
    # A server on the internet has a 1500-byte link: it never sends what the internet
    # would drop, and TCP's MSS tells the gateway the same.
    netns.veth(inet, aws.LINK, aws.NAMESPACE, LINK_HOST, INTERNET_MTU)
    netns.ip_batch(inet, [f"address add {aws.ROUTER} dev {aws.LINK}", f"link set {aws.LINK} up"])
    netns.ip_batch(
        aws.NAMESPACE,
        [
            f"address add {aws.ADDRESS} dev {LINK_HOST}",
            f"link set {LINK_HOST} up",
            "link set lo up",
            f"route add default via {aws.ROUTER.ip} dev {LINK_HOST}",
        ],
    )
    return aws.launch()


def _aws_contents(topology: Topology, moto: subprocess.Popen[bytes]) -> None:
    """What `pulumi up` puts in SSM, the gateways' interfaces (their source/dest check) and
    instance metadata, once moto answers."""
    aws.wait_for(moto)
    if any(site.highly_available for site in topology.sites):
        # The desired states name moto's ids of a site with two gateways: made first.
        aws.serve_gateways(topology.sites)
        put_parameters(topology)
        return
    # Two clients of moto at once (each a Python with boto3 to start).
    with ThreadPoolExecutor(max_workers=1) as pool:
        parameters = pool.submit(put_parameters, topology)
        aws.serve_gateways(topology.sites)
        parameters.result()


def put_parameters(topology: Topology) -> None:
    """Stores every gateway's parameters as the plan says `pulumi up` would (a desired
    state's failover section with moto's ids: lab.aws.translate_ids)."""
    ids = aws.moto_ids()
    aws.put_parameters(
        [
            {
                "region": site.facts.site.aws_region,
                "name": name,
                "type": kind,
                "value": aws.translate_ids(value, ids),
            }
            for site in topology.sites
            for name, (kind, value) in site.gateway.parameters.items()
        ]
    )


def _namespaces(topology: Topology, state: State) -> None:
    forwarding = {topology.internet_namespace} | {s.vpc_namespace for s in topology.sites}
    forwarding |= {o.nat.namespace for o in topology.offices if o.nat is not None}
    gateways = set(topology.gateway_namespaces)
    names = topology.namespaces
    for namespace in names:
        state.add("namespaces", namespace)

    def one(namespace: str) -> None:
        _namespace(
            namespace, state, gateway=namespace in gateways, forwarding=namespace in forwarding
        )

    # The first alone (`ip netns add` makes /run/netns a mount point once), then the rest
    # side by side: three short commands each.
    one(names[0])
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, names[1:]))


def _site_namespaces(site: Site, state: State) -> None:
    _namespace(site.vpc_namespace, state, gateway=False, forwarding=True)
    _namespace(site.gateway.namespace, state, gateway=True, forwarding=False)
    for host in site.hosts:
        _namespace(host.namespace, state, gateway=False, forwarding=False)


def _namespace(namespace: str, state: State, *, gateway: bool, forwarding: bool) -> None:
    state.add("namespaces", namespace)
    netns.add_namespace(namespace)
    if gateway:
        netns.give_own_wireguard_run(namespace)
        # A fresh Ubuntu instance: no forwarding until its user data turns it on.
        settings = {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.rp_filter": "2"}
        settings["net.ipv4.conf.default.rp_filter"] = "2"
    else:
        # AWS's router filters nothing by reverse path; the rest do not route.
        on = "1" if forwarding else "0"
        settings = {"net.ipv4.ip_forward": on, "net.ipv4.conf.all.rp_filter": "0"}
        settings["net.ipv4.conf.default.rp_filter"] = "0"
    # New namespaces inherit the host's defaults; pin ours before links exist.
    netns.sysctl(namespace, settings)


def _links(topology: Topology) -> None:
    inet = topology.internet_namespace
    for site in topology.sites:
        _site_links(inet, site)
    for office in topology.offices:
        # An office line carries 1500 bytes; its LAN is plain Ethernet.
        gateway = office.gateway.namespace
        if office.nat is None:
            netns.veth(inet, office.edge_link, gateway, LINK_UPLINK, INTERNET_MTU)
        else:
            netns.veth(inet, office.edge_link, office.nat.namespace, LINK_UPLINK, INTERNET_MTU)
            netns.veth(office.nat.namespace, LINK_LAN, gateway, LINK_UPLINK, INTERNET_MTU)
        for host in office.hosts:
            netns.veth(gateway, LINK_LAN, host.namespace, LINK_HOST, INTERNET_MTU)
    netns.veth(inet, LINK_STRANGER, topology.stranger_namespace, LINK_HOST, EC2_MTU)


def _site_links(inet: str, site: Site) -> None:
    netns.veth(inet, site.edge_link, site.vpc_namespace, LINK_IGW, EC2_MTU)
    for gateway in site.gateways:
        netns.veth(site.vpc_namespace, gateway.link, gateway.namespace, LINK_HOST, EC2_MTU)
    # One workload host per site: a veth is the subnet (a bridge would be the next step).
    for host in site.hosts:
        netns.veth(site.vpc_namespace, LINK_PRIVATE, host.namespace, LINK_HOST, EC2_MTU)


def gateway_link(site: Site, address: object) -> str:
    """The VPC router's link to the gateway at `address` (its subnet's)."""
    for gateway in site.gateways:
        if gateway.private_address.ip == address:
            return gateway.link
    return LINK_PUBLIC


def _subnet_routes(site: Site, number: int) -> list[str]:
    """The VPC's subnets, each on its link, in routing table `number`."""
    layout = site.facts.layout
    lines = [f"route add {layout.public_subnet} dev {LINK_PUBLIC} table {number}"]
    if site.second is not None:
        lines.append(
            f"route add {site.second.private_address.network} dev {LINK_PUBLIC2} table {number}"
        )
    lines.append(f"route add {layout.private_subnet} dev {LINK_PRIVATE} table {number}")
    return lines


def _table_routes(site: Site, table: RouteTable) -> list[str]:
    lines = []
    for route in table.routes:
        number = table.table
        if route.kind == "local":
            lines += [
                *_subnet_routes(site, number),
                # The rest of the VPC CIDR has no subnet: AWS drops it.
                f"route add blackhole {route.destination} table {number}",
            ]
        elif route.kind == "gateway":
            link = gateway_link(site, route.via)
            lines.append(f"route add {route.destination} via {route.via} dev {link} table {number}")
        elif route.kind == "internet":
            lines.append(
                f"route add {route.destination} via {site.edge_peer.ip} dev {LINK_IGW}"
                f" table {number}"
            )
        else:
            lines.append(f"route add blackhole {route.destination} table {number}")
    return lines


def _addresses_and_routes(topology: Topology) -> None:
    inet = topology.internet_namespace
    inet_lines = [
        f"address add {STRANGER_ROUTER} dev {LINK_STRANGER}",
        f"link set {LINK_STRANGER} up",
    ]
    for site in topology.sites:
        inet_lines += _site_addresses(site)
    for office in topology.offices:
        inet_lines += _office_addresses(office)
    netns.ip_batch(inet, inet_lines)
    netns.ip_batch(
        topology.stranger_namespace,
        [
            f"address add {STRANGER} dev {LINK_HOST}",
            f"link set {LINK_HOST} up",
            f"route add default via {STRANGER_ROUTER.ip} dev {LINK_HOST}",
        ],
    )


def _site_addresses(site: Site) -> list[str]:
    """A site's VPC router, gateway and hosts; returns the internet's lines for it."""
    lines = [
        f"address add {site.public_router} dev {LINK_PUBLIC}",
        f"address add {site.private_router} dev {LINK_PRIVATE}",
        f"address add {site.edge} dev {LINK_IGW}",
        f"link set {LINK_PUBLIC} up",
        f"link set {LINK_PRIVATE} up",
        f"link set {LINK_IGW} up",
        # What arrives through the internet gateway only reaches the VPC itself.
        *_subnet_routes(site, EDGE_TABLE),
    ]
    if site.second is not None:
        lines[2:2] = [
            f"address add {site.gateway_router(site.second)} dev {LINK_PUBLIC2}",
            f"link set {LINK_PUBLIC2} up",
        ]
    for table in site.tables:
        lines += _table_routes(site, table)
    # The subnet a packet comes from picks its route table; nothing falls through to
    # the namespace's main table, so a missing route means no path, as in AWS.
    rules = [
        (100, LINK_PUBLIC, site.public_table.table),
        (110, LINK_PRIVATE, site.private_table.table),
        (120, LINK_IGW, EDGE_TABLE),
    ]
    if site.second_public_table is not None:
        rules.append((130, LINK_PUBLIC2, site.second_public_table.table))
    for pref, link, number in rules:
        lines += [
            f"rule add pref {pref} iif {link} lookup {number}",
            f"rule add pref {pref + 1} iif {link} blackhole",
        ]
    netns.ip_batch(site.vpc_namespace, lines)

    for gateway in site.gateways:
        gateway_addresses(site, gateway)
    for host in site.hosts:
        netns.ip_batch(
            host.namespace,
            [
                f"address add {host.address} dev {LINK_HOST}",
                f"link set {LINK_HOST} up",
                f"route add default via {host.router} dev {LINK_HOST}",
            ],
        )
    inet = [
        f"address add {site.edge_peer} dev {site.edge_link}",
        f"link set {site.edge_link} up",
        f"route add {site.gateway.elastic_ip}/32 via {site.edge.ip} dev {site.edge_link}",
    ]
    for gateway in site.gateways:
        if gateway.auto_public_ip is not None:
            inet.append(
                f"route add {gateway.auto_public_ip}/32 via {site.edge.ip} dev {site.edge_link}"
            )
    return inet


def gateway_addresses(site: Site, gateway: Gateway) -> None:
    """The gateway's interface: its fixed private address and its subnet's router."""
    netns.ip_batch(
        gateway.namespace,
        [
            f"address add {gateway.private_address} dev {LINK_HOST}",
            f"link set {LINK_HOST} up",
            f"route add default via {site.gateway_router(gateway).ip} dev {LINK_HOST}",
        ],
    )


def add_site(topology: Topology, site: Site, state: State) -> None:
    """Day 2: a new site's VPC, gateway (not yet booted) and hosts next to a running lab."""
    inet = topology.internet_namespace
    _site_namespaces(site, state)
    _site_links(inet, site)
    netns.ip_batch(inet, _site_addresses(site))
    _vpc_router_rules(site)
    security_groups(site)
    offloads_off(site.vpc_namespace, [LINK_IGW])
    offloads_off(inet, [site.edge_link])


def update_routes(site: Site) -> None:
    """Day 2: the site's route tables as the plan now declares them. Routes are replaced
    (an unchanged one stays as it is) and added, never removed first."""
    lines = []
    for table in site.tables:
        for route in table.routes:
            if route.kind == "gateway":
                lines.append(
                    f"route replace {route.destination} via {route.via}"
                    f" dev {gateway_link(site, route.via)} table {table.table}"
                )
    netns.ip_batch(site.vpc_namespace, lines)


def _office_addresses(office: Office) -> list[str]:
    """Addresses and routes of an office's gateway, NAT router and hosts; returns the
    internet's side (its lines for the internet namespace)."""
    gateway = office.gateway
    # The uplink's only address is the office's own (its publicIp /32, or behind NAT the
    # inside of its router), so whatever leaves it comes from that address.
    netns.ip_batch(
        gateway.namespace,
        [
            f"address add {gateway.uplink} dev {LINK_UPLINK}",
            f"address add {gateway.private_address} dev {LINK_LAN}",
            f"link set {LINK_UPLINK} up",
            f"link set {LINK_LAN} up",
            f"route add default via {gateway.uplink_router} dev {LINK_UPLINK} onlink",
        ],
    )
    for host in office.hosts:
        netns.ip_batch(
            host.namespace,
            [
                f"address add {host.address} dev {LINK_HOST}",
                f"link set {LINK_HOST} up",
                f"route add default via {host.router} dev {LINK_HOST}",
            ],
        )
    external = office.facts.site.external
    assert external is not None
    lines = [f"address add {office.edge_peer} dev {office.edge_link}"]
    lines.append(f"link set {office.edge_link} up")
    if office.nat is None:
        lines.append(f"route add {gateway.uplink.ip}/32 dev {office.edge_link}")
        return lines
    nat = office.nat
    netns.ip_batch(
        nat.namespace,
        [
            f"address add {nat.outside}/32 dev {LINK_UPLINK}",
            f"address add {nat.inside} dev {LINK_LAN}",
            f"link set {LINK_UPLINK} up",
            f"link set {LINK_LAN} up",
            f"route add default via {office.edge_peer.ip} dev {LINK_UPLINK} onlink",
            # The office's LAN sits behind its gateway; the router only needs the uplink.
        ],
    )
    # Its one address in the sourceCidr (the rest of the pool is other customers').
    lines.append(f"route add {nat.outside}/32 dev {office.edge_link}")
    return lines


def _nat_router(office: Office) -> None:
    """A masquerading router on a NATed office's uplink: every packet from the office
    leaves with the router's address (and a port it picks); only replies come back in."""
    if office.nat is None:
        return
    netns.iptables_restore(
        office.nat.namespace,
        "*nat\n"
        f"-A POSTROUTING -o {LINK_UPLINK} -j MASQUERADE\n"
        "COMMIT\n"
        "*filter\n"
        ":FORWARD DROP [0:0]\n"
        f"-A FORWARD -i {LINK_LAN} -o {LINK_UPLINK} -j ACCEPT\n"
        f"-A FORWARD -i {LINK_UPLINK} -o {LINK_LAN} -m conntrack --ctstate ESTABLISHED,RELATED"
        " -j ACCEPT\n"
        "COMMIT\n",
    )


def security_groups(site: Site) -> None:
    """The gateway's and the hosts' groups as the plan declares them (again: replaced whole,
    in one transaction, as a rule change on AWS takes effect)."""
    for gateway in site.gateways:
        _security_group(gateway.namespace, gateway.ingress, gateway.egress, probe=True)
    for host in site.hosts:
        if host.ingress is not None and host.egress is not None:
            _security_group(host.namespace, host.ingress, host.egress, probe=False)


def _vpc_router_rules(site: Site) -> None:
    gateway = site.gateway
    private_ip, eip = gateway.private_address.ip, gateway.elastic_ip
    rules = [
        "*mangle",
        # AWS's VPC router is not a hop: undo the decrement forwarding will do.
        "-A PREROUTING -j TTL --ttl-inc 1",
        "COMMIT",
    ]
    if not site.highly_available:
        rules += [
            "*nat",
            # The internet gateway's 1:1 mapping between the Elastic IP and the private
            # address. Only the outer tunnel packets pass here; what is inside is not touched.
            f"-A PREROUTING -i {LINK_IGW} -d {eip}/32 -j DNAT --to-destination {private_ip}",
            f"-A POSTROUTING -o {LINK_IGW} -s {private_ip}/32 -j SNAT --to-source {eip}",
            "COMMIT",
        ]
    checked = [g for g in site.gateways if g.source_dest_check]
    if checked:
        rules += ["*filter", ":source-dest-check - [0:0]", "-A FORWARD -j source-dest-check"]
        for each in checked:
            address, link = each.private_address.ip, each.link
            rules += [
                f"-A source-dest-check -i {link} ! -s {address}/32 -j DROP",
                f"-A source-dest-check -o {link} ! -d {address}/32 -j DROP",
            ]
        rules.append("COMMIT")
    netns.iptables_restore(site.vpc_namespace, "\n".join(rules) + "\n")
    if site.highly_available:
        netns.nft_apply(site.vpc_namespace, igw_nat_ruleset(site, None))


def igw_nat_ruleset(site: Site, holder: str | None) -> str:
    """The internet gateway's NAT of a site with two gateways whose gateway `holder` (the
    plan's interface id; None: neither) holds the Elastic IP (lab.controller.nat_ruleset)."""
    gateways = [(g.eni, str(g.private_address.ip), str(g.auto_public_ip)) for g in site.gateways]
    return controller.nat_ruleset(str(site.gateway.elastic_ip), gateways, holder)


_PROTOCOLS = {"6": "tcp", "17": "udp", "1": "icmp"}


def _nft_match(rule: SecurityGroupRule) -> str:
    peer = "saddr" if rule.direction == "ingress" else "daddr"
    match = f"ip {peer} {rule.cidr}"
    protocol = _PROTOCOLS.get(rule.protocol, rule.protocol)
    if protocol in ("-1", "all"):
        return match
    if protocol in ("tcp", "udp"):
        ports = ""
        if rule.from_port is not None and rule.from_port >= 0:
            high = rule.to_port if rule.to_port is not None else rule.from_port
            span = str(rule.from_port) if high == rule.from_port else f"{rule.from_port}-{high}"
            # Either direction names the destination port (the service's).
            ports = f" {protocol} dport {span}"
        return f"{match} meta l4proto {protocol}{ports}"
    if protocol == "icmp":
        # For ICMP, AWS reads from_port as the ICMP type and to_port as its code; -1 is
        # any (EC2 API IpPermission: "A value of -1 indicates all ICMP/ICMPv6 types",
        # "all codes").
        match += " meta l4proto icmp"
        if rule.from_port is not None and rule.from_port >= 0:
            match += f" icmp type {rule.from_port}"
            if rule.to_port is not None and rule.to_port >= 0:
                match += f" icmp code {rule.to_port}"
        return match
    raise LabError(f"security group rule {rule.name}: protocol {rule.protocol!r} not modelled")


SG_TABLE = "aws_security_group"
# The group's own chains: what it admits (ingress) and lets out (egress); the hooks jump
# to them. `lab bench` adds its plain-path rule to SG_INGRESS.
SG_INGRESS = "ingress"
SG_EGRESS = "egress"


def _rule_chain(name: str, rules: tuple[SecurityGroupRule, ...], refused: str) -> str:
    # `return` rather than `accept`: a forwarded packet that enters and leaves through
    # the interface must pass both directions' rules, and accept would end the hook.
    lines = [f"  chain {name} {{"]
    # Stateful as AWS is: replies of a tracked flow pass whatever the rules say
    # (EC2 user guide, "Security group connection tracking"). Only `established`:
    # AWS has no "related" admission, an ICMP error about a flow needs a rule of its
    # own, e.g. PMTUD's "Destination Unreachable - fragmentation required" (EC2 user
    # guide, "Path MTU Discovery" and "Security group rules for different use cases").
    lines.append("    ct state established return")
    lines += [f'    {_nft_match(rule)} counter return comment "{rule.name}"' for rule in rules]
    lines += [f'    counter drop comment "{refused}"', "  }"]
    return "\n".join(lines) + "\n"


def _security_group(
    namespace: str,
    ingress: tuple[SecurityGroupRule, ...],
    egress: tuple[SecurityGroupRule, ...],
    *,
    probe: bool,
) -> None:
    """The group's rules, stateful, on the instance's interface, in both directions.

    AWS applies a group to every packet that crosses the interface, forwarded ones
    included: ingress to what arrives (input and forward), egress to what leaves (output
    and forward). The tunnel interface is inside the instance, not an ENI: no group there.
    """
    stranger = ""
    if probe:
        # Counters only: how many packets from the internet host reached the interface,
        # and how many the security group let through to the instance.
        stranger = (
            "  chain probe_arrived {\n"
            "    type filter hook prerouting priority -300; policy accept;\n"
            f'    iifname "{LINK_HOST}" ip saddr {STRANGER.ip} counter\n'
            "  }\n"
            "  chain probe_admitted {\n"
            "    type filter hook input priority 10; policy accept;\n"
            f'    iifname "{LINK_HOST}" ip saddr {STRANGER.ip} counter\n'
            "  }\n"
        )
    # Declared, emptied and filled in one transaction: applied again (day 2), the group
    # changes at once, and the connections it tracks (conntrack's) stay established.
    ruleset = (
        f"table inet {SG_TABLE}\n"
        f"delete table inet {SG_TABLE}\n"
        f"table inet {SG_TABLE} {{\n"
        f"{_rule_chain(SG_INGRESS, ingress, 'not admitted')}"
        f"{_rule_chain(SG_EGRESS, egress, 'not allowed out')}"
        "  chain input {\n"
        "    type filter hook input priority -10; policy accept;\n"
        f'    iifname "{LINK_HOST}" jump {SG_INGRESS}\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority -10; policy accept;\n"
        f'    iifname "{LINK_HOST}" jump {SG_INGRESS}\n'
        f'    oifname "{LINK_HOST}" jump {SG_EGRESS}\n'
        "  }\n"
        "  chain output {\n"
        "    type filter hook output priority -10; policy accept;\n"
        f'    oifname "{LINK_HOST}" jump {SG_EGRESS}\n'
        "  }\n"
        f"{stranger}"
        "}\n"
    )
    netns.nft_apply(namespace, ruleset)


def _internet_carries_packets(topology: Topology) -> None:
    """Segmentation offloads off on every link into and inside the internet, so that the
    1500-byte limit judges packets as a wire carries them, not 64 KB TSO batches."""
    sides = [(site.vpc_namespace, [LINK_IGW]) for site in topology.sites]
    for office in topology.offices:
        outermost = office.nat.namespace if office.nat else office.gateway.namespace
        sides.append((outermost, [LINK_UPLINK]))
    sides.append((topology.stranger_namespace, [LINK_HOST]))
    inet_links = [site.edge_link for site in topology.sites]
    inet_links += [office.edge_link for office in topology.offices] + [LINK_STRANGER]
    sides.append((topology.internet_namespace, inet_links))
    for namespace, links in sides:
        offloads_off(namespace, links)


def offloads_off(namespace: str, links: list[str]) -> None:
    netns.ns_run(
        namespace,
        [sys.executable, "-m", "lab.agent", "offloads-off", *links],
        env={"PYTHONPATH": str(REPO)},
    )


def _wireguard_implementation(namespace: str) -> str:
    probe = netns.run(
        ["ip", "-n", namespace, "link", "add", PROBE_INTERFACE, "type", "wireguard"], check=False
    )
    if probe.returncode == 0:
        netns.run(["ip", "-n", namespace, "link", "del", PROBE_INTERFACE], check=False)
        return "kernel"
    if shutil.which("wireguard-go") is None:
        raise LabError(
            "the kernel has no WireGuard module and wireguard-go is not installed"
            " (apt-get install wireguard-go)"
        )
    return "wireguard-go"


def _write(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created with its final mode, so a key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.chmod(path, mode)


# Gateways in namespaces have no systemd: this stands in for the part of systemctl the
# scripts and the user data use, on wg-quick@ units; everything else is a no-op.
SYSTEMCTL_SHIM = """#!/bin/bash
set -eu
args=()
for arg in "$@"; do
    case "$arg" in --no-block|--now|-q|--quiet) ;; *) args+=("$arg") ;; esac
done
verb=${args[0]:-} unit=${args[1]:-}
case "$unit" in wg-quick@*) iface=${unit#wg-quick@} ;; *) exit 0 ;; esac
case "$verb" in
    start) wg show "$iface" > /dev/null 2>&1 || exec wg-quick up "$iface" ;;
    restart) wg-quick down "$iface" > /dev/null 2>&1 || true; exec wg-quick up "$iface" ;;
    stop) wg show "$iface" > /dev/null 2>&1 || exit 0; exec wg-quick down "$iface" ;;
    is-active) exec wg show "$iface" > /dev/null 2>&1 ;;
    *) exit 0 ;;
esac
"""
SBIN = "/usr/local/sbin"


def _shims() -> Path:
    shims = STATE_DIR / "shims"
    shims.mkdir(parents=True, exist_ok=True)
    _write(shims / "systemctl", SYSTEMCTL_SHIM, 0o755)
    return shims


def sbin_dir(namespace: str) -> Path:
    """The gateway's /usr/local/sbin (bind-mounted there for each of its commands)."""
    return STATE_DIR / namespace / "sbin"


def gateway_run(
    site: Site,
    state: State,
    argv: list[str],
    *,
    timeout: float = WG_QUICK_TIMEOUT,
    check: bool = True,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """A command on the (first) gateway, as the instance runs it: its own /usr/local/sbin,
    /etc, network and AWS credentials."""
    return host_run(
        site.gateway.namespace, state, argv, timeout=timeout, check=check, extra_env=extra_env
    )


def run_dir(namespace: str) -> Path:
    """The /run/wg-site-to-site of a gateway of a site with two gateways (bind-mounted
    there for each of its commands): its role file and the probe's markers are its own,
    as on an instance, though the two gateways' interfaces have one name."""
    return STATE_DIR / namespace / "run"


def _host_argv(namespace: str, argv: list[str]) -> list[str]:
    """argv with the gateway's own /usr/local/sbin (and /run/wg-site-to-site) mounted."""
    script = 'mount --bind "$0" ' + SBIN
    own_run = run_dir(namespace)
    if own_run.is_dir():
        GATEWAY_RUN.mkdir(mode=0o755, exist_ok=True)
        script += f' && mount --bind "{own_run}" {GATEWAY_RUN}'
    return ["bash", "-c", script + ' && exec "$@"', str(sbin_dir(namespace)), *argv]


def host_env(namespace: str, state: State, aws_env: bool = True) -> dict[str, str]:
    return {
        **(aws.gateway_env(namespace) if aws_env else {}),
        **wg_env(state),
        "PATH": f"{_shims()}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
    }


def start_daemon(namespace: str, state: State, argv: list[str]) -> int:
    """A long-running service (systemd Type=simple) on the gateway, in the background, as
    host_run would run it; recorded in the state (teardown and host failures stop it)."""
    log = STATE_DIR / namespace / "daemons.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as output:
        process = subprocess.Popen(
            netns.in_ns(namespace, _host_argv(namespace, argv)),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=netns.clean_env(host_env(namespace, state)),
            start_new_session=True,
        )
    state.add("daemons", f"{namespace} {process.pid}")
    return process.pid


def host_run(
    namespace: str,
    state: State,
    argv: list[str],
    *,
    timeout: float = WG_QUICK_TIMEOUT,
    check: bool = True,
    extra_env: dict[str, str] | None = None,
    aws_env: bool = True,
) -> subprocess.CompletedProcess[str]:
    """A command on a gateway host (an AWS instance, or with `aws_env` False an office's
    router): its own /usr/local/sbin, /etc and network. `ip netns exec` gives each call a
    private mount namespace, so the bind mount ends with the command."""
    env = {**host_env(namespace, state, aws_env), **(extra_env or {})}
    return netns.ns_run(
        namespace,
        _host_argv(namespace, argv),
        env=env,
        timeout=timeout,
        check=check,
    )


def _unit_exec_start(unit: str) -> list[str]:
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            return line.removeprefix("ExecStart=").split()
    raise LabError("a unit in the user data has no ExecStart")


def _unit_type(unit: str) -> str:
    for line in unit.splitlines():
        if line.startswith("Type="):
            return line.removeprefix("Type=").strip()
    return "simple"  # systemd's default with ExecStart


def boot_gateway(site: Site, gateway: Gateway, state: State) -> list[str]:
    """What cloud-init and systemd do with the user data, inside the gateway namespace."""
    ns = gateway.namespace
    etc = etc_dir(ns)
    # As the wireguard-tools package leaves it: only root may look inside.
    (etc / "wireguard").mkdir(mode=0o700, parents=True, exist_ok=True)
    (etc / "sysctl.d").mkdir(mode=0o755, parents=True, exist_ok=True)
    if site.highly_available:
        run_dir(ns).mkdir(mode=0o755, parents=True, exist_ok=True)
    files = written_files(gateway.user_data)
    units: dict[str, str] = {}
    notes = []
    for path, entry in files.items():
        mode = int(entry["permissions"] or "0644", 8)
        if path.startswith("/etc/systemd/system/"):
            units[Path(path).name] = entry["content"]
        elif path.startswith("/etc/"):
            _write(in_etc(ns, path), entry["content"], mode)
        elif path.startswith(SBIN + "/"):
            _write(sbin_dir(ns) / Path(path).name, entry["content"], mode)
        else:
            notes.append(f"{site.name}: user data writes {path}, not emulated")
    for command in parse_user_data(gateway.user_data).get("runcmd", []):
        argv = [str(part) for part in command] if isinstance(command, list) else [str(command)]
        if argv == ["sysctl", "--system"]:
            # Only the files the user data wrote: --system would also read the host's own
            # /usr/lib/sysctl.d and /etc/sysctl.conf, whose kernel.* settings are global.
            for path in files:
                if path.startswith("/etc/sysctl.d/"):
                    netns.ns_run(ns, ["sysctl", "-q", "-p", path])
        elif argv[0] == "systemctl" and argv[-1].endswith(".timer") and argv[-1] in units:
            # The lab runs the probe on its own, shorter schedule (lab.health).
            continue
        elif argv[0] == "systemctl" and "--now" in argv and argv[-1] in units:
            unit = units[argv[-1]]
            if _unit_type(unit) == "simple":
                # A long-running service (the failover agent): systemd starts it and goes
                # on; it runs until the instance stops (Restart=always).
                start_daemon(ns, state, _unit_exec_start(unit))
            else:
                # What systemd does with a oneshot unit: run its ExecStart (the apply).
                host_run(ns, state, _unit_exec_start(unit), timeout=60)
        elif argv[0] == "systemctl" and argv[1] in ("daemon-reload", "enable"):
            continue  # systemd's bookkeeping; the lab has no systemd
        else:
            notes.append(f"{site.name}: runcmd {' '.join(argv)} not emulated")
    return notes


def leftovers() -> list[str]:
    """Names a previous lab run left behind."""
    found = [ns for ns in netns.list_namespaces() if ns.startswith(PREFIX)]
    if NETNS_ETC.is_dir():
        found += [str(p) for p in sorted(NETNS_ETC.glob(f"{PREFIX}*"))]
    links = netns.run(["ip", "-o", "link", "show"], check=False).stdout
    for line in links.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(PREFIX):
            found.append(parts[1].strip().split("@")[0])
    return found
