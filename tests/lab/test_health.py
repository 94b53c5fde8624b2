"""Tunnel health in the lab: the gateway's real probe publishes to the lab's CloudWatch
(moto), and the alarm rule of core.health (the one the Pulumi alarm is built from) is
evaluated over what it published, with the period shortened to the probe's interval.

Figures (detection and recovery times) are printed (run with -s) and recorded.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core import health
from core.facts import PROBE_PATH
from lab import aws, netns
from lab.build import sbin_dir
from lab.checks import wait_for_reply
from lab.day2 import apply, check
from lab.faults import wireguard_go_pids
from lab.health import ProbeTimer, alarm_state, notifications, samples
from lab.lifecycle import Lab
from lab.topology import Site

pytestmark = pytest.mark.lab

# Seconds between probe runs (60 on AWS): long enough for a failing probe's pings (3 s).
INTERVAL = 4.0


@pytest.fixture(scope="module")
def lab(dev_lab: Lab) -> Lab:
    return dev_lab  # the shared lab, as built (tests/lab/conftest.py)


def wait_for(condition: Callable[[], Any], timeout: float, step: float = 0.5) -> float | None:
    """Seconds until `condition()` is true, or None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(step)
    return None


def up_values(site: Site, since: float) -> list[float]:
    return [value for _, value in samples(site, health.TUNNEL_UP, since)]


def state_now(site: Site, since: float) -> str:
    points = samples(site, health.TUNNEL_UP, since)
    return alarm_state(health.TUNNEL_DOWN, points, INTERVAL, time.time())


def kill_wireguard(site: Site) -> None:
    for pid in wireguard_go_pids(site):
        os.kill(pid, signal.SIGKILL)


def restore(lab: Lab, site: Site) -> None:
    assert apply(lab, site).returncode == 0
    a1, b1 = lab.topology.sites[0].hosts[0], lab.topology.sites[1].hosts[0]
    assert wait_for_reply(a1.namespace, str(b1.address.ip), timeout=20) is not None


def test_a_healthy_tunnel_reports_up_and_its_alarm_is_ok(lab: Lab, record_property: Any) -> None:
    alpha = lab.topology.sites[0]
    since = time.time()
    with ProbeTimer(lab, alpha, INTERVAL) as probe:
        assert wait_for(lambda: len(up_values(alpha, since)) >= 4, timeout=60) is not None
        state = state_now(alpha, since)
    ups = up_values(alpha, since)
    ages = [value for _, value in samples(alpha, health.HANDSHAKE_AGE, since)]
    print(f"healthy: TunnelUp {ups}, handshake ages {ages}, alarm {state}")
    record_property("healthy", f"TunnelUp {ups}; ages {ages}; {state}")
    assert set(ups) == {1.0}, probe.outputs
    assert ages and all(age <= health.HANDSHAKE_STALE_SECONDS for age in ages)
    assert state == "OK"


def test_a_dead_peer_sets_tunnel_up_to_0_and_the_alarm_fires_then_clears(
    lab: Lab, record_property: Any
) -> None:
    alpha, beta = lab.topology.sites
    since = time.time()
    with ProbeTimer(lab, alpha, INTERVAL):
        assert wait_for(lambda: len(up_values(alpha, since)) >= 2, timeout=30) is not None
        kill_wireguard(beta)
        killed = time.time()
        zero = wait_for(lambda: 0.0 in up_values(alpha, killed), timeout=6 * INTERVAL)
        alarm = wait_for(lambda: state_now(alpha, since) == "ALARM", timeout=10 * INTERVAL)
        restore(lab, beta)
        ok = wait_for(lambda: state_now(alpha, since) == "OK", timeout=15 * INTERVAL)
    figure = (
        f"peer killed: TunnelUp 0 after {zero} s, alarm ALARM after {alarm} s;"
        f" restored: alarm OK after {ok} s (probe every {INTERVAL:g} s)"
    )
    print(figure)
    record_property("detection", figure)
    assert zero is not None and zero <= 3 * INTERVAL
    assert alarm is not None
    assert ok is not None


def test_a_deleted_interface_is_brought_back_by_the_probe(lab: Lab, record_property: Any) -> None:
    alpha = lab.topology.sites[0]
    a1, b1 = alpha.hosts[0], lab.topology.sites[1].hosts[0]
    since = time.time()
    with ProbeTimer(lab, alpha, INTERVAL) as probe:
        assert wait_for(lambda: len(up_values(alpha, since)) >= 1, timeout=30) is not None
        netns.ns_run(alpha.gateway.namespace, ["ip", "link", "del", alpha.interface])
        back = wait_for(
            lambda: (
                netns.ns_run(
                    alpha.gateway.namespace, ["wg", "show", alpha.interface], check=False
                ).returncode
                == 0
            ),
            timeout=4 * INTERVAL,
        )
    flowing = wait_for_reply(a1.namespace, str(b1.address.ip), timeout=15)
    figure = f"interface deleted: back after {back} s, traffic after {flowing} s more"
    print(figure)
    record_property("recovery", figure)
    assert any("is missing; running" in output for output in probe.outputs), probe.outputs
    assert back is not None and back <= 2 * INTERVAL + 5  # the apply itself takes ~1 s
    assert flowing is not None


