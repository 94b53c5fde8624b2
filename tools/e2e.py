"""The whole proof on a real AWS account: `make e2e [STACK=dev]`.

    python -m tools.e2e [STACK] [--name NAME] [--deadline-minutes 45]
                        [--report e2e-report.json] [--summary e2e-summary.md]

In order, each step timed:
1. an ephemeral stack `test-e2e-<time>` from STACK (tools/ephemeral.py) with every site's
   canary on and no alerts (the base's are never copied, none are added);
2. `pulumi up --yes` (the apply and verify included);
3. per site, boot to tunnel: the canary answers Run Command and pings the peer's canary;
4. the lab's checks (lab/checks.py), run on the canaries through SSM Run Command: ping
   both ways, the hop list, DF pings at the tunnel MTU and path-MTU discovery above it,
   no NAT, every firewall rule, a 100 MB transfer with sha256 at both ends;
5. day 2: a firewall rule added, then a key rotation, each `pulumi up` with a canary
   pinging the other at 10/s and the loss counted, and the new rule checked;
6. `pulumi preview --expect-no-changes`: the drift check;
7. `pulumi destroy` (in a `finally`: it runs whatever failed before, the deadline too);
8. a sweep of everything still tagged `stack=<that stack>` (Resource Groups Tagging API):
   anything left fails the run.

It prints the account, the regions and the expected cost first, and writes
`e2e-report.json` and a Markdown summary (the GitHub job summary). It refuses a stack that
is not ephemeral (only `test-*` stacks it makes itself, never a committed stack file).
Without AWS credentials it stops at once, with one line.

Exit status: 0 every step and check passed, 1 something failed (the report says what),
2 bad input or no credentials (nothing was created), 130 interrupted (after destroying).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any, Protocol

import botocore.session
import yaml
from botocore.exceptions import BotoCoreError, ClientError

from core.config import PROJECT, load_stack_config, project_config_from_stack_file
from core.facts import GatewayFacts, gateway_facts
from lab import checks
from lab.checks import Direction, Output
from lab.report import Check
from plan.cost import HOURS_PER_MONTH, dollars, monthly_cost
from plan.document import public_document
from plan.engine import PlanError, run_program
from tools import ephemeral

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEADLINE_MINUTES = 45
TRANSFER_BYTES = 100 * 1024 * 1024
# Where the canary keeps lab/agent.py and the background ping's log (tmpfs, gone on reboot).
REMOTE_DIR = "/run/wg-site-to-site-e2e"
# The day-2 change: a rule on a port nothing else uses, so the control port stays open.
DAY2_RULE = {
    "description": "e2e day-2 rule",
    "protocol": "tcp",
    "port": 3389,
    "action": "reject",
}
# Pings at 10/s that may be lost during the change. A firewall reload is one
# iptables-restore transaction (the lab loses none; 0.3 s allows for the internet between
# regions). A rotation: both applies run at once, and each side's switch costs until the
# other has its new key (README, "Day 2"): up to 10 s.
LOSS_ALLOWED = {"firewall rule added": 3, "key rotation": 100}
BOOT_TIMEOUT = 900.0  # a first boot: cloud-init, the SSM agent registering
TTL_HOURS = 2  # `make test-stack-sweep` destroys an interrupted run's stack after this
COMMAND_POLL_SECONDS = 1.0
# How long the e2e agent's servers may take to say "ready": 60 tries 0.25 s apart at least.
SERVICES_START_TRIES = 60
SERVICES_START_POLL_SECONDS = 0.25
NO_CREDENTIALS = (
    "tools.e2e: no AWS credentials (botocore found none in the environment, "
    "the shared files or an instance role); nothing was created"
)


class E2eError(Exception):
    """A step failed: exit 1, after destroying."""


class DeadlineExceeded(E2eError):
    pass


# --------------------------------------------------------------------------- AWS access


class Aws(Protocol):
    def client(self, service: str, region: str) -> Any: ...


class Boto3Aws:
    def __init__(self) -> None:
        import boto3  # only on a real run

        self.session = boto3.session.Session()

    def client(self, service: str, region: str) -> Any:
        return self.session.client(service, region_name=region)  # type: ignore[call-overload]


def have_credentials() -> bool:
    """Whatever botocore would sign with: environment, shared files, SSO, instance role."""
    try:
        return botocore.session.Session().get_credentials() is not None
    except BotoCoreError:
        return False


# --------------------------------------------------------------------------- the clock


class Deadline:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.end = clock() + seconds
        self.seconds = seconds

    def remaining(self) -> float:
        return self.end - self.clock()

    def check(self, step: str) -> None:
        if self.remaining() <= 0:
            raise DeadlineExceeded(f"the deadline ({self.seconds / 60:g} min) passed before {step}")


class BoundedPulumi(ephemeral.Pulumi):
    """The Pulumi CLI, cancelled (SIGINT: Pulumi stops cleanly) when the deadline passes.
    Destroy runs unbounded: it is the cleanup."""

    def __init__(self, executable: str, cwd: Path, deadline: Deadline) -> None:
        super().__init__(executable, cwd)
        self.deadline = deadline

    def call(self, *args: str) -> int:
        if args[:1] == ("destroy",) or args[:2] == ("stack", "rm"):
            return super().call(*args)
        with subprocess.Popen(self._argv(args), cwd=self.cwd, env=self.env) as process:
            try:
                return process.wait(timeout=max(self.deadline.remaining(), 0.1))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)
                process.wait()
                raise DeadlineExceeded(
                    f"`pulumi {' '.join(args)}` was cancelled at the deadline"
                ) from None


# --------------------------------------------------------------------------- Run Command


class SsmRunner:
    """lab/checks.py's Runner on AWS: SSM Run Command (AWS-RunShellScript) on a canary.

    send_command, then get_command_invocation until a final status
    (https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_GetCommandInvocation.html:
    StandardOutputContent holds at most 24,000 characters).
    """

    def __init__(
        self,
        aws: Aws,
        regions: dict[str, str],
        *,
        poll: float = COMMAND_POLL_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.aws = aws
        self.regions = regions  # instance id -> region
        self.poll = poll
        self.sleep = sleep

    def _client(self, host: str) -> Any:
        return self.aws.client("ssm", self.regions[host])

    def run(self, host: str, argv: Sequence[str], timeout: float) -> Output:
        client = self._client(host)
        sent = client.send_command(
            InstanceIds=[host],
            DocumentName="AWS-RunShellScript",
            Parameters={
                "commands": [shlex.join(argv)],
                "executionTimeout": [str(max(int(timeout) + 5, 30))],
            },
            TimeoutSeconds=60,
            Comment="wg-site-to-site e2e check",
        )
        command_id = sent["Command"]["CommandId"]
        waited = 0.0
        while True:
            self.sleep(self.poll)
            waited += self.poll
            try:
                answer = client.get_command_invocation(CommandId=command_id, InstanceId=host)
            except ClientError as error:
                # Right after send_command the invocation may not exist yet.
                if error.response["Error"]["Code"] != "InvocationDoesNotExist":
                    raise
                continue
            status = answer["Status"]
            if status in {"Success", "Failed", "Cancelled", "TimedOut"}:
                code = int(answer.get("ResponseCode", -1))
                return Output(
                    code if status in {"Success", "Failed"} else 124,
                    answer.get("StandardOutputContent", ""),
                    answer.get("StandardErrorContent", "") or status,
                )
            if waited > timeout + 120:
                return Output(124, "", f"no result after {waited:.0f} s (status {status})")

    def agent(self) -> list[str]:
        return ["python3", f"{REMOTE_DIR}/agent.py"]

    def ready(self, host: str, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Waits until the instance's SSM agent takes commands (a first boot registers it)."""
        end = clock() + timeout
        while True:
            try:
                if self.run(host, ["true"], timeout=30).returncode == 0:
                    return
            except ClientError as error:
                if error.response["Error"]["Code"] not in {"InvalidInstanceId", "InvalidTarget"}:
                    raise
            if clock() > end:
                raise E2eError(f"{host} did not take Run Command within {timeout:.0f} s")
            self.sleep(10 * self.poll)

    def install_agent(self, host: str) -> None:
        """lab/agent.py onto the canary (standard library only; python3 is on the image).
        Sent gzipped in pieces: each stays far below Run Command's parameter limit."""
        packed = base64.b64encode(gzip.compress((REPO / "lab" / "agent.py").read_bytes()))
        text = packed.decode()
        pieces = [text[i : i + 3000] for i in range(0, len(text), 3000)]
        target = f"{REMOTE_DIR}/agent.py"
        self._must(host, ["sh", "-c", 'mkdir -p "$1" && : >"$2.b64"', "mk", REMOTE_DIR, target])
        for piece in pieces:
            self._must(host, ["sh", "-c", 'printf %s "$1" >>"$2.b64"', "put", piece, target])
        self._must(
            host, ["sh", "-c", 'base64 -d "$1.b64" | gunzip >"$1" && rm "$1.b64"', "un", target]
        )

    def _must(self, host: str, argv: Sequence[str]) -> Output:
        result = self.run(host, argv, timeout=30)
        if result.returncode != 0:
            raise E2eError(f"{host}: `{argv[0]} ...` failed: {result.stderr.strip()[-200:]}")
        return result

    @contextmanager
    def services(self, host: str, tcp: list[int], udp: list[int]) -> Iterator[None]:
        ports = [f"--tcp={p}" for p in tcp] + [f"--udp={p}" for p in udp]
        log = f"{REMOTE_DIR}/serve.log"
        start = (
            'log=$1; shift; rm -f "$log"; setsid nohup "$@" >"$log" 2>&1 </dev/null &'
            ' echo $! >"$log.pid"'
        )
        self._must(host, ["sh", "-c", start, "serve", log, *self.agent(), "serve", *ports])
        # Tries spaced by at least SERVICES_START_POLL_SECONDS: with a stand-in that answers
        # at once (poll 0), 30 tries without a pause were over before a loaded machine
        # had started the agent's Python.
        for _ in range(SERVICES_START_TRIES):
            if self.run(host, ["cat", log], timeout=10).stdout.strip().startswith("ready"):
                break
            self.sleep(max(self.poll, SERVICES_START_POLL_SECONDS))
        else:
            raise E2eError(f"{host}: the agent's servers did not start")
        try:
            yield None
        finally:
            self.run(host, ["sh", "-c", 'kill "$(cat "$1.pid")"; rm -f "$1" "$1.pid"', "stop", log],
                     timeout=10)  # fmt: skip


