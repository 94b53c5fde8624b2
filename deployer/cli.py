"""`apply`, `verify`, `drain` and `public-ipv4`: inputs from the environment, outcome as lines
and an exit status.

pulumi-command passes Outputs (instance ids, regions) to a local command only through its
`environment`, so every input is an environment variable. Exit 0: done; 1: the gateway's work
failed or the deadline passed; 2: bad input. Nothing here handles a secret: the commands name
scripts, and the scripts read the keys themselves on the gateway.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.facts import APPLY_PATH, CHECK_PATH, FAILOVER_AGENT_PATH
from deployer.runshell import Clock, DeadlinePassed, Invocation, Sleep, run_shell

if TYPE_CHECKING:
    from types_boto3_ssm.client import SSMClient

PREFIX = "wg-site-to-site"
DEFAULT_DEADLINE_SECONDS = 900
# On a first `up` the instance is still booting: the scripts need cloud-init's files. On day 2
# cloud-init is long done and this returns at once.
WAIT_FOR_BOOT = "cloud-init status --wait >/dev/null"
TAIL_LINES = 20
# Fetching the journal after a failed check gets its own short budget: the verdict is already
# known and the journal only explains it.
JOURNAL_SECONDS = 60.0

_REGION = r"^[a-z]{2}(-[a-z]+)+-\d+$"
_INSTANCE_ID = r"^i-[0-9a-f]{8,17}$"
# wg-quick's own rule for an interface name; the name goes into a shell command line.
_INTERFACE = r"^[a-zA-Z0-9_=+.-]{1,15}$"
_CHECK_LINE = re.compile(r"^check (\S+) (ok|FAILED)(?: (.*))?$")
_NETWORK_INTERFACE_ID = r"^eni-[0-9a-f]{8,17}$"
_ALLOCATION_ID = r"^eipalloc-[0-9a-f]{8,17}$"
_GATEWAY_INDEX = r"^[01]$"
# The failover agent's one-shot: make this gateway the holder of the site's Elastic IP and
# routes now (cloud-init/, helper ha-agent). `drain` runs it on the other gateway.
TAKEOVER = f"{FAILOVER_AGENT_PATH} takeover"
# How often `drain` reads the Elastic IP's association while it waits for the move.
HOLDER_POLL_SECONDS = 1.0

ClientFactory = Callable[[str], "SSMClient"]
# types-boto3 has no EC2 stubs in this project (pyproject.toml: ssm, cloudwatch, sts).
Ec2Factory = Callable[[str], Any]


class UsageError(Exception):
    """Bad input: one line naming the variable and its value."""


class Gateway(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    site: Annotated[str, Field(min_length=1)]
    region: Annotated[str, Field(pattern=_REGION)]
    instance_id: Annotated[str, Field(alias="instanceId", pattern=_INSTANCE_ID)]
    interface: Annotated[str, Field(pattern=_INTERFACE)]


_GATEWAYS = TypeAdapter(list[Gateway])


_RETRIES = Config(retries={"mode": "standard", "max_attempts": 8})


def ssm_client(region: str) -> SSMClient:
    # Standard retry mode absorbs throttling of the polling calls.
    return boto3.client("ssm", region_name=region, config=_RETRIES)


def ec2_client(region: str) -> Any:
    return boto3.client("ec2", region_name=region, config=_RETRIES)


@dataclass
class Context:
    env: Mapping[str, str]
    client_for: ClientFactory
    clock: Clock
    sleep: Sleep
    out: TextIO
    err: TextIO
    ec2_for: Ec2Factory = ec2_client

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def complain(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    def required(self, name: str) -> str:
        value = self.env.get(name, "").strip()
        if not value:
            raise UsageError(f"{PREFIX}: environment variable {name} is missing or empty")
        return value

    def matching(self, name: str, pattern: str, what: str) -> str:
        value = self.required(name)
        if not re.fullmatch(pattern, value):
            raise UsageError(f"{PREFIX}: {name}={value!r} is not {what}")
        return value

    def deadline_seconds(self) -> int:
        name = "WG_S2S_DEADLINE_SECONDS"
        raw = self.env.get(name, "").strip()
        if not raw:
            return DEFAULT_DEADLINE_SECONDS
        if not raw.isdigit() or int(raw) <= 0:
            raise UsageError(f"{PREFIX}: {name}={raw!r} is not a positive whole number of seconds")
        return int(raw)


def _tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    return text.rstrip("\n").splitlines()[-lines:] if text.strip() else []


def _gateway_output(invocation: Invocation, write: Callable[[str], None]) -> None:
    for name, text in (("stdout", invocation.stdout), ("stderr", invocation.stderr)):
        lines = _tail(text)
        if lines:
            write(f"  {name} (last {len(lines)} lines):")
            for line in lines:
                write(f"    {line}")


def apply(ctx: Context) -> int:
    site = ctx.required("WG_S2S_SITE")
    region = ctx.matching("WG_S2S_REGION", _REGION, "an AWS region name")
    instance_id = ctx.matching("WG_S2S_INSTANCE_ID", _INSTANCE_ID, "an EC2 instance id")
    deadline = ctx.deadline_seconds()
    where = f"{site} ({instance_id})"
    try:
        invocation = run_shell(
            ctx.client_for(region),
            instance_id,
            [WAIT_FOR_BOOT, APPLY_PATH],
            deadline_at=ctx.clock() + deadline,
            clock=ctx.clock,
            sleep=ctx.sleep,
            comment=f"{PREFIX} apply on {site}",
        )
    except (ClientError, BotoCoreError) as error:
        # Credentials, permissions, a terminated instance: AWS's own words, in one line.
        ctx.complain(f"{PREFIX}: apply on {where} failed calling AWS: {error}")
        return 1
    except DeadlinePassed as passed:
        ctx.complain(
            f"{PREFIX}: apply on {where} did not finish within the deadline of {deadline} s "
            f"(WG_S2S_DEADLINE_SECONDS): still waiting for {passed.waiting_for}"
        )
        return 1
    if not invocation.succeeded:
        ctx.complain(f"{PREFIX}: apply on {where} failed: {invocation.status}")
        ctx.complain(
            f"  exit code {invocation.response_code}, status detail {invocation.status_details}, "
            f"command {invocation.command_id}"
        )
        _gateway_output(invocation, ctx.complain)
        return 1
    ctx.say(f"{PREFIX}: apply on {where} succeeded in {invocation.seconds:.0f} s")
    _gateway_output(invocation, ctx.say)
    return 0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def describe(self) -> str:
        return f"{self.name} {self.detail}".rstrip()


def parse_checks(stdout: str) -> list[Check]:
    checks = []
    for line in stdout.splitlines():
        match = _CHECK_LINE.match(line.strip())
        if match:
            checks.append(Check(match[1], match[2] == "ok", (match[3] or "").strip()))
    return checks


def _gateways(ctx: Context) -> list[Gateway]:
    name = "WG_S2S_GATEWAYS"
    raw = ctx.required(name)
    try:
        gateways = _GATEWAYS.validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        place = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
        )
        value = first.get("input")
        shown = f"={value!r}" if isinstance(value, str | int) else ""
        raise UsageError(f"{PREFIX}: {name}{place}{shown}: {first['msg']}") from None
    if not gateways:
        raise UsageError(f"{PREFIX}: {name} lists no gateways")
    return gateways


def verify(ctx: Context) -> int:
    gateways = _gateways(ctx)
    deadline = ctx.deadline_seconds()
    deadline_at = ctx.clock() + deadline
    failed = 0
    # In turn, not concurrently: both gateways boot in parallel anyway (the applies waited for
    # them), so the second gateway's wait is short, and the output stays in site order.
    for gateway in gateways:
        if not _verify_one(ctx, gateway, deadline, deadline_at):
            failed += 1
    return 1 if failed else 0


def _verify_one(ctx: Context, gateway: Gateway, deadline: int, deadline_at: float) -> bool:
    where = f"{gateway.site} ({gateway.instance_id})"
    client = ctx.client_for(gateway.region)
    try:
        invocation = run_shell(
            client,
            gateway.instance_id,
            [WAIT_FOR_BOOT, CHECK_PATH],
            deadline_at=deadline_at,
            clock=ctx.clock,
            sleep=ctx.sleep,
            comment=f"{PREFIX} verify on {gateway.site}",
        )
    except (ClientError, BotoCoreError) as error:
        ctx.complain(f"{PREFIX}: verify on {where} failed calling AWS: {error}")
        return False
    except DeadlinePassed as passed:
        ctx.complain(
            f"{PREFIX}: verify on {where} did not finish within the deadline of {deadline} s "
            f"(WG_S2S_DEADLINE_SECONDS): still waiting for {passed.waiting_for}"
        )
        return False
    checks = parse_checks(invocation.stdout)
    bad = [check for check in checks if not check.ok]
    if invocation.succeeded and checks and not bad:
        ctx.say(f"{gateway.site}: ok ({', '.join(check.describe() for check in checks)})")
        return True
    if bad:
        reason = "; ".join(
            f"check {check.name} FAILED" + (f" ({check.detail})" if check.detail else "")
            for check in bad
        )
    elif not checks:
        reason = f"the check printed no check lines (status {invocation.status})"
    else:
        # Every check passed yet the script did not succeed: say so rather than guess.
        reason = f"status {invocation.status} with every check ok"
    ctx.complain(f"{PREFIX}: verify on {where} failed: {reason}")
    ctx.complain(
        f"  exit code {invocation.response_code}, status detail {invocation.status_details}, "
        f"command {invocation.command_id}"
    )
    _gateway_output(invocation, ctx.complain)
    _journal(ctx, client, gateway)
    return False


def journal_command(interface: str) -> str:
    return f"journalctl -u 'wg-site-to-site-*' -u 'wg-quick@{interface}' -n {TAIL_LINES} --no-pager"


def _journal(ctx: Context, client: SSMClient, gateway: Gateway) -> None:
    try:
        invocation = run_shell(
            client,
            gateway.instance_id,
            [journal_command(gateway.interface)],
            deadline_at=ctx.clock() + JOURNAL_SECONDS,
            clock=ctx.clock,
            sleep=ctx.sleep,
            comment=f"{PREFIX} journal on {gateway.site}",
        )
    except (DeadlinePassed, ClientError, BotoCoreError) as error:
        ctx.complain(f"  journal of {gateway.site}: not available ({error})")
        return
    lines = _tail(invocation.stdout)
    ctx.complain(f"  journal of {gateway.site} (last {len(lines)} lines):")
    for line in lines:
        ctx.complain(f"    {line}")


# ------------------------------------------------------------------ two gateways per site


def public_ipv4(ctx: Context) -> int:
    """Turn on the ENI's AssociatePublicIpAddress, so that a standby gateway, which does not
    hold the site's Elastic IP, still has a public IPv4 for its own egress (SSM, the EC2 API,
    CloudWatch). Idempotent: an interface that has it already is left alone.

    pulumi-aws 7.51's NetworkInterface has no such argument; the EC2 API has it:
    ModifyNetworkInterfaceAttribute, AssociatePublicIpAddress "Indicates whether to assign a
    public IPv4 address to a network interface. This option can be enabled for any network
    interface but will only apply to the primary network interface (eth0)."
    (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ModifyNetworkInterfaceAttribute.html).
    A gateway attaches its standalone interface as device 0, so it is the primary one.
    """
    region = ctx.matching("WG_S2S_REGION", _REGION, "an AWS region name")
    eni = ctx.matching(
        "WG_S2S_NETWORK_INTERFACE_ID", _NETWORK_INTERFACE_ID, "a network interface id"
    )
    where = f"{eni} ({region})"
    try:
        client = ctx.ec2_for(region)
        current = client.describe_network_interface_attribute(
            NetworkInterfaceId=eni, Attribute="associatePublicIpAddress"
        )
        if current.get("AssociatePublicIpAddress") is True:
            ctx.say(f"{PREFIX}: public IPv4 on {where}: already on, nothing to do")
            return 0
        client.modify_network_interface_attribute(
            NetworkInterfaceId=eni, AssociatePublicIpAddress=True
        )
    except (ClientError, BotoCoreError) as error:
        ctx.complain(f"{PREFIX}: public IPv4 on {where} failed calling AWS: {error}")
        return 1
    ctx.say(f"{PREFIX}: public IPv4 on {where}: turned on (AssociatePublicIpAddress)")
    return 0


class DrainFailed(Exception):
    """The drain cannot go on: one line saying why, and the gateway's output if any."""

    def __init__(self, reason: str, details: list[str] | None = None) -> None:
        super().__init__(reason)
        self.details = details or []


