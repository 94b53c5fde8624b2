"""The health probe, run with sh against moto, with fake wg, ping and apply on PATH."""

from __future__ import annotations

import datetime
import functools
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from core import health
from core.config import load_stack_config
from core.facts import PROBE_PATH, PROBE_TIMER_PATH, GatewayFacts, gateway_facts
from core.render import (
    render_apply,
    render_aws_call,
    render_bootstrap,
    render_check,
    render_probe,
    render_probe_units,
)
from lab import imds as imds_stand_in
from tests.aws_stand_in import CREDENTIALS, REGION, boto_client, moto_endpoint, script_env
from tests.conftest import stack_config

__all__ = ["moto_endpoint"]  # fixture
MAC = "0e:12:34:56:78:9a"

# The gateway's peers: beta (an AWS site) and an office behind NAT, which dials in (its
# peers have no Endpoint for it: until it does, it has no handshake).
PEERS = ("beta", "office")
PEER_KEYS = {
    "beta": "cGVlci1wdWJsaWMta2V5LWZvci10aGUtcHJvYmUtdGVzdA=",
    "office": "b2ZmaWNlLXB1YmxpYy1rZXktZm9yLXRoZS1wcm9iZXM=",
}
OFFICE_PUBLIC_KEY = "T2ZmaWNlUHVibGljS2V5Rm9yVGhlUHJvYmVUZXN0cyE="


def probe_config() -> dict[str, Any]:
    config = stack_config("dev")
    config["tunnel"]["cidr"] = "10.255.255.0/29"
    config["sites"].append(
        {
            "name": "office",
            "cidr": "192.168.10.0/24",
            "interface": "wg0",
            "external": {"publicKey": OFFICE_PUBLIC_KEY, "sourceCidr": "198.51.100.0/28"},
        }
    )
    return config


FAKE_WG = """#!/bin/sh
# wg show IFACE [allowed-ips|latest-handshakes|transfer], from files the test writes.
[ -e "$FAKE/missing" ] && { echo "Unable to access interface: No such device" >&2; exit 1; }
[ "$1 $2" = "show $WANT_IFACE" ] || { echo "unexpected: $*" >&2; exit 3; }
case "$3" in
    "") exit 0 ;;
    allowed-ips | latest-handshakes | transfer) cat "$FAKE/wg.$3" ;;
    *) exit 3 ;;
esac
"""
FAKE_PING = """#!/bin/sh
echo "$*" >> "$FAKE/ping.args"
for target; do :; done
if [ -e "$FAKE/ping-fails" ] || [ -e "$FAKE/ping-fails-$target" ]; then
    echo "3 packets transmitted, 0 received, 100% packet loss, time 2003ms"
    exit 1
fi
echo "3 packets transmitted, 3 received, 0% packet loss, time 402ms"
echo "rtt min/avg/max/mdev = 1.100/1.234/1.400/0.100 ms"
"""
FAKE_APPLY = """#!/bin/sh
echo applied >> "$FAKE/applied"
rm -f "$FAKE/missing"
"""


@dataclass
class Gateway:
    facts: GatewayFacts
    fake: Path
    env: dict[str, str]
    endpoint: str
    instance_id: str
    eni: str

    def run(self, script: str = "wg-site-to-site-probe") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash" if script.endswith("check") else "sh", str(self.fake / "bin" / script)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def set(self, name: str, value: str | None) -> None:
        path = self.fake / name
        if value is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(value)

    def address(self, peer: str) -> str:
        return str(self.facts.peer(peer).tunnel_address)

    def wg(self, handshakes: dict[str, int], transfer: dict[str, tuple[int, int]]) -> None:
        """What `wg show` says, per peer: latest handshake (unix time, 0: none yet) and
        the byte counters (received, sent)."""
        self.set(
            "wg.allowed-ips",
            "".join(
                f"{PEER_KEYS[p.name]}\t{' '.join(str(n) for n in p.allowed_ips)}\n"
                for p in self.facts.peers
            ),
        )
        self.set(
            "wg.latest-handshakes",
            "".join(f"{PEER_KEYS[name]}\t{handshakes.get(name, 0)}\n" for name in PEERS),
        )
        self.set(
            "wg.transfer",
            "".join(
                f"{PEER_KEYS[name]}\t{rx}\t{tx}\n"
                for name, (rx, tx) in ((n, transfer.get(n, (0, 0))) for n in PEERS)
            ),
        )

    def source_dest_check(self, on: bool) -> None:
        """What the provider bug (terraform-provider-aws#44768) does to the interface."""
        _ec2(self.endpoint).modify_network_interface_attribute(
            NetworkInterfaceId=self.eni, SourceDestCheck={"Value": on}
        )

    def values(
        self, metric: str, stat: str = "Maximum", peer: str = "beta", instance: bool = True
    ) -> list[float]:
        """Every value published for `metric` (one per run: each run is its own period):
        of `peer` if the metric is per peer; TunnelUp of this instance unless not asked."""
        per_instance = metric in health.PER_INSTANCE_METRICS and instance
        dimensions = health.metric_dimensions(
            metric,
            self.facts.stack,
            self.facts.name,
            peer if metric in health.PER_PEER_METRICS else None,
            self.instance_id if per_instance else None,
        )
        now = datetime.datetime.now(datetime.UTC)
        result = boto_client(self.endpoint, "cloudwatch").get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "m",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": health.NAMESPACE,
                            "MetricName": metric,
                            "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                        },
                        "Period": 1,
                        "Stat": stat,
                    },
                }
            ],
            StartTime=now - datetime.timedelta(minutes=5),
            EndTime=now + datetime.timedelta(minutes=1),
            ScanBy="TimestampAscending",
        )
        return list(result["MetricDataResults"][0]["Values"])


