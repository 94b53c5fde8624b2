"""Up and down as one unit: an `up` that fails part-way leaves nothing behind."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lab import GATEWAY_RUN, NETNS_ETC, WIREGUARD_RUN, LabError
from lab.build import Progress, build
from lab.checks import directions, wait_for_reply
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
    # Seconds from the end of the build until every pair of sites the topology joins had
    # its first reply (a1->b1 for two sites), None if one had none within the wait.
    first_reply: float | None


def _quiet(_: str) -> None:
    pass


def up(
    plan: Plan,
    progress: Progress = _quiet,
    *,
    check_preconditions: bool = True,
    wait: float = FIRST_REPLY_TIMEOUT,
    office_keys: Mapping[str, str] | None = None,
) -> Lab:
    """Builds the lab for a plan and waits up to `wait` s for the tunnel to carry a ping
    on every pair. `office_keys`: the offices' private keys (lab.office.with_lab_keys)."""
    if check_preconditions:
        preflight()
    topology = derive(plan)
    state = State(
        stack=plan.stack,
        created_netns_etc=not NETNS_ETC.exists(),
        created_wireguard_run=not WIREGUARD_RUN.exists(),
    )
    # /run/wg-site-to-site: the mount point of each HA gateway's own (lab.build.run_dir).
    host_dirs = (NETNS_ETC, WIREGUARD_RUN, GATEWAY_RUN)
    record_created_host_dirs([str(d) for d in host_dirs if not d.exists()])
    state.save()
    try:
        notes = build(topology, state, progress, office_keys)
        progress("waiting for the first reply through the tunnel on every pair")
        first = first_replies(topology, wait)
    except BaseException as error:
        # Also on Ctrl-C: a half-built lab must not outlive the command that built it.
        teardown()
        if isinstance(error, LabError):
            raise LabError(f"lab build failed and was removed again: {error}") from None
        raise
    return Lab(topology, state, notes, first)


def first_replies(topology: Topology, wait: float) -> float | None:
    """Seconds until every pair the topology joins has answered a ping (all pairs at once),
    None if one did not within `wait`."""
    pairs = directions(topology)
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        replies = list(
            pool.map(
                lambda d: wait_for_reply(d.source.namespace, str(d.target.address.ip), wait),
                pairs,
            )
        )
    if any(reply is None for reply in replies):
        return None
    return max(reply for reply in replies if reply is not None)


def down() -> list[str]:
    return teardown()
