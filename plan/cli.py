"""`python -m plan STACK [--json FILE] [--diff REF]`: the offline plan, for people and CI.

Bad input (an unknown stack, an invalid config, a ref that names no commit) ends
with its problems on stderr, one per line, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from plan import diff, document, show
from plan.engine import PlanError, plan_stack

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m plan",
        description="Plan a stack offline (mock engine: no Pulumi CLI, no AWS credentials).",
    )
    parser.add_argument("stack", help="a stack with a config file stacks/Pulumi.<stack>.yaml")
    parser.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        help="also write the plan (or, with --diff, the diff) as JSON, secrets redacted",
    )
    parser.add_argument(
        "--diff",
        metavar="REF",
        help="show what changes from the plan at git ref REF to the working tree's plan",
    )
    return parser


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise PlanError(f"cannot write {path}: {error.strerror or error}") from None


def main(
    argv: Sequence[str] | None = None, *, planted_keys: Mapping[str, str] | None = None
) -> int:
    """Runs the CLI; `planted_keys` (RandomBytes name -> key) exists for the secret tests."""
    args = _parser().parse_args(argv)
    try:
        plan = plan_stack(args.stack, planted_keys=planted_keys)
        public = document.public_document(plan)
        secrets = document.secret_values(plan)
        if args.diff is None:
            sys.stdout.write(show.render(public))
            if args.json is not None:
                _write(args.json, document.dumps(public))
            return 0
        # Git history is the current directory's, the project's own when run as `make plan`.
        commit, before = diff.plan_at_ref(Path.cwd(), args.stack, args.diff)
        changes = diff.compare(before, public)
        # REF's plan was redacted by REF's code; cut out today's secrets all the same.
        text = diff.render(args.stack, args.diff, commit, changes)
        sys.stdout.write(document.redact_text(text, secrets))
        if args.json is not None:
            data = document.dumps(diff.as_document(args.stack, args.diff, commit, changes))
            _write(args.json, document.redact_text(data, secrets))
    except (PlanError, diff.DiffError) as error:
        for line in str(error).splitlines():
            print(f"python -m plan: {line}" if line[:1] != " " else line, file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def close_event_loops() -> None:
    """Closes the event loops the SDK's mocks left open, one per worker thread.

    Otherwise their finalizers run during interpreter shutdown, after the sockets they
    close may be gone, and print an "Exception ignored ... Traceback" now and then.
    """
    for obj in gc.get_objects():
        loop = obj if isinstance(obj, asyncio.AbstractEventLoop) else None
        if loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()
