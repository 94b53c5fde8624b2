"""Faults on a running dev lab: the tunnel comes back and data arrives intact."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from lab import netns
from lab.checks import DATA_PORT, send, transfer_check, wait_for_reply
from lab.faults import crash_and_recover, internet_loss, restart_gateway, wg_quick
from tests.lab.support import b1_services

pytestmark = pytest.mark.lab

SIZE = 50 * 1024 * 1024
# Slow enough that the transfer is still running when the gateway restarts.
RATE = 10 * 1024 * 1024


def _transfer_across(dev_lab, fault) -> tuple[float, str]:
    """Starts a 50 MB transfer a1->b1, applies `fault` to alpha's gateway a second in,
    returns (seconds until a1->b1 answers again, the transfer's report line)."""
    alpha, beta = dev_lab.topology.sites
    a1, b1 = alpha.hosts[0], beta.hosts[0]
    result: dict[str, Any] = {}
    with b1_services(dev_lab):
        sender = threading.Thread(
            target=lambda: result.update(
                send(a1.namespace, str(b1.address.ip), DATA_PORT, SIZE, rate=RATE, timeout=90)
            )
        )
        sender.start()
        time.sleep(1.0)
        started = time.monotonic()
        fault(alpha)
        back = wait_for_reply(a1.namespace, str(b1.address.ip), timeout=15)
        recovered = time.monotonic() - started if back is not None else None
        sender.join(timeout=100)
    assert not sender.is_alive(), "the transfer did not finish"
    check = transfer_check("transfer across the fault", result, SIZE)
    assert recovered is not None and recovered < 10, "the tunnel did not come back"
    print(f"tunnel back {recovered:.2f} s after the fault began; {check.line()}")
    assert check.ok, check.line()
    return recovered, check.line()


def test_restart_gateway_during_transfer(dev_lab, record_property):
    recovered, line = _transfer_across(dev_lab, lambda site: restart_gateway(site, dev_lab.state))
    record_property("wg-quick down/up", f"back in {recovered:.2f} s; {line}")


def test_kill_wireguard_go_during_transfer(dev_lab, record_property):
    if dev_lab.state.implementation != "wireguard-go":
        pytest.skip("the kernel has WireGuard: there is no wireguard-go to kill")
    statuses = []

    def fault(site):
        statuses.append(crash_and_recover(site, dev_lab.state))

    recovered, line = _transfer_across(dev_lab, fault)
    print(f"wg-quick down after kill -9 exited {statuses[0]} (interface already gone)")
    record_property("kill -9 wireguard-go", f"back in {recovered:.2f} s; {line}")


def test_transfer_survives_ten_percent_loss(dev_lab, record_property):
    alpha, beta = dev_lab.topology.sites
    a1, b1 = alpha.hosts[0], beta.hosts[0]
    with b1_services(dev_lab), internet_loss(dev_lab.topology, 0.1):
        result = send(a1.namespace, str(b1.address.ip), DATA_PORT, SIZE, timeout=180)
        dropped = netns.ns_run(
            dev_lab.topology.internet_namespace, ["iptables", "-L", "FORWARD", "-v", "-n", "-x"]
        ).stdout
    check = transfer_check("transfer with 10% loss", result, SIZE)
    statistic = next(line for line in dropped.splitlines() if "statistic" in line)
    print(f"{check.line()}; dropped on the internet: {statistic.split()[0]} packets")
    record_property("10% loss", check.line())
    assert check.ok, check.line()


def test_twenty_restarts_leave_the_rules_unchanged(dev_lab, record_property):
    alpha = dev_lab.topology.sites[0]
    before = netns.iptables_rule_count(alpha.gateway.namespace)
    started = time.monotonic()
    for _ in range(20):
        wg_quick(alpha, dev_lab.state, "down")
        wg_quick(alpha, dev_lab.state, "up")
    elapsed = time.monotonic() - started
    after = netns.iptables_rule_count(alpha.gateway.namespace)
    figure = (
        f"iptables rules in {alpha.gateway.namespace}: {before} before,"
        f" {after} after 20 cycles ({elapsed:.1f} s)"
    )
    print(figure)
    record_property("20 cycles", figure)
    # Each rule in the interface's own chains, plus one jump into each chain.
    assert before == len(alpha.facts.rules) + len(alpha.facts.jumps)
    assert after == before
    a1, b1 = alpha.hosts[0], dev_lab.topology.sites[1].hosts[0]
    assert wait_for_reply(a1.namespace, str(b1.address.ip), timeout=15) is not None
