"""`python -m lab up|check|down|bench [STACK]`: see lab/__init__.py."""

from __future__ import annotations

import argparse
import sys

from lab import LabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "build the stack's lab, check it and leave it up"),
        ("check", "run the checks again on the lab that is up"),
        ("bench", "time to first packet, tunnel vs plain throughput, teardown time"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("stack", nargs="?", default="dev")
        if name == "bench":
            command.add_argument("--runs", type=int, default=5)
            command.add_argument("--output", default="build/lab-bench.json")
    commands.add_parser("down", help="remove everything the lab made")
    args = parser.parse_args(argv)

    from lab import cli

    try:
        if args.command == "up":
            return cli.up(args.stack)
        if args.command == "check":
            return cli.check(args.stack)
        if args.command == "down":
            return cli.down()
        return cli.bench(args.stack, args.runs, args.output)
    except LabError as error:
        print(f"lab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
