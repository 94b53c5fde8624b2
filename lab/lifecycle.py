"""Up and down as one unit: an `up` that fails part-way leaves nothing behind."""

from __future__ import annotations

from dataclasses import dataclass

from lab import NETNS_ETC, WIREGUARD_RUN, LabError
from lab.build import Progress, build
from lab.checks import wait_for_reply
from lab.preflight import preflight
from lab.state import State, record_created_host_dirs
from lab.teardown import teardown
from lab.topology import Topology, derive
from plan.engine import Plan

FIRST_REPLY_TIMEOUT = 30.0


@dataclass
class Lab:
    topology: Topology
    state: State
    notes: list[str]
    first_reply: float | None  # seconds from the end of the build to the first a1->b1 reply


def _quiet(_: str) -> None:
    pass


def up(
    plan: Plan,
    progress: Progress = _quiet,
    *,
    check_preconditions: bool = True,
    wait: float = FIRST_REPLY_TIMEOUT,
) -> Lab:
    """Builds the lab for a plan and waits up to `wait` s for the tunnel to carry a ping."""
    if check_preconditions:
        preflight()
    topology = derive(plan)
    state = State(
        stack=plan.stack,
        created_netns_etc=not NETNS_ETC.exists(),
        created_wireguard_run=not WIREGUARD_RUN.exists(),
    )
    record_created_host_dirs([str(d) for d in (NETNS_ETC, WIREGUARD_RUN) if not d.exists()])
    state.save()
    try:
        notes = build(topology, state, progress)
        a, b = topology.sites
        progress("waiting for the first reply through the tunnel")
        first = wait_for_reply(a.hosts[0].namespace, str(b.hosts[0].address.ip), wait)
    except BaseException as error:
        # Also on Ctrl-C: a half-built lab must not outlive the command that built it.
        teardown()
        if isinstance(error, LabError):
            raise LabError(f"lab build failed and was removed again: {error}") from None
        raise
    return Lab(topology, state, notes, first)


def down() -> list[str]:
    return teardown()
