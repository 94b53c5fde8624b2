"""Day 2 in the lab: changes applied in place under a continuous ping (10/s), loss counted.

Each test changes the dev stack's config, plans it, and applies it as `pulumi up` would
(lab.day2.push: the SSM parameters, then both gateways' own apply scripts), then puts the
original back. Figures are printed (run with -s) and recorded as test properties.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.facts import APPLY_PATH
from core.keys import public_key
from lab import LabError, aws, netns
from lab.build import gateway_run, in_etc, put_parameters, sbin_dir
from lab.checks import ping
from lab.day2 import Applied, ContinuousPing, apply, check, push
from lab.lifecycle import Lab
from lab.topology import Site
from plan.engine import run_program
from tests.conftest import planned, stack_config

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(dev_lab: Lab) -> Lab:
    return dev_lab  # the shared lab, as built (tests/lab/conftest.py)


@pytest.fixture
def baseline(lab: Lab) -> Iterator[None]:
    """Whatever a test pushes, the next one starts from the shipped dev stack again."""
    yield
    _, results = push(lab, planned("dev"))
    assert all(r.returncode == 0 for r in results), [r.output for r in results]


def changed(edit: Callable[[dict[str, Any]], None]) -> Any:
    config = stack_config("dev")
    edit(config)
    return run_program("dev", config)


def under_ping(lab: Lab, action: Callable[[], Any]) -> tuple[Any, int, int]:
    a1, b1 = lab.topology.sites[0].hosts[0], lab.topology.sites[1].hosts[0]
    pinger = ContinuousPing(a1.namespace, str(b1.address.ip))
    try:
        # The change's loss, not a cold path's: the first reply before the change starts
        # (an idle tunnel's session may need a handshake first). No reply in 5 s: the
        # change goes ahead and every unanswered ping counts.
        deadline = time.monotonic() + 5.0
        while pinger.newest_answered() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        result = action()
    finally:
        sent, lost = pinger.stop()
    return result, sent, lost


def report(record_property: Any, what: str, sent: int, lost: int) -> None:
    line = f"{what}: {lost} of {sent} pings lost ({lost * 0.1:.1f} s of traffic at 10/s)"
    print(line)
    record_property(what, line)


def ok(results: list[Applied]) -> None:
    assert [r.returncode for r in results] == [0, 0], [r.output for r in results]


def chain(site: Site) -> list[str]:
    saved = netns.ns_run(site.gateway.namespace, ["iptables-save", "-t", "filter"]).stdout
    return [line for line in saved.splitlines() if line.startswith(f"-A s2s-fw-{site.interface}")]


def forward(site: Site) -> list[str]:
    saved = netns.ns_run(site.gateway.namespace, ["iptables-save", "-t", "filter"]).stdout
    return [line for line in saved.splitlines() if line.startswith("-A FORWARD")]


def wg(site: Site, *args: str) -> str:
    return netns.ns_run(site.gateway.namespace, ["wg", "show", site.interface, *args]).stdout


SYSLOG = {"description": "no syslog", "protocol": "udp", "port": 514, "action": "drop"}


def test_firewall_rules_are_added_changed_and_removed_without_loss(
    lab: Lab, baseline: None, record_property: Any
) -> None:
    alpha, beta = lab.topology.sites
    # Someone else's rule in the same built-in chain: never touched.
    netns.ns_run(
        beta.gateway.namespace, ["iptables", "-A", "FORWARD", "-s", "192.0.2.99", "-j", "DROP"]
    )
    foreign = [line for line in forward(beta) if "192.0.2.99" in line]
    steps = {
        "add": lambda c: c["firewall"].append(dict(SYSLOG)),
        "change": lambda c: c["firewall"].append({**SYSLOG, "port": 515}),
        "remove": lambda c: None,
    }
    for step, edit in steps.items():
        plan = changed(edit)
        (topology, results), sent, lost = under_ping(lab, functools.partial(push, lab, plan))
        ok(results)
        assert all("applied in place" in r.output for r in results)
        report(record_property, f"firewall {step}", sent, lost)
        assert lost == 0
        for site, new in zip((alpha, beta), topology.sites, strict=True):
            wanted = [rule.firewall for rule in new.facts.rules if rule.firewall]
            rules = chain(site)
            # Exactly the configured set, in order, each once.
            assert len(rules) == len(wanted), rules
            for rule, firewall in zip(rules, wanted, strict=True):
                assert f"-p {firewall.protocol}" in rule
                assert f"--dport {firewall.port}" in rule
        assert [line for line in forward(beta) if "192.0.2.99" in line] == foreign
        # Pings still in flight at the end are not counted as lost: the check is the
        # proof that the tunnel carries traffic after the change.
        assert all(check(lab, site).returncode == 0 for site in (alpha, beta))
        jumps = [line for line in forward(beta) if "s2s-fw-" in line]
        assert jumps == [f"-A FORWARD -i {beta.interface} -j s2s-fw-{beta.interface}"]


def test_keepalive_change_applies_without_loss(
    lab: Lab, baseline: None, record_property: Any
) -> None:
    plan = changed(lambda c: c["tunnel"].update(persistentKeepalive=10))
    (_, results), sent, lost = under_ping(lab, lambda: push(lab, plan))
    ok(results)
    report(record_property, "keepalive 25 -> 10", sent, lost)
    assert lost == 0
    for site in lab.topology.sites:
        assert wg(site, "persistent-keepalive").split()[-1] == "10"
        assert check(lab, site).returncode == 0


def test_key_rotation_replaces_both_keys_in_place(
    lab: Lab, baseline: None, record_property: Any
) -> None:
    before = {site.name: wg(site, "public-key").strip() for site in lab.topology.sites}
    key_files = {
        site.name: hashlib.sha256(
            in_etc(site.gateway.namespace, site.facts.key_path).read_bytes()
        ).hexdigest()
        for site in lab.topology.sites
    }
    plan = changed(lambda c: c["tunnel"].update(keyGeneration=2))
    (topology, results), sent, lost = under_ping(lab, lambda: push(lab, plan))
    ok(results)
    report(record_property, "key rotation (keyGeneration 1 -> 2)", sent, lost)
    for site, new in zip(lab.topology.sites, topology.sites, strict=True):
        now = wg(site, "public-key").strip()
        assert now != before[site.name]
        assert now == public_key(new.gateway.private_key)
        key_file = in_etc(site.gateway.namespace, site.facts.key_path).read_bytes()
        # The old key is gone from the gateway: its file holds the new one.
        assert hashlib.sha256(key_file).hexdigest() != key_files[site.name]
        assert check(lab, site).returncode == 0, check(lab, site).stdout
    assert lost <= 50, "a rotation should cost under 5 s of traffic"


def test_mtu_change_restarts_and_the_new_mtu_carries_df_packets(
    lab: Lab, baseline: None, record_property: Any
) -> None:
    plan = changed(lambda c: c["tunnel"].update(mtu=1380))
    (_, results), sent, lost = under_ping(lab, lambda: push(lab, plan))
    ok(results)
    assert all("restarted" in r.output for r in results)
    report(record_property, "MTU 1420 -> 1380 (restart)", sent, lost)
    alpha = lab.topology.sites[0]
    link = netns.ns_run(alpha.gateway.namespace, ["ip", "link", "show", alpha.interface]).stdout
    assert " mtu 1380 " in link
    a1, b1 = alpha.hosts[0], lab.topology.sites[1].hosts[0]
    fits = ping(a1.namespace, str(b1.address.ip), count=3, size=1380 - 28, dont_fragment=True)
    assert fits.received == 3


def test_tunnel_cidr_change_restarts_and_the_probe_and_check_follow(
    lab: Lab, baseline: None, record_property: Any
) -> None:
    # Nothing of the tunnel's addresses is in the user data: the apply restarts wg-quick
    # with the new Address and writes the peer's new address for the probe and the check.
    plan = changed(lambda c: c["tunnel"].update(cidr="10.254.0.4/30"))
    (_, results), sent, lost = under_ping(lab, lambda: push(lab, plan))
    ok(results)
    assert all("restarted" in r.output for r in results)
    report(record_property, "tunnel cidr 10.255.255.0/31 -> 10.254.0.4/30 (restart)", sent, lost)
    for site, mine, peer in zip(
        lab.topology.sites, ("10.254.0.5", "10.254.0.6"), ("10.254.0.6", "10.254.0.5"), strict=True
    ):
        shown = netns.ns_run(site.gateway.namespace, ["ip", "-4", "addr", "show", site.interface])
        assert f"inet {mine}/30 " in shown.stdout
        (other,) = site.facts.peers
        peers = in_etc(site.gateway.namespace, site.facts.peer_path).read_text()
        assert peers == f"{other.name} {peer}\n"
        checked = check(lab, site)
        assert checked.returncode == 0, checked.stdout
        assert f"check ping ok {other.name} {peer} " in checked.stdout


def _put_desired_state(site: Site, edit: Callable[[dict[str, str]], None]) -> None:
    name = site.facts.desired_state_parameter_name
    _, value = site.gateway.parameters[name]
    state = json.loads(value)
    edit(state)
    aws.put_parameters(
        [
            {
                "region": site.facts.site.aws_region,
                "name": name,
                "type": "String",
                "value": json.dumps(state),
            }
        ]
    )


def test_a_broken_config_is_refused_and_the_tunnel_keeps_running(
    lab: Lab, baseline: None, record_property: Any
) -> None:
    alpha = lab.topology.sites[0]
    conf = in_etc(alpha.gateway.namespace, alpha.facts.config_path)
    before = conf.read_text()
    _put_desired_state(alpha, lambda s: s.update(config=s["config"].replace("/16\n", "/99\n", 1)))
    result, sent, lost = under_ping(lab, lambda: apply(lab, alpha))
    report(record_property, "broken config pushed to alpha", sent, lost)
    assert result.returncode == 1
    lines = result.output.splitlines()
    assert len(lines) == 1 and "desired config rejected, nothing changed" in lines[0]
    assert "AllowedIPs" in lines[0]
    assert lost == 0
    assert conf.read_text() == before


def test_a_config_that_fails_to_come_up_is_rolled_back(
    lab: Lab, baseline: None, record_property: Any
) -> None:
    alpha = lab.topology.sites[0]
    conf = in_etc(alpha.gateway.namespace, alpha.facts.config_path)
    before = conf.read_text()
    # Valid on paper, fails at `wg-quick up`: a restart (new MTU) with a failing hook.
    _put_desired_state(
        alpha,
        lambda s: s.update(
            config=s["config"].replace("MTU = 1420\n", "MTU = 1380\nPostUp = false\n")
        ),
    )
    result, sent, lost = under_ping(lab, lambda: apply(lab, alpha))
    report(record_property, "config that fails to come up, rolled back", sent, lost)
    assert result.returncode == 1
    assert result.output.splitlines()[-1].endswith(
        "the new config did not come up; the previous one is restored"
    )
    assert conf.read_text() == before
    assert check(lab, alpha).returncode == 0


def test_apply_waits_for_the_lock(lab: Lab, baseline: None) -> None:
    alpha = lab.topology.sites[0]
    lock = Path(f"/run/{Path(APPLY_PATH).name}-{alpha.interface}.lock")
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LabError, match="did not finish within"):
            gateway_run(alpha, lab.state, [APPLY_PATH], timeout=4)
    # Released: it runs.
    assert apply(lab, alpha).returncode == 0


def test_negative_control_an_apply_without_the_key_feed_is_caught(
    lab: Lab, baseline: None, record_property: Any
) -> None:
    """The ceph bug: an apply that hands WireGuard a config without the private key (wg-quick
    strip drops the PostUp that loads it) clears the key and cuts the peer. Here the apply
    gives `wg set` /dev/null for the key file."""
    alpha = lab.topology.sites[0]
    script = sbin_dir(alpha.gateway.namespace) / Path(APPLY_PATH).name
    original = script.read_text()
    feed = 'print "private-key"; print key'
    assert feed in original
    script.write_text(original.replace(feed, 'print "private-key"; print "/dev/null"'))
    try:
        plan = changed(lambda c: c["firewall"].append(dict(SYSLOG)))
        (_, results), sent, lost = under_ping(lab, lambda: push(lab, plan))
        report(record_property, "negative control: no key feed", sent, lost)
        caught = results[0].returncode != 0 or lost > 0 or check(lab, alpha).returncode != 0
        assert caught, "an apply that drops the private key went unnoticed"
    finally:
        script.write_text(original)
        put_parameters(lab.topology)
    # With the real script the gateway heals.
    assert apply(lab, alpha).returncode == 0