def _holder(client: Any, allocation_id: str) -> str | None:
    """The network interface the Elastic IP is associated with, None if none."""
    addresses = client.describe_addresses(AllocationIds=[allocation_id])["Addresses"]
    if len(addresses) != 1:
        raise DrainFailed(f"DescribeAddresses found {len(addresses)} addresses for {allocation_id}")
    holder = addresses[0].get("NetworkInterfaceId")
    return str(holder) if holder else None


def _attached_instance(client: Any, eni: str) -> str | None:
    """The instance the interface is attached to, None while it has none (the first `up`:
    the other gateway's instance is not made yet)."""
    interfaces = client.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"]
    if len(interfaces) != 1:
        raise DrainFailed(f"DescribeNetworkInterfaces found {len(interfaces)} for {eni}")
    attachment = interfaces[0].get("Attachment") or {}
    instance = attachment.get("InstanceId")
    if instance and attachment.get("Status") in ("attaching", "attached"):
        return str(instance)
    return None


@dataclass(frozen=True)
class Drain:
    """What `drain` acts on: gateway `index` of `site`, about to be replaced."""

    site: str
    region: str
    index: str
    own: str  # its network interface
    other: str  # the other gateway's network interface
    allocation: str  # the site's Elastic IP

    @property
    def where(self) -> str:
        return f"drain of {self.site} gateway {self.index} ({self.own})"


