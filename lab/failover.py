"""Sites with two gateways in the lab: host failures and returns, a partition between the
gateways, the image roll's sequence, and `python -m lab failover STACK`.

Which gateway is active is what moto says (the interface holding the site's Elastic IP:
lab.aws.ec2_view); the lab's VPC routers and internet gateways follow moto
(lab.controller), and the gateways' own failover agent makes the calls, as on AWS.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from core.facts import FAILOVER_AGENT_PATH
from lab import LabError, aws, netns
from lab.build import (
    boot_gateway,
    etc_dir,
    host_run,
    run_dir,
    sbin_dir,
)
from lab.checks import ping
from lab.day2 import ContinuousPing
from lab.state import State
from lab.topology import LINK_HOST, Gateway, Host, Site, Topology

# How long a ping stream may stay broken after a host failure before the lab gives up.
RECOVERY_TIMEOUT = 30.0
READY_TIMEOUT = 60.0
HOLDER_TIMEOUT = 20.0

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
) -> float:
    """Seconds until `predicate` held; LabError naming `what` after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise LabError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - started


def ha_sites(topology: Topology) -> list[Site]:
    return [site for site in topology.sites if site.highly_available]


def partner(site: Site, gateway: Gateway) -> Gateway:
    (other,) = [g for g in site.gateways if g is not gateway]
    return other


def holder(site: Site) -> Gateway | None:
    """The gateway whose interface holds the site's Elastic IP in moto, None if none does."""
    address = aws.ec2_view()[site.name]["holder"]
    found = [g for g in site.gateways if str(g.private_address.ip) == address]
    return found[0] if found else None


def active_first(topology: Topology) -> Topology:
    """The topology with each site's gateway that holds its Elastic IP in moto as its first
    (`site.gateway`, what the checks look at): after a failover, the other one."""
    sites = []
    for site in topology.sites:
        active = holder(site) if site.highly_available else None
        if active is not None and active is not site.gateway:
            sites.append(dataclasses.replace(site, gateway=active, second=partner(site, active)))
        else:
            sites.append(site)
    return dataclasses.replace(topology, sites=tuple(sites))


def route_targets(site: Site) -> set[str]:
    """The private addresses every route of the site's tables in moto points to."""
    routes: list[str] = aws.ec2_view()[site.name]["routes"]
    return {route.rsplit(" -> ", 1)[1] for route in routes}


def wait_for_holder(site: Site, gateway: Gateway, timeout: float = HOLDER_TIMEOUT) -> float:
    return wait_until(
        lambda: holder(site) is gateway,
        timeout,
        f"site {site.name}: the Elastic IP on {gateway.namespace} in moto",
    )


