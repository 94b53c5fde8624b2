"""`make e2e` (tools/e2e.py) against stand-ins: the Pulumi CLI as an executable, AWS as
real boto3 clients answered by Stubber and a Run Command stand-in with canned outputs
(tests/lab/test_e2e_lab.py answers Run Command from the lab instead)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

import plan.engine
from lab.checks import Output
from tests.e2e_stand_ins import (
    CANARY_IPS,
    INSTANCES,
    PulumiWorld,
    SsmStandIn,
    StandInAws,
    pulumi_world,
)
from tools import e2e

REPO = Path(__file__).resolve().parent.parent
STACK = "test-e2e-t"
SHA = "ab" * 32
OK = Output(0, "", "")


def _site_of(instance: str) -> str:
    return next(name for name, known in INSTANCES.items() if known == instance)


class Canned:
    """What the canaries would print, for each check's command; `broken` ports connect
    where the firewall should refuse them."""

    def __init__(self, broken: frozenset[int] = frozenset()) -> None:
        self.broken = broken

    def __call__(self, instance: str, argv: list[str]) -> Output:
        site = _site_of(instance)
        own = CANARY_IPS[site]
        if argv == ["true"]:
            return OK
        if argv[0] == "ping":
            count = argv[argv.index("-c") + 1]
            return Output(
                0,
                f"{count} packets transmitted, {count} received, 0% packet loss\n"
                "rtt min/avg/max/mdev = 70.1/70.42/71.0/0.3 ms\n",
                "",
            )
        if argv[0] == "sh":
            name = argv[3]
            if name == "trace":
                gateway = "10.1.0.4" if site == "alpha" else "10.2.0.4"
                tunnel = "10.255.255.1" if site == "alpha" else "10.255.255.0"
                hops = [gateway, tunnel, argv[4]]
                return Output(0, "".join(f"  {i}.|-- {h}\n" for i, h in enumerate(hops, 1)), "")
            if name == "pmtu":
                return Output(
                    0,
                    f"{argv[4]} via x dev ens5 src {own}\n    cache expires 598sec mtu 1420\n",
                    "",
                )
            if name == "ping10" and "kill -INT" in argv[2]:
                return Output(0, "flowing yes\nanswered 412 last 413\n", "")
            return OK  # install the agent, start/stop servers and pings
        if argv[0] == "cat":
            return Output(0, "ready\n", "")
        if argv[:2] == ["python3", f"{e2e.REMOTE_DIR}/agent.py"]:
            return self.agent(argv[2:], own)
        raise AssertionError(f"unexpected command {argv}")

    def agent(self, args: list[str], own: str) -> Output:
        port = int(args[2])
        if args[0] == "udp":
            return Output(0, json.dumps({"status": "done"}) + "\n", "")
        size = int(args[args.index("--bytes") + 1])
        if port in (22, 3389) and port not in self.broken:
            answer: dict[str, Any] = {
                "status": "refused",
                "sha256": SHA,
                "seconds": 0.07,
                "sent_bytes": 0,
                "server": None,
            }
        else:
            answer = {
                "status": "done",
                "sha256": SHA,
                "seconds": 30.5,
                "sent_bytes": size,
                "server": {"peer": own, "bytes": size, "sha256": SHA},
            }
        return Output(0, json.dumps(answer) + "\n", "")


_PLANS: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def one_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver plans the test stack for its cost; the same config is planned once for
    the whole module (the program is the same, only the stand-ins' answers differ)."""
    real = plan.engine.run_program

    def planned(stack: str, config: Any, **options: Any) -> Any:
        key = json.dumps([stack, config], sort_keys=True, default=str)
        if key not in _PLANS:
            _PLANS[key] = real(stack, config, **options)
        return _PLANS[key]

    monkeypatch.setattr(e2e, "run_program", planned)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PulumiWorld:
    return pulumi_world(tmp_path, monkeypatch.setenv)


