# The failover agent of a site with two gateways (issue 16), python3 standard library only
# (Ubuntu 24.04 has python3: cloud-init is Python). core.render.render_failover installs it
# as /usr/local/sbin/wg-site-to-site-failover, with its site's Settings appended, and
# leaves out every line that is only a comment (EC2's 16 KB user-data limit).
#   run       the daemon (wg-site-to-site-failover.service): decides which gateway holds
#             the site's Elastic IP and routes, and moves them
#   takeover  one shot: make this gateway the holder now (the deployer's drain, the lab)
#   status    {"role": "active"|"standby", "holder": <ENI>|null, ...} as JSON
# Its view of the site is the desired state's `failover` entry, which the apply writes to
# /etc/wireguard/<iface>.failover; its own ENI comes from IMDS; every AWS call goes through
# the aws-call helper (signed by curl, endpoints from /etc/wg-site-to-site/aws.env in the
# lab). It reads no key and prints none. Decisions: Decider (pure, no I/O); Agent does the
# I/O around it.
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

# A probe round (ping the partner, ping every peer's tunnel address through the active)
# starts every 0.5 s: a failed ping answers after its 1 s timeout, so rounds overlap.
PROBE_INTERVAL = 0.5
# Rounds in a row with BOTH probes failed before a takeover: 3 x 0.5 s = 1.5 s. One lost
# ping (a busy host, a dropped packet) is no failure.
MISSES = 3
# How often each gateway reads who holds the Elastic IP (DescribeAddresses): the
# association is the lock; a gateway that lost it stops forwarding within this time.
HOLDER_INTERVAL = 2.0
# After stepping down, no takeover or claim for this long: two gateways that each see the
# other as dead (a partition) must not pass the address back and forth (no flapping).
HOLD_DOWN = 30.0
# Nobody holds the address (a new site): gateway 0 claims at once, gateway 1 only after
# it has been free this long, so the two do not race on the first boot.
INITIAL_GRACE = 20.0
# The pause before each round of route moves (the first at once; later rounds only for
# the routes that failed): about 3 s in all, then the holder check's rhythm (2 s) goes on.
ROUTE_MOVE_PAUSES = (0.0, 0.2, 0.4, 0.8, 1.6)
# Active and StandbyReady go out at the probe's period (CloudWatch's 60 s alarm periods).
METRIC_INTERVAL = 60.0
# ping: one packet, one second for the answer, no name lookups.
PING = ("ping", "-c1", "-W1", "-n")

ACTIVE, STANDBY = "active", "standby"
CLAIM, TAKEOVER, RESUME, STEP_DOWN, SETTLE = "claim", "takeover", "resume", "step-down", "settle"


@dataclass(frozen=True)
class Settings:
    site: str
    stack: str
    interface: str
    failover_file: str
    state_dir: str
    aws: str
    namespace: str
    dimensions: dict[str, str]  # Stack, Site, InstanceId -> CloudWatch's names
    metrics: dict[str, str]  # Active, StandbyReady, Failovers -> CloudWatch's names


class Problem(Exception):
    pass


