"""Day 2 in the lab: a changed plan applied in place, as `pulumi up` would apply it.

`pulumi up` updates the SSM parameters, then its apply commands send each gateway's apply
script through Run Command, then its verify command runs the check script on both. Here
the parameters go into the lab's SSM (moto) and the very same scripts run inside the
gateway namespaces; both applies run at once, as Pulumi runs the two commands.
"""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.facts import APPLY_PATH, CHECK_PATH
from lab import LabError, aws, netns
from lab.build import (
    add_site,
    boot_gateways,
    gateway_run,
    host_run,
    put_parameters,
    security_groups,
    update_routes,
)
from lab.lifecycle import Lab
from lab.topology import Gateway, Site, Topology, derive
from plan.engine import Plan

APPLY_TIMEOUT = 90.0


@dataclass(frozen=True)
class Applied:
    site: str
    returncode: int
    output: str  # stdout and stderr, as Run Command would return them
    seconds: float
    gateway: str = ""  # the gateway's namespace


def apply(lab: Lab, site: Site, gateway: Gateway | None = None) -> Applied:
    """The apply script on one of the site's gateways (the first unless told), as Run
    Command runs it."""
    target = gateway or site.gateway
    started = time.monotonic()
    result = host_run(target.namespace, lab.state, [APPLY_PATH], timeout=APPLY_TIMEOUT, check=False)
    return Applied(
        site.name,
        result.returncode,
        (result.stdout + result.stderr).strip(),
        time.monotonic() - started,
        target.namespace,
    )


def push(lab: Lab, plan: Plan) -> tuple[Topology, list[Applied]]:
    """What `pulumi up` does with a changed plan: parameters, then every gateway's apply at
    once (on a site with two gateways both, active and standby: each has its own apply
    command). Results in site order, then gateway order."""
    topology = derive(plan)
    put_parameters(topology)
    runs = [(site, gateway) for site in lab.topology.sites for gateway in site.gateways]
    with ThreadPoolExecutor(max_workers=max(1, len(runs))) as pool:
        results = list(pool.map(lambda run: apply(lab, *run), runs))
    return topology, results


def add_sites(lab: Lab, plan: Plan) -> tuple[list[Applied], list[str]]:
    """What `pulumi up` does with a plan that adds AWS sites to the running stack: the new
    sites' networks, groups and gateways are created, every existing route table gains
    routes to them and every existing gateway's group admits them, the parameters are
    written, and then the existing gateways' applies run while the new gateways boot.
    Returns the applies and the new gateways' boot notes; `lab.topology` becomes the new
    plan's."""
    topology = derive(plan)
    before = {member.name: member for member in lab.topology.members}
    added = [site for site in topology.sites if site.name not in before]
    if not added or any(office.name not in before for office in topology.offices):
        raise LabError("day 2 in the lab adds AWS sites only, and this plan adds none")
    if [m.name for m in topology.members[: len(before)]] != list(before):
        raise LabError("day 2 in the lab adds sites after the existing ones only")
    for site in topology.sites:
        old = before.get(site.name)
        if old is not None and (
            not isinstance(old, type(site)) or old.gateway.elastic_ip != site.gateway.elastic_ip
        ):
            raise LabError(f"site {site.name} changed its address: not an added site")
    existing = [site for site in topology.sites if site.name in before]
    for site in added:
        add_site(topology, site, lab.state)
    for site in existing:
        update_routes(site)
        security_groups(site)
    aws.add_gateways(topology.sites, added)
    put_parameters(topology)
    with ThreadPoolExecutor(max_workers=len(existing) + 1) as pool:
        booting = pool.submit(boot_gateways, tuple(added), lab.state)
        results = list(pool.map(lambda site: apply(lab, site), existing))
        notes = booting.result()
    lab.topology = topology
    return results, notes


def check(lab: Lab, site: Site) -> subprocess.CompletedProcess[str]:
    """The check `pulumi up`'s verify command runs on the gateway."""
    return gateway_run(site, lab.state, [CHECK_PATH], timeout=30, check=False)


class ContinuousPing:
    """Pings across the tunnel at 10/s until stopped; counts what got lost."""

    # How long `stop` keeps pinging for the replies to flow again: a change that restarts
    # wg-quick or rotates a key leaves the tunnel without a session, and WireGuard retries
    # a lost handshake after REKEY_TIMEOUT, 5 s (the WireGuard paper, section 6.4).
    SETTLE_SECONDS = 8.0
    # Replies in a row, all newer than the stop request, that say traffic flows again.
    FLOWING = 10

    def __init__(self, namespace: str, destination: str, interval: float = 0.1) -> None:
        # Closed in stop(), which every user calls in a finally.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            netns.in_ns(namespace, ["ping", "-n", "-i", str(interval), "-W", "1", destination]),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            env=netns.clean_env(),
        )
        self.interval = interval

    def _answered(self) -> set[int]:
        self.log.seek(0)
        return {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", self.log.read())}

    def _flowing_since(self, newest_at_stop: int) -> bool:
        answered = self._answered()
        last = max(answered, default=0)
        run = range(last - self.FLOWING + 1, last + 1)
        return last - self.FLOWING >= newest_at_stop and all(seq in answered for seq in run)

    def newest_answered(self) -> int:
        """The highest sequence number answered so far (0: none)."""
        return max(self._answered(), default=0)

    def flowing_since(self, newest: int) -> bool:
        """Replies flow again: the last FLOWING in a row answered, all after `newest`."""
        return self._flowing_since(newest)

    def stop(self) -> tuple[int, int]:
        """(sent, lost). Pinging goes on after the change until replies flow again (or
        SETTLE_SECONDS), so that a loss outlasting the change is counted, not cut off.
        A ping counts as lost when a later one was answered and it was not: the last few,
        still in flight when ping is stopped, are not losses; if replies never came back,
        every ping since the last reply is lost."""
        newest_at_stop = max(self._answered(), default=0)
        deadline = time.monotonic() + self.SETTLE_SECONDS
        while not self._flowing_since(newest_at_stop) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=10)
        self.log.seek(0)
        output = self.log.read()
        self.log.close()
        answered = {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", output)}
        transmitted = re.search(r"(\d+) packets transmitted", output)
        sent = int(transmitted[1]) if transmitted else max(answered, default=0)
        if not answered:
            return sent, sent
        last = max(answered)
        if last - self.FLOWING < newest_at_stop:  # never flowed again: the tail is lost
            return sent, sent - len(answered)
        return last, last - len(answered)

    def lost_seconds(self, lost: int) -> float:
        return lost * self.interval
