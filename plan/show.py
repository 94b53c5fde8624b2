"""The plan as a tree a reviewer reads: resources under their parents, inputs under each.

It prints a public document (plan.document), never a Plan, so it can only show what
has already been redacted.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from core.render import decode_user_data
from plan.document import REDACTED, UNKNOWN, Document

_INDENT = "    "


def scalar(value: Any) -> str:
    """One value on one line: JSON, so the string "false" and the boolean differ.

    The markers for secret and unknown values stay bare, as `pulumi preview` shows them.
    """
    if value in (REDACTED, UNKNOWN):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def value_lines(key: str, value: Any, indent: str = "") -> list[str]:
    """`key: value`, with containers nested and multi-line text as an indented block.

    List items get the key "-", as in YAML.
    """
    label = key if key == "-" else f"{key}:"
    if key == "userDataBase64" and isinstance(value, str):
        # Gzip for EC2's 16 KB; a reviewer reads the cloud-config itself.
        try:
            value = decode_user_data(value)
            label = f"{key} (gzip+base64, shown decoded):"
        except (ValueError, OSError, EOFError):
            pass
    if isinstance(value, dict) and value:
        lines = [f"{indent}{label}"]
        for child_key in sorted(value):
            lines += value_lines(child_key, value[child_key], indent + _INDENT)
        return lines
    if isinstance(value, list) and value:
        lines = [f"{indent}{label}"]
        for item in value:
            lines += value_lines("-", item, indent + _INDENT)
        return lines
    if isinstance(value, str) and "\n" in value:
        # A literal block, as in YAML: the text exactly, one line per line.
        body = value.removesuffix("\n").split("\n")
        return [f"{indent}{label} |", *(f"{indent}{_INDENT}{line}".rstrip() for line in body)]
    return [f"{indent}{label} {scalar(value)}"]


def _heading(resource: Document) -> str:
    region = f" ({resource['region']})" if resource.get("region") else ""
    return f"{resource['type']} {resource['name']}{region}"


def tree_lines(document: Document, *, inputs: bool = True) -> list[str]:
    """Every resource under its parent, children sorted by type then name."""
    resources = document["resources"]
    urns = {r["urn"] for r in resources}
    children: dict[str | None, list[Document]] = defaultdict(list)
    for resource in resources:
        # The stack itself is not recorded; what hangs off it is a root here.
        parent = resource["parent"] if resource["parent"] in urns else None
        children[parent].append(resource)

    lines: list[str] = []

    def walk(parent: str | None, prefix: str) -> None:
        kids = sorted(children[parent], key=lambda r: (r["type"], r["name"], r["urn"]))
        for index, resource in enumerate(kids):
            last = index == len(kids) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{_heading(resource)}")
            below = prefix + ("    " if last else "│   ")
            if inputs:
                bar = "│   " if children[resource["urn"]] else "    "
                for key in sorted(resource["inputs"]):
                    lines.extend(
                        f"{below}{bar}{line}".rstrip()
                        for line in value_lines(key, resource["inputs"][key])
                    )
            walk(resource["urn"], below)

    walk(None, "")
    return lines


def render(document: Document) -> str:
    resources = document["resources"]
    custom = sum(1 for r in resources if r["custom"])
    lines = [f"Plan of stack {document['stack']} (offline: mock engine, no AWS)", ""]
    lines += tree_lines(document)
    if document["exports"]:
        lines += ["", "Outputs:"]
        for key in sorted(document["exports"]):
            lines += value_lines(key, document["exports"][key], _INDENT)
    if document.get("notes"):
        lines += ["", "Notes:", *(f"{_INDENT}{note}" for note in document["notes"])]
    lines += [
        "",
        f"{len(resources)} resources: {custom} cloud resources and providers, "
        f"{len(resources) - custom} components",
    ]
    return "\n".join(lines) + "\n"
