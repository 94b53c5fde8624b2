"""Thin wrappers over ip, iptables, nft and sysctl, always aimed at one of the lab's
namespaces and always with an argument list and a timeout."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from lab import PREFIX, STATE_DIR, WIREGUARD_RUN, LabError

DEFAULT_TIMEOUT = 20.0
# Only what the tools need: a caller's LOG_LEVEL would make wireguard-go keep our
# pipes open after it daemonizes, and a caller's locale would change tool output.
_BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(_BASE_ENV)
    env["PATH"] = os.environ.get("PATH", env["PATH"])
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs a command; on failure raises LabError naming the command and its last line."""
    try:
        result = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(env),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout:g} s") from None
    except FileNotFoundError:
        raise LabError(f"required program {argv[0]!r} is not installed") from None
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit status {result.returncode}"
        raise LabError(f"`{' '.join(argv)}` failed: {last}")
    return result


def stop(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Ends a background process politely, then firmly; never leaves a zombie."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _own(namespace: str) -> str:
    # Every command below changes a namespace; refusing anything without our prefix
    # makes it impossible to point one at the host's network by mistake.
    if not namespace.startswith(PREFIX):
        raise ValueError(f"refusing to touch namespace {namespace!r}: not the lab's")
    return namespace


def wireguard_run_dir(namespace: str) -> Path:
    """A gateway's own /var/run/wireguard (see in_ns)."""
    return STATE_DIR / _own(namespace) / "wireguard"


def give_own_wireguard_run(namespace: str) -> Path:
    """From now on every command the lab runs in `namespace` sees its own
    /var/run/wireguard. wireguard-go and wg(8) find an interface by its socket there
    (/var/run/wireguard/<iface>.sock), and that directory is not per network namespace:
    two gateways with the same interface name (wg0 at every site) would share one socket
    path, the second wireguard-go taking the first one's name."""
    WIREGUARD_RUN.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory = wireguard_run_dir(namespace)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def in_ns(namespace: str, argv: Sequence[str]) -> list[str]:
    """`ip netns exec`: the command runs in a mount namespace of its own (ip unshares
    one, and /etc/netns/<ns>/ is bind-mounted over /etc there), so a gateway's private
    /var/run/wireguard is bind-mounted for that command alone, and is gone with it."""
    own = wireguard_run_dir(namespace)
    if own.is_dir():
        script = f'mount --bind "$0" {WIREGUARD_RUN} && exec "$@"'
        return ["ip", "netns", "exec", namespace, "sh", "-c", script, str(own), *argv]
    return ["ip", "netns", "exec", _own(namespace), *argv]


def ns_run(
    namespace: str,
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return run(in_ns(namespace, argv), timeout=timeout, check=check, input_text=input_text, env=env)


def list_namespaces() -> list[str]:
    result = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def add_namespace(namespace: str) -> None:
    run(["ip", "netns", "add", _own(namespace)])
    ip_batch(namespace, ["link set lo up"])


def delete_namespace(namespace: str) -> None:
    run(["ip", "netns", "del", _own(namespace)], check=False)


def ip_batch(namespace: str, commands: Iterable[str]) -> None:
    """`ip -n NS -batch -`: one process for many changes; stops at the first error."""
    text = "".join(f"{command}\n" for command in commands)
    if text:
        run(["ip", "-n", _own(namespace), "-batch", "-"], input_text=text)


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int) -> None:
    """A veth pair created directly inside the two namespaces, never in the host's."""
    run(
        [
            "ip",
            "link",
            "add",
            "name",
            name_a,
            "netns",
            _own(ns_a),
            "mtu",
            str(mtu),
            "type",
            "veth",
            "peer",
            "name",
            name_b,
            "netns",
            _own(ns_b),
            "mtu",
            str(mtu),
        ]
    )


def sysctl(namespace: str, settings: Mapping[str, str]) -> None:
    ns_run(namespace, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())])


def iptables_restore(namespace: str, rules: str) -> None:
    # --noflush: only adds, so the tables other parts of the lab wrote stay.
    ns_run(namespace, ["iptables-restore", "--noflush"], input_text=rules)


def iptables_rule_count(namespace: str) -> int:
    saved = ns_run(namespace, ["iptables-save"]).stdout
    return sum(1 for line in saved.splitlines() if line.startswith("-A"))


def nft_apply(namespace: str, ruleset: str) -> None:
    ns_run(namespace, ["nft", "-f", "-"], input_text=ruleset)


def namespace_pids(namespace: str) -> list[int]:
    result = run(["ip", "netns", "pids", _own(namespace)], check=False)
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def has_namespace_support() -> bool:
    return os.path.exists("/proc/self/ns/net")
