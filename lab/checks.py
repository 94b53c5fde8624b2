"""Checks that the built lab carries traffic the way the guide and the plan say it should.

Every figure comes from a real packet: pings, a trace, TCP connections to services on
the workload hosts, a 50 MB transfer, and a would-be peer on the internet.

Each check is a command run on a host plus a judgement of what it printed. Where the
command runs is a `Runner`: the lab's (`ip netns exec <namespace> ...`, the default) or
SSM Run Command on a canary (tools/e2e.py), so `make e2e` runs these very checks on AWS.
A host is named by what its runner knows it by: a namespace here, an instance id there.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Any, Protocol

from core.facts import GatewayFacts, IptablesRule
from core.keys import public_key
from lab import REPO, STATE_DIR, LabError, netns
from lab.build import SG_TABLE
from lab.report import Check
from lab.state import State
from lab.topology import PROBE_INTERFACE, STRANGER, Site, Topology

TRANSFER_BYTES = 50 * 1024 * 1024
DATA_PORT = 5001
# Candidates for a port no firewall rule covers (the "another TCP port passes" control).
CONTROL_PORTS = (8080, 8081, 9000, 10080, 20080)
HANDSHAKE_MAX_AGE = 180  # WireGuard drops a session after 180 s without a handshake
AGENT_ENV = {"PYTHONPATH": str(REPO)}
# A path-MTU probe: a 1500-byte DF packet, larger than the tunnel's MTU, so the gateway
# must answer "fragmentation needed" and the sender's kernel learn the tunnel's MTU.
PMTU_PROBE_BYTES = 1500


@dataclass(frozen=True)
class Output:
    """What a command printed on a host, and how it exited."""

    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Where a check's commands run."""

    def run(self, host: str, argv: Sequence[str], timeout: float) -> Output:
        """Runs `argv` on `host`, waits at most `timeout` seconds, never raises for an exit
        status (the judgement reads it)."""
        ...

    def agent(self) -> list[str]:
        """The command that starts lab/agent.py on this runner's hosts."""
        ...

    def services(self, host: str, tcp: list[int], udp: list[int]) -> AbstractContextManager[Any]:
        """The agent's servers on `host` for the duration of the block."""
        ...


class NamespaceRunner:
    """The lab's runner: a command in one of the lab's network namespaces."""

    def run(self, host: str, argv: Sequence[str], timeout: float) -> Output:
        result = netns.ns_run(host, argv, check=False, timeout=timeout, env=AGENT_ENV)
        return Output(result.returncode, result.stdout, result.stderr)

    def agent(self) -> list[str]:
        return [sys.executable, "-m", "lab.agent"]

    def services(self, host: str, tcp: list[int], udp: list[int]) -> AbstractContextManager[Any]:
        return services(host, tcp, udp)


LAB = NamespaceRunner()


class HostLike(Protocol):
    """A workload host: a lab host (lab.topology.Host) or a canary."""

    @property
    def name(self) -> str: ...
    @property
    def namespace(self) -> str:
        """What the runner knows the host by (namespace, instance id)."""
        ...

    @property
    def address(self) -> IPv4Interface: ...


class GatewayLike(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def private_address(self) -> IPv4Interface: ...


class SiteLike(Protocol):
    """A site as the checks see it: a lab site (lab.topology.Site) or one on AWS."""

    @property
    def name(self) -> str: ...
    @property
    def interface(self) -> str: ...
    @property
    def facts(self) -> GatewayFacts: ...
    @property
    def gateway(self) -> GatewayLike: ...


@dataclass(frozen=True)
class Ping:
    sent: int
    received: int
    rtt_ms: float | None

    @property
    def loss(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 100.0

    def figure(self) -> str:
        rtt = f", rtt {self.rtt_ms:.2f} ms" if self.rtt_ms is not None else ""
        return f"{self.loss:.0f}% loss ({self.received}/{self.sent}){rtt}"


def ping_argv(
    destination: str,
    *,
    count: int = 5,
    interval: float = 0.2,
    size: int | None = None,
    dont_fragment: bool = False,
    wait: float = 1.0,
) -> list[str]:
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait)]
    if size is not None:
        argv += ["-s", str(size)]
    if dont_fragment:
        argv += ["-M", "do"]
    return [*argv, destination]


