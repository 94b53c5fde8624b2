"""`--diff REF`: what would change between the plan at a git ref and the working tree.

The plan at REF is made by REF's own code (`python -m plan STACK --json` in a detached
worktree), so a change to the program, the templates or the stack file all show up.
Both sides are public documents (plan.document): a diff can only show what the plan
printer may show.
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plan.cost import monthly_cost
from plan.cost import render_lines as render_cost
from plan.document import REDACTED, UNKNOWN, Document
from plan.replacement import force_new_paths, forces_new_on_change
from plan.review import (
    MAX_LINE,
    SECRET_CHANGED,
    abbreviate,
    clip,
    impact,
    main_properties,
    readable_text,
    short_urn,
    short_value,
    summary_paragraph,
)

Op = Literal["create", "update", "replace", "delete", "same"]
# How long REF's plan may take; it is normally a second or two.
_PLAN_TIMEOUT_SECONDS = 600
_MARK = {"create": "+ ", "update": "~ ", "replace": "+-", "delete": "- "}
_SUMMARY_ORDER: tuple[Op, ...] = ("create", "update", "replace", "delete", "same")
WORKING_TREE = "working tree"


class DiffError(Exception):
    """The diff could not be made; the message is one line per problem."""


@dataclass(frozen=True)
class PropertyChange:
    key: str  # a path: metadataOptions.httpTokens, vpcSecurityGroupIds[0]
    op: Literal["add", "remove", "change"]
    old: Any = None
    new: Any = None
    replaces: bool = False  # the change forces a replacement of the resource
    # A secret input whose value changed: both sides print as [secret], and the plans'
    # fingerprints (plan.document) differ. Rendered as `[secret changed]`.
    secret: bool = False


@dataclass(frozen=True)
class ResourceChange:
    op: Op
    urn: str
    type: str
    name: str
    region: str | None
    properties: tuple[PropertyChange, ...] = field(default=())


# --------------------------------------------------------------------------- git side


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def resolve_ref(project: Path, ref: str) -> str:
    """The commit `ref` names, or a DiffError saying why there is none."""
    if _git(project, "rev-parse", "--show-toplevel").returncode != 0:
        raise DiffError(f"--diff needs a git repository, and {project} is not in one")
    # `--end-of-options` keeps a ref such as "--help" from being read as an option.
    found = _git(
        project, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"
    )
    if found.returncode != 0:
        raise DiffError(f"git ref {ref!r} does not name a commit in {project}")
    return found.stdout.strip()


def _last_lines(text: str, count: int = 5) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-count:])


def plan_at_ref(project: Path, stack: str, ref: str) -> tuple[str, Document | None]:
    """(commit, REF's plan of `stack`); the plan is None if REF has no such stack file.

    The worktree is always removed again, whatever happens inside it.
    """
    commit = resolve_ref(project, ref)
    prefix = _git(project, "rev-parse", "--show-prefix").stdout.strip()
    with tempfile.TemporaryDirectory(prefix="wg-plan-diff-") as scratch:
        tree = Path(scratch) / "tree"
        added = _git(project, "worktree", "add", "--detach", str(tree), commit)
        if added.returncode != 0:
            raise DiffError(f"git worktree add failed: {_last_lines(added.stderr, 1)}")
        try:
            return commit, _plan_in(tree / prefix, stack, ref, Path(scratch) / "plan.json")
        finally:
            removed = _git(project, "worktree", "remove", "--force", str(tree))
            if removed.returncode != 0:
                # Leave no stale entry behind even if the directory went first.
                _git(project, "worktree", "prune")


def _plan_in(checkout: Path, stack: str, ref: str, output: Path) -> Document | None:
    if not (checkout / "stacks" / f"Pulumi.{stack}.yaml").is_file():
        return None
    if not (checkout / "plan" / "__main__.py").is_file():
        raise DiffError(f"{ref} predates `python -m plan`, so it cannot be planned")
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "plan", stack, "--json", str(output)],
            cwd=checkout,
            capture_output=True,
            text=True,
            check=False,
            timeout=_PLAN_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise DiffError(f"planning {stack} at {ref} took over {_PLAN_TIMEOUT_SECONDS}s") from None
    if ran.returncode != 0:
        # REF's planner already says what is wrong, one line per problem.
        raise DiffError(f"planning {stack} at {ref} failed:\n{_last_lines(ran.stderr)}")
    try:
        document: Document = json.loads(output.read_text())
    except (OSError, ValueError) as error:
        raise DiffError(f"the plan of {stack} at {ref} is unreadable: {error}") from None
    return document


# ------------------------------------------------------------------------- comparison


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested inputs as path -> leaf, so a change is named where it happens."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list) and value and prefix:
        flat = {}
        for index, item in enumerate(value):
            flat.update(flatten(item, f"{prefix}[{index}]"))
        return flat
    return {prefix: value} if prefix else {}


def _covers(path: str, key: str) -> bool:
    return path in ("*", key) or key.startswith((f"{path}.", f"{path}["))


UNKNOWN_AFTER_REPLACE = "(unknown after replace)"
# Options whose changes the diff shows (as `options.<name>`).
_OPTIONS = ("deleteBeforeReplace", "dependsOn", "ignoreChanges", "replaceOnChanges")


def _replace_paths(resource: Document) -> list[str]:
    """Paths whose change replaces the resource: the provider's ForceNew attributes
    (plan.replacement), `replaceOnChanges`, and user data when it replaces on change."""
    paths = list(force_new_paths(resource["type"]))
    paths += resource["options"].get("replaceOnChanges", [])
    if resource["inputs"].get("userDataReplaceOnChange") is True:
        paths += ["userData", "userDataBase64"]
    return paths


def _property_changes(old: Document, new: Document) -> tuple[PropertyChange, ...]:
    before, after = flatten(old["inputs"]), flatten(new["inputs"])
    ignored = new["options"].get("ignoreChanges", [])
    replace = _replace_paths(new)
    # A plan made before fingerprints existed has none: its secrets compare equal.
    was_secret, now_secret = old.get("secrets") or {}, new.get("secrets") or {}
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if any(_covers(path, key) for path in ignored):
            continue
        replaces = any(_covers(path, key) for path in replace)
        if key in before and key in after:
            replaces = replaces or forces_new_on_change(new["type"], key, before[key], after[key])
        if key not in before:
            changes.append(PropertyChange(key, "add", new=after[key], replaces=replaces))
        elif key not in after:
            changes.append(PropertyChange(key, "remove", old=before[key], replaces=replaces))
        elif before[key] != after[key]:
            changes.append(
                PropertyChange(key, "change", before[key], after[key], replaces=replaces)
            )
        elif (
            before[key] == REDACTED
            and key in was_secret
            and key in now_secret
            and was_secret[key] != now_secret[key]
        ):
            changes.append(
                PropertyChange(key, "change", REDACTED, REDACTED, replaces=replaces, secret=True)
            )
    return tuple(changes)


def _option_changes(old: Document, new: Document) -> tuple[PropertyChange, ...]:
    changes = []
    for name in _OPTIONS:
        was, now = old.get("options", {}).get(name), new.get("options", {}).get(name)
        if isinstance(was, list) and isinstance(now, list) and sorted(was) == sorted(now):
            continue
        if was != now and not (not was and not now):
            changes.append(PropertyChange(f"options.{name}", "change", was, now))
    return tuple(changes)


def _markers(resource: Document) -> set[str]:
    """The values a replacement of `resource` makes unknown: its id and computed outputs.

    Mock ids derive from names, so they are the same before and after; on AWS a new
    resource gets a new id, and `pulumi preview` shows every use of it as unknown.
    """
    found = {resource.get("id")}
    found |= {v for v in flatten(resource.get("computed", {})).values()}
    # An output that only repeats one of its inputs (an instance's primary interface id,
    # given as primaryNetworkInterface) belongs to that input's owner and stays.
    echoed = set(flatten(resource.get("inputs", {})).values())
    return {
        v
        for v in found
        if isinstance(v, str) and v not in (REDACTED, UNKNOWN) and v and v not in echoed
    }


def _uses(value: Any, markers: set[str]) -> bool:
    if not isinstance(value, str):
        return False
    for marker in markers:
        # A whole value, or a marker inside text (an ARN in a policy, an address in
        # "203.0.113.10/32"), bounded so 203.0.113.20 is not found in 203.0.113.200.
        if value == marker or re.search(rf"(?<![\w.-]){re.escape(marker)}(?![\w.-])", value):
            return True
    return False


def compare(old: Document | None, new: Document) -> list[ResourceChange]:
    """Every resource of either plan, matched by URN, in type-then-name order.

    A replaced resource's id and outputs are unknown to every resource that uses them,
    which then changes too (and is replaced if the use is a ForceNew input), until
    nothing more changes.
    """
    before = {r["urn"]: r for r in (old or {}).get("resources", [])}
    after = {r["urn"]: r for r in new["resources"]}
    before = _renamed(before, after)
    both = sorted(before.keys() & after.keys())
    properties = {urn: _property_changes(before[urn], after[urn]) for urn in both}
    options = {urn: _option_changes(before[urn], after[urn]) for urn in both}
    for urn in both:
        was, now = before[urn].get("provider"), after[urn].get("provider")
        if was and now and was != now:
            # Another provider (another region, say) manages a new resource: Pulumi
            # replaces a resource whose provider reference changes.
            properties[urn] += (PropertyChange("provider", "change", was, now, True),)
    replaced: set[str] = {urn for urn in both if any(p.replaces for p in properties[urn])}
    done: set[str] = set()
    while replaced - done:
        for source in sorted(replaced - done):
            done.add(source)
            markers = _markers(after[source])
            for urn in both:
                resource = after[urn]
                if resource.get("provider") == source and urn not in replaced:
                    # A new provider (another region) makes everything it manages anew.
                    replaced.add(urn)
                    properties[urn] += (
                        PropertyChange("provider", "change", source, UNKNOWN_AFTER_REPLACE, True),
                    )
                    continue
                if not markers or urn == source:
                    continue
                changed = {p.key for p in properties[urn]}
                replace = _replace_paths(resource)
                extra = []
                for key, value in flatten(resource["inputs"]).items():
                    if key in changed or not _uses(value, markers):
                        continue
                    forces = any(_covers(path, key) for path in replace)
                    extra.append(
                        PropertyChange(key, "change", value, UNKNOWN_AFTER_REPLACE, forces)
                    )
                    if forces:
                        replaced.add(urn)
                if extra:
                    properties[urn] = tuple(
                        sorted(properties[urn] + tuple(extra), key=lambda p: p.key)
                    )
    changes = []
    for urn in before.keys() | after.keys():
        resource = after.get(urn) or before[urn]
        heading = (urn, resource["type"], resource["name"], resource.get("region"))
        if urn not in before:
            changes.append(ResourceChange("create", *heading))
        elif urn not in after:
            changes.append(ResourceChange("delete", *heading))
        else:
            found = properties[urn] + options[urn]
            op: Op = "same"
            if urn in replaced:
                op = "replace"
            elif found:
                op = "update"
            changes.append(ResourceChange(op, *heading, properties=found))
    return sorted(changes, key=lambda c: (c.type, c.name, c.urn))


def _renamed(before: dict[str, Document], after: dict[str, Document]) -> dict[str, Document]:
    """`before` with each resource the new plan renamed (an alias naming its old URN)
    under its new URN, as the engine matches them: the same resource, not a delete and a
    create. Dependencies on renamed resources are renamed with them."""
    renames = {
        alias: urn
        for urn, resource in after.items()
        for alias in resource.get("options", {}).get("aliases", [])
        if alias in before and alias not in after and urn not in before
    }
    if not renames:
        return before
    moved = {}
    for urn, resource in before.items():
        copy = dict(resource, urn=renames.get(urn, urn))
        options = dict(resource.get("options", {}))
        if isinstance(options.get("dependsOn"), list):
            options["dependsOn"] = sorted(renames.get(d, d) for d in options["dependsOn"])
        copy["options"] = options
        moved[renames.get(urn, urn)] = copy
    return moved


def summary(changes: list[ResourceChange]) -> dict[str, int]:
    counts = Counter(c.op for c in changes)
    return {op: counts.get(op, 0) for op in _SUMMARY_ORDER}


# -------------------------------------------------------------------------- rendering


def _property_lines(change: PropertyChange, ref: str) -> Iterator[str]:
    lines = list(_plain_property_lines(change, ref))
    if change.replaces and lines:
        # As `pulumi preview --diff` marks the property that forces the replacement.
        lines[0] = f"{lines[0]} [forces replacement]"
    yield from lines


def _list_change_lines(change: PropertyChange) -> list[str] | None:
    """A list of URNs (dependsOn) as the names that joined and left it, or None."""
    was, now = change.old or [], change.new or []
    if not (isinstance(was, list) and isinstance(now, list)):
        return None
    if not all(isinstance(v, str) and v.startswith("urn:pulumi:") for v in was + now):
        return None
    lines = [f"~ {change.key}:"]
    lines += [f"    - {short_urn(u)}" for u in sorted(set(was) - set(now), key=short_urn)]
    lines += [f"    + {short_urn(u)}" for u in sorted(set(now) - set(was), key=short_urn)]
    return lines


def _plain_property_lines(change: PropertyChange, ref: str) -> Iterator[str]:
    if change.secret:
        yield f"~ {change.key}: {SECRET_CHANGED}"
        return
    if change.op == "add":
        yield f"+ {change.key}: {short_value(change.new)}"
        return
    if change.op == "remove":
        yield f"- {change.key}: {short_value(change.old)}"
        return
    listed = _list_change_lines(change)
    if listed is not None:
        yield from listed
        return
    old = readable_text(change.key, change.old)
    new = readable_text(change.key, change.new) if change.new != UNKNOWN_AFTER_REPLACE else None
    if old is not None and new is not None:
        how = f" ({new[0]})" if new[0] != "text" else ""
        yield f"~ {change.key}{how}:"
        lines = difflib.unified_diff(
            old[1].splitlines(),
            new[1].splitlines(),
            fromfile=f"{change.key} ({ref})",
            tofile=f"{change.key} ({WORKING_TREE})",
            lineterm="",
        )
        yield from (f"    {line}".rstrip() for line in lines)
        return
    was, now = short_value(change.old), short_value(change.new)
    # Room on a line: the indent under the resource, the marker and a [forces replacement].
    room = MAX_LINE - 6 - len(" [forces replacement]")
    if len(f"~ {change.key}: {was} => {now}") <= room:
        yield f"~ {change.key}: {was} => {now}"
    elif change.new == UNKNOWN_AFTER_REPLACE:
        # What the reviewer needs is which value goes unknown, not all of it.
        yield f"~ {change.key}: {abbreviate(was, room // 2)} => {now}"
    else:
        yield f"~ {change.key}:"
        yield f"    - {abbreviate(was, room - 6)}"
        yield f"    + {abbreviate(now, room - 6)}"


def render(
    stack: str,
    ref: str,
    commit: str,
    changes: list[ResourceChange],
    *,
    after: Document | None = None,
    before: Document | None = None,
) -> str:
    """The diff as a reviewer reads it: a summary, each change with what it costs, the
    counts, and (given the plans) the stack's monthly cost after the change."""
    lines = [f"Diff of stack {stack}: {ref} ({commit[:12]}) => {WORKING_TREE}", ""]
    lines += summary_paragraph(changes)
    lines.append("")
    by_urn = {r["urn"]: r for r in (after or {}).get("resources", [])}
    for change in changes:
        if change.op == "same":
            continue
        region = f" ({change.region})" if change.region else ""
        lines.append(f"{_MARK[change.op]} {change.type} {change.name}{region}")
        lines.append(f"      = {impact(change)}")
        if change.op == "create" and change.urn in by_urn:
            lines += [f"      + {line}" for line in main_properties(by_urn[change.urn])]
        for prop in change.properties:
            lines += [f"      {line}".rstrip() for line in _property_lines(prop, ref)]
    counts = summary(changes)
    if not any(counts[op] for op in _SUMMARY_ORDER[:-1]):
        lines.append("No changes.")
    lines += [
        "",
        f"Resources: {counts['create']} to create, {counts['update']} to update, "
        f"{counts['replace']} to replace, {counts['delete']} to delete, "
        f"{counts['same']} unchanged",
    ]
    if after is not None:
        was = monthly_cost(before) if before is not None else None
        lines += ["", *render_cost(monthly_cost(after), before=was, ref=ref)]
    return "\n".join(clip(line) for line in lines) + "\n"


def as_document(stack: str, ref: str, commit: str, changes: list[ResourceChange]) -> Document:
    """The diff as JSON data; unchanged resources are only counted."""
    return {
        "stack": stack,
        "ref": ref,
        "commit": commit,
        "changes": [
            {
                "op": c.op,
                "urn": c.urn,
                "type": c.type,
                "name": c.name,
                "region": c.region,
                "impact": impact(c),
                "properties": [
                    {
                        "key": p.key,
                        "op": p.op,
                        "old": p.old,
                        "new": p.new,
                        "replaces": p.replaces,
                        "secret": p.secret,
                    }
                    for p in c.properties
                ],
            }
            for c in changes
            if c.op != "same"
        ],
        "summary": summary(changes),
    }
