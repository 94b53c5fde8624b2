"""`make e2e`'s whole sequence with Run Command answered by the lab: each command the
driver sends to a canary (shlex-joined, through a real boto3 SSM client) runs in that
canary's namespace, so the outputs the driver judges are those of the lab's own checks.

The lab is dev with both canaries on (the workload hosts sit at the canaries'
addresses); each `pulumi up` of the stand-in CLI is followed by what `pulumi up` does to
the gateways (lab.day2.push of the stack file's plan), so the day-2 firewall rule and the
key rotation really happen under the 10/s ping.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import project_config_from_stack_file
from core.facts import PROBE_PATH
from lab import netns
from lab.build import gateway_run
from lab.checks import LAB, Output, ping
from lab.day2 import push
from lab.lifecycle import Lab
from plan.engine import read_stack_file, run_program
from tests.e2e_stand_ins import INSTANCES, PulumiWorld, SsmStandIn, StandInAws, pulumi_world
from tests.lab.support import built
from tests.test_e2e import EXPECTED_CHECKS, STACK, _short
from tools import e2e, ephemeral

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def canary_lab(root: None) -> Iterator[Lab]:
    config = read_stack_file("dev")
    for site in config["sites"]:
        site["canary"] = True
    with built(run_program(STACK, config)) as lab:
        assert lab.first_reply is not None, "no reply through the tunnel after the build"
        yield lab


class LabHosts:
    """Run Command on a canary = the command in its lab namespace. The lab's hosts share
    one filesystem, so each gets its own copy of the driver's remote directory."""

    def __init__(self, lab: Lab) -> None:
        self.namespaces = {
            INSTANCES[site.name]: site.hosts[0].namespace for site in lab.topology.sites
        }

    def directory(self, instance: str) -> str:
        return f"{e2e.REMOTE_DIR}-{self.namespaces[instance]}"

    def __call__(self, instance: str, argv: list[str]) -> Output:
        own = self.directory(instance)
        argv = [arg.replace(e2e.REMOTE_DIR, own) for arg in argv]
        return LAB.run(self.namespaces[instance], argv, timeout=360)

    def clean(self) -> None:
        for instance in self.namespaces:
            shutil.rmtree(self.directory(instance), ignore_errors=True)


class LabPulumi(ephemeral.Pulumi):
    """The stand-in CLI, and after each `up` what it does to the gateways."""

    def __init__(self, executable: str, root: Path, lab: Lab) -> None:
        super().__init__(executable, root)
        self.lab = lab
        self.pushed: list[Any] = []

    def call(self, *args: str) -> int:
        status = super().call(*args)
        if args[0] == "up" and status == 0:
            stack_file = self.cwd / "stacks" / f"Pulumi.{STACK}.yaml"
            config = project_config_from_stack_file(yaml.safe_load(stack_file.read_text()))
            self.pushed.append(config)
            if len(self.pushed) == 1:
                return status  # the lab was built from this very config
            _, results = push(self.lab, run_program(STACK, config))
            assert all(r.returncode == 0 for r in results), [r.output for r in results]
        return status


def test_e2e_sequence_with_run_command_answered_by_the_lab(
    canary_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world: PulumiWorld = pulumi_world(tmp_path, monkeypatch.setenv)
    hosts = LabHosts(canary_lab)
    aws = StandInAws(SsmStandIn(hosts))
    aws.expect_identity()
    aws.expect_sweep(STACK)
    options = e2e.Options(
        base="dev",
        name=STACK,
        deadline_minutes=10,
        report=tmp_path / "e2e-report.json",
        summary=tmp_path / "e2e-summary.md",
        root=world.root,
        owner="ci",
    )
    pulumi = LabPulumi(str(world.bin_dir / "pulumi"), world.root, canary_lab)
    runner = e2e.SsmRunner(
        aws, {i: r for i, r in zip(INSTANCES.values(), ("us-east-1", "eu-west-1"), strict=True)},
        poll=0,  # the stand-in answers at once
    )  # fmt: skip
    lines: list[str] = []
    try:
        status = e2e.Run(options, aws, pulumi, runner, out=lines.append).execute()
    finally:
        hosts.clean()
        # Leave the lab as the module built it (keys and firewall of generation 1).
    report = options.report.read_text()
    assert status == 0, "\n".join(lines)
    document = json.loads(report)
    assert [_short(c["name"]) for c in document["checks"]] == EXPECTED_CHECKS
    assert all(c["ok"] for c in document["checks"]), lines
    steps = {s["name"]: s for s in document["steps"]}
    print("\n".join(lines))
    # Three `up`s: the first, the firewall rule, the rotation (generation 2).
    assert len(pulumi.pushed) == 3
    assert pulumi.pushed[2]["tunnel"]["keyGeneration"] == 2
    assert "e2e day-2 rule" in str(pulumi.pushed[1]["firewall"])
    assert steps["day 2: key rotation"]["ok"]
    # Every command reached a canary's namespace through Run Command.
    assert {instance for instance, _ in aws.ssm.sent} == set(INSTANCES.values())
    assert os.path.exists(options.summary)


def test_probe_pings_the_peer_canary_and_sees_it_unreachable(canary_lab: Lab) -> None:
    """With canaries, TunnelUp means "site to site works": alpha's probe pings beta's
    canary through the tunnel and beta's forwarding path; a canary that cannot be reached
    (its echo dropped, the tunnel itself fine) is tunnel down."""
    alpha, beta = canary_lab.topology.sites
    canary = beta.hosts[0]
    assert str(canary.address.ip) == "10.2.1.10"  # the core's canary address

    def probe() -> str:
        result = gateway_run(alpha, canary_lab.state, [PROBE_PATH], timeout=30, check=False)
        return result.stdout + result.stderr

    healthy = probe()
    assert f"target={canary.address.ip} up=1" in healthy, healthy
    drop = ["iptables", "-I", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j", "DROP"]
    netns.ns_run(canary.namespace, drop)
    try:
        # The tunnel still answers: only the far site's host is out of reach.
        assert ping(alpha.gateway.namespace, str(alpha.facts.peers[0].tunnel_address)).received
        broken = probe()
    finally:
        netns.ns_run(canary.namespace, ["iptables", "-D", *drop[2:]])
    assert f"target={canary.address.ip} up=0" in broken, broken