def drain(ctx: Context) -> int:
    """Before gateway K of an HA site is replaced: if it holds the site's Elastic IP, have
    the other gateway take over (Run Command, the failover agent's `takeover`) and wait
    until the Elastic IP is on the other's interface. Otherwise nothing: it is the standby,
    or the other gateway has no instance yet (the site's first `up`)."""
    interface = (_NETWORK_INTERFACE_ID, "a network interface id")
    job = Drain(
        site=ctx.required("WG_S2S_SITE"),
        region=ctx.matching("WG_S2S_REGION", _REGION, "an AWS region name"),
        index=ctx.matching("WG_S2S_GATEWAY", _GATEWAY_INDEX, "a gateway index (0 or 1)"),
        own=ctx.matching("WG_S2S_NETWORK_INTERFACE_ID", *interface),
        other=ctx.matching("WG_S2S_OTHER_NETWORK_INTERFACE_ID", *interface),
        allocation=ctx.matching(
            "WG_S2S_ALLOCATION_ID", _ALLOCATION_ID, "an Elastic IP allocation id"
        ),
    )
    if job.own == job.other:
        raise UsageError(
            f"{PREFIX}: WG_S2S_OTHER_NETWORK_INTERFACE_ID={job.other!r} is the gateway's own "
            "interface (WG_S2S_NETWORK_INTERFACE_ID)"
        )
    deadline = ctx.deadline_seconds()
    try:
        ctx.say(f"{PREFIX}: {job.where}: {_drain(ctx, job, ctx.clock() + deadline)}")
    except (ClientError, BotoCoreError) as error:
        ctx.complain(f"{PREFIX}: {job.where} failed calling AWS: {error}")
    except DrainFailed as error:
        ctx.complain(f"{PREFIX}: {job.where} failed: {error}")
        for line in error.details:
            ctx.complain(line)
    except DeadlinePassed as passed:
        ctx.complain(
            f"{PREFIX}: {job.where} did not finish within the deadline of {deadline} s "
            f"(WG_S2S_DEADLINE_SECONDS): still waiting for {passed.waiting_for}"
        )
    else:
        return 0
    return 1


