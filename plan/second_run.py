"""The second `pulumi up`: what it would change right after a first one succeeded.

A first run leaves the outputs (what Create and Read stored) as state. The second run
declares the same program again; the provider then compares each resource's new inputs,
with its schema defaults filled in, against that state, skipping what its
DiffSuppressFunc suppresses and what `ignoreChanges` names. Right after a first run that
should be nothing at all: anything else is drift the project makes itself, and on AWS it
is applied on every `up` (plan.provider_model explains the one that matters most).

Only the inputs a resource declares are compared: an attribute the program leaves unset
and the provider computes (Optional + Computed) keeps whatever state has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plan import provider_model
from plan.engine import Plan, Secret, Unknown, _to_marked, plan_stack, reveal, run_program

REDACTED = "[secret]"


def _shown(value: Any) -> str:
    """A value for a change line: never a secret, at most 80 characters."""
    if isinstance(value, Secret):
        return REDACTED
    value = reveal(value)
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= 80 else text[:77] + "..."


def _state_value(value: Any) -> Any:
    """A state value with a secret's wire form (as the mock monitor keeps it) unwrapped."""
    if isinstance(value, Secret):
        return Secret(_state_value(value.value))
    return _to_marked(value)


def changes_between(first: Plan, second: Plan) -> list[str]:
    """One line per change the second run would make over the first run's state."""
    state = {r.urn: r for r in first.resources}
    lines: list[str] = []
    for resource in second.resources:
        old = state.get(resource.urn)
        label = f"{resource.type} {resource.name}"
        if old is None:
            lines.append(f"{label}: created again (not in the first run's state)")
            continue
        if not resource.custom:
            continue
        inputs = provider_model.with_defaults(resource.type, resource.inputs)
        outputs = old.outputs
        ignored = set(resource.options.get("ignoreChanges", []))
        for key in sorted(inputs):
            new_value = inputs[key]
            if key in ignored or isinstance(new_value, Unknown):
                continue
            if provider_model.suppressed(resource.type, key, inputs):
                continue
            if key not in outputs:
                lines.append(f"{label}: {key} (not in state) => {_shown(new_value)}")
                continue
            was = _state_value(outputs[key])
            if reveal(was) != reveal(new_value):
                lines.append(f"{label}: {key} {_shown(was)} => {_shown(new_value)}")
    gone = {r.urn for r in first.resources} - {r.urn for r in second.resources}
    lines += [f"{state[urn].type} {state[urn].name}: deleted" for urn in sorted(gone)]
    return lines


def second_run_changes(
    stack: str,
    config: Mapping[str, Any] | None = None,
    *,
    first: Plan | None = None,
    **kwargs: Any,
) -> list[str]:
    """Runs the program for `stack` twice, as `pulumi up` and then `pulumi preview` over
    its state, and lists what the second run would change (empty: a no-op).

    `config` plans that config instead of stacks/Pulumi.<stack>.yaml; `first` reuses a
    first run already made (an update, not a preview); `kwargs` go to the engine
    (`program=` for another program).
    """

    def run(preview: bool) -> Plan:
        if config is None:
            return plan_stack(stack, preview=preview, **kwargs)
        return run_program(stack, config, preview=preview, **kwargs)

    return changes_between(first or run(False), run(True))
