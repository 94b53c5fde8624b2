"""`python -m lab up|check|down|bench|failover [STACK]`: see lab/__init__.py. STACK is a
stack name (stacks/Pulumi.<STACK>.yaml) or a path to a stack file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lab import LabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "build the stack's lab, check it and leave it up"),
        ("check", "run the checks again on the lab that is up"),
        ("bench", "time to first packet, tunnel vs plain throughput, teardown time"),
        ("failover", "kill each site's active gateway in turn, pings lost (gateways: 2)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("stack", nargs="?", default="dev")
        if name == "bench":
            command.add_argument("--runs", type=int, default=5)
            command.add_argument("--output", default="build/lab-bench.json")
        if name == "failover":
            command.add_argument("--runs", type=int, default=1)
    commands.add_parser("down", help="remove everything the lab made")
    args = parser.parse_args(argv)

    from lab import cli

    commands_run: dict[str, Callable[[], int]] = {
        "up": lambda: cli.up(args.stack),
        "check": lambda: cli.check(args.stack),
        "down": cli.down,
        "bench": lambda: cli.bench(args.stack, args.runs, args.output),
        "failover": lambda: cli.failover(args.stack, args.runs),
    }
    try:
        return commands_run[args.command]()
    except LabError as error:
        print(f"lab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
