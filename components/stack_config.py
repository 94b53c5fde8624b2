"""Reads this project's keys from the Pulumi stack config and validates them.

Validation happens before any resource is declared, so `pulumi preview` and `up`
stop with one line per problem and nothing half-built.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from core.config import (
    PROJECT,
    ConfigError,
    StackConfig,
    foreign_namespace_problems,
    load_stack_config,
)


def _decode(value: Any) -> Any:
    # The engine hands structured config values to programs as JSON text.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _every_key() -> dict[str, Any]:
    return {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}


def _project_keys() -> dict[str, Any]:
    # Every key of our namespace, including misspelt ones, so that unknown keys are
    # reported instead of silently ignored.
    every = _every_key()
    prefix = f"{PROJECT}:"
    return {
        key[len(prefix) :]: _decode(value) for key, value in every.items() if key.startswith(prefix)
    }


def read_stack_config() -> StackConfig:
    """The validated config, or a RunError listing every problem (no traceback)."""
    try:
        # A typo'd namespace (`wg-site2site:firewall`) would drop its keys silently.
        problems = foreign_namespace_problems(_every_key())
        if problems:
            raise ConfigError(problems)
        return load_stack_config(_project_keys())
    except ConfigError as error:
        lines = "\n".join(f"  {problem}" for problem in error.problems)
        raise pulumi.RunError(f"invalid stack config:\n{lines}") from None
