"""Stand-ins for `make e2e`'s outside world: the Pulumi CLI (an executable that logs its
arguments and keeps a tiny state, as tests/test_ephemeral.py's) and AWS (real boto3
clients: botocore's Stubber for STS, the Tagging API and KMS; SSM Run Command answered by
a `before-send` hook that hands each command to an executor: canned outputs, or the lab).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.stub import Stubber

from lab.checks import Output
from tests.pulumi_stand_in import FAKE_PULUMI, logged_calls

REPO = Path(__file__).resolve().parent.parent


# The canaries as the stack would export them (the core's addresses).
INSTANCES = {"alpha": "i-0aaaaaaaaaaaaaaa1", "beta": "i-0bbbbbbbbbbbbbbb2"}
CANARY_IPS = {"alpha": "10.1.1.10", "beta": "10.2.1.10"}
REGIONS = {"alpha": "us-east-1", "beta": "eu-west-1"}
ACCOUNT = "123456789012"


def sites_output() -> dict[str, Any]:
    return {
        name: {
            "canaryIp": CANARY_IPS[name],
            "canaryInstanceId": INSTANCES[name],
            "region": REGIONS[name],
        }
        for name in INSTANCES
    }


@dataclass
class PulumiWorld:
    root: Path
    log: Path
    bin_dir: Path

    def calls(self) -> list[list[str]]:
        return logged_calls(self.log)

    def commands(self) -> list[str]:
        shown = []
        for call in self.calls():
            size = 3 if call[:2] in (["stack", "tag"], ["stack", "output"]) else 2
            shown.append(" ".join(call[: size if call[0] == "stack" else 1]))
        return shown


def pulumi_world(tmp_path: Path, env: Callable[[str, str], None]) -> PulumiWorld:
    """A copy of the project with the shipped stacks and a stand-in `pulumi` on PATH."""
    root = tmp_path / "project"
    (root / "stacks").mkdir(parents=True)
    shutil.copy(REPO / "Pulumi.yaml", root)
    for name in ("Pulumi.dev.yaml", "Pulumi.single-region.yaml"):
        shutil.copy(REPO / "stacks" / name, root / "stacks")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pulumi"
    fake.write_text(FAKE_PULUMI.format(python=sys.executable))
    fake.chmod(0o755)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(sites_output()))
    env("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env("FAKE_PULUMI_LOG", str(tmp_path / "pulumi.log"))
    env("FAKE_PULUMI_STATE", str(tmp_path / "state.json"))
    env("FAKE_PULUMI_OUTPUTS", str(outputs))
    env("GIT_CONFIG_GLOBAL", os.devnull)
    return PulumiWorld(root=root, log=tmp_path / "pulumi.log", bin_dir=bin_dir)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body


Executor = Callable[[str, list[str]], Output]


@dataclass
class SsmStandIn:
    """Run Command: each SendCommand's script goes to `execute(instance, argv)`."""

    execute: Executor
    sent: list[tuple[str, list[str]]] = field(default_factory=list)
    results: dict[str, tuple[str, Output]] = field(default_factory=dict)

    def answer(self, request: Any, **_: Any) -> AWSResponse:
        target = request.headers["X-Amz-Target"]
        target = target.decode() if isinstance(target, bytes) else target
        body = json.loads(request.body)
        if target.endswith(".SendCommand"):
            assert body["DocumentName"] == "AWS-RunShellScript"
            instance = body["InstanceIds"][0]
            argv = shlex.split(body["Parameters"]["commands"][0])
            self.sent.append((instance, argv))
            command_id = str(uuid.uuid4())
            self.results[command_id] = (instance, self.execute(instance, argv))
            reply: dict[str, Any] = {"Command": {"CommandId": command_id}}
        elif target.endswith(".GetCommandInvocation"):
            instance, output = self.results[body["CommandId"]]
            reply = {
                "CommandId": body["CommandId"],
                "InstanceId": instance,
                "Status": "Success" if output.returncode == 0 else "Failed",
                "ResponseCode": output.returncode,
                "StandardOutputContent": output.stdout[-24000:],
                "StandardErrorContent": output.stderr[-8000:],
            }
        else:
            raise AssertionError(f"unexpected SSM call {target}")
        return AWSResponse(request.url, 200, HTTPHeaders(), _Raw(json.dumps(reply).encode()))


class StandInAws:
    """Real boto3 clients, with fake credentials, answered by stand-ins."""

    def __init__(self, ssm: SsmStandIn) -> None:
        self.session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        self.ssm = ssm
        self.clients: dict[tuple[str, str], Any] = {}
        self.stubbers: dict[tuple[str, str], Stubber] = {}

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self.clients:
            client = self.session.client(service, region_name=region)  # type: ignore[call-overload]
            if service == "ssm":
                client.meta.events.register("before-send.ssm", self.ssm.answer)
            else:
                self.stubbers[key] = Stubber(client)
                self.stubbers[key].activate()
            self.clients[key] = client
        return self.clients[key]

    def stub(self, service: str, region: str) -> Stubber:
        self.client(service, region)
        return self.stubbers[(service, region)]

    def expect_identity(self, region: str = "eu-west-1") -> None:
        self.stub("sts", region).add_response(
            "get_caller_identity",
            {
                "Account": ACCOUNT,
                "Arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/e2e/ci",
                "UserId": "AROAEXAMPLE:ci",
            },
            {},
        )

    def expect_sweep(self, stack: str, left: dict[str, list[str]] | None = None) -> None:
        for region in sorted(set(REGIONS.values())):
            arns = (left or {}).get(region, [])
            self.stub("resourcegroupstaggingapi", region).add_response(
                "get_resources",
                {"ResourceTagMappingList": [{"ResourceARN": arn} for arn in arns]},
                {"TagFilters": [{"Key": "stack", "Values": [stack]}], "PaginationToken": ""},
            )

    def assert_all_used(self) -> None:
        for stubber in self.stubbers.values():
            stubber.assert_no_pending_responses()
