"""The plan as a tree a reviewer reads: resources under their parents, inputs under each.

It prints a public document (plan.document), never a Plan, so it can only show what
has already been redacted.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from core.render import decode_user_data
from plan.cost import monthly_cost, render_lines
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
    document = json_document(value)
    if isinstance(document, dict) and has_text_fields(document):
        # The desired state: its config and firewall as text blocks, one line per line.
        return value_lines(f"{key} (JSON, text fields shown as blocks)", document, indent)
    if document is not None:
        # IAM policies, dashboards: indented, keys sorted, so a reviewer reads (and a
        # diff shows) one statement field per line instead of one escaped line.
        value = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if isinstance(value, str) and "\n" in value:
        # A literal block, as in YAML: the text exactly, one line per line.
        body = value.removesuffix("\n").split("\n")
        return [f"{indent}{label} |", *(f"{indent}{_INDENT}{line}".rstrip() for line in body)]
    return [f"{indent}{label} {scalar(value)}"]


def has_text_fields(value: Any) -> bool:
    """Whether a JSON value holds multi-line text anywhere."""
    if isinstance(value, str):
        return "\n" in value
    if isinstance(value, dict):
        return any(has_text_fields(v) for v in value.values())
    if isinstance(value, list):
        return any(has_text_fields(v) for v in value)
    return False


def json_document(value: Any) -> Any:
    """The JSON object or array a string holds, or None for any other string or value."""
    if not isinstance(value, str) or value.lstrip()[:1] not in ("{", "["):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict | list) and parsed else None


# Resource options shown under a resource when set (the engine records them all).
_SHOWN_OPTIONS = (
    "additionalSecretOutputs",
    "deleteBeforeReplace",
    "dependsOn",
    "ignoreChanges",
    "replaceOnChanges",
)


def _short_urn(urn: str) -> str:
    """`urn:pulumi:dev::proj::parent$aws:ec2/vpc:Vpc::beta-vpc` -> `aws:ec2/vpc:Vpc beta-vpc`."""
    qualified, _, name = urn.rpartition("::")
    return f"{qualified.rsplit('$', 1)[-1]} {name}"


def options_shown(resource: Document) -> dict[str, Any]:
    """The resource options that are set, as they appear in the tree."""
    shown: dict[str, Any] = {}
    for name in _SHOWN_OPTIONS:
        value = resource.get("options", {}).get(name)
        if not value:
            continue
        shown[name] = [_short_urn(u) for u in value] if name == "dependsOn" else value
    return shown


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
                options = options_shown(resource)
                if options:
                    # In brackets, so an input that happens to be named "options" differs.
                    lines.extend(
                        f"{below}{bar}{line}".rstrip() for line in value_lines("[options]", options)
                    )
            walk(resource["urn"], below)

    walk(None, "")
    return lines


def render(document: Document) -> str:
    resources = document["resources"]
    counts = footer_counts(resources)
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
        f"{len(resources)} resources: {counts['cloud']} cloud resources, "
        f"{counts['other']} other provider resources, {counts['providers']} providers, "
        f"{counts['components']} components",
    ]
    # The plan ends with what the stack costs a month (plan.cost).
    lines += ["", *render_lines(monthly_cost(document))]
    return "\n".join(lines) + "\n"


def footer_counts(resources: list[Document]) -> dict[str, int]:
    """Cloud (AWS) resources, other providers' resources (random, command), providers, and
    components: a RandomBytes is state in Pulumi, not something running in an account."""
    counts = {"cloud": 0, "other": 0, "providers": 0, "components": 0}
    for resource in resources:
        if not resource["custom"]:
            counts["components"] += 1
        elif resource["type"].startswith("pulumi:providers:"):
            counts["providers"] += 1
        elif resource["type"].startswith("aws:"):
            counts["cloud"] += 1
        else:
            counts["other"] += 1
    return counts