@functools.cache
def _ec2(endpoint: str) -> Any:
    """One client per server: making a boto3 client (its service model) costs ~0.3 s."""
    import boto3

    return boto3.Session(
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ).client("ec2", endpoint_url=endpoint)


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@dataclass
class Imds:
    """IMDSv2 on loopback for the module; each test sets the answers of its instance."""

    url: str
    answers: dict[str, str]  # path under /latest/meta-data/ -> value


@pytest.fixture(scope="module")
def imds() -> Iterator[Imds]:
    answers: dict[str, str] = {}

    server = imds_stand_in.server(("127.0.0.1", 0), "imds-token-probe", lambda _client: answers)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Imds(url=f"http://127.0.0.1:{server.server_address[1]}", answers=answers)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def subnet(moto_endpoint: str) -> str:
    """A public subnet in moto's EC2, once: each gateway gets an interface of its own."""
    facts = gateway_facts(load_stack_config(stack_config("dev")), "dev")[0]
    ec2 = _ec2(moto_endpoint)
    vpc = ec2.create_vpc(CidrBlock=str(facts.site.cidr))["Vpc"]["VpcId"]
    created = ec2.create_subnet(VpcId=vpc, CidrBlock=str(facts.layout.public_subnet))
    return str(created["Subnet"]["SubnetId"])


@pytest.fixture
def gateway(tmp_path: Path, moto_endpoint: str, imds: Imds, subnet: str) -> Gateway:
    # A stack of its own, so each test reads only its own metrics from the shared server.
    stack = f"probe-{uuid.uuid4().hex[:8]}"
    facts = gateway_facts(load_stack_config(probe_config()), stack)[0]
    assert facts.site.region == REGION
    assert tuple(peer.name for peer in facts.peers) == PEERS
    # The gateway's standalone interface, in moto's EC2, with the check off as declared.
    ec2 = _ec2(moto_endpoint)
    eni = ec2.create_network_interface(SubnetId=subnet)
    eni_id = eni["NetworkInterface"]["NetworkInterfaceId"]
    ec2.modify_network_interface_attribute(
        NetworkInterfaceId=eni_id, SourceDestCheck={"Value": False}
    )
    # IMDSv2 on loopback: this instance's id, its device-0 MAC and that interface's id.
    instance_id = f"i-{uuid.uuid4().hex[:17]}"
    imds.answers.clear()
    imds.answers.update(
        {
            "instance-id": instance_id,
            "mac": MAC,
            f"network/interfaces/macs/{MAC}/interface-id": eni_id,
        }
    )
    # What the apply writes from the desired state: "name address [target]" per peer.
    (tmp_path / "peers").write_text(
        "".join(f"{peer.name} {peer.tunnel_address}\n" for peer in facts.peers)
    )
    # ... and the names of the peers outside AWS.
    (tmp_path / "outside").write_text(
        "".join(f"{peer.name}\n" for peer in facts.peers if not peer.site.is_aws)
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "wg", FAKE_WG)
    _executable(bin_dir / "ping", FAKE_PING)
    _executable(bin_dir / "wg-site-to-site-apply", FAKE_APPLY)
    _executable(bin_dir / "wg-site-to-site-aws", render_aws_call(facts))
    _executable(bin_dir / "wg-site-to-site-probe", render_probe(facts, 60))
    _executable(bin_dir / "wg-site-to-site-check", render_check(facts))
    env = script_env(
        moto_endpoint,
        WG_S2S_ENDPOINT_EC2=moto_endpoint,
        WG_S2S_IMDS_ENDPOINT=imds.url,
        WG_S2S_PEER_FILE=str(tmp_path / "peers"),
        WG_S2S_OUTSIDE_FILE=str(tmp_path / "outside"),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE=str(tmp_path),
        WANT_IFACE=facts.interface,
        WG_S2S_STATE_DIR=str(tmp_path / "run"),
    )
    g = Gateway(
        facts=facts,
        fake=tmp_path,
        env=env,
        endpoint=moto_endpoint,
        instance_id=instance_id,
        eni=eni_id,
    )
    now = int(time.time())
    g.wg({"beta": now - 20, "office": now - 30}, {"beta": (1000, 2000), "office": (10, 20)})
    return g


