"""Send a shell script to one instance with SSM Run Command and wait for its outcome."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from types_boto3_ssm.client import SSMClient

Clock = Callable[[], float]
Sleep = Callable[[float], None]

DOCUMENT = "AWS-RunShellScript"

# Invocation statuses, from "Understanding command statuses"
# (https://docs.aws.amazon.com/systems-manager/latest/userguide/monitor-commands.html) and the
# GetCommandInvocation API reference: Pending, InProgress, Delayed (the target was unavailable;
# SSM tries again) and Cancelling are on the way; Success, Cancelled, TimedOut and Failed are
# terminal. Only Success means the script ran and exited 0.
TERMINAL_STATUSES = frozenset({"Success", "Cancelled", "TimedOut", "Failed"})
SUCCESS = "Success"

# Polling starts fast (a day-2 apply takes seconds) and backs off to a steady pace for a first
# boot, which takes minutes.
FIRST_DELAY = 2.0
MAX_DELAY = 10.0
BACKOFF = 1.5

# SendCommand's TimeoutSeconds (delivery timeout) must lie in [30, 2592000] (API reference).
_MIN_DELIVERY_TIMEOUT = 30


@dataclass(frozen=True)
class Invocation:
    """The terminal state of one command on one instance."""

    command_id: str
    status: str
    status_details: str
    response_code: int
    # GetCommandInvocation returns only the first 24,000 characters of each stream (API
    # reference, StandardOutputContent); the scripts keep their output short.
    stdout: str
    stderr: str
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS


class DeadlinePassed(Exception):
    """The deadline passed; `waiting_for` says what was still outstanding."""

    def __init__(self, waiting_for: str) -> None:
        super().__init__(waiting_for)
        self.waiting_for = waiting_for


@dataclass
class _Backoff:
    clock: Clock
    sleep: Sleep
    deadline_at: float
    delay: float = FIRST_DELAY

    def remaining(self) -> float:
        return self.deadline_at - self.clock()

    def wait(self) -> None:
        """Sleep for the next interval, never past the deadline."""
        self.sleep(max(0.0, min(self.delay, self.remaining())))
        self.delay = min(MAX_DELAY, self.delay * BACKOFF)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def run_shell(
    client: SSMClient,
    instance_id: str,
    commands: Sequence[str],
    *,
    deadline_at: float,
    clock: Clock,
    sleep: Sleep,
    comment: str,
) -> Invocation:
    """Run `commands` on the instance and return the terminal invocation.

    Raises DeadlinePassed when `clock()` reaches `deadline_at` first; a command already sent is
    then cancelled (best effort) so it does not keep changing the gateway behind our back.
    ClientErrors other than the two transient ones below propagate.
    """
    started = clock()
    backoff = _Backoff(clock, sleep, deadline_at)
    command_id = _send(client, instance_id, commands, backoff, comment)
    backoff.delay = FIRST_DELAY
    status = "Pending"
    while True:
        try:
            result = client.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError as error:
            # Right after SendCommand the invocation may not exist yet (eventual consistency).
            if _error_code(error) != "InvocationDoesNotExist":
                raise
        else:
            status = result["Status"]
            if status in TERMINAL_STATUSES:
                return Invocation(
                    command_id=command_id,
                    status=status,
                    status_details=result.get("StatusDetails", ""),
                    response_code=result.get("ResponseCode", -1),
                    stdout=result.get("StandardOutputContent", ""),
                    stderr=result.get("StandardErrorContent", ""),
                    seconds=clock() - started,
                )
        if backoff.remaining() <= 0:
            cancelled = _cancel(client, command_id, instance_id)
            raise DeadlinePassed(f"command {command_id} (last status {status}; {cancelled})")
        backoff.wait()


def _send(
    client: SSMClient,
    instance_id: str,
    commands: Sequence[str],
    backoff: _Backoff,
    comment: str,
) -> str:
    """SendCommand, retried while the instance's SSM agent has not registered yet."""
    while True:
        remaining = int(backoff.remaining())
        try:
            response = client.send_command(
                InstanceIds=[instance_id],
                DocumentName=DOCUMENT,
                # Not delivered within the deadline: it must not run later, unobserved.
                TimeoutSeconds=max(_MIN_DELIVERY_TIMEOUT, remaining),
                Comment=comment[:100],
                Parameters={
                    "commands": list(commands),
                    "executionTimeout": [str(max(_MIN_DELIVERY_TIMEOUT, remaining))],
                },
            )
            return response["Command"]["CommandId"]
        except ClientError as error:
            # A new instance is "not a valid instance id" for SSM until its agent registers
            # (SendCommand API reference: InvalidInstanceId covers nodes that are not running
            # or whose agent is not yet connected); it does within minutes of boot.
            if _error_code(error) != "InvalidInstanceId":
                raise
        if backoff.remaining() <= 0:
            raise DeadlinePassed(
                f"instance {instance_id} to register with SSM (SendCommand kept answering "
                "InvalidInstanceId)"
            )
        backoff.wait()


def _cancel(client: SSMClient, command_id: str, instance_id: str) -> str:
    try:
        client.cancel_command(CommandId=command_id, InstanceIds=[instance_id])
    except ClientError as error:
        return f"cancel failed: {_error_code(error)}"
    return "cancel requested"