def agent(
    gateway: Gateway, state: State, command: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`wg-site-to-site-failover COMMAND` on the gateway (takeover, status)."""
    return host_run(
        gateway.namespace, state, [FAILOVER_AGENT_PATH, command], timeout=timeout, check=False
    )


def status(gateway: Gateway, state: State) -> dict[str, object]:
    """The agent's `status` (role, holder, ...), or {} while it cannot tell."""
    result = agent(gateway, state, "status", timeout=20.0)
    try:
        parsed = json.loads(result.stdout)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def interface_up(site: Site, gateway: Gateway) -> bool:
    shown = netns.ns_run(gateway.namespace, ["ip", "link", "show", site.interface], check=False)
    return shown.returncode == 0


def _answers(namespace: str, address: str) -> bool:
    return ping(namespace, address, count=1).received == 1


def standby_ready(site: Site, gateway: Gateway, state: State) -> bool:
    """The agent calls itself standby, the other gateway holds the site, the tunnel is down
    here, and both of the standby's probes answer: its partner, and a peer's tunnel address
    through the partner (the agent's StandbyReady)."""
    other = partner(site, gateway)
    shown = status(gateway, state)
    if shown.get("role") != "standby" or shown.get("holderGateway") != other.index:
        return False
    if interface_up(site, gateway):
        return False
    targets = [str(peer.tunnel_address) for peer in site.facts.peers]
    return _answers(gateway.namespace, str(other.private_address.ip)) and any(
        _answers(gateway.namespace, target) for target in targets
    )


def wait_standby_ready(
    site: Site, gateway: Gateway, state: State, timeout: float = READY_TIMEOUT
) -> float:
    return wait_until(
        lambda: standby_ready(site, gateway, state),
        timeout,
        f"site {site.name}: {gateway.namespace} standby and ready",
        interval=0.3,
    )


def host_failure(gateway: Gateway) -> None:
    """The instance dies: every process on it at once (kill -9), and its interface stops
    carrying anything (its link goes down, a black hole for the routes to it)."""
    netns.ip_batch(gateway.namespace, [f"link set {LINK_HOST} down"])
    pids = netns.namespace_pids(gateway.namespace)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    wait_until(
        lambda: not netns.namespace_pids(gateway.namespace),
        5.0,
        f"{gateway.namespace}: every process gone",
        interval=0.05,
    )


def site_down(site: Site) -> None:
    """A whole site down (the peer-site-down control): a host failure of every gateway."""
    for gateway in site.gateways:
        host_failure(gateway)


def fresh_boot(site: Site, gateway: Gateway, state: State) -> list[str]:
    """A new instance on the same interface (a returning host, or a replacement): nothing of
    the old one's memory or disk (its tunnel interface, firewall, files, /run), its link up,
    then booted from its user data as at `lab up`. Returns the boot's notes."""
    ns = gateway.namespace
    if netns.namespace_pids(ns):
        host_failure(gateway)
    netns.run(["ip", "-n", ns, "link", "del", site.interface], check=False)
    # Without --noflush: every table the instance may have written, emptied.
    empty = "".join(f"*{table}\nCOMMIT\n" for table in ("filter", "nat", "mangle", "raw"))
    netns.ns_run(ns, ["iptables-restore"], input_text=empty)
    netns.sysctl(ns, {"net.ipv4.ip_forward": "0"})
    for directory in (etc_dir(ns), sbin_dir(ns), run_dir(ns)):
        shutil.rmtree(directory, ignore_errors=True)
    wireguard = netns.wireguard_run_dir(ns)
    for leftover in wireguard.glob("*"):
        leftover.unlink(missing_ok=True)
    # Down, the link lost its routes (the kernel drops them with the link): as at `lab up`.
    router = site.gateway_router(gateway).ip
    netns.ip_batch(
        ns, [f"link set {LINK_HOST} up", f"route replace default via {router} dev {LINK_HOST}"]
    )
    return boot_gateway(site, gateway, state)


@contextmanager
def partition(site: Site) -> Iterator[None]:
    """Nothing passes between the two gateways' own addresses at the VPC router; traffic
    they forward (other sources or destinations) still flows."""
    first, second = (str(g.private_address.ip) for g in site.gateways)
    rules = [["-s", first, "-d", second, "-j", "DROP"], ["-s", second, "-d", first, "-j", "DROP"]]
    for rule in rules:
        netns.ns_run(site.vpc_namespace, ["iptables", "-I", "FORWARD", *rule])
    try:
        yield
    finally:
        for rule in rules:
            netns.ns_run(site.vpc_namespace, ["iptables", "-D", "FORWARD", *rule], check=False)


def drain(site: Site, index: int, state: State) -> bool:
    """`python -m deployer drain --site S --gateway K`: if gateway K holds the site, the
    other takes over (`wg-site-to-site-failover takeover`) and the lab waits until moto
    has the Elastic IP on it; otherwise nothing. True if it handed over."""
    leaving = site.gateways[index]
    if holder(site) is not leaving:
        return False
    other = partner(site, leaving)
    result = agent(other, state, "takeover")
    if result.returncode != 0:
        raise LabError(
            f"site {site.name}: takeover on {other.namespace} failed:"
            f" {(result.stderr or result.stdout).strip()[-300:]}"
        )
    wait_for_holder(site, other)
    return True


def replace(site: Site, index: int, state: State) -> None:
    """Gateway K replaced: its instance goes (a host failure), a new one boots on the same
    interface, and the roll waits until it is a ready standby."""
    gateway = site.gateways[index]
    host_failure(gateway)
    fresh_boot(site, gateway, state)
    wait_standby_ready(site, gateway, state)


def image_roll(site: Site, state: State, say: Say = _quiet) -> None:
    """The rolling replacement `pulumi up` runs on a site with two gateways (the Pulumi
    graph's order): drain 1, replace 1, drain 0, replace 0."""
    for index in (1, 0):
        handed = drain(site, index, state)
        say(f"{site.name}: drain {index}: {'handed over' if handed else 'nothing to hand over'}")
        replace(site, index, state)
        say(f"{site.name}: gateway {index} replaced, standby ready")


@dataclass(frozen=True)
class Failover:
    site: str
    sent: int
    lost: int
    interval: float
    took_over: str  # the namespace of the gateway that holds the site afterwards

    @property
    def seconds(self) -> float:
        return self.lost * self.interval

    def line(self) -> str:
        return f"failover {self.site}: {self.lost} of {self.sent} pings lost ({self.seconds:.1f} s)"


def far_host(topology: Topology, site: Site) -> Host:
    """A host of another site the topology joins to `site`: what the site's host pings."""
    for member in topology.members:
        if member.name != site.name:
            return member.hosts[0]
    raise LabError(f"site {site.name} has no other site to ping")


def kill_active(topology: Topology, site: Site, state: State) -> tuple[Failover, Gateway]:
    """The site's active gateway fails (host failure) while the site's host pings a host of
    another site at 10/s; returns the loss once replies flow again, and the dead gateway."""
    active = holder(site)
    if active is None:
        raise LabError(f"site {site.name}: no gateway holds the Elastic IP")
    target = far_host(topology, site)
    ping = ContinuousPing(site.hosts[0].namespace, str(target.address.ip))
    try:
        time.sleep(1.0)
        newest = ping.newest_answered()
        host_failure(active)
        wait_until(
            lambda: ping.flowing_since(newest),
            RECOVERY_TIMEOUT,
            f"site {site.name}: pings through the other gateway",
        )
    finally:
        sent, lost = ping.stop()
    now = holder(site)
    return Failover(site.name, sent, lost, ping.interval, now.namespace if now else ""), active


def run_failovers(
    topology: Topology, state: State, runs: int, say: Say = _quiet
) -> dict[str, list[Failover]]:
    """`runs` times, for each site with two gateways in turn: kill its active gateway,
    measure, and bring the dead one back (a fresh boot; it must become the standby)."""
    sites = ha_sites(topology)
    if not sites:
        raise LabError(f"stack {topology.stack} has no site with two gateways (gateways: 2)")
    results: dict[str, list[Failover]] = {site.name: [] for site in sites}
    for _ in range(runs):
        for site in sites:
            result, dead = kill_active(topology, site, state)
            print(result.line(), flush=True)
            results[site.name].append(result)
            say(f"{site.name}: bringing {dead.namespace} back (fresh boot)")
            fresh_boot(site, dead, state)
            wait_standby_ready(site, dead, state)
    if runs > 1:
        for name, measured in results.items():
            median = statistics.median(r.seconds for r in measured)
            print(f"failover {name}: median {median:.1f} s of {runs} runs", flush=True)
    return results