def next_second() -> None:
    # Each run lands in its own one-second period, so the test reads one value per run.
    time.sleep(1.05 - (time.time() % 1))


def test_healthy_tunnel_publishes_up_age_and_rtt_per_peer(gateway: Gateway):
    result = gateway.run()

    assert result.returncode == 0, result.stderr
    for peer, handshake in (("beta", 20), ("office", 30)):
        assert gateway.values(health.TUNNEL_UP, peer=peer) == [1.0]
        (age,) = gateway.values(health.HANDSHAKE_AGE, peer=peer)
        assert handshake <= age <= handshake + 5
        assert gateway.values(health.PROBE_RTT, peer=peer) == [1.234]
    pinged = sorted(
        line.split()[-1] for line in (gateway.fake / "ping.args").read_text().splitlines()
    )
    assert pinged == sorted(gateway.address(peer) for peer in PEERS)
    assert gateway.facts.interface in (gateway.fake / "ping.args").read_text().split()
    assert result.stderr == ""
    assert "peer=beta" in result.stdout and "peer=office" in result.stdout
    assert gateway.values(health.SOURCE_DEST_CHECK) == [0.0]


def test_the_probe_publishes_the_metrics_health_describes(gateway: Gateway):
    # What the alarms, the dashboard and the cost estimate rely on (core/health.py).
    assert gateway.run().returncode == 0
    listed = boto_client(gateway.endpoint, "cloudwatch").list_metrics(
        Namespace=health.NAMESPACE,
        Dimensions=[{"Name": health.DIMENSION_STACK, "Value": gateway.facts.stack}],
    )["Metrics"]
    published = {
        (m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
        for m in listed
    }
    stack, site = gateway.facts.stack, gateway.facts.name
    expected = {
        (metric, tuple(sorted(dimensions.items())))
        for metric, dimensions in [
            *(
                (m, health.metric_dimensions(m, stack, site, peer))
                for m in health.PER_PEER_METRICS
                if m not in (health.RECEIVED_BYTES, health.SENT_BYTES)  # from the 2nd run on
                for peer in PEERS
            ),
            *(
                (m, health.metric_dimensions(m, stack, site, peer, gateway.instance_id))
                for m in health.PER_INSTANCE_METRICS
                for peer in PEERS
            ),
            *((m, health.metric_dimensions(m, stack, site)) for m in health.PER_GATEWAY_METRICS),
        ]
    }
    assert published == expected
    assert len(expected) + 2 * len(PEERS) == health.custom_metric_count(len(PEERS))


def test_one_peer_down_is_tunnel_up_0_for_that_peer_only(gateway: Gateway):
    # The office behind NAT has not dialed in: no handshake, no reply. It is down like any
    # other peer; beta, on the same interface, is up.
    gateway.wg({"beta": int(time.time()) - 5}, {"beta": (1000, 2000)})
    gateway.set(f"ping-fails-{gateway.address('office')}", "")

    result = gateway.run()

    assert result.returncode == 0, result.stderr
    assert gateway.values(health.TUNNEL_UP, peer="beta") == [1.0]
    assert gateway.values(health.TUNNEL_UP, peer="office", instance=False) == [0.0]
    # It never answered since this boot: its alarms' series has not started (no page).
    assert gateway.values(health.TUNNEL_UP, peer="office") == []
    assert gateway.values(health.HANDSHAKE_AGE, peer="office") == []
    assert gateway.values(health.PROBE_RTT, peer="office") == []
    assert "peer=office target=10.255.255.3 up=0 handshake_age=nones" in result.stdout
    next_second()

    # Once it has answered, its failing ping is reported to its alarms too.
    gateway.set(f"ping-fails-{gateway.address('office')}", None)
    assert gateway.run().returncode == 0
    next_second()
    gateway.set(f"ping-fails-{gateway.address('office')}", "")
    assert gateway.run().returncode == 0
    assert gateway.values(health.TUNNEL_UP, "Minimum", peer="office") == [1.0, 0.0]
    assert gateway.values(health.TUNNEL_UP, "Minimum", peer="beta") == [1.0, 1.0, 1.0]


def test_source_dest_check_on_is_tunnel_down_with_the_reason(gateway: Gateway):
    # Pings between the tunnel addresses still answer: only the check tells.
    assert gateway.run().returncode == 0
    next_second()
    gateway.source_dest_check(True)

    result = gateway.run()

    assert result.returncode == 0, result.stderr
    for peer in PEERS:
        assert gateway.values(health.TUNNEL_UP, "Minimum", peer=peer) == [1.0, 0.0]
    assert gateway.values(health.SOURCE_DEST_CHECK) == [0.0, 1.0]
    assert result.stderr.splitlines() == [
        f"wg-site-to-site-probe: tunnel down: source/dest check is on for {gateway.eni}: "
        "the VPC drops forwarded packets"
    ]
    assert "source_dest_check=on peer=beta target=10.255.255.2 up=0" in result.stdout
    next_second()

    gateway.source_dest_check(False)
    assert gateway.run().returncode == 0
    assert gateway.values(health.TUNNEL_UP, "Minimum") == [1.0, 0.0, 1.0]


def test_the_peers_come_from_the_applied_desired_state(gateway: Gateway):
    # A tunnel cidr change or a new site is day 2: the apply rewrites this file, the probe
    # follows; a canary on a peer's site (third word) is pinged instead of its address.
    (gateway.fake / "peers").write_text("beta 10.255.255.2 10.2.1.10\nnew-site 10.200.0.9\n")
    assert gateway.run().returncode == 0
    pinged = sorted(
        line.split()[-1] for line in (gateway.fake / "ping.args").read_text().splitlines()
    )
    assert pinged == ["10.2.1.10", "10.200.0.9"]
    assert gateway.values(health.TUNNEL_UP, peer="new-site", instance=False) == [1.0]
    (gateway.fake / "peers").unlink()

    result = gateway.run()

    assert result.returncode == 1
    assert "the desired state was never applied; tunnel down" in result.stderr


def test_tunnel_up_names_the_instance_that_measured_it(gateway: Gateway):
    # The alarms watch this instance's own metric: a replacement starts with no data.
    # The per-peer series (the dashboard's) gets the same value.
    assert gateway.run().returncode == 0
    assert gateway.values(health.TUNNEL_UP) == [1.0]
    assert gateway.values(health.TUNNEL_UP, instance=False) == [1.0]
    other = replace(gateway, instance_id="i-0123456789abcdef0")
    assert other.values(health.TUNNEL_UP) == []


def test_check_passes_with_every_peer_up_and_the_source_dest_check_off(gateway: Gateway):
    result = gateway.run("wg-site-to-site-check")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"check ping ok beta {gateway.address('beta')} 3/3" in lines
    assert f"check ping ok office {gateway.address('office')} 3/3" in lines
    assert any(line.startswith("check handshake ok beta ") for line in lines)
    assert any(line.startswith("check handshake ok office ") for line in lines)
    assert f"check source-dest-check ok off for {gateway.eni}" in lines


def test_check_fails_on_one_dead_peer_of_two(gateway: Gateway):
    gateway.wg({"office": int(time.time()) - 5}, {})
    gateway.set(f"ping-fails-{gateway.address('beta')}", "")

    result = gateway.run("wg-site-to-site-check")

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"check ping ok office {gateway.address('office')} 3/3" in lines
    assert (
        f"check ping FAILED beta: no reply from {gateway.address('beta')} across the tunnel"
    ) in lines
    assert any(line.startswith("check handshake ok office ") for line in lines)
    assert "check handshake FAILED beta: no handshake yet" in lines
    assert [line.split()[2] for line in lines].count("FAILED") == 2


def test_an_office_that_never_connected_waits_and_passes_the_check(gateway: Gateway):
    # Adding an office: this `up` makes the outputs its bundle needs, so it cannot be up yet.
    gateway.wg({"beta": int(time.time()) - 5}, {})
    gateway.set(f"ping-fails-{gateway.address('office')}", "")

    result = gateway.run("wg-site-to-site-check")

    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert (
        "check ping waiting office: outside AWS and never connected; install its bundle "
        "(make site-bundle SITE=office)"
    ) in lines
    assert not any("FAILED" in line for line in lines)


def test_an_office_that_connected_once_and_died_fails_the_check(gateway: Gateway):
    now = int(time.time())
    gateway.wg({"beta": now - 5, "office": now - 400}, {})
    gateway.set(f"ping-fails-{gateway.address('office')}", "")

    result = gateway.run("wg-site-to-site-check")

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert (
        f"check ping FAILED office: no reply from {gateway.address('office')} across the tunnel"
        in lines
    )
    assert "check handshake FAILED office: 400 s ago, over 180 s" in lines


def test_an_aws_peer_that_never_connected_fails_the_check(gateway: Gateway):
    # Negative control of the waiting rule: it is for offices only.
    (gateway.fake / "outside").write_text("")
    gateway.wg({"beta": int(time.time()) - 5}, {})
    gateway.set(f"ping-fails-{gateway.address('office')}", "")

    result = gateway.run("wg-site-to-site-check")

    assert result.returncode == 1
    assert "check handshake FAILED office: no handshake yet" in result.stdout.splitlines()


def test_check_fails_with_a_line_naming_the_source_dest_check(gateway: Gateway):
    gateway.source_dest_check(True)

    result = gateway.run("wg-site-to-site-check")

    assert result.returncode == 1
    assert (
        f"check source-dest-check FAILED source/dest check on for {gateway.eni}: "
        "the VPC drops forwarded packets"
    ) in result.stdout.splitlines()
    # The ping across the tunnel still answered: without this check, verify would pass.
    assert any(line.startswith("check ping ok") for line in result.stdout.splitlines())


def test_bytes_are_published_per_interval_and_peer(gateway: Gateway):
    assert gateway.run().returncode == 0
    assert gateway.values(health.RECEIVED_BYTES) == []  # no baseline on the first run
    next_second()
    now = int(time.time())
    gateway.wg({"beta": now, "office": now}, {"beta": (1500, 2300), "office": (15, 21)})

    assert gateway.run().returncode == 0

    assert gateway.values(health.RECEIVED_BYTES, peer="beta") == [500.0]
    assert gateway.values(health.SENT_BYTES, peer="beta") == [300.0]
    assert gateway.values(health.RECEIVED_BYTES, peer="office") == [5.0]
    assert gateway.values(health.SENT_BYTES, peer="office") == [1.0]


def test_failing_ping_is_tunnel_down_while_bytes_grow(gateway: Gateway):
    # Negative control for "bytes are not liveness": the counters move, the probe fails.
    assert gateway.run().returncode == 0
    gateway.set("ping-fails", "")
    for rx in (5000, 9000):
        next_second()
        now = int(time.time())
        gateway.wg({"beta": now, "office": now}, {"beta": (rx, rx * 2), "office": (10, 20)})
        assert gateway.run().returncode == 0

    assert gateway.values(health.TUNNEL_UP, "Minimum") == [1.0, 0.0, 0.0]
    received = gateway.values(health.RECEIVED_BYTES)
    assert received == [4000.0, 4000.0]
    assert all(value > 0 for value in received)


def test_missing_interface_runs_apply_and_says_so(gateway: Gateway):
    gateway.set("missing", "")

    result = gateway.run()

    assert result.returncode == 0, result.stderr
    assert (gateway.fake / "applied").read_text() == "applied\n"
    assert result.stderr.splitlines() == [
        f"wg-site-to-site-probe: interface {gateway.facts.interface} is missing; running "
        "wg-site-to-site-apply to bring it back"
    ]
    for peer in PEERS:
        assert gateway.values(health.TUNNEL_UP, peer=peer, instance=False) == [0.0]
    next_second()

    # The apply brought it back: the next run is healthy again, without another apply.
    assert gateway.run().returncode == 0
    assert (gateway.fake / "applied").read_text() == "applied\n"
    assert gateway.values(health.TUNNEL_UP, "Minimum", instance=False) == [0.0, 1.0]


def test_a_new_instance_reports_to_its_alarms_once_its_tunnel_answered(gateway: Gateway):
    # Booting, or waiting for a peer that boots too: the dashboard's series says 0, the
    # alarms' (per instance) says nothing, so a deploy pages no one.
    gateway.set("ping-fails", "")
    assert gateway.run().returncode == 0
    next_second()
    gateway.set("ping-fails", None)
    assert gateway.run().returncode == 0
    next_second()
    # Once it has answered, a failing ping is reported: tunnel-down can fire.
    gateway.set("ping-fails", "")
    assert gateway.run().returncode == 0

    assert gateway.values(health.TUNNEL_UP, "Minimum", instance=False) == [0.0, 1.0, 0.0]
    assert gateway.values(health.TUNNEL_UP, "Minimum") == [1.0, 0.0]


def test_a_failed_publish_fails_the_run(gateway: Gateway):
    gateway.env["WG_S2S_ENDPOINT_MONITORING"] = "http://127.0.0.1:9"

    result = gateway.run()

    assert result.returncode != 0
    assert "monitoring PutMetricData failed" in result.stderr


def test_scripts_name_no_peer_so_a_new_site_keeps_the_user_data():
    # Adding a site is day 2: the gateway's scripts and units render the same.
    two = gateway_facts(load_stack_config(stack_config("dev")), "dev")[0]
    three = gateway_facts(load_stack_config(probe_config()), "dev")[0]
    assert len(three.peers) == len(two.peers) + 1
    assert render_probe(two) == render_probe(three)
    assert render_check(two) == render_check(three)
    assert render_probe_units(two) == render_probe_units(three)
    assert render_apply(two) == render_apply(three)
    assert render_bootstrap(two).user_data == render_bootstrap(three).user_data


ALPHA = gateway_facts(load_stack_config(stack_config("dev")), "dev")[0]


def test_units_run_the_probe_on_the_interval():
    units = render_probe_units(ALPHA, 5)
    timer = units[PROBE_TIMER_PATH]
    assert "OnUnitActiveSec=5s" in timer.splitlines()
    service = next(text for path, text in units.items() if path.endswith(".service"))
    assert f"ExecStart={PROBE_PATH}" in service.splitlines()
    assert "Type=oneshot" in service.splitlines()
    assert "OnUnitActiveSec=60s" in render_probe_units(ALPHA)[PROBE_TIMER_PATH]


@pytest.mark.parametrize("interval", [0, -5, 3601, 1.5, True])
def test_bad_interval_is_refused(interval: Any):
    with pytest.raises(ValueError, match="probe interval"):
        render_probe(ALPHA, interval)
    with pytest.raises(ValueError, match="probe interval"):
        render_probe_units(ALPHA, interval)


def test_an_offices_check_makes_no_aws_call(tmp_path: Path):
    # Outside AWS there is no interface whose source/dest check could be on: the office's
    # check (run by its bundle's install.sh) pings and reads handshakes, nothing else.
    office = gateway_facts(load_stack_config(probe_config()), "dev")[2]
    assert not office.is_aws and [p.name for p in office.peers] == ["alpha", "beta"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "wg", FAKE_WG)
    _executable(bin_dir / "ping", FAKE_PING)
    _executable(bin_dir / "wg-site-to-site-aws", 'echo "$*" >> "$FAKE/aws-calls"; exit 1\n')
    check = render_check(office)
    assert "wg-site-to-site-aws" not in check
    _executable(bin_dir / "wg-site-to-site-check", check)
    keys = {"alpha": "YWxwaGE=", "beta": "YmV0YQ=="}
    now = int(time.time())
    (tmp_path / "peers").write_text("".join(f"{p.name} {p.tunnel_address}\n" for p in office.peers))
    (tmp_path / "wg.allowed-ips").write_text(
        "".join(f"{keys[p.name]}\t{p.tunnel_address}/32 {p.site.cidr}\n" for p in office.peers)
    )
    (tmp_path / "wg.latest-handshakes").write_text(
        "".join(f"{key}\t{now - 7}\n" for key in keys.values())
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE": str(tmp_path),
        "WANT_IFACE": office.interface,
        "WG_S2S_PEER_FILE": str(tmp_path / "peers"),
    }

    result = subprocess.run(
        ["bash", str(bin_dir / "wg-site-to-site-check")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == [
        "interface",
        "ping",
        "handshake",
        "ping",
        "handshake",
    ]
    assert any(line.startswith("check handshake ok alpha ") for line in result.stdout.splitlines())
    assert not (tmp_path / "aws-calls").exists()
