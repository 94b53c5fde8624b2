"""A plan's public form: what `python -m plan` prints, writes as JSON and diffs.

Everything a person or a file sees goes through `public_document`, so secrecy is
decided in one place: values the program marked secret become "[secret]", and any
secret value that also turns up in plain text elsewhere (an export, a derived string)
is cut out of it as well.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from plan.engine import Plan, PlannedResource, Secret, Unknown, reveal

REDACTED = "[secret]"
UNKNOWN = "(unknown)"
# Secrets shorter than this are not cut out of other strings: a one-letter secret would
# shred every text it occurs in, and no key, token or password here is that short.
_MIN_REDACTED_LENGTH = 8

Document = dict[str, Any]
# Keys a secret's fingerprint, so it names this use only (BLAKE2b, 8 bytes).
_FINGERPRINT_KEY = b"wg-site-to-site plan: did this secret change?"


def _secret_strings(value: Any, inside_secret: bool = False) -> Iterable[str]:
    if isinstance(value, Secret):
        yield from _secret_strings(value.value, True)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_strings(item, inside_secret)
    elif isinstance(value, list):
        for item in value:
            yield from _secret_strings(item, inside_secret)
    elif inside_secret and isinstance(value, str):
        yield value


def secret_values(plan: Plan) -> frozenset[str]:
    """Every secret the plan knows: secret inputs and outputs declared secret.

    The outputs matter because a RandomBytes key's base64 and hex are never inputs.
    """
    found: set[str] = set()
    for resource in plan.resources:
        found.update(_secret_strings(resource.inputs))
        for name in resource.options.get("additionalSecretOutputs", []):
            found.update(_secret_strings(Secret(resource.outputs.get(name))))
    return frozenset(s for s in found if len(s) >= _MIN_REDACTED_LENGTH)


def redact_text(text: str, secrets: Iterable[str]) -> str:
    pattern = _secrets_pattern(frozenset(secrets))
    return text if pattern is None else pattern.sub(REDACTED, text)


@functools.lru_cache(maxsize=8)
def _secrets_pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """One pattern for every secret, longest first, so a secret that contains another is
    cut out whole (one pass per text: a plan of ten sites has ~50 secrets)."""
    if not secrets:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(secrets, key=lambda s: (-len(s), s))))


def fingerprint(value: Any) -> str:
    """A keyed 64-bit digest of a secret value: equal values, equal fingerprints.

    Two plans (made in two processes, at two git refs) compare their secret inputs by
    these, so the diff can say `[secret changed]` without either plan holding the value.
    The values here are 32 random bytes (keys): a digest of one reveals nothing of it.
    """
    text = json.dumps(reveal(value), sort_keys=True)
    return hashlib.blake2b(text.encode(), key=_FINGERPRINT_KEY, digest_size=8).hexdigest()


def secret_fingerprints(value: Any, path: str = "") -> dict[str, str]:
    """Path (as plan.diff.flatten names it) -> fingerprint, for every secret input."""
    if isinstance(value, Secret):
        return {path: fingerprint(value.value)} if path else {}
    found: dict[str, str] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(secret_fingerprints(item, f"{path}.{key}" if path else str(key)))
    elif isinstance(value, list) and path:
        for index, item in enumerate(value):
            found.update(secret_fingerprints(item, f"{path}[{index}]"))
    return found


def public_value(value: Any, secrets: frozenset[str]) -> Any:
    """A JSON value with Secret and Unknown markers replaced by their printed forms."""
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, Unknown):
        return UNKNOWN
    if isinstance(value, dict):
        return {str(k): public_value(v, secrets) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [public_value(v, secrets) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def _resource(plan: Plan, resource: PlannedResource, secrets: frozenset[str]) -> Document:
    return {
        "urn": resource.urn,
        "type": resource.type,
        "name": resource.name,
        "parent": resource.parent,
        "provider": resource.provider,
        "region": plan.region_of(resource),
        "custom": resource.custom,
        "inputs": public_value(resource.inputs, secrets),
        "options": public_value(resource.options, secrets),
        # Fingerprints of the secret inputs, never the values (see `fingerprint`).
        "secrets": dict(sorted(secret_fingerprints(resource.inputs).items())),
        # What the provider computes (id, arn, addresses): what a replacement makes
        # unknown to the resources that use it. Not printed in the tree.
        "id": public_value(resource.outputs.get("id"), secrets),
        "computed": public_value(
            {k: v for k, v in resource.outputs.items() if k != "id" and k not in resource.inputs},
            secrets,
        ),
    }


def public_document(plan: Plan) -> Document:
    """The plan as plain JSON data, sorted so that equal plans give equal bytes."""
    secrets = secret_values(plan)
    resources = sorted(plan.resources, key=lambda r: r.urn)
    return {
        "stack": plan.stack,
        "resources": [_resource(plan, r, secrets) for r in resources],
        "exports": public_value(plan.exports, secrets),
        "notes": [redact_text(note, secrets) for note in plan.notes],
    }


def dumps(document: Document) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