def run(
    world: PulumiWorld, tmp_path: Path, aws: StandInAws, *extra: str
) -> tuple[int, dict[str, Any], str]:
    runner = e2e.SsmRunner(
        aws, {INSTANCES[s]: r for s, r in {"alpha": "us-east-1", "beta": "eu-west-1"}.items()},
        poll=0, sleep=lambda _: None,
    )  # fmt: skip
    report, summary = tmp_path / "e2e-report.json", tmp_path / "e2e-summary.md"
    status = e2e.main(
        [
            "dev",
            "--name",
            "e2e-t",
            "--repo-root",
            str(world.root),
            "--report",
            str(report),
            "--summary",
            str(summary),
            "--owner",
            "ci",
            *extra,
        ],
        aws=aws,
        runner=runner,
    )
    return status, json.loads(report.read_text()), summary.read_text()


def stand_in_aws(executor: Canned, left: dict[str, list[str]] | None = None) -> StandInAws:
    aws = StandInAws(SsmStandIn(executor))
    aws.expect_identity()
    aws.expect_sweep(STACK, left)
    return aws


EXPECTED_CHECKS = [
    "ping a1->b1",
    "ping b1->a1",
    "mtr a1->b1",
    "mtr b1->a1",
    "mtu a1->b1",
    "pmtu a1->b1",
    "mtu b1->a1",
    "pmtu b1->a1",
    "no-nat a1->b1",
    "no-nat b1->a1",
    "firewall a1->b1 'no ssh between sites'",
    "firewall b1->a1 'no ssh between sites'",
    "transfer a1->b1",
    "firewall a1->b1 'e2e day-2 rule'",
    "firewall b1->a1 'e2e day-2 rule'",
    "ping a1->b1",
    "ping b1->a1",
]


def _short(name: str) -> str:
    return name.replace("alpha-canary", "a1").replace("beta-canary", "b1")


