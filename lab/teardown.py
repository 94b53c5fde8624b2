"""Removes everything a lab run made: processes, namespaces, files, stale sockets.

Works from the state file and, for a run that crashed before writing it (or whose file
is gone), from the lab's name prefix. Safe to run any number of times.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from lab import GATEWAY_RUN, NETNS_ETC, PREFIX, STATE_DIR, WIREGUARD_RUN, netns
from lab.state import State, created_host_dirs, load
from lab.topology import PROBE_INTERFACE

KILL_GRACE = 3.0


def _interfaces_of(etc: Path) -> set[str]:
    # A gateway's wg-quick configs name its interfaces, even when the state file is gone.
    wireguard = etc / "wireguard"
    return {p.stem for p in wireguard.glob("*.conf")} if wireguard.is_dir() else set()


def _stop(pids: list[int]) -> None:
    """SIGTERM first (wireguard-go then removes its socket), SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + KILL_GRACE
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if _running(pid)]
            time.sleep(0.05)
        pids = alive
        if not pids:
            return


def _running(pid: int) -> bool:
    # Reap our own children; for anything else, existence is what counts.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def _remove_stale_socket(interface: str) -> None:
    """Removes /var/run/wireguard/<iface>.sock only if no process listens on it any more.

    The directory is shared with the host: a live socket may be someone else's.
    """
    path = WIREGUARD_RUN / f"{interface}.sock"
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError as error:
            if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
                path.unlink(missing_ok=True)
            return


def teardown() -> list[str]:
    """Removes the lab; returns what was removed, for the user."""
    loaded = load()
    state = loaded or State()
    namespaces = sorted(
        {ns for ns in state.namespaces if ns.startswith(PREFIX)}
        | {ns for ns in netns.list_namespaces() if ns.startswith(PREFIX)}
    )
    etc_dirs = {Path(d) for d in state.etc_dirs if Path(d).parent == NETNS_ETC}
    if NETNS_ETC.is_dir():
        etc_dirs |= set(NETNS_ETC.glob(f"{PREFIX}*"))
    interfaces = set(state.interfaces) | {PROBE_INTERFACE}
    for etc in etc_dirs:
        interfaces |= _interfaces_of(etc)

    removed: list[str] = []
    present = set(netns.list_namespaces())
    pids = [pid for ns in namespaces if ns in present for pid in netns.namespace_pids(ns)]
    # The lab's long-running processes first (the controller would otherwise go on
    # changing the VPC routers while they go); only while they still run in a lab
    # namespace: a recorded pid whose process died (a host failure) may be reused.
    recorded = {entry.split()[-1] for entry in state.daemons}
    daemons = [pid for pid in pids if str(pid) in recorded]
    if daemons:
        _stop(daemons)
    if pids:
        _stop(pids)
        removed.append(f"{len(pids)} processes")
    for ns in namespaces:
        if ns in present:
            netns.delete_namespace(ns)
            removed.append(ns)
    # Not expected (links are created inside the namespaces), but a crash between
    # steps of a future change must not leave one on the host.
    for line in netns.run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":", 2)
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        if name.startswith(PREFIX):
            netns.run(["ip", "link", "del", name], check=False)
            removed.append(f"link {name}")
    for interface in sorted(interfaces):
        _remove_stale_socket(interface)
    for etc in sorted(etc_dirs):
        if etc.is_dir() and etc.name.startswith(PREFIX):
            shutil.rmtree(etc)
            removed.append(str(etc))
    # Host directories go only if this lab recorded making them, and only once empty.
    # Without a record nobody knows who made them (another tool, an earlier lab on a
    # machine that also runs other namespaces), so they stay: the lab touches only what
    # it made.
    recorded = created_host_dirs()
    for created, directory in (
        (state.created_netns_etc, NETNS_ETC),
        (state.created_wireguard_run, WIREGUARD_RUN),
        (False, GATEWAY_RUN),  # only if recorded: a lab with two gateways per site made it
    ):
        if (
            (created or str(directory) in recorded)
            and directory.is_dir()
            and not any(directory.iterdir())
        ):
            directory.rmdir()
    if STATE_DIR.is_dir():
        shutil.rmtree(STATE_DIR)
    return removed
