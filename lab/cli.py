"""The commands behind `python -m lab`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lab import LabError
from lab.checks import run_all
from lab.lifecycle import down as lab_down
from lab.lifecycle import up as lab_up
from lab.office import with_lab_keys
from lab.preflight import require_root
from lab.report import explore, layout, summary
from lab.state import load
from lab.topology import derive
from plan.engine import (
    STACKS,
    Plan,
    PlanError,
    plan_stack,
    run_program,
)


def _say(message: str) -> None:
    print(f"... {message}", flush=True)


def stack_location(stack: str) -> tuple[str, Path]:
    """(stack name, directory of its file) for a stack name (stacks/Pulumi.<name>.yaml) or
    a path to a stack file (e.g. tests/stacks/Pulumi.ha.yaml)."""
    if stack.endswith(".yaml") or "/" in stack:
        path = Path(stack)
        name = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
        if not path.is_file() or not path.name.startswith("Pulumi.") or not name:
            raise LabError(f"stack file {stack}: not a file named Pulumi.<stack>.yaml")
        return name, path.parent
    return stack, STACKS


def stack_name(stack: str) -> str:
    return stack_location(stack)[0]


def plan(stack: str, office_keys: dict[str, str] | None = None) -> Plan:
    """The stack's plan (STACK a name or a path to a stack file). With `office_keys`
    (filled in here), each office's publicKey is replaced by one the lab makes, so that the
    lab can play the office (lab.office.with_lab_keys)."""
    name, directory = stack_location(stack)
    try:
        planned = plan_stack(name, stacks_dir=directory)
        offices = [s for s in planned.config.get("sites") or [] if "external" in s]
        if office_keys is None or not offices:
            return planned
        # Planned again with the lab's keys in place of the offices' own.
        config, keys = with_lab_keys(planned.config)
        office_keys.update(keys)
        return run_program(name, config)
    except PlanError as error:
        lines = str(error).splitlines()
        if len(lines) == 2 and lines[0].endswith(":"):
            # One problem: one line, "invalid stack config: <key>: <problem>".
            lines = [f"{lines[0]} {lines[1].strip()}"]
        raise LabError("\n".join([f"stack {stack}: {lines[0]}", *lines[1:]])) from None


def up(stack: str) -> int:
    require_root()
    started = time.monotonic()
    office_keys: dict[str, str] = {}
    the_plan = plan(stack, office_keys)
    lab = lab_up(the_plan, _say, office_keys=office_keys)
    for line in layout(lab.topology, lab.state.implementation) + lab.notes:
        print(line)
    if lab.first_reply is None:
        print("first reply on every pair: none within the wait")
    else:
        # The last of the pairs' first replies (a1->b1 and b1->a1 for two sites).
        print(f"first reply through the tunnel {time.monotonic() - started:.1f} s after start")
    checks = run_all(lab.topology, lab.state)
    for check in checks:
        print(check.line())
    print(summary(checks))
    for line in explore(lab.topology, stack):
        print(line)
    return 0 if all(c.ok for c in checks) else 1


def check(stack: str) -> int:
    require_root()
    state = load()
    if state is None:
        raise LabError("no lab is up: run `make lab` first")
    if state.stack != stack_name(stack):
        raise LabError(f"the lab that is up is for stack {state.stack}, not {stack}")
    topology = derive(plan(stack))
    if any(site.highly_available for site in topology.sites):
        from lab.failover import active_first

        # The checks look at each site's active gateway: the one moto says holds it.
        topology = active_first(topology)
    checks = run_all(topology, state)
    for line in [c.line() for c in checks] + [summary(checks)]:
        print(line)
    return 0 if all(c.ok for c in checks) else 1


def down() -> int:
    require_root()
    removed = lab_down()
    print(f"lab removed ({len(removed)} items)" if removed else "no lab was up")
    return 0


def bench(stack: str, runs: int, output: str) -> int:
    from lab.bench import run_bench

    require_root()
    run_bench(plan(stack), runs, output, _say)
    return 0


if __name__ == "__main__":
    sys.exit("use python -m lab")


def failover(stack: str, runs: int) -> int:
    """On the stack's lab (brought up if none is), kills each site's active gateway in
    turn while the site's host pings another site's at 10/s, and brings it back; one line
    per site and run, and with several runs the median per site."""
    from lab.failover import run_failovers
    from lab.lifecycle import Lab

    require_root()
    if runs < 1:
        raise LabError("--runs must be 1 or more")
    the_plan = plan(stack)
    if not any(site.highly_available for site in derive(the_plan).sites):
        raise LabError(f"stack {stack} has no site with two gateways (gateways: 2)")
    state = load()
    if state is not None and state.stack != the_plan.stack:
        raise LabError(
            f"the lab that is up is for stack {state.stack}, not {stack}: lab down first"
        )
    if state is None or not state.namespaces:
        lab = lab_up(the_plan, _say)
        if lab.first_reply is None:
            raise LabError("the lab came up without a reply through the tunnel")
    else:
        lab = Lab(derive(the_plan), state, [], None)
    run_failovers(lab.topology, lab.state, runs, _say)
    return 0
