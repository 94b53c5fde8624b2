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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.facts import APPLY_PATH, CHECK_PATH
from lab import netns
from lab.build import gateway_run, put_parameters
from lab.lifecycle import Lab
from lab.topology import Site, Topology, derive
from plan.engine import Plan

APPLY_TIMEOUT = 90.0


@dataclass(frozen=True)
class Applied:
    site: str
    returncode: int
    output: str  # stdout and stderr, as Run Command would return them
    seconds: float


def apply(lab: Lab, site: Site) -> Applied:
    """The gateway's apply script, as Run Command runs it."""
    started = time.monotonic()
    result = gateway_run(site, lab.state, [APPLY_PATH], timeout=APPLY_TIMEOUT, check=False)
    return Applied(
        site.name,
        result.returncode,
        (result.stdout + result.stderr).strip(),
        time.monotonic() - started,
    )


def push(lab: Lab, plan: Plan) -> tuple[Topology, list[Applied]]:
    """What `pulumi up` does with a changed plan: parameters, then both applies at once."""
    topology = derive(plan)
    put_parameters(topology)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda site: apply(lab, site), lab.topology.sites))
    return topology, results


def check(lab: Lab, site: Site) -> subprocess.CompletedProcess[str]:
    """The check `pulumi up`'s verify command runs on the gateway."""
    return gateway_run(site, lab.state, [CHECK_PATH], timeout=30, check=False)


class ContinuousPing:
    """Pings across the tunnel at 10/s until stopped; counts what got lost."""

    def __init__(self, namespace: str, destination: str, interval: float = 0.1) -> None:
        self.process = subprocess.Popen(
            netns.in_ns(namespace, ["ping", "-n", "-i", str(interval), "-W", "1", destination]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=netns.clean_env(),
        )
        self.interval = interval

    def stop(self) -> tuple[int, int]:
        """(sent, lost). A ping counts as lost when a later one was answered and it was
        not: the last few, still in flight when ping is stopped, are not losses (on a
        loaded machine a reply can take longer than the pause before the stop)."""
        time.sleep(1.0)
        self.process.send_signal(signal.SIGINT)
        output, _ = self.process.communicate(timeout=10)
        answered = {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", output)}
        if not answered:
            sent = re.search(r"(\d+) packets transmitted", output)
            return (int(sent[1]), int(sent[1])) if sent else (0, 0)
        last = max(answered)
        return last, last - len(answered)

    def lost_seconds(self, lost: int) -> float:
        return lost * self.interval