@dataclass(frozen=True)
class Facts:
    allocation: str
    interfaces: tuple[str, ...]
    addresses: tuple[str, ...]
    routes: tuple[tuple[str, str], ...]
    targets: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> Facts:
        try:
            entry = json.loads(text)
            gateways = entry["gateways"]
            facts = Facts(
                allocation=str(entry["allocationId"]),
                interfaces=tuple(str(g["networkInterfaceId"]) for g in gateways),
                addresses=tuple(str(g["privateIp"]) for g in gateways),
                routes=tuple(
                    (str(r["routeTableId"]), str(r["destination"])) for r in entry["routes"]
                ),
                targets=tuple(str(t) for t in entry["probeTargets"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise Problem(f"not the failover facts ({type(error).__name__}: {error})") from None
        if len(facts.interfaces) != 2:
            raise Problem("not the failover facts (two gateways expected)")
        return facts


@dataclass(frozen=True)
class Action:
    kind: str  # CLAIM, TAKEOVER, RESUME, STEP_DOWN or SETTLE
    reason: str


@dataclass
class Decider:
    # Who should hold the site, from probe rounds and holder checks; no I/O, no clock of
    # its own (`now` is passed in). An action it returns is already its new role; the
    # agent calls failed() when the action did not happen.
    index: int
    own: str
    partner: str
    partner_address: str
    role: str = STANDBY
    holder: str | None = None
    known: bool = False  # a holder check has answered
    settled: bool = False  # the role has been made true on this host once
    misses: int = 0
    hold_until: float = float("-inf")
    free_since: float | None = None
    ready: bool = False  # the last round: the partner and the forwarding path answered

    def probed(self, now: float, partner_ok: bool, forwarding_ok: bool) -> Action | None:
        self.ready = partner_ok and forwarding_ok
        if partner_ok or forwarding_ok:
            # The partner answers, or the peers answer through it: it forwards.
            self.misses = 0
            return None
        self.misses += 1
        if self.role == ACTIVE or self.misses < MISSES or now < self.hold_until:
            return None
        if not (self.known and self.holder == self.partner):
            return None  # nobody to take over from: the claim rules decide
        self.misses = 0
        reason = f"gateway {1 - self.index} at {self.partner_address} and every peer"
        return self._become(ACTIVE, TAKEOVER, f"{reason} unreachable for {MISSES} probes")

    def held(self, now: float, holder: str | None) -> Action | None:
        self.known, self.holder = True, holder
        if holder is None:
            return self._free(now)
        self.free_since = None
        if holder == self.own:
            if self.role == ACTIVE and self.settled:
                return None
            return self._become(ACTIVE, RESUME, "it holds the Elastic IP")
        other = f"gateway {1 - self.index}" if holder == self.partner else holder
        if self.role == ACTIVE:
            self.hold_until = now + HOLD_DOWN
            return self._become(STANDBY, STEP_DOWN, f"{other} holds the Elastic IP")
        return self._settle(f"{other} holds the Elastic IP")

    def _free(self, now: float) -> Action | None:
        # Nobody holds the address: gateway 0 claims it at once, gateway 1 after the
        # grace; an active whose address was released takes it back.
        if self.free_since is None:
            self.free_since = now
        if self.role == ACTIVE:
            return self._become(ACTIVE, CLAIM, "it was released")
        grace = 0.0 if self.index == 0 else INITIAL_GRACE
        if now - self.free_since >= grace and now >= self.hold_until:
            return self._become(ACTIVE, CLAIM, f"nobody held it for {grace:.0f} s")
        return self._settle("nobody holds the Elastic IP yet")

    def failed(self) -> None:
        self.role, self.settled, self.misses = STANDBY, False, 0

    def _settle(self, reason: str) -> Action | None:
        # Once: make the standby's role true on this host (after a restart its tunnel
        # may still be up).
        if self.settled:
            return None
        return self._become(STANDBY, SETTLE, reason)

    def _become(self, role: str, kind: str, reason: str) -> Action:
        self.role, self.settled = role, True
        return Action(kind, reason)


def holder_of(xml: str, allocation: str) -> str | None:
    # DescribeAddresses' answer: the ENI that holds `allocation`, None if none does (an
    # item of addressesSet has allocationId, and networkInterfaceId while associated:
    # https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeAddresses.html).
    root = ElementTree.fromstring(xml)  # noqa: S314 - AWS's own answer, over TLS
    for item in root.iter():
        values = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in item}
        if values.get("allocationId") == allocation:
            return values.get("networkInterfaceId") or None
    raise Problem(f"DescribeAddresses does not list {allocation}")


@dataclass
class Round:
    partner: subprocess.Popen[bytes]
    targets: list[subprocess.Popen[bytes]]

    def done(self) -> bool:
        return all(p.poll() is not None for p in (self.partner, *self.targets))


@dataclass
class Agent:
    settings: Settings
    facts: Facts | None = None
    decider: Decider | None = None
    instance: str = ""
    stamp: float = 0.0
    routes_pending: bool = False
    stopping: bool = False
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def say(self, line: str) -> None:
        # One line per event, for the journal: "failover: <site> gateway <i> <what>".
        assert self.decider is not None
        print(f"failover: {self.settings.site} gateway {self.decider.index} {line}", flush=True)

    def complain(self, line: str) -> None:
        print(f"wg-site-to-site-failover: {line}", file=sys.stderr, flush=True)

    # ---- files, IMDS and AWS
    def load(self) -> Facts:
        path = self.settings.failover_file
        try:
            with open(path) as handle:
                self.stamp = os.fstat(handle.fileno()).st_mtime
                facts = Facts.parse(handle.read())
        except OSError:
            raise Problem(f"no {path}: the apply has not written the site's facts") from None
        except Problem as problem:
            raise Problem(f"{path}: {problem}") from None
        if self.facts is not None and facts.interfaces != self.facts.interfaces:
            raise Problem(f"{path}: the site's gateway interfaces changed; restarting")
        self.facts = facts
        return facts

    def changed(self) -> bool:
        try:
            return os.stat(self.settings.failover_file).st_mtime != self.stamp
        except OSError:
            return False

    def ec2(self, action: str, **query: str) -> list[str]:
        # An EC2 Query API call (Version 2016-11-15) as the aws-call helper takes it.
        return [self.settings.aws, "ec2", action, urllib.parse.urlencode(query)]

    def call(self, argv: list[str]) -> str:
        # The helper says on stderr, in one line, why a call failed (its own limits are
        # 5 s for IMDS and 20 s for the API).
        try:
            done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            raise Problem(f"{argv[1]} {argv[2]} did not answer") from None
        if done.returncode != 0:
            raise Problem(f"{argv[1]} {argv[2]} failed")
        return done.stdout.strip()

    def identify(self) -> Decider:
        facts = self.facts or self.load()
        aws = self.settings.aws
        # The device-0 interface, as the probe reads it (instance metadata categories:
        # network/interfaces/macs/<mac>/interface-id).
        mac = self.call([aws, "imds", "mac"])
        own = self.call([aws, "imds", f"network/interfaces/macs/{mac}/interface-id"])
        self.instance = self.call([aws, "imds", "instance-id"])
        if own not in facts.interfaces:
            raise Problem(f"this instance's interface {own} is not one of the site's gateways")
        index = facts.interfaces.index(own)
        other = 1 - index
        self.decider = Decider(
            index, own, facts.interfaces[other], facts.addresses[other], self.role()
        )
        return self.decider

    def describe(self) -> list[str]:
        assert self.facts is not None
        return self.ec2("DescribeAddresses", **{"AllocationId.1": self.facts.allocation})

    @contextmanager
    def lock(self) -> Iterator[None]:
        # The daemon and a one-shot takeover never move the site at the same time.
        os.makedirs(self.settings.state_dir, exist_ok=True)
        path = os.path.join(self.settings.state_dir, f"{self.settings.interface}.failover.lock")
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # ---- this host
    @property
    def role_file(self) -> str:
        # "active" or "standby", read by the check and the probe.
        return os.path.join(self.settings.state_dir, f"{self.settings.interface}.role")

    def role(self) -> str:
        try:
            with open(self.role_file) as handle:
                return ACTIVE if handle.read().strip() == ACTIVE else STANDBY
        except OSError:
            return STANDBY

    def set_role(self, role: str) -> None:
        os.makedirs(self.settings.state_dir, exist_ok=True)
        with open(f"{self.role_file}.new", "w") as handle:
            handle.write(f"{role}\n")
        os.replace(f"{self.role_file}.new", self.role_file)

    def quiet(self, *argv: str) -> int:
        try:
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            self.complain(f"{' '.join(argv)}: no answer in 60 s")
            return 1
        return done.returncode

    def bring_up(self) -> None:
        # wg-quick@.service is Type=oneshot with RemainAfterExit=yes (wireguard-tools'
        # src/systemd/wg-quick@.service): it stays "active" after its interface is gone,
        # and only a restart brings it back.
        if self.quiet("ip", "link", "show", "dev", self.settings.interface) != 0:
            self.quiet("systemctl", "restart", f"wg-quick@{self.settings.interface}")

    def bring_down(self) -> None:
        self.quiet("systemctl", "stop", f"wg-quick@{self.settings.interface}")

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.children.append(child)
        return child

    def ping(self, address: str) -> subprocess.Popen[bytes]:
        return self.spawn([*PING, address])

    def publish(self, values: list[tuple[str, float, bool]]) -> None:
        # (metric, value, per instance) in one PutMetricData, in the background; the
        # dimensions as the probe's: Stack and Site, and InstanceId per instance.
        names, dimensions = self.settings.metrics, self.settings.dimensions
        query = {"Namespace": self.settings.namespace}
        for number, (metric, value, per_instance) in enumerate(values, 1):
            member = f"MetricData.member.{number}."
            query[f"{member}MetricName"] = names[metric]
            query[f"{member}Value"] = f"{value:g}"
            query[f"{member}Unit"] = "Count"
            named = [("Stack", self.settings.stack), ("Site", self.settings.site)]
            if per_instance:
                named.append(("InstanceId", self.instance))
            for n, (name, value_of) in enumerate(named, 1):
                query[f"{member}Dimensions.member.{n}.Name"] = dimensions[name]
                query[f"{member}Dimensions.member.{n}.Value"] = value_of
        body = urllib.parse.urlencode(query)
        self.children.append(
            subprocess.Popen(
                [self.settings.aws, "monitoring", "PutMetricData", body], stdout=subprocess.DEVNULL
            )
        )

    # ---- moving the site
    def move_routes(self) -> bool:
        # Every route of every table to this ENI, all at once (ReplaceRoute: "Replaces an
        # existing route within a route table in a VPC"; one target per destination,
        # API_ReplaceRoute.html). The routes ignore their target in Pulumi's program.
        # The calls go out right after AssociateAddress, whose move changes this gateway's
        # own public address (its auto-assigned one is released for the Elastic IP): a
        # call already under way when the new mapping takes effect loses its connection.
        # So a failed move is tried again at once, a few times, rather than only at the
        # next holder check (2 s later), and a one-shot takeover (a drain) does not fail.
        assert self.facts is not None and self.decider is not None
        own = self.decider.own
        pending = list(self.facts.routes)
        for pause in ROUTE_MOVE_PAUSES:
            time.sleep(pause)
            calls = [
                (
                    route,
                    subprocess.Popen(
                        self.ec2(
                            "ReplaceRoute",
                            RouteTableId=route[0],
                            DestinationCidrBlock=route[1],
                            NetworkInterfaceId=own,
                        ),
                        stdout=subprocess.DEVNULL,
                    ),
                )
                for route in pending
            ]
            pending = [route for route, call in calls if call.wait(timeout=60) != 0]
            if not pending:
                break
        self.routes_pending = bool(pending)
        if self.routes_pending:
            self.complain(f"{len(pending)} routes did not move; trying again")
        return not self.routes_pending

    def holds_address(self) -> bool:
        assert self.facts is not None and self.decider is not None
        try:
            return holder_of(self.call(self.describe()), self.facts.allocation) == self.decider.own
        except Problem:
            return False

    def activate(self, action: Action) -> bool:
        assert self.facts is not None and self.decider is not None
        decider = self.decider
        if action.kind in (CLAIM, TAKEOVER):
            # "Reassociation is automatic, but you can specify false to ensure the operation
            # fails if the Elastic IP address is already associated with another resource"
            # (API_AssociateAddress.html); older API versions and moto refuse a held address
            # without it, so it is said. An address is on one interface at a time: the lock.
            associate = self.ec2(
                "AssociateAddress",
                AllocationId=self.facts.allocation,
                NetworkInterfaceId=decider.own,
                AllowReassociation="true",
            )
            try:
                self.call(associate)
            except Problem as problem:
                # The move changes this gateway's own public address, so the answer can be
                # lost though the address moved: ask once before giving up.
                if not self.holds_address():
                    self.complain(f"{problem}: gateway {decider.index} stays standby")
                    decider.failed()
                    return False
        self.set_role(ACTIVE)
        self.bring_up()
        # WireGuard starts a handshake on the first packet for a peer: the tunnel is back
        # within a round trip, not after the peers' own retry (15 s).
        for target in self.facts.targets:
            self.ping(target)
        routed = self.move_routes()
        if action.kind == TAKEOVER:
            self.say(f"took over from gateway {1 - decider.index} ({action.reason})")
        elif action.kind == CLAIM:
            self.say(f"claimed the Elastic IP ({action.reason})")
        else:
            self.say(f"is active ({action.reason})")
        return routed

    def act(self, action: Action | None) -> None:
        if action is None:
            return
        assert self.decider is not None
        with self.lock():
            if action.kind in (CLAIM, TAKEOVER, RESUME):
                if not self.activate(action) and self.decider.role != ACTIVE:
                    return
            else:
                self.set_role(STANDBY)
                self.bring_down()
                if action.kind == STEP_DOWN:
                    self.say(f"stepped down ({action.reason}; no takeover for {HOLD_DOWN:.0f} s)")
                else:
                    self.say(f"is standby ({action.reason})")
        values = [("Active", 1.0 if self.decider.role == ACTIVE else 0.0, True)]
        if action.kind == TAKEOVER:
            values.append(("Failovers", 1.0, False))
        self.publish(values)

    # ---- the subcommands
    def takeover(self) -> int:
        decider = self.identify()
        assert self.facts is not None
        holder = holder_of(self.call(self.describe()), self.facts.allocation)
        if holder == decider.own:
            self.act(Action(RESUME, "it held the Elastic IP already"))
        else:
            decider.role = ACTIVE
            self.act(Action(TAKEOVER, "takeover requested"))
        if decider.role != ACTIVE or self.routes_pending:
            raise Problem(f"gateway {decider.index} did not take over (see above)")
        for child in self.children:
            child.wait(timeout=60)
        return 0

    def status(self) -> int:
        decider = self.identify()
        assert self.facts is not None
        interfaces = self.facts.interfaces
        holder = holder_of(self.call(self.describe()), self.facts.allocation)
        state = {
            "site": self.settings.site,
            "gateway": decider.index,
            "role": self.role(),
            "networkInterfaceId": decider.own,
            "holder": holder,
            "holderGateway": interfaces.index(holder) if holder in interfaces else None,
        }
        print(json.dumps(state))
        return 0

    def stop(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        # systemd's stop (a shutdown, an instance terminated) ends the loop between two
        # steps, never in the middle of moving the site (the address moved, the routes not).
        signal.signal(signal.SIGTERM, self.stop)
        if not os.path.exists(self.role_file):
            # Until it knows better, this gateway is no holder: the probe measures nothing.
            self.set_role(STANDBY)
        waiting = ""
        while self.decider is None and not self.stopping:
            try:
                self.identify()
            except Problem as problem:
                if str(problem) != waiting:
                    self.complain(f"{problem}; waiting")
                    waiting = str(problem)
                time.sleep(HOLDER_INTERVAL)
        decider = self.decider
        if decider is None:
            return 0
        metric_interval = float(os.environ.get("WG_S2S_METRIC_INTERVAL") or METRIC_INTERVAL)
        rounds: list[Round] = []
        holder: subprocess.Popen[str] | None = None
        next_probe = next_holder = time.monotonic()
        # The first metrics once the first rounds have answered (or not).
        next_metric = next_probe + MISSES * PROBE_INTERVAL
        while not self.stopping:
            now = time.monotonic()
            facts = self.facts
            assert facts is not None
            if now >= next_probe:
                next_probe = max(next_probe + PROBE_INTERVAL, now)
                if decider.role == STANDBY:
                    targets = [self.ping(target) for target in facts.targets]
                    rounds.append(Round(self.ping(decider.partner_address), targets))
            while rounds and rounds[0].done():
                done = rounds.pop(0)
                forwarding = any(p.returncode == 0 for p in done.targets)
                partner = done.partner.returncode == 0
                self.act(decider.probed(time.monotonic(), partner, forwarding))
            if holder is None and now >= next_holder:
                next_holder = now + HOLDER_INTERVAL
                holder = subprocess.Popen(self.describe(), stdout=subprocess.PIPE, text=True)
            if holder is not None and holder.poll() is not None:
                answer, ok = holder.communicate()[0], holder.returncode == 0
                holder = None
                try:
                    holds = holder_of(answer, facts.allocation) if ok else None
                except (Problem, ElementTree.ParseError) as problem:
                    self.complain(f"DescribeAddresses: {problem}")
                    ok = False
                if ok:
                    self.act(decider.held(time.monotonic(), holds))
                if decider.role == ACTIVE:
                    with self.lock():
                        self.bring_up()
                        if self.routes_pending:
                            self.move_routes()
                if self.changed():
                    self.load()
            if now >= next_metric:
                next_metric = now + metric_interval
                values = [("Active", 1.0 if decider.role == ACTIVE else 0.0, True)]
                if decider.role == STANDBY:
                    # Ready: the apply has run (the facts are its) and both probes answer.
                    ready = decider.ready and os.path.exists(self.settings.failover_file)
                    values.append(("StandbyReady", 1.0 if ready else 0.0, False))
                self.publish(values)
            self.children = [child for child in self.children if child.poll() is None]
            time.sleep(0.05)
        return 0


def main(argv: list[str], settings: Settings) -> int:
    if len(argv) != 1 or argv[0] not in ("run", "takeover", "status"):
        print("usage: wg-site-to-site-failover run|takeover|status", file=sys.stderr)
        return 2
    agent = Agent(settings)
    try:
        if argv[0] == "run":
            return agent.run()
        return agent.takeover() if argv[0] == "takeover" else agent.status()
    except (Problem, ElementTree.ParseError) as problem:
        print(f"wg-site-to-site-failover {argv[0]}: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def configured(sbin: str, **values: Any) -> Settings:
    # The site's settings as render_failover writes them; the lab and the tests move the
    # state directory (WG_S2S_STATE_DIR) as they do the probe's. The helpers live in
    # `sbin`; appended, so a PATH given to us is searched first (as in the other scripts).
    path = os.environ.get("PATH") or ""
    os.environ["PATH"] = f"{path}:{sbin}:/usr/sbin:/usr/bin:/sbin:/bin".lstrip(":")
    values["state_dir"] = os.environ.get("WG_S2S_STATE_DIR") or values["state_dir"]
    return Settings(**values)
