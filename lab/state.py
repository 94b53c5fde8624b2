"""The record of what a lab run made, written as it goes so a failure can be undone."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from lab import STATE_DIR, STATE_FILE

# Host directories the lab created, kept apart from STATE_FILE: a crash that loses the
# state file must not turn "we made /etc/netns" into "nobody knows", since without a
# record teardown leaves host directories alone.
HOST_DIRS_FILE = STATE_DIR / "created-host-dirs.json"


@dataclass
class State:
    stack: str = ""
    namespaces: list[str] = field(default_factory=list)
    etc_dirs: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)  # WireGuard, for stale sockets
    # Long-running processes the lab started: "<namespace> <pid>" of each gateway service
    # (the failover agent) and "controller <pid>" (lab.controller).
    daemons: list[str] = field(default_factory=list)
    implementation: str = ""  # "kernel" or "wireguard-go"
    created_netns_etc: bool = False  # /etc/netns did not exist before the lab
    created_wireguard_run: bool = False  # nor did /var/run/wireguard

    def save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = STATE_FILE.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(partial, STATE_FILE)

    def add(self, kind: str, value: str) -> None:
        items: list[str] = getattr(self, kind)
        if value not in items:
            items.append(value)
            self.save()


def load() -> State | None:
    try:
        raw = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    state = State()
    for key in ("namespaces", "etc_dirs", "interfaces", "daemons"):
        value = raw.get(key)
        if isinstance(value, list):
            setattr(state, key, [str(v) for v in value])
    state.stack = str(raw.get("stack", ""))
    state.implementation = str(raw.get("implementation", ""))
    state.created_netns_etc = raw.get("created_netns_etc") is True
    state.created_wireguard_run = raw.get("created_wireguard_run") is True
    return state


def record_created_host_dirs(directories: list[str]) -> None:
    """Notes which shared host directories (/etc/netns, ...) this lab run is about to make."""
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = HOST_DIRS_FILE.with_suffix(".partial")
    partial.write_text(json.dumps(sorted(directories)) + "\n")
    os.replace(partial, HOST_DIRS_FILE)


def created_host_dirs() -> set[str]:
    """The host directories a lab run recorded as its own; empty without a record."""
    try:
        raw = json.loads(HOST_DIRS_FILE.read_text())
    except (OSError, ValueError):
        return set()
    return {str(d) for d in raw} if isinstance(raw, list) else set()