# --------------------------------------------------------------------------- the sites


@dataclass(frozen=True)
class AwsGateway:
    namespace: str  # not reachable by the checks on AWS (the MTU comes from the facts)
    private_address: IPv4Interface


@dataclass(frozen=True)
class CanaryHost:
    name: str
    namespace: str  # the instance id: what Run Command targets
    address: IPv4Interface


@dataclass(frozen=True)
class AwsSite:
    facts: GatewayFacts
    gateway: AwsGateway
    canary: CanaryHost
    region: str

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def interface(self) -> str:
        return self.facts.interface


def aws_sites(
    config: dict[str, Any], stack: str, outputs: dict[str, Any]
) -> tuple[AwsSite, AwsSite]:
    """The checks' view of the deployed stack: the core's facts and the stack's outputs."""
    both = gateway_facts(load_stack_config(config), stack)
    made = []
    for facts in both:
        exported = outputs.get(facts.name) or {}
        address, instance = exported.get("canaryIp"), exported.get("canaryInstanceId")
        if not address or not instance:
            raise E2eError(f"site {facts.name} exports no canaryIp/canaryInstanceId")
        if facts.canary is not None and IPv4Address(address) != facts.canary:
            raise E2eError(f"site {facts.name}: canary at {address}, not {facts.canary}")
        prefix = facts.layout.private_subnet.prefixlen
        made.append(
            AwsSite(
                facts=facts,
                gateway=AwsGateway(
                    namespace="",
                    private_address=IPv4Interface(
                        f"{facts.layout.gateway_private_ip}/{facts.layout.public_subnet.prefixlen}"
                    ),
                ),
                canary=CanaryHost(
                    f"{facts.name}-canary", str(instance), IPv4Interface(f"{address}/{prefix}")
                ),
                region=facts.site.aws_region,
            )
        )
    return made[0], made[1]


