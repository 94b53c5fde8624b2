"""Ephemeral test stacks: a copy of a committed stack, owned by someone, expiring on its own.

    python -m tools.ephemeral create  --name NAME [--base dev] [--ttl-hours 24] [--owner WHO]
                                      [--alerts-email ADDRESS] [--no-up]
    python -m tools.ephemeral destroy --name NAME
    python -m tools.ephemeral sweep   [--dry-run]

NAME may be given with or without the `test-` prefix; the stack is always `test-NAME` and
its config is stacks/Pulumi.test-NAME.yaml, which .gitignore keeps out of commits.

`create` copies the base stack's config, adds the tags `owner`, `expires-at`, `ephemeral`
and `base-stack` to `wg-site-to-site:tags` (so they land on every AWS resource), and sets
`owner` and `expires-at` as Pulumi stack tags as well, which is where `sweep` looks first
(CI has no copy of a developer's uncommitted stack file). If any step fails, what was made
is taken down again, so a failed create leaves nothing behind.

The base's `wg-site-to-site:alerts` is never copied: its addresses and topic are the real
on-call's, who must not get mail from a throw-away stack. With `--alerts-email ADDRESS`
(or $TEST_STACK_ALERTS_EMAIL) the test stack's alarms mail that address instead.

`destroy` runs `pulumi destroy` and then `pulumi stack rm --preserve-config`, and only then
deletes the generated file itself. It deliberately avoids `pulumi destroy --remove` and a
plain `pulumi stack rm`: both delete the stack's config file, and pointed at a committed
stack by mistake that is the file under review. Committed stack files and the names of
committed stacks are refused outright.

Exit status: 0 done, 1 a Pulumi command failed, 2 bad input (nothing was changed),
130 interrupted.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from core import stack_file
from core.config import PROJECT, ConfigError, load_stack_config, project_config_from_stack_file

REPO = Path(__file__).resolve().parent.parent
PREFIX = "test-"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,29}$")
TAGS_KEY = f"{PROJECT}:tags"
ALERTS_KEY = f"{PROJECT}:alerts"
SITES_KEY = f"{PROJECT}:sites"
ALERTS_EMAIL_ENV = "TEST_STACK_ALERTS_EMAIL"
DEFAULT_TTL_HOURS = 24
# A week: long enough for a soak test, short enough that a forgotten stack still goes.
MAX_TTL_HOURS = 168
# AWS's tag value alphabet (letters, digits, spaces and + - = . _ : / @); the owner
# becomes a tag value on every resource, so anything else would fail at `pulumi up`.
TAG_VALUE = re.compile(r"^[\w .:/=+\-@]{1,256}$")
# These bind a stack file to one stack's secrets provider (a passphrase salt, a KMS key);
# the new stack gets its own from `pulumi stack init`.
SECRETS_PROVIDER_KEYS = ("encryptionsalt", "encryptedkey", "secretsprovider")
CLI_MISSING = "the Pulumi CLI is not installed (https://www.pulumi.com/docs/install/)"


class UsageError(Exception):
    """Bad input, found before anything was changed: exit 2."""


class PulumiError(Exception):
    """A Pulumi command failed: exit 1."""


@dataclass(frozen=True)
class Project:
    """Where the Pulumi project lives and where it keeps its stack files."""

    root: Path
    stacks_dir: Path

    @classmethod
    def at(cls, root: Path) -> Project:
        manifest = root / "Pulumi.yaml"
        try:
            document = yaml.safe_load(manifest.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise UsageError(f"cannot read {manifest}: {str(error).splitlines()[0]}") from None
        if not isinstance(document, Mapping):
            raise UsageError(f"{manifest}: not a Pulumi project file")
        # Read rather than assumed, so this tool and the Pulumi CLI agree on the path.
        config_dir = document.get("stackConfigDir") or "."
        return cls(root=root, stacks_dir=root / str(config_dir))

    def stack_file(self, stack: str) -> Path:
        return self.stacks_dir / f"Pulumi.{stack}.yaml"

    def shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


class Pulumi:
    """The Pulumi CLI, run in the project's directory with its output on the terminal."""

    def __init__(self, executable: str, cwd: Path) -> None:
        self.executable = executable
        self.cwd = cwd
        self.env = {**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"}

    def _argv(self, args: Sequence[str]) -> list[str]:
        return [self.executable, *args, "--non-interactive"]

    def call(self, *args: str) -> int:
        with subprocess.Popen(self._argv(args), cwd=self.cwd, env=self.env) as process:
            try:
                return process.wait()
            except KeyboardInterrupt:
                # The terminal sent SIGINT to pulumi as well, and it is now cancelling
                # cleanly; killing it here would leave pending operations in the state.
                process.wait()
                raise

    def run(self, *args: str) -> None:
        status = self.call(*args)
        if status != 0:
            raise PulumiError(f"`pulumi {' '.join(args)}` failed (exit {status})")

    def json(self, *args: str) -> Any:
        result = subprocess.run(
            self._argv(args),
            check=False,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        if result.returncode != 0:
            raise PulumiError(f"`pulumi {' '.join(args)}` failed (exit {result.returncode})")
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            raise PulumiError(f"`pulumi {' '.join(args)}` did not print JSON") from None

    def stacks(self) -> list[dict[str, Any]]:
        listed = self.json("stack", "ls", "--json")
        if not isinstance(listed, list):
            raise PulumiError("`pulumi stack ls --json` did not print a list")
        return [entry for entry in listed if isinstance(entry, dict) and "name" in entry]

    def stack_names(self) -> set[str]:
        return {short_name(str(entry["name"])) for entry in self.stacks()}

    def tags(self, stack: str) -> dict[str, str]:
        tags = self.json("stack", "tag", "ls", "--json", "--stack", stack)
        return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def short_name(listed: str) -> str:
    """`org/project/test-x` (as Pulumi Cloud may list it) -> `test-x`."""
    return listed.rsplit("/", 1)[-1]


def find_pulumi(project: Project) -> Pulumi:
    executable = shutil.which("pulumi")
    if executable is None:
        raise UsageError(CLI_MISSING)
    return Pulumi(executable, project.root)


def parse_name(name: str) -> tuple[str, str]:
    """NAME or test-NAME -> (NAME, test-NAME), or UsageError."""
    bare = name.removeprefix(PREFIX)
    if not NAME.fullmatch(bare):
        raise UsageError(
            f"invalid name {name!r}: use 1-30 of a-z, 0-9 and '-', starting with a letter "
            "or digit (the stack becomes test-NAME)"
        )
    return bare, PREFIX + bare


def refuse_committed_name(project: Project, bare: str) -> None:
    # `make test-stack-destroy NAME=dev` most likely means the real dev stack; refusing
    # beats silently acting on test-dev.
    committed = project.stack_file(bare)
    if committed.exists():
        raise UsageError(
            f"refusing {bare!r}: it names the committed stack in {project.shown(committed)}; "
            "this tool only handles ephemeral test-* stacks"
        )


def tracked_by_git(project: Project, path: Path) -> bool:
    if shutil.which("git") is None:
        return False
    root = str(project.root)
    inside = subprocess.run(
        ["git", "-C", root, "rev-parse", "--is-inside-work-tree"],
        capture_output=True,
        text=True,
        check=False,
    )
    if inside.returncode != 0:
        return False  # not a repository, so nothing in it is tracked
    listed = subprocess.run(
        ["git", "-C", root, "ls-files", "--error-unmatch", "--", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode in (0, 1):
        return listed.returncode == 0
    reason = (listed.stderr.strip().splitlines() or ["unknown error"])[-1]
    raise UsageError(f"cannot tell whether {project.shown(path)} is tracked by git: {reason}")


def default_owner(project: Project) -> str | None:
    if shutil.which("git") is not None:
        email = subprocess.run(
            ["git", "-C", str(project.root), "config", "user.email"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if email:
            return email
    return os.environ.get("GITHUB_ACTOR") or os.environ.get("USER") or None


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_expiry(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # A zoneless time is ambiguous by hours, too much for deciding what to delete.
    return moment if moment.tzinfo is not None else None


def _secret_keys(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, Mapping):
        if set(value) == {"secure"}:
            yield where
            return
        for key, item in value.items():
            yield from _secret_keys(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_keys(item, f"{where}[{index}]")


def ephemeral_document(
    project: Project,
    base: str,
    owner: str,
    expires_at: str,
    alerts_email: str | None = None,
    *,
    canaries: bool = False,
) -> tuple[dict[str, Any], Path]:
    """The new stack file's content from the base stack's, validated like any stack.

    The base's alerts (the real on-call) are dropped; `alerts_email` replaces them.
    `canaries` turns on every site's canary (`make e2e`).
    """
    base_file = project.stack_file(base)
    if not base_file.is_file():
        raise UsageError(f"base stack {base!r} not found: there is no {project.shown(base_file)}")
    try:
        # Strict (core/stack_file): a key given twice would be copied as its last value.
        document = stack_file.parse(base_file.read_text())
    except (OSError, stack_file.StackFileError) as error:
        first = str(error).splitlines()[0]
        raise UsageError(f"cannot read {project.shown(base_file)}: {first}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("config"), Mapping):
        raise UsageError(f"{project.shown(base_file)} has no `config:` mapping")
    new = {k: copy.deepcopy(v) for k, v in document.items() if k not in SECRETS_PROVIDER_KEYS}
    config: dict[str, Any] = dict(new["config"])
    # Secrets are encrypted for the base stack only; the copy could not decrypt them.
    secrets = [key for name, value in config.items() for key in _secret_keys(value, str(name))]
    if secrets:
        raise UsageError(
            f"base stack {base!r} has secret config ({', '.join(secrets)}), which cannot be "
            "copied to another stack; set it on the test stack with `pulumi config set --secret`"
        )
    # The base's deployer is its deploy role; whoever runs `make test-stack` deploys this
    # one, and the key policies must let them write the keys (default: the caller).
    config.pop(f"{PROJECT}:deployer", None)
    base_tags = config.get(TAGS_KEY) or {}
    if not isinstance(base_tags, Mapping):
        raise UsageError(f"{project.shown(base_file)}: {TAGS_KEY} must be a mapping")
    config[TAGS_KEY] = {
        **base_tags,
        "owner": owner,
        "expires-at": expires_at,
        "ephemeral": "true",
        "base-stack": base,
    }
    config.pop(ALERTS_KEY, None)
    if canaries:
        sites = config.get(SITES_KEY)
        if isinstance(sites, list):
            config[SITES_KEY] = [
                {**site, "canary": True} if isinstance(site, Mapping) else site for site in sites
            ]
    if alerts_email:
        config[ALERTS_KEY] = {"emails": [alerts_email]}
    new["config"] = config
    try:
        load_stack_config(project_config_from_stack_file(new))
    except ConfigError as error:
        raise UsageError(
            f"base stack {base!r} gives an invalid test stack: {'; '.join(error.problems)}"
        ) from None
    return new, base_file


def create(
    project: Project,
    name: str,
    *,
    base: str,
    ttl_hours: int,
    owner: str | None,
    up: bool,
    alerts_email: str | None = None,
    now: datetime | None = None,
    canaries: bool = False,
) -> str:
    bare, stack = parse_name(name)
    refuse_committed_name(project, bare)
    if not 1 <= ttl_hours <= MAX_TTL_HOURS:
        raise UsageError(f"--ttl-hours must be between 1 and {MAX_TTL_HOURS}, got {ttl_hours}")
    owner = owner or default_owner(project)
    if not owner:
        raise UsageError(
            "cannot tell who owns the stack (no git user.email, $GITHUB_ACTOR or $USER); "
            "pass --owner"
        )
    if not TAG_VALUE.fullmatch(owner):
        raise UsageError(
            f"invalid owner {owner!r}: an AWS tag value allows letters, digits, spaces "
            "and + - = . _ : / @ (at most 256)"
        )
    target = project.stack_file(stack)
    if target.exists():
        raise UsageError(
            f"{project.shown(target)} already exists; remove that stack first with "
            f"`make test-stack-destroy NAME={bare}`"
        )
    expires_at = iso_utc((now or datetime.now(UTC)) + timedelta(hours=ttl_hours))
    document, base_file = ephemeral_document(
        project, base, owner, expires_at, alerts_email, canaries=canaries
    )
    pulumi = find_pulumi(project)

    header = (
        f"# Ephemeral test stack {stack}, made by tools/ephemeral.py from "
        f"{project.shown(base_file)}; expires {expires_at}.\n"
        f"# Not committed (.gitignore). Remove it with `make test-stack-destroy NAME={bare}`.\n"
    )
    try:
        out = target.open("x")
    except FileExistsError:
        raise UsageError(f"{project.shown(target)} appeared meanwhile; not touching it") from None
    with out:
        try:
            out.write(header)
            yaml.safe_dump(document, out, sort_keys=False, default_flow_style=False)
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    inited = attempted_up = False
    try:
        pulumi.run("stack", "init", stack, "--no-select")
        inited = True
        # Tags go on before `up`: should this process die mid-update, `sweep` can still
        # find the stack, see its expiry and take it down.
        pulumi.run("stack", "tag", "set", "owner", owner, "--stack", stack)
        pulumi.run("stack", "tag", "set", "expires-at", expires_at, "--stack", stack)
        if up:
            attempted_up = True
            pulumi.run("up", "--yes", "--stack", stack)
    except PulumiError as error:
        outcome = _roll_back(project, pulumi, stack, inited, attempted_up)
        raise PulumiError(f"{error}; {outcome}") from None
    if up:
        return f"created and deployed {stack} (owner {owner}, expires {expires_at})"
    return f"created {stack} without deploying it (owner {owner}, expires {expires_at})"


def _roll_back(project: Project, pulumi: Pulumi, stack: str, inited: bool, up: bool) -> str:
    target = project.stack_file(stack)
    keep = (
        f"so {stack} and {project.shown(target)} are kept for "
        f"`make test-stack-destroy NAME={stack.removeprefix(PREFIX)}`"
    )
    # A failed `up` may have made some resources; the stack must not go before they do
    # (and `stack rm` without --force refuses a stack that still has any).
    if up and pulumi.call("destroy", "--yes", "--stack", stack) != 0:
        return f"destroying what it made failed too, {keep}"
    if inited and pulumi.call("stack", "rm", "--yes", "--preserve-config", "--stack", stack) != 0:
        return f"removing the stack failed too, {keep}"
    target.unlink(missing_ok=True)
    return f"rolled back: removed {'the stack and ' if inited else ''}{project.shown(target)}"


def destroy(project: Project, name: str, pulumi: Pulumi | None = None) -> str:
    bare, stack = parse_name(name)
    refuse_committed_name(project, bare)
    target = project.stack_file(stack)
    if tracked_by_git(project, target):
        raise UsageError(
            f"refusing {stack}: {project.shown(target)} is tracked by git, so it is not an "
            "ephemeral stack this tool made"
        )
    pulumi = pulumi or find_pulumi(project)
    existed = stack in pulumi.stack_names()
    if existed:
        pulumi.run("destroy", "--yes", "--stack", stack)
        # --preserve-config: the file is removed below, by this tool, which has checked it
        # is ours; Pulumi's own removal would not have checked anything.
        pulumi.run("stack", "rm", "--yes", "--preserve-config", "--stack", stack)
    had_file = target.exists()
    target.unlink(missing_ok=True)
    removed = f" and removed {project.shown(target)}" if had_file else ""
    if existed:
        return f"destroyed {stack}{removed}"
    return f"{stack} does not exist, nothing to destroy{removed}"


def _expiry(project: Project, pulumi: Pulumi, stack: str) -> datetime | None:
    try:
        text: str | None = pulumi.tags(stack).get("expires-at")
    except PulumiError:
        text = None
    if text is None:
        # Stacks made before the backend kept tags, or a backend without them: the
        # expiry is also in the stack file, where this machine has one.
        try:
            document = yaml.safe_load(project.stack_file(stack).read_text())
            text = str(document["config"][TAGS_KEY]["expires-at"])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return None
    return parse_expiry(text)


def sweep(project: Project, dry_run: bool, now: datetime | None = None) -> tuple[int, list[str]]:
    """Destroys the test-* stacks past their expiry: (exit status, one line per stack)."""
    pulumi = find_pulumi(project)
    now = now or datetime.now(UTC)
    lines: list[str] = []
    expired: list[tuple[str, str]] = []
    for entry in pulumi.stacks():
        stack = short_name(str(entry["name"]))
        if not stack.startswith(PREFIX):
            continue
        if entry.get("updateInProgress"):
            lines.append(f"{stack}: an update is in progress, left alone")
            continue
        expiry = _expiry(project, pulumi, stack)
        if expiry is None:
            lines.append(f"{stack}: no readable expires-at tag, left alone")
        elif expiry > now:
            lines.append(f"{stack}: expires {iso_utc(expiry)}, kept")
        elif dry_run:
            lines.append(f"{stack}: expired {iso_utc(expiry)}, would be destroyed")
        else:
            expired.append((stack, iso_utc(expiry)))
    status = 0
    for stack, when in expired:
        try:
            lines.append(f"{stack}: expired {when}, {destroy(project, stack, pulumi)}")
        except (UsageError, PulumiError) as error:
            lines.append(f"{stack}: expired {when}, not destroyed: {error}")
            status = 1
    return status, lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.ephemeral",
        description="Ephemeral test stacks (test-NAME) with an owner and an expiry.",
    )
    parser.add_argument(
        "--repo-root",
        type=Path,
        default=REPO,
        help="the Pulumi project's directory (default: this checkout)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("create", help="create test-NAME from a committed stack")
    make.add_argument("--name", required=True, help="NAME of the stack test-NAME")
    make.add_argument("--base", default="dev", help="stack whose config is copied (dev)")
    make.add_argument(
        "--ttl-hours",
        type=int,
        default=DEFAULT_TTL_HOURS,
        help=f"hours until `sweep` may destroy it ({DEFAULT_TTL_HOURS})",
    )
    make.add_argument("--owner", help="owner tag (git user.email, else $GITHUB_ACTOR, $USER)")
    make.add_argument(
        "--alerts-email",
        default=os.environ.get(ALERTS_EMAIL_ENV) or None,
        metavar="ADDRESS",
        help=f"where the test stack's alarms mail (${ALERTS_EMAIL_ENV}); the base's alerts "
        "are never copied",
    )
    make.add_argument("--no-up", action="store_true", help="create the stack, do not deploy it")
    drop = commands.add_parser("destroy", help="destroy test-NAME and remove its stack file")
    drop.add_argument("--name", required=True)
    clean = commands.add_parser("sweep", help="destroy every test-* stack past its expiry")
    clean.add_argument("--dry-run", action="store_true", help="list them, destroy nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        project = Project.at(args.repo_root.resolve())
        if args.command == "create":
            made = create(
                project,
                args.name,
                base=args.base,
                ttl_hours=args.ttl_hours,
                owner=args.owner,
                up=not args.no_up,
                alerts_email=args.alerts_email,
            )
            print(made)
        elif args.command == "destroy":
            print(destroy(project, args.name))
        else:
            status, lines = sweep(project, args.dry_run)
            print("\n".join(lines) if lines else "no test-* stacks")
            return status
    except UsageError as error:
        print(f"tools.ephemeral: {error}", file=sys.stderr)
        return 2
    except PulumiError as error:
        print(f"tools.ephemeral: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "tools.ephemeral: interrupted; `python -m tools.ephemeral sweep --dry-run` shows "
            "what is left",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
