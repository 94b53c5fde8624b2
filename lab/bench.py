"""`python -m lab bench STACK`: what the lab costs and what the tunnel costs.

Each run plans, builds and tears down a fresh lab and measures: time from the start of
`up` to the first a1->b1 echo reply; iperf3 TCP throughput a1->b1 through the tunnel;
iperf3 between the two gateways' Elastic IPs over the same namespaces and the same
1500-byte internet without the tunnel; and the teardown. Then as many runs of a 4-site
mesh (STACK's sites plus AWS sites up to four, `four_sites`): time from the start of `up`
(planning included) to the first reply on every one of its 12 directed pairs, and the
teardown. Medians are reported.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from lab import LabError, netns
from lab.build import SG_INGRESS, SG_TABLE, Progress
from lab.checks import directions
from lab.lifecycle import down, up
from lab.preflight import preflight
from lab.topology import Topology
from plan.engine import Plan, plan_stack, read_stack_file, run_program

IPERF_SECONDS = 3
TUNNEL_PORT = 5201
PLAIN_PORT = 5202
# The plain path has no clamping gateway in it: iperf3 asks for an MSS that fits 1500.
PLAIN_MSS = 1460


def _received_mbit_s(stdout: str) -> tuple[float | None, str]:
    """The server-side throughput from iperf3's JSON report, or why there is none."""
    try:
        report = json.loads(stdout)
    except ValueError:
        return None, "no JSON report"
    received = report.get("end", {}).get("sum_received", {}).get("bits_per_second")
    if received is None:
        return None, str(report.get("error") or "a report without a result")
    return float(received) / 1e6, ""