def test_negative_control_byte_counters_as_liveness_miss_a_dead_peer(
    lab: Lab, record_property: Any
) -> None:
    """AWS's advice, shown: counters keep moving (keepalives, retries) with no peer."""
    alpha, beta = lab.topology.sites
    script = sbin_dir(alpha.gateway.namespace) / Path(PROBE_PATH).name
    original = script.read_text()
    anchor = 'add_tunnel_up "$name" "$up"'
    assert anchor in original
    script.write_text(
        original.replace(anchor, f'up=0; [ "${{tx:-0}}" -gt 0 ] && up=1\n{anchor}', 1)
    )
    try:
        since = time.time()
        with ProbeTimer(lab, alpha, INTERVAL):
            assert wait_for(lambda: len(up_values(alpha, since)) >= 2, timeout=30) is not None
            kill_wireguard(beta)
            killed = time.time()
            missed = wait_for(lambda: 0.0 in up_values(alpha, killed), timeout=4 * INTERVAL)
            values = up_values(alpha, killed)
    finally:
        script.write_text(original)
        restore(lab, beta)
    print(f"negative control (bytes as liveness): TunnelUp after the kill {values}")
    record_property("negative control", f"{values}")
    assert missed is None, "a byte-counter probe should not have noticed the dead peer"


def test_source_dest_check_on_is_reported_down_with_the_reason(
    lab: Lab, record_property: Any
) -> None:
    """The probe and the check read the interface's check from the lab's EC2 (moto)."""
    alpha = lab.topology.sites[0]
    since = time.time()
    try:
        with ProbeTimer(lab, alpha, INTERVAL) as probe:
            assert wait_for(lambda: len(up_values(alpha, since)) >= 1, timeout=30) is not None
            eni = aws.set_source_dest_check(alpha, True)
            turned = time.time()
            zero = wait_for(lambda: 0.0 in up_values(alpha, turned), timeout=4 * INTERVAL)
            checked = check(lab, alpha)
            aws.set_source_dest_check(alpha, False)
            restored = time.time()
            one = wait_for(lambda: 1.0 in up_values(alpha, restored), timeout=4 * INTERVAL)
    finally:
        aws.set_source_dest_check(alpha, False)
    figure = f"source/dest check on: TunnelUp 0 after {zero} s; off again: 1 after {one} s"
    print(figure)
    record_property("source/dest check", figure)
    reason = f"tunnel down: source/dest check is on for {eni}: the VPC drops forwarded packets"
    assert any(reason in output for output in probe.outputs), probe.outputs
    assert zero is not None and one is not None
    flags = [value for _, value in samples(alpha, health.SOURCE_DEST_CHECK, since)]
    assert 1.0 in flags and flags[0] == 0.0
    # verify's check fails naming it, while its ping across the tunnel still answers.
    assert checked.returncode == 1
    lines = checked.stdout.splitlines()
    assert any(line.startswith("check ping ok") for line in lines), lines
    assert (
        f"check source-dest-check FAILED source/dest check on for {eni}: "
        "the VPC drops forwarded packets"
    ) in lines


def test_silence_pages_only_for_a_gateway_that_reported(lab: Lab, record_property: Any) -> None:
    """The not-reporting rule over what the lab's CloudWatch holds: a gateway that stops
    reporting pages within 3 periods; a new instance that never reported pages no one."""
    alpha = lab.topology.sites[0]
    created = time.time()
    with ProbeTimer(lab, alpha, INTERVAL):
        assert wait_for(lambda: len(up_values(alpha, created)) >= 3, timeout=40) is not None
    stopped = time.time()

    def sent(instance_id: str | None = None) -> list[health.Notification]:
        points = samples(alpha, health.TUNNEL_UP, created, instance_id)
        found = notifications(health.NOT_REPORTING, points, INTERVAL, created, time.time())
        found += notifications(health.TUNNEL_DOWN, points, INTERVAL, created, time.time())
        return [n for n in found if n.alert]

    paged = wait_for(lambda: sent() != [], timeout=6 * INTERVAL)
    detected = time.time()
    alerts = sent()
    last = max(t for t, _ in samples(alpha, health.TUNNEL_UP, created))
    # A replacement's alarm (another instance id) over the same minutes: nothing.
    never = sent("i-0replacement0000000")
    missed = detected - last - INTERVAL  # since the first report that did not come
    figure = (
        f"probe stopped: not-reporting alert {detected - stopped:.1f} s after the stop, "
        f"{missed:.1f} s after the first missed report (period {INTERVAL:g} s; {alerts}); "
        f"a never-reported instance: {len(never)} alerts"
    )
    print(figure)
    record_property("silence", figure)
    assert paged is not None
    # Within 3 periods of the first missed report (3 minutes on AWS), plus the lab's
    # polling (each look at the samples takes about a second).
    assert missed <= 3 * INTERVAL + 2.0
    assert [(n.old, n.new) for n in alerts] == [("OK", "INSUFFICIENT_DATA")]
    assert never == []
    assert stopped > created