def _drain(ctx: Context, job: Drain, deadline_at: float) -> str:
    """Hand the site over if gateway `job.index` holds it; what was done, in a few words."""
    started = ctx.clock()
    ec2 = ctx.ec2_for(job.region)
    holder = _holder(ec2, job.allocation)
    if holder != job.own:
        if holder == job.other:
            held = f"on the other gateway's {holder}"
        else:
            held = f"on {holder}" if holder else "associated with no interface"
        return f"nothing to do, the Elastic IP {job.allocation} is {held}"
    instance = _attached_instance(ec2, job.other)
    if instance is None:
        return (
            f"nothing to do, the other gateway's interface {job.other} has no instance to "
            "take over (the site has one gateway until it has)"
        )
    invocation = run_shell(
        ctx.client_for(job.region),
        instance,
        [WAIT_FOR_BOOT, TAKEOVER],
        deadline_at=deadline_at,
        clock=ctx.clock,
        sleep=ctx.sleep,
        comment=f"{PREFIX} takeover on {job.site}",
    )
    if not invocation.succeeded:
        details: list[str] = []
        _gateway_output(invocation, details.append)
        raise DrainFailed(
            f"the takeover on {instance} ended {invocation.status} (exit code "
            f"{invocation.response_code}, command {invocation.command_id})",
            details,
        )
    while (holder := _holder(ec2, job.allocation)) != job.other:
        remaining = deadline_at - ctx.clock()
        if remaining <= 0:
            raise DeadlinePassed(
                f"the Elastic IP {job.allocation} to move to {job.other} (the takeover on "
                f"{instance} succeeded; it is on {holder or 'no interface'})"
            )
        ctx.sleep(min(HOLDER_POLL_SECONDS, remaining))
    return f"the other gateway ({instance}, {job.other}) took over in {ctx.clock() - started:.0f} s"


ACTIONS: dict[str, Callable[[Context], int]] = {
    "apply": apply,
    "verify": verify,
    "drain": drain,
    "public-ipv4": public_ipv4,
}


def run(
    argv: list[str],
    env: Mapping[str, str],
    *,
    client_for: ClientFactory = ssm_client,
    ec2_for: Ec2Factory = ec2_client,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployer", description=__doc__)
    parser.add_argument("action", choices=list(ACTIONS))
    action = parser.parse_args(argv).action
    ctx = Context(env, client_for, clock, sleep, out or sys.stdout, err or sys.stderr, ec2_for)
    try:
        return ACTIONS[action](ctx)
    except UsageError as error:
        ctx.complain(str(error))
        return 2


def main() -> int:
    return run(sys.argv[1:], os.environ)
