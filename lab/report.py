"""The lab's report: one line per check, `PASS|FAIL name: figure`."""

from __future__ import annotations

from dataclasses import dataclass

from lab import LINK_NOTE, WIREGUARD_RUN
from lab.netns import wireguard_run_dir
from lab.topology import Topology


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    figure: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.figure}"


def summary(checks: list[Check]) -> str:
    failed = [c.name for c in checks if not c.ok]
    if not failed:
        return f"{len(checks)} checks passed"
    return f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}"


def layout(topology: Topology, implementation: str) -> list[str]:
    """What was built, in the words of the plan."""
    lines = [f"lab for stack {topology.stack} (WireGuard: {implementation})"]
    for site in topology.sites:
        gw, facts = site.gateway, site.facts
        check = "on" if gw.source_dest_check else "off"
        lines.append(
            f"  {site.name}: VPC {facts.site.cidr} in {site.vpc_namespace};"
            f" gateway {gw.private_address.ip} (EIP {gw.elastic_ip}, {facts.interface}"
            f" {facts.tunnel_address}, source/dest check {check}) in {gw.namespace}"
        )
        if site.second is not None:
            other = site.second
            lines.append(
                f"    second gateway {other.private_address.ip} in {other.namespace}; the EIP"
                " maps to the gateway moto associates it with (lab.controller), the other's"
                f" traffic to its auto-assigned address ({gw.auto_public_ip},"
                f" {other.auto_public_ip})"
            )
        for host in site.hosts:
            lines.append(f"    host {host.name} {host.address} in {host.namespace}")
        for table in site.tables:
            routes = ", ".join(route.describe() for route in table.routes)
            lines.append(f"    route table {table.name}: {routes}")
        rules = "; ".join(rule.describe() for rule in gw.ingress + gw.egress)
        lines.append(f"    gateway security group: {rules}")
        for host in site.hosts:
            if host.ingress is not None and host.egress is not None:
                rules = "; ".join(rule.describe() for rule in host.ingress + host.egress)
                lines.append(f"    {host.name} security group: {rules or 'no rules'}")
    for office in topology.offices:
        office_gw, facts = office.gateway, office.facts
        uplink = (
            f"behind NAT: {office_gw.uplink.ip} masqueraded to {office.nat.outside} by"
            f" {office.nat.namespace}"
            if office.nat is not None
            else f"on the internet at {office_gw.uplink.ip}"
        )
        lines.append(
            f"  {office.name} (outside AWS): LAN {facts.site.cidr}; gateway"
            f" {office_gw.private_address.ip} ({facts.interface} {facts.tunnel_address}, {uplink},"
            f" configured by its bundle's install.sh) in {office_gw.namespace}"
        )
        for host in office.hosts:
            lines.append(f"    host {host.name} {host.address} in {host.namespace}")
    lines.append(f"  {LINK_NOTE}")
    return lines


def explore(topology: Topology, stack: str | None = None) -> list[str]:
    """Commands to look around; `stack` as the user named it (a name or a file's path)."""
    a, b = topology.members[:2]
    a1, b1 = a.hosts[0], b.hosts[0]
    gateway = a.gateway.namespace
    # Each gateway has its own /var/run/wireguard (wireguard-go's sockets), bind-mounted
    # for each command the lab runs there; a shell of yours does the same.
    own = wireguard_run_dir(gateway)
    lines = [
        "the lab stays up; explore it with, for example:",
        f"  ip netns exec {a1.namespace} ping {b1.address.ip}",
        f"  ip netns exec {b1.namespace} mtr -n {a1.address.ip}",
        f"  ip netns exec {gateway} sh -c 'mount --bind {own} {WIREGUARD_RUN} && wg show'",
        f"  ip netns exec {gateway} iptables-save",
    ]
    if topology.sites:
        site = topology.sites[0]
        lines += [
            f"  ip netns exec {site.gateway.namespace} nft list table inet aws_security_group",
            f"  ip -n {site.vpc_namespace} rule",
            f"  ip -n {site.vpc_namespace} route show table all",
        ]
    return [
        *lines,
        f"  ip netns exec {topology.internet_namespace} iptables -L FORWARD -v -n",
        f"  .venv/bin/python -m lab check {stack or topology.stack}    # run the checks again",
        "remove it with `make lab-down`",
    ]