def aws_directions(sites: tuple[AwsSite, AwsSite]) -> list[Direction]:
    a, b = sites
    return [Direction(a, a.canary, b, b.canary), Direction(b, b.canary, a, a.canary)]


# --------------------------------------------------------------------------- the report


@dataclass
class Timed:
    name: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class Report:
    base: str
    stack: str
    account: str
    regions: list[str]
    deadline_minutes: float
    expected_cost: str
    started_at: str
    steps: list[Timed] = field(default_factory=list)
    checks: list[Timed] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(item.ok for item in [*self.steps, *self.checks])

    def document(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def markdown(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        lines = [
            f"## wg-site-to-site e2e: {verdict}",
            "",
            f"Stack `{self.stack}` from `{self.base}` in account {self.account},"
            f" regions {', '.join(self.regions)}; started {self.started_at};"
            f" deadline {self.deadline_minutes:g} min; expected cost {self.expected_cost}.",
            "",
            "| step | result | seconds | detail |",
            "|---|---|---:|---|",
        ]
        lines += [_row(item) for item in self.steps]
        lines += ["", "| check | result | seconds | figure |", "|---|---|---:|---|"]
        lines += [_row(item) for item in self.checks]
        if self.leftovers:
            lines += ["", "Left after destroy:", *(f"- `{arn}`" for arn in self.leftovers)]
        return "\n".join(lines) + "\n"


def _row(item: Timed) -> str:
    detail = item.detail.replace("|", "\\|").replace("\n", " ")
    return f"| {item.name} | {'pass' if item.ok else 'FAIL'} | {item.seconds:.1f} | {detail} |"


def timed_checks(run: Callable[[], Check | list[Check]]) -> list[Timed]:
    started = time.monotonic()
    made = run()
    found = made if isinstance(made, list) else [made]
    seconds = (time.monotonic() - started) / max(len(found), 1)
    return [Timed(c.name, c.ok, seconds, c.figure) for c in found]


# --------------------------------------------------------------------------- the checks


def site_checks(
    sites: tuple[AwsSite, AwsSite],
    runner: checks.Runner,
    *,
    transfer_bytes: int = TRANSFER_BYTES,
    transfer_timeout: float = 300.0,
) -> list[Timed]:
    """The lab's checks on the canaries, in the lab's order (reachability first)."""
    pairs = aws_directions(sites)
    rules = [rule for site in sites for rule in site.facts.rules]
    control = checks.free_control_port(rules)
    mtu = sites[0].facts.mtu
    done: list[Timed] = []
    for direction in pairs:
        done += timed_checks(partial(checks.check_ping, direction, runner))
    for direction in pairs:
        done += timed_checks(partial(checks.check_trace, direction, runner, mtr=False))
    for direction in pairs:
        done += timed_checks(partial(checks.check_mtu, direction, mtu, runner))
        done += timed_checks(partial(checks.check_pmtu, direction, mtu, runner))
    tcp, udp = _service_ports(rules, control)
    with (
        runner.services(pairs[0].target.namespace, tcp, udp),
        runner.services(pairs[1].target.namespace, tcp, udp),
    ):
        for direction in pairs:
            done += timed_checks(partial(checks.check_no_nat, direction, control, runner))
        for direction in pairs:
            done += timed_checks(partial(checks.check_firewall, direction, control, runner))
        done += timed_checks(
            lambda: checks.check_transfer(pairs[0], transfer_bytes, transfer_timeout, runner)
        )
    return done


def _service_ports(rules: Sequence[Any], control: int) -> tuple[list[int], list[int]]:
    tcp: set[int] = {control, checks.DATA_PORT}
    udp: set[int] = set()
    for rule in rules:
        if rule.firewall is None or rule.firewall.port_range is None:
            continue
        (tcp if rule.firewall.protocol == "tcp" else udp).add(rule.firewall.port_range[0])
    return sorted(tcp), sorted(udp)


def firewall_rule_checks(
    sites: tuple[AwsSite, AwsSite], runner: checks.Runner, description: str
) -> list[Timed]:
    """The day-2 rule, both ways, against the agent's servers."""
    pairs = aws_directions(sites)
    rules = [rule for site in sites for rule in site.facts.rules]
    control = checks.free_control_port(rules)
    tcp, udp = _service_ports(rules, control)
    found: list[Timed] = []
    with (
        runner.services(pairs[0].target.namespace, tcp, udp),
        runner.services(pairs[1].target.namespace, tcp, udp),
    ):
        for direction in pairs:
            found += [
                item
                for item in timed_checks(partial(checks.check_firewall, direction, control, runner))
                if f"'{description}'" in item.name
            ]
    return found


# --------------------------------------------------------------------------- the run


@dataclass
class Options:
    base: str
    name: str
    deadline_minutes: float
    report: Path
    summary: Path
    root: Path
    owner: str | None = None


class Run:
    """One e2e run; every Pulumi and AWS call goes through `pulumi` and `aws`."""

    def __init__(
        self,
        options: Options,
        aws: Aws,
        pulumi: ephemeral.Pulumi,
        runner: SsmRunner | None = None,
        *,
        out: Callable[[str], None] = print,
        deadline: Deadline | None = None,
    ) -> None:
        self.options = options
        self.deadline = deadline or Deadline(options.deadline_minutes * 60)
        self.aws = aws
        self.pulumi = pulumi
        self.runner = runner
        self.out = out
        self.project = ephemeral.Project.at(options.root)
        _, self.stack = ephemeral.parse_name(options.name)
        self.report: Report | None = None

    # ----- what the run will cost, and where
    def preflight(self) -> tuple[dict[str, Any], Report]:
        ephemeral.refuse_committed_name(self.project, self.stack.removeprefix(ephemeral.PREFIX))
        document, _ = ephemeral.ephemeral_document(
            self.project, self.options.base, "e2e", "2000-01-01T00:00:00Z", canaries=True
        )
        config = load_stack_config(project_config_from_stack_file(document))
        regions = sorted({site.aws_region for site in config.sites if site.is_aws})
        try:
            planned = run_program(self.stack, project_config_from_stack_file(document))
        except PlanError as error:
            raise ephemeral.UsageError(str(error).splitlines()[0]) from None
        monthly = monthly_cost(public_document(planned)).total_cents
        hours = self.options.deadline_minutes / 60
        prorated = round(monthly * hours / HOURS_PER_MONTH)
        identity = self.aws.client("sts", regions[0]).get_caller_identity()
        report = Report(
            base=self.options.base,
            stack=self.stack,
            account=str(identity["Account"]),
            regions=regions,
            deadline_minutes=self.options.deadline_minutes,
            expected_cost=(
                f"at most {dollars(max(prorated, 1))} ({dollars(monthly)} a month prorated to "
                f"{self.options.deadline_minutes:g} min; traffic not counted)"
            ),
            started_at=ephemeral.iso_utc(datetime.now(UTC)),
        )
        self.out(f"e2e: account {report.account} ({identity.get('Arn', '')})")
        self.out(f"e2e: regions {', '.join(regions)}; stack {self.stack} from {report.base}")
        self.out(f"e2e: expected cost {report.expected_cost}")
        return project_config_from_stack_file(document), report

    def step(self, name: str, action: Callable[[], str | None]) -> str | None:
        assert self.report is not None
        started = time.monotonic()
        try:
            detail = action()
        except (E2eError, ephemeral.PulumiError, ephemeral.UsageError, ClientError) as error:
            seconds = time.monotonic() - started
            self.report.steps.append(Timed(name, False, seconds, str(error)))
            self.out(f"e2e: {name}: FAILED after {seconds:.1f} s: {error}")
            raise E2eError(f"{name}: {error}") from None
        seconds = time.monotonic() - started
        self.report.steps.append(Timed(name, True, seconds, detail or ""))
        self.out(f"e2e: {name}: ok ({seconds:.1f} s){': ' + detail if detail else ''}")
        return detail

    def stack_file(self) -> Path:
        return self.project.stack_file(self.stack)

    def edit_config(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """Changes the ephemeral stack's file as a person would, keeping its header."""
        path = self.stack_file()
        text = path.read_text()
        header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
        document = yaml.safe_load(text)
        edit(document["config"])
        path.write_text(header + yaml.safe_dump(document, sort_keys=False))

    def config(self) -> dict[str, Any]:
        document = yaml.safe_load(self.stack_file().read_text())
        return project_config_from_stack_file(document)

    def sites(self) -> tuple[AwsSite, AwsSite]:
        outputs = self.pulumi.json("stack", "output", "sites", "--json", "--stack", self.stack)
        return aws_sites(self.config(), self.stack, outputs)

    def runner_for(self, sites: tuple[AwsSite, AwsSite]) -> SsmRunner:
        if self.runner is None:
            self.runner = SsmRunner(self.aws, {s.canary.namespace: s.region for s in sites})
        return self.runner

    def boot_to_tunnel(self, site: AwsSite, peer: AwsSite, runner: SsmRunner) -> str:
        runner.ready(site.canary.namespace, BOOT_TIMEOUT)
        runner.install_agent(site.canary.namespace)
        waited = checks.wait_for_reply(
            site.canary.namespace, str(peer.canary.address.ip), 120.0, runner
        )
        if waited is None:
            raise E2eError(f"{site.canary.name} got no reply from {peer.canary.name}")
        return f"{site.canary.name} ({site.canary.namespace}) reached {peer.canary.name}"

    def change_under_ping(
        self, name: str, edit: Callable[[dict[str, Any]], None], deadline: Deadline
    ) -> str:
        sites = self.sites()
        runner = self.runner_for(sites)
        source, target = sites[0].canary, sites[1].canary
        log = f"{REMOTE_DIR}/ping10.log"
        self.edit_config(edit)
        started = runner.run(
            source.namespace,
            checks.continuous_ping_start_argv(str(target.address.ip), log),
            timeout=30,
        )
        if started.returncode != 0:
            raise E2eError(f"could not start the 10/s ping: {started.stderr.strip()[-200:]}")
        try:
            deadline.check(name)
            self.pulumi.run("up", "--yes", "--stack", self.stack)
        finally:
            stopped = runner.run(source.namespace, checks.continuous_ping_stop_argv(log), 30)
        sent, lost = checks.ping_loss(stopped.stdout)
        allowed = LOSS_ALLOWED[name]
        figure = f"{lost} of {sent} pings lost at 10/s ({lost / 10:.1f} s; at most {allowed})"
        if sent == 0 or lost > allowed:
            raise E2eError(figure)
        return figure

    def sweep(self, regions: list[str]) -> list[str]:
        """Everything still tagged with the stack, except what AWS keeps on purpose for a
        while after deletion: terminated instances (listed for about an hour) and KMS keys
        pending deletion (the 7-day window the program sets)."""
        left: list[str] = []
        for region in regions:
            tagging = self.aws.client("resourcegroupstaggingapi", region)
            token = ""
            while True:
                page = tagging.get_resources(
                    TagFilters=[{"Key": "stack", "Values": [self.stack]}],
                    PaginationToken=token,
                )
                left += [m["ResourceARN"] for m in page.get("ResourceTagMappingList", [])]
                token = page.get("PaginationToken") or ""
                if not token:
                    break
        return [arn for arn in left if not self._gone(arn)]

    def _gone(self, arn: str) -> bool:
        parts = arn.split(":")
        service, region, resource = parts[2], parts[3], parts[5]
        if service == "ec2" and resource.startswith("instance/"):
            answer = self.aws.client("ec2", region).describe_instances(
                InstanceIds=[resource.split("/", 1)[1]]
            )
            states = [i["State"]["Name"] for r in answer["Reservations"] for i in r["Instances"]]
            return bool(states) and all(state == "terminated" for state in states)
        if service == "kms" and resource.startswith("key/"):
            key = self.aws.client("kms", region).describe_key(KeyId=arn)
            return bool(key["KeyMetadata"]["KeyState"] == "PendingDeletion")
        return False

    # ----- the sequence
    def execute(self) -> int:
        _, self.report = self.preflight()
        report = self.report
        deadline = self.deadline
        created = False
        interrupted = False
        try:
            self.step(
                "create ephemeral stack",
                lambda: ephemeral.create(
                    self.project,
                    self.stack,
                    base=self.options.base,
                    ttl_hours=TTL_HOURS,
                    owner=self.options.owner or ephemeral.default_owner(self.project),
                    up=False,
                    canaries=True,
                ),
            )
            created = True
            self.step("pulumi up", lambda: self.pulumi.run("up", "--yes", "--stack", self.stack))
            sites = self.sites()
            runner = self.runner_for(sites)
            for site, peer in (sites, sites[::-1]):
                deadline.check(f"boot to tunnel {site.name}")
                self.step(
                    f"boot to tunnel {site.name}",
                    partial(self.boot_to_tunnel, site, peer, runner),
                )
            deadline.check("the checks")
            self.record(site_checks(sites, runner))

            def add_rule(config: dict[str, Any]) -> None:
                config[f"{PROJECT}:firewall"] = [
                    *(config.get(f"{PROJECT}:firewall") or []),
                    DAY2_RULE,
                ]

            def rotate(config: dict[str, Any]) -> None:
                tunnel = config.setdefault(f"{PROJECT}:tunnel", {})
                tunnel["keyGeneration"] = int(tunnel.get("keyGeneration", 1)) + 1

            self.step(
                "day 2: firewall rule added",
                lambda: self.change_under_ping("firewall rule added", add_rule, deadline),
            )
            self.record(firewall_rule_checks(self.sites(), runner, str(DAY2_RULE["description"])))
            self.step(
                "day 2: key rotation",
                lambda: self.change_under_ping("key rotation", rotate, deadline),
            )
            self.record(
                timed_checks(
                    lambda: [checks.check_ping(d, runner) for d in aws_directions(self.sites())]
                )
            )
            deadline.check("the drift check")
            self.step(
                "drift check (preview --expect-no-changes)",
                lambda: self.pulumi.run(
                    "preview", "--expect-no-changes", "--diff", "--stack", self.stack
                ),
            )
        except E2eError as error:
            if not report.steps or report.steps[-1].ok:  # stopped between steps
                report.steps.append(Timed("stopped", False, 0.0, str(error)))
            self.out(f"e2e: stopped: {error}")
        except KeyboardInterrupt:
            interrupted = True
            self.out("e2e: interrupted; destroying")
        finally:
            if created:
                with suppress(E2eError):
                    self.step(
                        "pulumi destroy",
                        lambda: ephemeral.destroy(self.project, self.stack, self.pulumi),
                    )
            with suppress(E2eError):
                self.step("sweep (tagged resources left)", lambda: self._sweep(report))
            self.write(report)
        if interrupted:
            return 130
        return 0 if report.ok else 1

    def record(self, done: list[Timed]) -> None:
        """Every check goes into the report and onto the console, pass or fail."""
        assert self.report is not None
        self.report.checks += done
        for line in done:
            self.out(
                f"e2e: {'PASS' if line.ok else 'FAIL'} {line.name} ({line.seconds:.1f} s):"
                f" {line.detail}"
            )

    def _sweep(self, report: Report) -> str:
        report.leftovers = self.sweep(report.regions)
        if report.leftovers:
            raise E2eError(
                f"{len(report.leftovers)} resources still tagged stack={self.stack}: "
                + ", ".join(report.leftovers[:5])
            )
        return f"nothing tagged stack={self.stack} in {', '.join(report.regions)}"

    def write(self, report: Report) -> None:
        self.options.report.write_text(json.dumps(report.document(), indent=2) + "\n")
        self.options.summary.write_text(report.markdown())
        self.out(f"e2e: wrote {self.options.report} and {self.options.summary}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.e2e", description="The whole proof on a real AWS account."
    )
    parser.add_argument("stack", nargs="?", default="dev", help="base stack (dev)")
    parser.add_argument("--name", help="ephemeral stack NAME (test-NAME; default e2e-<time>)")
    parser.add_argument(
        "--deadline-minutes", type=float, default=DEFAULT_DEADLINE_MINUTES, help="(45)"
    )
    parser.add_argument("--report", type=Path, default=Path("e2e-report.json"))
    parser.add_argument("--summary", type=Path, default=Path("e2e-summary.md"))
    parser.add_argument("--owner", help="owner tag (default as tools.ephemeral)")
    parser.add_argument("--repo-root", type=Path, default=REPO, help=argparse.SUPPRESS)
    return parser


def main(
    argv: Sequence[str] | None = None,
    aws: Aws | None = None,
    runner: SsmRunner | None = None,
) -> int:
    args = _parser().parse_args(argv)
    # Before anything else: no credentials, no run (and nothing planned or created).
    if aws is None and not have_credentials():
        print(NO_CREDENTIALS, file=sys.stderr)
        return 2
    if not 5 <= args.deadline_minutes <= 180:
        print("tools.e2e: --deadline-minutes must be between 5 and 180", file=sys.stderr)
        return 2
    name = args.name or f"e2e-{datetime.now(UTC):%Y%m%d%H%M}"
    options = Options(
        base=args.stack,
        name=name,
        deadline_minutes=args.deadline_minutes,
        report=args.report,
        summary=args.summary,
        root=args.repo_root.resolve(),
        owner=args.owner,
    )
    # SIGTERM (a cancelled job) ends the run like Ctrl-C: destroy still runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        project = ephemeral.Project.at(options.root)
        pulumi = ephemeral.find_pulumi(project)
        deadline = Deadline(options.deadline_minutes * 60)
        bounded = BoundedPulumi(pulumi.executable, project.root, deadline)
        run = Run(options, aws or Boto3Aws(), bounded, runner, deadline=deadline)
        return run.execute()
    except ephemeral.UsageError as error:
        print(f"tools.e2e: {error}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as error:
        print(f"tools.e2e: AWS refused before anything was created: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
