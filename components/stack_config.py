"""Reads this project's keys from the Pulumi stack config and validates them.

Validation happens before any resource is declared, so `pulumi preview` and `up`
stop with one line per problem and nothing half-built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import config as runtime_config

from core import stack_file
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


def stack_file_problems(project_dir: Path | None = None) -> list[str]:
    """The stack file's own problems (a key given twice, a key that is not text), when the
    program can see the file.

    The Pulumi CLI reads Pulumi.<stack>.yaml itself and hands the program only the
    resulting values, so a duplicate key has already been resolved by then. The program
    runs in the project directory, though, where the file usually is: read it again
    strictly (core/stack_file). No file (a stack whose config lives elsewhere): nothing to
    say, and the offline checks (`make plan`) still read it.
    """
    root = project_dir or Path.cwd()
    try:
        manifest = yaml.safe_load((root / "Pulumi.yaml").read_text())
        config_dir = str(manifest.get("stackConfigDir") or ".")
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    stack = pulumi.get_stack()
    path = root / config_dir / f"Pulumi.{stack}.yaml"
    if not stack or not path.is_file():
        return []
    try:
        stack_file.parse(path.read_text())
    except stack_file.StackFileError as error:
        return [f"{config_dir}/{path.name}: {problem}" for problem in error.problems]
    return []


def read_stack_config() -> StackConfig:
    """The validated config, or a RunError listing every problem (no traceback)."""
    try:
        problems = stack_file_problems()
        if problems:
            raise ConfigError(problems)
        # A typo'd namespace (`wg-site2site:firewall`) would drop its keys silently.
        problems = foreign_namespace_problems(_every_key())
        if problems:
            raise ConfigError(problems)
        return load_stack_config(_project_keys())
    except ConfigError as error:
        lines = "\n".join(f"  {problem}" for problem in error.problems)
        raise pulumi.RunError(f"invalid stack config:\n{lines}") from None
