"""Faults to inject into a running lab: gateway restarts, a crashed wireguard-go, loss."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab import LabError, netns
from lab.build import WG_QUICK_TIMEOUT, wg_env
from lab.state import State
from lab.topology import Site, Topology


def wg_quick(site: Site, state: State, action: str, *, check: bool = True) -> int:
    result = netns.ns_run(
        site.gateway.namespace,
        ["wg-quick", action, site.interface],
        env=wg_env(state),
        timeout=WG_QUICK_TIMEOUT,
        check=check,
    )
    return result.returncode


def restart_gateway(site: Site, state: State) -> None:
    """What `systemctl restart wg-quick@<iface>` does."""
    wg_quick(site, state, "down")
    wg_quick(site, state, "up")


def wireguard_go_pids(site: Site) -> list[int]:
    pids = []
    for pid in netns.namespace_pids(site.gateway.namespace):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                pids.append(pid)
        except OSError:
            continue
    return pids


def crash_and_recover(site: Site, state: State) -> int:
    """kill -9 of wireguard-go, then what an operator (or systemd) does: `wg-quick down`
    to clean up, which fails because the interface died with the process, then `up`.
    Returns the exit status of that `down`."""
    if state.implementation != "wireguard-go":
        raise LabError("this fault needs wireguard-go")
    pids = wireguard_go_pids(site)
    if not pids:
        raise LabError(f"no wireguard-go runs in {site.gateway.namespace}")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while wireguard_go_pids(site) and time.monotonic() < deadline:
        time.sleep(0.05)
    down_status = wg_quick(site, state, "down", check=False)
    wg_quick(site, state, "up")
    return down_status


@contextmanager
def internet_loss(topology: Topology, probability: float) -> Iterator[None]:
    """Random loss on every packet crossing the internet, both ways."""
    rule = [
        "FORWARD",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        str(probability),
        "-j",
        "DROP",
    ]
    netns.ns_run(topology.internet_namespace, ["iptables", "-I", *rule])
    try:
        yield
    finally:
        netns.ns_run(topology.internet_namespace, ["iptables", "-D", *rule], check=False)
