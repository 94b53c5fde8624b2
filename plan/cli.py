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

from core.config import ConfigError, load_stack_config
from plan import diff, document, show
from plan.engine import PlanError, plan_stack, read_stack_file

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


def _check_config(stack: str) -> None:
    """The stack's config errors, as the plan itself would report them."""
    try:
        load_stack_config(read_stack_file(stack))
    except ConfigError as error:
        raise PlanError(
            "invalid stack config:\n" + "\n".join(f"  {p}" for p in error.problems)
        ) from None


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
        if args.json is not None and not args.json.parent.is_dir():
            # Said before the plan is made, not after.
            raise PlanError(f"cannot write {args.json}: {args.json.parent} is not a directory")
        if args.diff is None:
            plan = plan_stack(args.stack, planted_keys=planted_keys)
            public = document.public_document(plan)
            sys.stdout.write(show.render(public))
            if args.json is not None:
                _write(args.json, document.dumps(public))
            return 0
        # What can fail fast does, before any plan: the ref (or no git repository), then
        # the working tree's config; then REF's plan, then the working tree's.
        # Git history is the current directory's, the project's own when run as `make plan`.
        diff.resolve_ref(Path.cwd(), args.diff)
        _check_config(args.stack)
        commit, before = diff.plan_at_ref(Path.cwd(), args.stack, args.diff)
        plan = plan_stack(args.stack, planted_keys=planted_keys)
        public = document.public_document(plan)
        secrets = document.secret_values(plan)
        changes = diff.compare(before, public)
        # REF's plan was redacted by REF's code; cut out today's secrets all the same.
        text = diff.render(args.stack, args.diff, commit, changes, after=public, before=before)
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