def test_the_whole_sequence_runs_and_reports_every_check_with_timings(
    world: PulumiWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws = stand_in_aws(Canned())
    status, report, summary = run(world, tmp_path, aws)
    printed = capsys.readouterr().out

    assert status == 0, printed
    assert report["ok"] is True
    assert [_short(c["name"]) for c in report["checks"]] == EXPECTED_CHECKS
    assert all(c["ok"] and c["seconds"] >= 0 for c in report["checks"])
    assert [s["name"] for s in report["steps"]] == [
        "create ephemeral stack",
        "pulumi up",
        "boot to tunnel alpha",
        "boot to tunnel beta",
        "day 2: firewall rule added",
        "day 2: key rotation",
        "drift check (preview --expect-no-changes)",
        "pulumi destroy",
        "sweep (tagged resources left)",
    ]
    assert all(isinstance(s["seconds"], float) for s in report["steps"])
    # The 100 MB transfer, checksum compared; the loss at 10/s counted.
    transfer = next(c for c in report["checks"] if c["name"].startswith("transfer"))
    assert transfer["detail"].startswith("100 MB in 30.5 s")
    day2 = {s["name"]: s["detail"] for s in report["steps"]}
    assert day2["day 2: key rotation"].startswith("1 of 413 pings lost at 10/s")
    # The Pulumi sequence: a test stack, up, two day-2 ups, the drift check, destroy.
    assert world.commands() == [
        "stack init",
        "stack tag set",
        "stack tag set",
        "up",
        "stack output sites",
        "stack output sites",
        "up",
        "stack output sites",
        "stack output sites",
        "up",
        "stack output sites",
        "preview",
        "stack ls",
        "destroy",
        "stack rm",
    ]
    preview = next(c for c in world.calls() if c[0] == "preview")
    assert "--expect-no-changes" in preview and preview[preview.index("--stack") + 1] == STACK
    assert not (world.root / "stacks" / f"Pulumi.{STACK}.yaml").exists()
    # The account, regions and the run's expected cost come first.
    first = printed.splitlines()[:3]
    assert first[0].startswith("e2e: account 123456789012")
    assert first[1].startswith("e2e: regions eu-west-1, us-east-1")
    assert first[2].startswith("e2e: expected cost at most $")
    # The job summary: every step and every check with its seconds.
    for check in report["checks"]:
        assert f"| {check['name']} | pass | {check['seconds']:.1f} |" in summary
    assert "## wg-site-to-site e2e: passed" in summary
    # The checks ran on the canaries, aimed at the core's canary addresses.
    ssm = aws.ssm
    assert {instance for instance, _ in ssm.sent} == set(INSTANCES.values())
    pinged = {argv[-1] for _, argv in ssm.sent if argv[0] == "ping"}
    assert pinged == {str(IPv4Address(ip)) for ip in CANARY_IPS.values()}
    aws.assert_all_used()


def test_a_failed_check_fails_the_run_and_still_destroys(
    world: PulumiWorld, tmp_path: Path
) -> None:
    aws = stand_in_aws(Canned(broken=frozenset({22})))
    status, report, summary = run(world, tmp_path, aws)
    assert status == 1
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    assert failed == [
        "firewall alpha-canary->beta-canary 'no ssh between sites'",
        "firewall beta-canary->alpha-canary 'no ssh between sites'",
    ]
    assert "| firewall alpha-canary->beta-canary 'no ssh between sites' | FAIL |" in summary
    assert world.commands()[-2:] == ["destroy", "stack rm"]


def test_a_failed_up_destroys_and_anything_left_tagged_fails_the_sweep(
    world: PulumiWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "up")
    left_group = "arn:aws:ec2:us-east-1:123456789012:security-group/sg-0123456789abcdef0"
    pending_key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    aws = stand_in_aws(Canned(), {"us-east-1": [left_group], "eu-west-1": [pending_key]})
    # A key in its deletion window is what destroy leaves on purpose.
    aws.stub("kms", "eu-west-1").add_response(
        "describe_key",
        {"KeyMetadata": {"KeyId": pending_key.rsplit("/", 1)[1], "KeyState": "PendingDeletion"}},
        {"KeyId": pending_key},
    )
    status, report, _ = run(world, tmp_path, aws)
    assert status == 1
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["pulumi up"]["ok"] is False
    assert steps["pulumi destroy"]["ok"] is True
    assert steps["sweep (tagged resources left)"]["ok"] is False
    assert report["leftovers"] == [left_group]
    assert report["checks"] == []
    aws.assert_all_used()


def test_the_deadline_stops_the_run_and_destroy_still_runs(
    world: PulumiWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deadline already past once the stack is up: the boot-to-tunnel step never starts.
    clock = iter([0.0, *[10_000.0] * 50])
    monkeypatch.setattr(e2e, "Deadline", _deadline_with(lambda: next(clock)))
    aws = stand_in_aws(Canned())
    status, report, _ = run(world, tmp_path, aws)
    assert status == 1
    names = [s["name"] for s in report["steps"]]
    assert "boot to tunnel alpha" not in names
    assert report["steps"][names.index("stopped")]["detail"] == (
        "the deadline (45 min) passed before boot to tunnel alpha"
    )
    assert names[-2:] == ["pulumi destroy", "sweep (tagged resources left)"]
    assert world.commands()[-2:] == ["destroy", "stack rm"]


def _deadline_with(clock: Any) -> Any:
    class Fixed(e2e.Deadline):
        def __init__(self, seconds: float) -> None:
            super().__init__(seconds, clock)

    return Fixed


def test_refuses_a_stack_that_is_not_ephemeral(world: PulumiWorld, tmp_path: Path) -> None:
    aws = StandInAws(SsmStandIn(Canned()))
    status = e2e.main(
        ["dev", "--name", "dev", "--repo-root", str(world.root)], aws=aws, runner=None
    )
    assert status == 2
    assert world.calls() == []


def test_make_e2e_without_credentials_prints_one_line_and_fails(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        # No instance role to find here; on a machine with one, that is a credential.
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "e2e"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    # make adds its own "make: *** [Makefile:N: e2e] Error 2" ("make[1]: ***" when it
    # runs under `make test`); the tool says one line.
    lines = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if not re.match(r"make(\[\d+\])?: \*\*\*", line)
    ]
    assert lines == [e2e.NO_CREDENTIALS]
