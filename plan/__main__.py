"""Entry point of `python -m plan` (see plan/cli.py)."""

from plan.cli import close_event_loops, main

try:
    status = main()
finally:
    close_event_loops()
raise SystemExit(status)
