"""What must hold before the lab touches anything: root, namespaces, tools, a clean slate."""

from __future__ import annotations

import os
import shutil

from lab import LabError, netns
from lab.build import leftovers

# wireguard-go is needed only without a kernel module; the build checks that itself.
REQUIRED = (
    "ip",
    "iptables",
    "iptables-save",
    "iptables-restore",
    "nft",
    "sysctl",
    "wg",
    "wg-quick",
    "ping",
    "mtr",
    "iperf3",
)


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (network namespaces, iptables, /etc/netns): run it as root"
        )


def require_tools() -> None:
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"required program(s) not found: {', '.join(missing)}"
            " (make deps installs them on Debian)"
        )


def require_netns() -> None:
    if not netns.has_namespace_support():
        raise LabError("this kernel has no network namespace support (/proc/self/ns/net)")


def require_clean() -> None:
    found = leftovers()
    if found:
        shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
        raise LabError(f"a lab is already up or an earlier run left {shown}: run `make lab-down`")


def preflight() -> None:
    require_root()
    require_netns()
    require_tools()
    require_clean()