def parse_ping(stdout: str, count: int) -> Ping:
    """iputils ping's summary lines -> Ping."""
    stats = re.search(r"(\d+) packets transmitted, (\d+) received", stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", stdout)
    if not stats:
        return Ping(count, 0, None)
    return Ping(int(stats[1]), int(stats[2]), float(rtt[1]) if rtt else None)


def ping(
    namespace: str,
    destination: str,
    *,
    count: int = 5,
    interval: float = 0.2,
    size: int | None = None,
    dont_fragment: bool = False,
    wait: float = 1.0,
    runner: Runner = LAB,
) -> Ping:
    argv = ping_argv(
        destination,
        count=count,
        interval=interval,
        size=size,
        dont_fragment=dont_fragment,
        wait=wait,
    )
    result = runner.run(namespace, argv, timeout=count * (interval + wait) + 5)
    return parse_ping(result.stdout, count)


def wait_for_reply(
    namespace: str, destination: str, timeout: float, runner: Runner = LAB
) -> float | None:
    """Seconds until the first echo reply, or None if none came within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ping(namespace, destination, count=1, wait=0.5, runner=runner).received:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def agent(namespace: str, *args: str, timeout: float, runner: Runner = LAB) -> dict[str, Any]:
    argv = [*runner.agent(), *args]
    result = runner.run(namespace, argv, timeout=timeout + 10)
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit status {result.returncode}"
        raise LabError(f"`{shlex.join(argv)}` on {namespace} failed: {last}")
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def send(
    namespace: str,
    host: str,
    port: int,
    size: int = 0,
    *,
    rate: float = 0,
    timeout: float = 10.0,
    runner: Runner = LAB,
) -> dict[str, Any]:
    return agent(
        namespace,
        "send",
        host,
        str(port),
        "--bytes",
        str(size),
        "--rate",
        str(rate),
        "--timeout",
        str(timeout),
        timeout=timeout,
        runner=runner,
    )


@contextmanager
def services(
    namespace: str, tcp: list[int], udp: list[int] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Runs the agent's servers in a namespace for the duration of the block."""
    argv = [sys.executable, "-m", "lab.agent", "serve"]
    argv += [f"--tcp={port}" for port in tcp] + [f"--udp={port}" for port in udp or []]
    process = subprocess.Popen(
        netns.in_ns(namespace, argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=netns.clean_env(AGENT_ENV),
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10.0)
        if not ready or process.stdout.readline().strip() != "ready":
            error = process.stderr.read() if process.poll() is not None and process.stderr else ""
            raise LabError(f"could not start services in {namespace}: {error.strip()[-200:]}")
        yield process
    finally:
        netns.stop(process)


def control_port(topology: Topology) -> int:
    return free_control_port(topology.sites[0].facts.rules)


def free_control_port(rules: Sequence[IptablesRule]) -> int:
    """A TCP port no firewall rule covers: the "another port passes" control."""
    covered = [rule for rule in rules if _rule_port(rule) is not None]
    for port in CONTROL_PORTS:
        if not any(_covers(rule, "tcp", port) for rule in covered):
            return port
    raise LabError("every control port is covered by a firewall rule")


def _rule_port(rule: IptablesRule) -> tuple[str, int, int] | None:
    if rule.firewall is None or rule.firewall.port_range is None:
        return None
    return (rule.firewall.protocol, *rule.firewall.port_range)


def _covers(rule: IptablesRule, protocol: str, port: int) -> bool:
    spec = _rule_port(rule)
    return spec is not None and spec[0] == protocol and spec[1] <= port <= spec[2]


def _first_match(site: SiteLike, protocol: str, port: int | None) -> str:
    """What the receiving gateway's FORWARD chain does with it: its first matching rule."""
    for rule in site.facts.rules:
        if rule.firewall is None:
            continue
        if port is None and rule.firewall.protocol == protocol:
            return rule.firewall.action
        if port is not None and _covers(rule, protocol, port):
            return rule.firewall.action
    return "accept"


_EXPECTED = {"accept": "done", "reject": "refused", "drop": "timeout"}
_SHOWN = {"done": "open", "refused": "refused", "timeout": "no answer"}


@dataclass(frozen=True)
class Direction:
    source_site: SiteLike
    source: HostLike
    target_site: SiteLike
    target: HostLike

    @property
    def label(self) -> str:
        return f"{self.source.name}->{self.target.name}"


def reaches(source: SiteLike, target: SiteLike) -> bool:
    """Whether the topology lets `source`'s hosts reach `target`'s: one of its gateway's
    peers carries the target's CIDR (the target itself, or in a hub the hub)."""
    return any(target.facts.site.cidr in peer.reached_cidrs for peer in source.facts.peers)


def directions(topology: Topology) -> list[Direction]:
    """Host to host for every ordered pair of sites the topology allows, in site order
    (a1->b1, a1->c1, b1->a1, ...)."""
    members = topology.members
    return [
        Direction(s, s.hosts[0], t, t.hosts[0])
        for s in members
        for t in members
        if s is not t and reaches(s, t)
    ]


def isolated(topology: Topology) -> list[Direction]:
    """The ordered pairs the topology does not allow: no path must carry them."""
    members = topology.members
    return [
        Direction(s, s.hosts[0], t, t.hosts[0])
        for s in members
        for t in members
        if s is not t and not reaches(s, t)
    ]


def trace_directions(topology: Topology) -> list[Direction]:
    """One trace per pair of sites, from the later site to the earlier (b1->a1 for two)."""
    members = {member.name: index for index, member in enumerate(topology.members)}
    return [
        d for d in directions(topology) if members[d.source_site.name] > members[d.target_site.name]
    ]


def trace_rounds(traces: Sequence[Direction]) -> list[list[Direction]]:
    """The traces in rounds with at most one per source host, in their order."""
    rounds: list[list[Direction]] = []
    for direction in traces:
        free = next(
            (r for r in rounds if all(d.source.namespace != direction.source.namespace for d in r)),
            None,
        )
        if free is None:
            rounds.append([direction])
        else:
            free.append(direction)
    return rounds


def check_ping(direction: Direction, runner: Runner = LAB) -> Check:
    result = ping(direction.source.namespace, str(direction.target.address.ip), runner=runner)
    return Check(f"ping {direction.label}", result.loss == 0, result.figure())


def check_isolated(direction: Direction, runner: Runner = LAB) -> Check:
    """A pair the topology does not join: not one ping may get through."""
    result = ping(direction.source.namespace, str(direction.target.address.ip), count=3)
    return Check(f"isolated {direction.label}", result.received == 0, result.figure())


def check_handshake(site: SiteLike) -> Check:
    """Every peer of the gateway has a recent handshake."""
    name = f"handshake {site.name} ({site.interface})"
    result = netns.ns_run(
        site.gateway.namespace, ["wg", "show", site.interface, "latest-handshakes"], check=False
    )
    if result.returncode != 0:
        return Check(name, False, f"no interface ({result.stderr.strip()})")
    stamps = [int(line.split()[1]) for line in result.stdout.splitlines() if line.strip()]
    if not stamps or max(stamps) == 0:
        return Check(name, False, "no handshake yet")
    now = int(time.time())
    if len(site.facts.peers) == 1 and len(stamps) == 1:
        age = max(0, now - stamps[0])
        return Check(name, age <= HANDSHAKE_MAX_AGE, f"latest handshake {age} s ago")
    ages = [max(0, now - stamp) if stamp else None for stamp in stamps]
    fresh = [age for age in ages if age is not None and age <= HANDSHAKE_MAX_AGE]
    expected = len(site.facts.peers)
    shown = ", ".join("none" if age is None else f"{age} s" for age in ages)
    return Check(
        name,
        len(stamps) == expected and len(fresh) == expected,
        f"{len(fresh)} of {expected} peers with a recent handshake (ages {shown})",
    )


def expected_hops(direction: Direction) -> list[str]:
    """The guide's trace: own gateway, (in a hub, from a spoke to a spoke: the hub's
    tunnel address,) the other gateway's tunnel address, the host."""
    hops = [str(direction.source_site.gateway.private_address.ip)]
    target = direction.target_site
    through = [
        peer
        for peer in direction.source_site.facts.peers
        if target.facts.site.cidr in peer.reached_cidrs
    ]
    if through and through[0].name != target.name:
        hops.append(str(through[0].tunnel_address))
    return [*hops, str(target.facts.tunnel_address.ip), str(direction.target.address.ip)]


# mtr's report where mtr is installed (the lab); elsewhere (a canary with no internet to
# install it from) the same report lines from pings with a rising TTL. Its probes span
# more than a second: Linux sends "time exceeded" to a destination at most once a second
# (net.ipv4.icmp_ratelimit), from a bucket that starts empty for a destination it has not
# answered yet, so three probes 0.2 s apart can all go unanswered at a hop (seen at a
# hub right after the lab came up).
_TRACE = r"""
if command -v mtr >/dev/null 2>&1; then exec mtr -n -r -c 3 -i 0.6 -Z 1 "$1"; fi
ttl=1
while [ "$ttl" -le 8 ]; do
  out=$(ping -n -c 1 -W 1 -t "$ttl" "$1" 2>&1)
  hop=$(printf '%s\n' "$out" | sed -n -e 's/^From \([0-9.]*\).*/\1/p' \
    -e 's/^[0-9]* bytes from \([0-9.]*\):.*/\1/p' | head -n 1)
  echo "  $ttl.|-- ${hop:-???}"
  case "$out" in *" bytes from "*) break ;; esac
  ttl=$((ttl + 1))
done
"""


def trace_argv(destination: str, mtr: bool = True) -> list[str]:
    """`mtr=False` always takes the pings with a rising TTL (what a canary has)."""
    script = _TRACE if mtr else _TRACE.replace("command -v mtr", "false")
    return ["sh", "-c", script, "trace", destination]


def parse_hops(stdout: str) -> list[str]:
    hops = re.findall(r"^\s*\d+\.\|--\s+(\S+)", stdout, flags=re.MULTILINE)
    return [str(hop) for hop in hops]


def trace(namespace: str, destination: str, runner: Runner = LAB, mtr: bool = True) -> list[str]:
    return parse_hops(runner.run(namespace, trace_argv(destination, mtr), timeout=30).stdout)


def check_trace(direction: Direction, runner: Runner = LAB, mtr: bool = True) -> Check:
    hops = trace(direction.source.namespace, str(direction.target.address.ip), runner, mtr)
    expected = expected_hops(direction)
    figure = f"hops {' '.join(hops) or 'none'}"
    if hops != expected:
        figure += f" (expected {' '.join(expected)})"
    elif len(expected) == 4:
        figure += " (gateway, hub's tunnel address, far spoke's tunnel address, host)"
    else:
        figure += " (gateway, peer's tunnel address, host; VPC routers keep TTL as AWS's do)"
    return Check(f"mtr {direction.label}", hops == expected, figure)


def check_no_nat(direction: Direction, port: int, runner: Runner = LAB) -> Check:
    result = send(direction.source.namespace, str(direction.target.address.ip), port, runner=runner)
    seen = (result.get("server") or {}).get("peer")
    own = str(direction.source.address.ip)
    figure = f"{direction.target.name} sees the peer as {seen}" + (
        f" ({direction.source.name}'s own address)" if seen == own else f", not {own}"
    )
    if seen is None:
        figure = f"no connection ({result['status']})"
    return Check(f"no-nat {direction.label}", seen == own, figure)


def check_firewall(direction: Direction, control: int, runner: Runner = LAB) -> list[Check]:
    checks = []
    for rule in direction.target_site.facts.rules:
        if rule.firewall is None:
            continue
        protocol = rule.firewall.protocol
        port = rule.firewall.port_range[0] if rule.firewall.port_range else None
        configured = _first_match(direction.target_site, protocol, port)
        expected = _EXPECTED[configured]
        target = str(direction.target.address.ip)
        source = direction.source.namespace
        wait = 2.0 if configured == "drop" else 5.0
        if protocol == "tcp" and port is not None:
            outcome = send(source, target, port, timeout=wait, runner=runner)["status"]
        elif protocol == "udp" and port is not None:
            outcome = agent(
                source, "udp", target, str(port), "--timeout", "2", timeout=2, runner=runner
            )["status"]
        else:
            reply = ping(source, target, count=2, wait=1.0, runner=runner)
            outcome = "done" if reply.received else "timeout"
            expected = "done" if configured == "accept" else "timeout"
        control_outcome = send(source, target, control, timeout=5.0, runner=runner)["status"]
        what = f"{protocol}/{port}" if port is not None else protocol
        ok = outcome == expected and control_outcome == "done"
        figure = (
            f"{what} {_SHOWN.get(outcome, outcome)} (rule: {configured});"
            f" tcp/{control} {_SHOWN.get(control_outcome, control_outcome)}"
        )
        checks.append(Check(f"firewall {direction.label} '{rule.description}'", ok, figure))
    return checks


def tunnel_mtu(site: SiteLike) -> int:
    shown = netns.ns_run(site.gateway.namespace, ["ip", "-o", "link", "show", site.interface])
    match = re.search(r"\bmtu (\d+)", shown.stdout)
    if not match:
        raise LabError(f"no MTU on {site.interface}")
    return int(match[1])


def check_mtu(direction: Direction, mtu: int | None = None, runner: Runner = LAB) -> Check:
    """`mtu`: the tunnel's MTU where the runner cannot read it from the gateway (AWS);
    None reads it from the lab gateway's interface."""
    mtu = tunnel_mtu(direction.source_site) if mtu is None else mtu
    # A full-size packet for the tunnel, not fragmentable: it must fit the 1500-byte path
    # once encapsulated, or it vanishes there.
    result = ping(
        direction.source.namespace,
        str(direction.target.address.ip),
        count=3,
        size=mtu - 28,
        dont_fragment=True,
        runner=runner,
    )
    return Check(
        f"mtu {direction.label}",
        result.loss == 0,
        f"{direction.source_site.interface} mtu {mtu}; {mtu}-byte DF ping {result.figure()}",
    )


def check_transfer(
    direction: Direction, size: int = TRANSFER_BYTES, timeout: float = 60.0, runner: Runner = LAB
) -> Check:
    result = send(
        direction.source.namespace,
        str(direction.target.address.ip),
        DATA_PORT,
        size,
        timeout=timeout,
        runner=runner,
    )
    return transfer_check(f"transfer {direction.label}", result, size)


def transfer_check(name: str, result: dict[str, Any], size: int) -> Check:
    server = result.get("server") or {}
    ok = (
        result["status"] == "done"
        and server.get("bytes") == size
        and server.get("sha256") == result["sha256"]
    )
    seconds = float(result["seconds"])
    megabytes = size / 1024 / 1024
    if ok:
        rate = size * 8 / seconds / 1e6 if seconds else 0.0
        figure = (
            f"{megabytes:.0f} MB in {seconds:.1f} s ({rate:.0f} Mbit/s),"
            f" sha256 {result['sha256'][:12]}… equal at both ends"
        )
    else:
        received = (
            f"the receiver counted {server['bytes']}" if server else "no report from the receiver"
        )
        figure = (
            f"{result['status']} after {seconds:.1f} s: {result['sent_bytes']} of {size} bytes"
            f" sent, {received}"
        )
    return Check(name, ok, figure)


def pmtu_argv(destination: str, size: int = PMTU_PROBE_BYTES) -> list[str]:
    """A DF ping larger than the tunnel, then what the kernel learned about the path."""
    script = (
        'ip route flush cache >/dev/null 2>&1; ping -n -c 3 -i 0.3 -W 1 -M do -s "$2" "$1";'
        ' ip route get "$1"'
    )
    return ["sh", "-c", script, "pmtu", destination, str(size - 28)]


def parse_learned_mtu(stdout: str) -> int | None:
    """The path MTU `ip route get` shows for a destination (None: nothing learned)."""
    route = [line for line in stdout.splitlines() if " dev " in line or "cache" in line]
    match = re.search(r"\bmtu (\d+)", " ".join(route))
    return int(match[1]) if match else None


def check_pmtu(direction: Direction, mtu: int, runner: Runner = LAB) -> Check:
    """Path-MTU discovery through the tunnel: a DF packet too large for it gets the
    gateway's "fragmentation needed" back (the workload group admits it) and the sender
    learns the tunnel's MTU."""
    destination = str(direction.target.address.ip)
    result = runner.run(direction.source.namespace, pmtu_argv(destination), timeout=20)
    learned = parse_learned_mtu(result.stdout)
    figure = (
        f"{PMTU_PROBE_BYTES}-byte DF ping: path MTU learned {learned}"
        if learned is not None
        else f"{PMTU_PROBE_BYTES}-byte DF ping: no path MTU learned"
    )
    return Check(
        f"pmtu {direction.label}", learned == mtu, f"{figure} (tunnel {mtu}, expected {mtu})"
    )


def continuous_ping_start_argv(destination: str, log: str, interval: float = 0.1) -> list[str]:
    """Pings at 10/s in the background (survives the command that starts it)."""
    script = (
        'rm -f "$2"; setsid nohup ping -n -i "$3" -W 1 "$1" >"$2" 2>&1 </dev/null &'
        ' echo $! >"$2.pid"'
    )
    return ["sh", "-c", script, "ping10", destination, log, str(interval)]


def continuous_ping_stop_argv(log: str, settle_seconds: int = 8) -> list[str]:
    """Stops it and prints a digest (Run Command returns at most 24,000 characters of
    output, less than minutes of ping lines): whether replies flowed again, answered
    count, last answered, and ping's summary.

    Before stopping it keeps pinging until 10 replies in a row, all newer than the stop
    request, have come (or `settle_seconds`): a change that leaves the tunnel without a
    session (a key rotation, a restart) is then counted whole, not cut off. WireGuard
    retries a lost handshake after REKEY_TIMEOUT, 5 s (the WireGuard paper, section 6.4).
    """
    script = (
        "seqs() { sed -n 's/.*icmp_seq=\\([0-9]*\\) ttl=.*/\\1/p' \"$@\"; };"
        ' start=$(seqs "$1" | tail -n 1); start=${start:-0}; flowing=no; waited=0;'
        ' while [ "$waited" -lt "$(( $2 * 5 ))" ]; do'
        '   tail -n 10 "$1" > "$1.tail";'
        '   first=$(seqs "$1.tail" | head -n 1);'
        '   if [ "$(seqs "$1.tail" | wc -l)" -eq 10 ] && [ "${first:-0}" -gt "$start" ];'
        "   then flowing=yes; break; fi;"
        "   sleep 0.2; waited=$((waited + 1));"
        " done;"
        ' kill -INT "$(cat "$1.pid")"; sleep 0.5; echo "flowing $flowing";'
        ' seqs "$1" | awk \'{n++; if ($1 > m) m = $1}'
        ' END {print "answered", n + 0, "last", m + 0}\';'
        ' tail -n 3 "$1"; rm -f "$1" "$1.pid" "$1.tail"'
    )
    return ["sh", "-c", script, "ping10", log, str(settle_seconds)]


def ping_loss(output: str) -> tuple[int, int]:
    """(sent, lost) of a continuous ping. A ping counts as lost when a later one was
    answered and it was not: the last ones, still in flight when ping is stopped, are not
    losses (lab/day2.py's ContinuousPing counts the same way); if replies never flowed
    again, every ping since the last reply is lost. Reads ping's own lines, or the stop
    command's digest of them (`flowing yes|no`, `answered N last M`)."""
    digest = re.search(r"^answered (\d+) last (\d+)$", output, flags=re.MULTILINE)
    transmitted = re.search(r"(\d+) packets transmitted", output)
    if digest and int(digest[1]):
        answered, last = int(digest[1]), int(digest[2])
        if re.search(r"^flowing no$", output, flags=re.MULTILINE) and transmitted:
            return int(transmitted[1]), int(transmitted[1]) - answered
        return last, last - answered
    answered_seqs = {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", output)}
    if not answered_seqs:
        return (int(transmitted[1]), int(transmitted[1])) if transmitted else (0, 0)
    last_seq = max(answered_seqs)
    return last_seq, last_seq - len(answered_seqs)


def _probe_counters(site: Site) -> tuple[int, int]:
    """Packets from the internet host that reached the gateway's interface, and that the
    security group let through."""
    counts = []
    for chain in ("probe_arrived", "probe_admitted"):
        listed = netns.ns_run(
            site.gateway.namespace, ["nft", "list", "chain", "inet", SG_TABLE, chain]
        ).stdout
        match = re.search(r"counter packets (\d+)", listed)
        counts.append(int(match[1]) if match else 0)
    return counts[0], counts[1]


def check_stranger(topology: Topology, state: State, wait: float = 8.0) -> Check:
    """A host on the internet with its own key tries both gateways' tunnel ports."""
    ns = topology.stranger_namespace
    before = {site.name: _probe_counters(site) for site in topology.sites}
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = STATE_DIR / "stranger.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(netns.run(["wg", "genkey"]).stdout)
    try:
        if state.implementation == "kernel":
            netns.ns_run(ns, ["ip", "link", "add", PROBE_INTERFACE, "type", "wireguard"])
        else:
            netns.ns_run(ns, ["wireguard-go", PROBE_INTERFACE])
        argv = ["wg", "set", PROBE_INTERFACE, "private-key", str(key_file)]
        targets: list[tuple[str, str, str]] = [
            (public_key(s.gateway.private_key), f"{s.gateway.elastic_ip}", str(s.facts.site.cidr))
            for s in topology.sites
        ]
        # An office on a fixed address is on the internet too (behind NAT it is not
        # reachable from outside at all).
        targets += [
            (o.facts.site.external.public_key, str(o.public_address), str(o.facts.site.cidr))
            for o in topology.offices
            if o.facts.site.external is not None and o.nat is None
        ]
        for key, address, cidr in targets:
            argv += [
                "peer",
                key,
                "endpoint",
                f"{address}:{topology.sites[0].facts.listen_port}",
                "allowed-ips",
                cidr,
                # Sends at once, which starts a handshake; retried every 5 s.
                "persistent-keepalive",
                "1",
            ]
        netns.ns_run(ns, argv)
        netns.ns_run(ns, ["ip", "link", "set", PROBE_INTERFACE, "up"])
        deadline = time.monotonic() + wait
        arrived: dict[str, int] = {}
        while time.monotonic() < deadline:
            arrived = {s.name: _probe_counters(s)[0] - before[s.name][0] for s in topology.sites}
            if all(count > 0 for count in arrived.values()):
                break
            time.sleep(0.2)
        handshakes = netns.ns_run(ns, ["wg", "show", PROBE_INTERFACE, "latest-handshakes"])
        shaken = [line for line in handshakes.stdout.splitlines() if line.split()[1:] != ["0"]]
    finally:
        netns.ns_run(ns, ["ip", "link", "del", PROBE_INTERFACE], check=False)
        key_file.unlink(missing_ok=True)
    parts, ok = [], not shaken
    for site in topology.sites:
        got, passed = (
            now - then for now, then in zip(_probe_counters(site), before[site.name], strict=True)
        )
        ok = ok and got > 0 and passed == 0
        parts.append(
            f"{site.name} {site.gateway.elastic_ip}:{site.facts.listen_port}"
            f" {got} arrived/{passed} past the security group"
        )
    addresses = []
    for member in topology.members:
        addresses += [str(h.address.ip) for h in member.hosts]
        addresses += [str(member.gateway.private_address.ip), str(member.facts.tunnel_address.ip)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answered = list(pool.map(lambda a: ping(ns, a, count=1, wait=0.5).received, addresses))
    unreachable = answered.count(0)
    ok = ok and unreachable == len(addresses)
    figure = (
        f"{STRANGER.ip}: {'; '.join(parts)};"
        f" {'no handshake' if not shaken else 'HANDSHAKE COMPLETED'};"
        f" {unreachable}/{len(addresses)} site addresses unreachable"
    )
    return Check("stranger", ok, figure)


# Checks of different pairs run side by side (each is a few packets, mostly waiting).
PARALLEL = 6


def _each(function: Callable[[Direction], Check], items: Sequence[Direction]) -> list[Check]:
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(function, items))


def run_all(topology: Topology, state: State, transfer_timeout: float = 60.0) -> list[Check]:
    """Every check, in an order where each one's figures mean something: reachability first
    (it also brings up a tunnel without keepalives), then what rides on it."""
    checks: list[Check] = []
    pairs = directions(topology)
    control = control_port(topology)
    checks += _each(check_ping, pairs)
    checks += _each(check_isolated, isolated(topology))
    checks += [check_handshake(member) for member in topology.members]
    # A gateway sends at most ~1 "time exceeded" a second to a destination after a burst
    # of 6 (net.ipv4.icmp_ratelimit), per destination: the host that traces. So one trace
    # per source host at a time (traces through a hub from one host share its budget), and
    # the sources side by side.
    for round_ in trace_rounds(trace_directions(topology)):
        checks += _each(check_trace, round_)
    checks += _each(check_mtu, pairs)
    ports = sorted({control, DATA_PORT} | _tcp_rule_ports(topology))
    udp_ports = sorted(_udp_rule_ports(topology))
    targets = list(dict.fromkeys(d.target.namespace for d in pairs))
    with ExitStack() as stack:
        for target in targets:
            stack.enter_context(services(target, ports, udp_ports))
        checks += _each(lambda d: check_no_nat(d, control), pairs)
        for direction in pairs:
            checks += check_firewall(direction, control)
        checks.append(check_transfer(pairs[0], timeout=transfer_timeout))
    checks.append(check_stranger(topology, state))
    return checks


def _tcp_rule_ports(topology: Topology) -> set[int]:
    specs = [_rule_port(r) for s in topology.members for r in s.facts.rules]
    return {spec[1] for spec in specs if spec and spec[0] == "tcp"}


def _udp_rule_ports(topology: Topology) -> set[int]:
    specs = [_rule_port(r) for s in topology.members for r in s.facts.rules]
    return {spec[1] for spec in specs if spec and spec[0] == "udp"}
