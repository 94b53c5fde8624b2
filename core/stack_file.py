"""Reading a Pulumi.<stack>.yaml strictly: what PyYAML would silently accept is refused.

PyYAML's `safe_load` keeps the last of two equal keys (a second
`wg-site-to-site:firewall: []` drops every rule without a word) and reads unquoted
`yes`/`no`/`on`/`off` and digits as booleans and numbers, also as mapping keys (YAML 1.1).
`parse` refuses both, one line per problem naming the line(s) and the key.

The Pulumi CLI reads the stack file itself (Go, not this module), so these checks run in
the offline consumers of the file: `python -m plan` (`make plan`, `make lab`),
`python -m policy.offline` (`make policy`), `make pin` and the ephemeral-stack tool.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

# A value echoed in a message is cut to this many characters (a 5 KB typo stays one line).
MAX_SHOWN = 80
MERGE_TAG = "tag:yaml.org,2002:merge"


class StackFileError(Exception):
    """The stack file cannot be read; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """`text`, cut to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def yaml_problem(error: yaml.YAMLError) -> str:
    """`line L, column C: not valid YAML: <problem> (<context>)`, as PyYAML reports it."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({error.context})" if error.context else ""
        return f"{where}not valid YAML: {error.problem or 'unreadable'}{context}"
    return f"not valid YAML: {' '.join(str(error).split())}"


def _where(path: tuple[str | int, ...]) -> str:
    """('config', 'wg-site-to-site:sites', 0, 'name') -> 'wg-site-to-site:sites[0].name'."""
    parts = path[1:] if path[:1] == ("config",) and len(path) > 1 else path
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{clip(part, 40)}" if text else clip(part, 40)
    return text or "the top level"


_KINDS = {bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
# YAML 1.1 words PyYAML reads as booleans (yaml.resolver.Resolver's bool pattern).
_BOOLEAN_WORDS = "yes, no, on, off, true or false"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys and keys that are not text, at every
    level, before constructing anything."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        problems = list(self._problems(node, (), set()))
        if problems:
            raise StackFileError(problems)
        return self.construct_document(node)

    def _problems(
        self, node: yaml.Node, path: tuple[str | int, ...], seen: set[int]
    ) -> Iterator[str]:
        if id(node) in seen:  # an alias of a node already walked
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                yield from self._problems(item, (*path, index), seen)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == MERGE_TAG:  # `<<: *defaults` overrides on purpose
                yield from self._problems(value_node, path, seen)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
                yield f"line {line}: a key under {_where(path)} is {kind}, not text"
                continue
            key = self.construct_object(key_node)
            if not isinstance(key, str):
                kind = _KINDS.get(type(key), type(key).__name__)
                hint = f" (YAML 1.1 reads an unquoted {_BOOLEAN_WORDS} so)" * isinstance(key, bool)
                shown = clip(str(key_node.value), 40)
                yield (
                    f"line {line}: key {shown} under {_where(path)} is read as {kind}{hint}, "
                    f"not text; quote it ('{shown}')"
                )
                continue
            if key in first_line:
                yield (
                    f"line {line}: {_where((*path, key))} is given twice (lines "
                    f"{first_line[key]} and {line}); YAML would silently keep only the last"
                )
                continue
            first_line[key] = line
            yield from self._problems(value_node, (*path, key), seen)


def parse(text: str) -> Any:
    """The document in `text`, or StackFileError with one line per problem."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise StackFileError([yaml_problem(error)]) from None
