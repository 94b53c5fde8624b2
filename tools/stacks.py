"""Lists the committed stacks, for CI matrices: `python3 -m tools.stacks [--lines]`.

Standard library only, so a workflow can call it before any dependency is installed.
Ephemeral `test-*` stacks are left out: they are per-developer and never committed
(.gitignore), but a runner reusing a work tree must not preview or deploy one either.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACKS_DIR = REPO / "stacks"
EPHEMERAL_PREFIX = "test-"
FILE_NAME = re.compile(r"^Pulumi\.(?P<stack>.+)\.ya?ml$")
# Pulumi's own rule for stack names. A name outside it would end up in a matrix value
# and a concurrency group, so the listing refuses it instead of passing it on.
STACK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class StackListError(Exception):
    """A stack file whose name cannot be a stack name."""


def committed_stacks(stacks_dir: Path = STACKS_DIR) -> list[str]:
    """The names of the stacks with a config file in `stacks_dir`, sorted, no test-*."""
    names = []
    for path in sorted(stacks_dir.iterdir()):
        match = FILE_NAME.fullmatch(path.name)
        if not match or not path.is_file():
            continue
        stack = match["stack"]
        if stack.startswith(EPHEMERAL_PREFIX):
            continue
        if not STACK_NAME.fullmatch(stack):
            raise StackListError(f"{path.name}: {stack!r} is not a valid Pulumi stack name")
        names.append(stack)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tools.stacks", description=__doc__)
    parser.add_argument("--stacks-dir", type=Path, default=STACKS_DIR)
    parser.add_argument(
        "--lines", action="store_true", help="one name per line instead of a JSON array"
    )
    args = parser.parse_args(argv)
    try:
        names = committed_stacks(args.stacks_dir)
    except (StackListError, OSError) as error:
        print(f"tools.stacks: {error}", file=sys.stderr)
        return 2
    if not names:
        print(f"tools.stacks: no stack files in {args.stacks_dir}", file=sys.stderr)
        return 2
    print("\n".join(names) if args.lines else json.dumps(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