def iperf(server_ns: str, client_ns: str, address: str, port: int, mss: int | None) -> float:
    """Throughput in Mbit/s, as received by the server."""
    server = subprocess.Popen(
        netns.in_ns(server_ns, ["iperf3", "-s", "-p", str(port)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=netns.clean_env(),
    )
    try:
        argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(IPERF_SECONDS), "-J"]
        if mss:
            argv += ["-M", str(mss)]
        problem = "no attempt"
        for _ in range(20):
            result = netns.ns_run(client_ns, argv, check=False, timeout=IPERF_SECONDS + 20)
            mbit_s, problem = _received_mbit_s(result.stdout)
            if mbit_s is not None:
                return mbit_s
            time.sleep(0.1)  # not listening yet, or a run that produced no result
        raise LabError(f"iperf3 {client_ns} -> {address}:{port} failed: {problem[-200:]}")
    finally:
        netns.stop(server)


def _allow_plain(topology: Topology) -> None:
    # Bench only: the peer's security group admits the tunnel port alone, so the plain
    # baseline gets its own rule at the head of the group's ingress chain (the chain the
    # lab's build makes, named by the same constant), added to this short-lived lab and
    # gone with it. `return` as the group's own rules do: the hook's policy accepts.
    a, b = topology.sites
    netns.ns_run(
        b.gateway.namespace,
        [
            "nft",
            "insert",
            "rule",
            "inet",
            SG_TABLE,
            SG_INGRESS,
            "ip",
            "saddr",
            str(a.gateway.elastic_ip),
            "tcp",
            "dport",
            str(PLAIN_PORT),
            "counter",
            "return",
            "comment",
            '"lab bench: plain path"',
        ],
    )


def one_run(stack: str, progress: Progress) -> tuple[dict[str, float], str]:
    started = time.monotonic()
    plan: Plan = plan_stack(stack)
    planned = time.monotonic()
    lab = up(plan, check_preconditions=False)
    first = time.monotonic()
    implementation = lab.state.implementation
    if lab.first_reply is None:
        down()
        raise LabError("no reply through the tunnel; run `make lab` to see why")
    try:
        topology = lab.topology
        a, b = topology.sites
        tunnel = iperf(
            b.hosts[0].namespace,
            a.hosts[0].namespace,
            str(b.hosts[0].address.ip),
            TUNNEL_PORT,
            None,
        )
        _allow_plain(topology)
        plain = iperf(
            b.gateway.namespace,
            a.gateway.namespace,
            str(b.gateway.elastic_ip),
            PLAIN_PORT,
            PLAIN_MSS,
        )
    finally:
        before_down = time.monotonic()
        down()
    ended = time.monotonic()
    result = {
        "plan_s": planned - started,
        "first_reply_s": first - started,
        "tunnel_mbit_s": tunnel,
        "plain_mbit_s": plain,
        "ratio": tunnel / plain if plain else 0.0,
        "teardown_s": ended - before_down,
    }
    progress("run: " + ", ".join(f"{key} {value:.2f}" for key, value in result.items()))
    return result, implementation


FOUR = 4
# Sites added to the stack's own for the 4-site figure: AWS sites in other regions, with
# the next free /16s of 10.0.0.0/8.
EXTRA_SITES = (
    ("gamma", "us-west-2", "wgC"),
    ("delta", "ap-southeast-2", "wgD"),
    ("epsilon", "sa-east-1", "wgE"),
)
FOUR_SITE_TUNNEL = "10.255.255.0/29"


def four_sites(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a stack's project keys) as a 4-site mesh: its AWS sites, then AWS sites
    from EXTRA_SITES (the first one's image), a tunnel prefix that holds four, no hub."""
    import ipaddress

    sites = [dict(site) for site in config["sites"] if "external" not in site][:FOUR]
    used = [ipaddress.ip_network(site["cidr"]) for site in sites]
    free = (
        net
        for net in ipaddress.ip_network("10.0.0.0/8").subnets(new_prefix=16)
        if not any(net.overlaps(other) for other in used) and net.network_address.packed[1] < 250
    )
    names = {site["name"] for site in sites}
    extra = (entry for entry in EXTRA_SITES if entry[0] not in names)
    while len(sites) < FOUR:
        name, region, interface = next(extra)
        site = {"name": name, "region": region, "cidr": str(next(free)), "interface": interface}
        if "image" in sites[0]:
            site["image"] = sites[0]["image"]
        sites.append(site)
    tunnel = dict(config.get("tunnel", {}), cidr=FOUR_SITE_TUNNEL)
    result = {key: value for key, value in config.items() if key != "topology"}
    return {**result, "sites": sites, "tunnel": tunnel}


def one_four_site_run(stack: str, config: dict[str, Any], progress: Progress) -> dict[str, float]:
    started = time.monotonic()
    plan = run_program(f"{stack}-four", config)
    lab = up(plan, check_preconditions=False)
    first = time.monotonic()
    pairs = len(directions(lab.topology))
    before_down = time.monotonic()
    down()
    ended = time.monotonic()
    if lab.first_reply is None:
        raise LabError("4 sites: a pair had no reply; run the lab tests to see why")
    result = {
        "pairs": float(pairs),
        "first_reply_every_pair_s": first - started,
        "teardown_s": ended - before_down,
    }
    progress("4-site run: " + ", ".join(f"{key} {value:.2f}" for key, value in result.items()))
    return result


def _machine(implementation: str) -> dict[str, str]:
    go = netns.run(["wireguard-go", "--version"], check=False).stdout.splitlines()
    return {
        "cpus": str(os.cpu_count()),
        "kernel": platform.release(),
        "wireguard": implementation,
        "wireguard_go": go[0] if go else "not installed",
    }


def run_bench(plan: Plan, runs: int, output: str, progress: Progress) -> dict[str, Any]:
    preflight()
    if runs < 1:
        raise LabError("--runs must be at least 1")
    results = []
    implementation = ""
    for number in range(runs):
        progress(f"run {number + 1} of {runs}")
        result, implementation = one_run(plan.stack, progress)
        results.append(result)
    keys = list(results[0])
    medians = {key: statistics.median(r[key] for r in results) for key in keys}
    config = four_sites(read_stack_file(plan.stack))
    four = []
    for number in range(runs):
        progress(f"4-site run {number + 1} of {runs}")
        four.append(one_four_site_run(plan.stack, config, progress))
    four_medians = {key: statistics.median(r[key] for r in four) for key in four[0]}
    machine = _machine(implementation)
    document = {
        "stack": plan.stack,
        "runs": results,
        "median": medians,
        "machine": machine,
        "iperf_seconds": IPERF_SECONDS,
        "four_sites": {
            "sites": [site["name"] for site in config["sites"]],
            "runs": four,
            "median": four_medians,
        },
    }
    rows = [
        ("plan the stack", f"{medians['plan_s']:.2f} s"),
        ("start of up -> first a1->b1 reply", f"{medians['first_reply_s']:.2f} s"),
        ("iperf3 a1->b1 through the tunnel", f"{medians['tunnel_mbit_s']:.0f} Mbit/s"),
        ("iperf3 gateway->gateway, no tunnel", f"{medians['plain_mbit_s']:.0f} Mbit/s"),
        ("tunnel / plain", f"{medians['ratio']:.2f}"),
        ("teardown", f"{medians['teardown_s']:.2f} s"),
        (
            f"4 sites: start of up -> first reply on all {four_medians['pairs']:.0f} pairs",
            f"{four_medians['first_reply_every_pair_s']:.2f} s",
        ),
        ("4 sites: teardown", f"{four_medians['teardown_s']:.2f} s"),
    ]
    print(f"lab bench, stack {plan.stack}, median of {runs} runs")
    print(
        f"machine: {machine['cpus']} cpus, kernel {machine['kernel']},"
        f" {machine['wireguard']} ({machine['wireguard_go']})"
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>12}")
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {path}")
    return document
