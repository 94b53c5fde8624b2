"""The deployer under botocore's Stubber: real boto3 clients, SSM answers scripted, no network."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from core.facts import APPLY_PATH, CHECK_PATH, FAILOVER_AGENT_PATH
from deployer.cli import WAIT_FOR_BOOT, journal_command, run

ROOT = Path(__file__).resolve().parent.parent
ALPHA = "i-0123456789abcdef0"
BETA = "i-0fedcba9876543210"
# Command ids are UUIDs (36 characters; the Stubber checks the shape).
CMD1 = "0b5f7a52-1d2e-4c3b-9a8f-000000000001"
CMD2 = "0b5f7a52-1d2e-4c3b-9a8f-000000000002"


class FakeClock:
    """Monotonic time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        self.err_lines = err.splitlines()


class Ssm:
    """One stubbed SSM client (and EC2 client) per region, and a runner of the CLI against
    them."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.stubs: dict[str, Stubber] = {}
        self.clients: dict[str, Any] = {}

    def stub(self, region: str = "eu-west-1", service: str = "ssm") -> Stubber:
        key = region if service == "ssm" else f"{service}:{region}"
        if key not in self.stubs:
            client = boto3.client(
                service,  # type: ignore[call-overload]
                region_name=region,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            self.clients[key] = client
            self.stubs[key] = Stubber(client)
            self.stubs[key].activate()
        return self.stubs[key]

    def ec2(self, region: str = "eu-west-1") -> Stubber:
        return self.stub(region, "ec2")

    def run(self, action: str, env: dict[str, str]) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = run(
            [action],
            env,
            client_for=lambda region: self.clients[region],
            ec2_for=lambda region: self.clients[f"ec2:{region}"],
            clock=self.clock,
            sleep=self.clock.sleep,
            out=out,
            err=err,
        )
        for stub in self.stubs.values():
            stub.assert_no_pending_responses()
        return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def ssm() -> Iterator[Ssm]:
    fake = Ssm()
    yield fake
    for stub in fake.stubs.values():
        stub.deactivate()


def apply_env(deadline: int = 900) -> dict[str, str]:
    return {
        "WG_S2S_SITE": "alpha",
        "WG_S2S_REGION": "eu-west-1",
        "WG_S2S_INSTANCE_ID": ALPHA,
        "WG_S2S_DEADLINE_SECONDS": str(deadline),
    }


def expect_send(stub: Stubber, instance: str, commands: list[str], command_id: str = CMD1) -> None:
    stub.add_response(
        "send_command",
        {"Command": {"CommandId": command_id}},
        {
            "InstanceIds": [instance],
            "DocumentName": "AWS-RunShellScript",
            "TimeoutSeconds": ANY,
            "Comment": ANY,
            "Parameters": {"commands": commands, "executionTimeout": ANY},
        },
    )


def expect_status(
    stub: Stubber,
    instance: str,
    status: str,
    *,
    stdout: str = "",
    stderr: str = "",
    code: int = 0,
    command_id: str = CMD1,
) -> None:
    stub.add_response(
        "get_command_invocation",
        {
            "CommandId": command_id,
            "InstanceId": instance,
            "Status": status,
            "StatusDetails": status,
            "ResponseCode": code,
            "StandardOutputContent": stdout,
            "StandardErrorContent": stderr,
        },
        {"CommandId": command_id, "InstanceId": instance},
    )


APPLY = [WAIT_FOR_BOOT, APPLY_PATH]


def test_apply_success_waits_for_the_invocation_and_prints_site_duration_and_output(ssm):
    stub = ssm.stub()
    expect_send(stub, ALPHA, APPLY)
    expect_status(stub, ALPHA, "Pending")
    expect_status(stub, ALPHA, "InProgress")
    expect_status(stub, ALPHA, "Success", stdout="peers unchanged\nfirewall: +1 -0\n")

    result = ssm.run("apply", apply_env())

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    # Two waits of the backoff (2 s, then 3 s) before the Success.
    assert ssm.clock.sleeps == [2.0, 3.0]
    assert lines[0] == f"wg-site-to-site: apply on alpha ({ALPHA}) succeeded in 5 s"
    assert "    peers unchanged" in lines
    assert "    firewall: +1 -0" in lines
    assert result.err == ""


@pytest.mark.parametrize("status", ["Failed", "TimedOut", "Cancelled"])
def test_apply_any_final_status_but_success_fails_with_the_gateways_output(ssm, status):
    stub = ssm.stub()
    expect_send(stub, ALPHA, APPLY)
    expect_status(
        stub,
        ALPHA,
        status,
        code=1,
        stdout="reading parameters\nwg0: new config failed to come up\n",
        stderr="wg-site-to-site-apply: previous config restored\n",
    )

    result = ssm.run("apply", apply_env())

    assert result.code == 1
    assert result.err_lines[0] == f"wg-site-to-site: apply on alpha ({ALPHA}) failed: {status}"
    assert "    wg0: new config failed to come up" in result.err_lines
    assert "    wg-site-to-site-apply: previous config restored" in result.err_lines
    assert "succeeded" not in result.out


def test_apply_deadline_defaults_to_900_s_and_bounds_delivery_and_execution(ssm):
    stub = ssm.stub()
    stub.add_response(
        "send_command",
        {"Command": {"CommandId": CMD1}},
        {
            "InstanceIds": [ALPHA],
            "DocumentName": "AWS-RunShellScript",
            "TimeoutSeconds": 900,
            "Comment": "wg-site-to-site apply on alpha",
            "Parameters": {"commands": APPLY, "executionTimeout": ["900"]},
        },
    )
    expect_status(stub, ALPHA, "Success")
    env = apply_env()
    del env["WG_S2S_DEADLINE_SECONDS"]

    assert ssm.run("apply", env).code == 0


def test_apply_retries_send_while_the_instance_is_not_registered_with_ssm(ssm):
    stub = ssm.stub()
    for _ in range(2):
        stub.add_client_error("send_command", "InvalidInstanceId", "Instances not in a valid state")
    expect_send(stub, ALPHA, APPLY)
    expect_status(stub, ALPHA, "Success", stdout="applied\n")

    result = ssm.run("apply", apply_env())

    assert result.code == 0, result.err
    assert ssm.clock.sleeps == [2.0, 3.0]
    assert "    applied" in result.out.splitlines()


def test_apply_tolerates_invocation_does_not_exist_right_after_send(ssm):
    stub = ssm.stub()
    expect_send(stub, ALPHA, APPLY)
    stub.add_client_error("get_command_invocation", "InvocationDoesNotExist", "")
    expect_status(stub, ALPHA, "Success", stdout="applied\n")

    result = ssm.run("apply", apply_env())

    assert result.code == 0, result.err
    assert result.out.startswith(f"wg-site-to-site: apply on alpha ({ALPHA}) succeeded")


def test_apply_deadline_fails_with_one_line_and_cancels_the_command(ssm):
    stub = ssm.stub()
    expect_send(stub, ALPHA, APPLY)
    # Polls at 0, 2 and 5 s: the last one is at the 5 s deadline (no sleep past it).
    for _ in range(3):
        expect_status(stub, ALPHA, "InProgress")
    stub.add_response("cancel_command", {}, {"CommandId": CMD1, "InstanceIds": [ALPHA]})

    result = ssm.run("apply", apply_env(deadline=5))

    assert result.code == 1
    assert ssm.clock.sleeps == [2.0, 3.0]
    assert result.err_lines == [
        f"wg-site-to-site: apply on alpha ({ALPHA}) did not finish within the deadline of 5 s "
        f"(WG_S2S_DEADLINE_SECONDS): still waiting for command {CMD1} "
        "(last status InProgress; cancel requested)"
    ]


def test_apply_aws_error_is_one_line_naming_the_site(ssm):
    ssm.stub().add_client_error(
        "send_command", "AccessDeniedException", "not authorized to perform: ssm:SendCommand"
    )

    result = ssm.run("apply", apply_env())

    assert result.code == 1
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith(
        f"wg-site-to-site: apply on alpha ({ALPHA}) failed calling AWS: "
    )
    assert "ssm:SendCommand" in result.err


def test_apply_deadline_while_the_instance_never_registers_names_that(ssm):
    stub = ssm.stub()
    for _ in range(3):
        stub.add_client_error("send_command", "InvalidInstanceId", "")

    result = ssm.run("apply", apply_env(deadline=5))

    assert result.code == 1
    assert len(result.err_lines) == 1
    assert "apply on alpha" in result.err[0:80]
    assert f"waiting for instance {ALPHA} to register with SSM" in result.err
    assert "deadline of 5 s" in result.err


def gateways_env() -> dict[str, str]:
    gateways = [
        {"site": "alpha", "region": "eu-west-1", "instanceId": ALPHA, "interface": "wg0"},
        {"site": "beta", "region": "us-east-1", "instanceId": BETA, "interface": "wg0"},
    ]
    return {"WG_S2S_GATEWAYS": json.dumps(gateways), "WG_S2S_DEADLINE_SECONDS": "600"}


CHECK = [WAIT_FOR_BOOT, CHECK_PATH]


def one_gateway_env() -> dict[str, str]:
    gateway = {"site": "alpha", "region": "eu-west-1", "instanceId": ALPHA, "interface": "wg0"}
    return {"WG_S2S_GATEWAYS": json.dumps([gateway])}


def test_verify_success_prints_one_line_per_site_from_the_check_lines(ssm):
    for region, instance, age, peer in (
        ("eu-west-1", ALPHA, 12, "10.255.255.1"),
        ("us-east-1", BETA, 7, "10.255.255.0"),
    ):
        stub = ssm.stub(region)
        expect_send(stub, instance, CHECK)
        expect_status(stub, instance, "InProgress")
        expect_status(
            stub,
            instance,
            "Success",
            stdout=f"check interface ok wg0 up\ncheck handshake ok {age} s ago\n"
            f"check ping ok {peer} 3/3\n",
        )

    result = ssm.run("verify", gateways_env())

    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "alpha: ok (interface wg0 up, handshake 12 s ago, ping 10.255.255.1 3/3)",
        "beta: ok (interface wg0 up, handshake 7 s ago, ping 10.255.255.0 3/3)",
    ]


def test_verify_failure_names_the_site_and_check_and_prints_the_journal_tail(ssm):
    alpha = ssm.stub("eu-west-1")
    expect_send(alpha, ALPHA, CHECK)
    expect_status(
        alpha,
        ALPHA,
        "Success",
        stdout="check handshake ok 3 s ago\ncheck ping ok 10.255.255.1 3/3\n",
    )
    beta = ssm.stub("us-east-1")
    expect_send(beta, BETA, CHECK)
    expect_status(
        beta,
        BETA,
        "Failed",
        code=1,
        stdout="check interface ok wg0 up\ncheck handshake FAILED last handshake 412 s ago\n"
        "check ping FAILED 10.255.255.1 0/3\n",
    )
    expect_send(beta, BETA, [journal_command("wg0")], command_id=CMD2)
    expect_status(
        beta,
        BETA,
        "Success",
        command_id=CMD2,
        stdout="Nov 26 20:01:02 beta wg-quick[812]: [#] ip link add wg0 type wireguard\n"
        "Nov 26 20:01:03 beta wg-site-to-site-apply[901]: firewall reconciled\n",
    )

    result = ssm.run("verify", gateways_env())

    assert result.code == 1
    assert result.out.splitlines() == ["alpha: ok (handshake 3 s ago, ping 10.255.255.1 3/3)"]
    assert result.err_lines[0] == (
        f"wg-site-to-site: verify on beta ({BETA}) failed: check handshake FAILED "
        "(last handshake 412 s ago); check ping FAILED (10.255.255.1 0/3)"
    )
    journal = result.err_lines.index("  journal of beta (last 2 lines):")
    assert result.err_lines[journal + 1 :] == [
        "    Nov 26 20:01:02 beta wg-quick[812]: [#] ip link add wg0 type wireguard",
        "    Nov 26 20:01:03 beta wg-site-to-site-apply[901]: firewall reconciled",
    ]


def test_verify_fails_a_failed_check_line_even_when_the_script_exits_0(ssm):
    stub = ssm.stub()
    expect_send(stub, ALPHA, CHECK)
    expect_status(stub, ALPHA, "Success", stdout="check ping FAILED 10.255.255.1 0/3\n")
    expect_send(stub, ALPHA, [journal_command("wg0")], command_id=CMD2)
    expect_status(stub, ALPHA, "Success", command_id=CMD2, stdout="-- No entries --\n")

    result = ssm.run("verify", one_gateway_env())

    assert result.code == 1
    assert result.err_lines[0] == (
        f"wg-site-to-site: verify on alpha ({ALPHA}) failed: check ping FAILED (10.255.255.1 0/3)"
    )


def test_verify_fails_naming_a_source_dest_check_that_is_on(ssm):
    # The check's own line (tests/test_probe.py runs the script against moto): pings
    # across the tunnel answer, yet the VPC drops every forwarded packet.
    stub = ssm.stub()
    expect_send(stub, ALPHA, CHECK)
    expect_status(
        stub,
        ALPHA,
        "Failed",
        code=1,
        stdout="check ping ok 10.255.255.1 3/3\ncheck source-dest-check FAILED source/dest "
        "check on for eni-0abc: the VPC drops forwarded packets\n",
    )
    expect_send(stub, ALPHA, [journal_command("wg0")], command_id=CMD2)
    expect_status(stub, ALPHA, "Success", command_id=CMD2, stdout="-- No entries --\n")

    result = ssm.run("verify", one_gateway_env())

    assert result.code == 1
    assert result.err_lines[0] == (
        f"wg-site-to-site: verify on alpha ({ALPHA}) failed: check source-dest-check FAILED "
        "(source/dest check on for eni-0abc: the VPC drops forwarded packets)"
    )


def test_verify_journal_command_reads_the_project_units_and_the_interface():
    assert journal_command("wg7") == (
        "journalctl -u 'wg-site-to-site-*' -u 'wg-quick@wg7' -n 20 --no-pager"
    )


def test_verify_fails_when_the_check_prints_no_check_lines(ssm):
    stub = ssm.stub()
    expect_send(stub, ALPHA, CHECK)
    expect_status(
        stub, ALPHA, "Failed", code=127, stderr="sh: 1: wg-site-to-site-check: not found\n"
    )
    expect_send(stub, ALPHA, [journal_command("wg0")], command_id=CMD2)
    expect_status(stub, ALPHA, "Success", command_id=CMD2, stdout="-- No entries --\n")

    result = ssm.run("verify", one_gateway_env())

    assert result.code == 1
    assert result.err_lines[0] == (
        f"wg-site-to-site: verify on alpha ({ALPHA}) failed: "
        "the check printed no check lines (status Failed)"
    )
    assert "    sh: 1: wg-site-to-site-check: not found" in result.err_lines


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {**apply_env(), "WG_S2S_DEADLINE_SECONDS": "15m"},
            "wg-site-to-site: WG_S2S_DEADLINE_SECONDS='15m' is not a positive whole number "
            "of seconds",
        ),
        (
            {**apply_env(), "WG_S2S_INSTANCE_ID": "alpha"},
            "wg-site-to-site: WG_S2S_INSTANCE_ID='alpha' is not an EC2 instance id",
        ),
    ],
)
def test_apply_bad_input_is_one_line_and_exit_2(ssm, env, expected):
    result = ssm.run("apply", env)
    assert (result.code, result.err_lines, result.out) == (2, [expected], "")


def test_verify_with_no_gateways_is_bad_input(ssm):
    result = ssm.run("verify", {"WG_S2S_GATEWAYS": "[]"})
    assert (result.code, result.err_lines) == (
        2,
        ["wg-site-to-site: WG_S2S_GATEWAYS lists no gateways"],
    )


def test_verify_bad_gateway_list_names_the_entry_and_value(ssm):
    gateways = json.loads(gateways_env()["WG_S2S_GATEWAYS"])
    gateways[1]["interface"] = "wg0; reboot"
    result = ssm.run("verify", {"WG_S2S_GATEWAYS": json.dumps(gateways)})
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith(
        "wg-site-to-site: WG_S2S_GATEWAYS[1].interface='wg0; reboot': String should match pattern"
    )


def test_python_m_deployer_apply_with_a_missing_variable_is_one_line_and_exit_2():
    env = {key: value for key, value in os.environ.items() if not key.startswith("WG_S2S_")}
    env.update({"WG_S2S_SITE": "alpha", "WG_S2S_REGION": "eu-west-1"})
    done = subprocess.run(
        [sys.executable, "-m", "deployer", "apply"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "wg-site-to-site: environment variable WG_S2S_INSTANCE_ID is missing or empty"
    ]
    assert done.stdout == ""


# ------------------------------------------------------------------ two gateways per site

ENI0 = "eni-0a0a0a0a0a0a0a0a0"
ENI1 = "eni-0b1b1b1b1b1b1b1b1"
ELSEWHERE = "eni-0c2c2c2c2c2c2c2c2"
ALLOCATION = "eipalloc-0123456789abcdef0"
TAKEOVER = [WAIT_FOR_BOOT, f"{FAILOVER_AGENT_PATH} takeover"]


def public_ipv4_env() -> dict[str, str]:
    return {"WG_S2S_REGION": "eu-west-1", "WG_S2S_NETWORK_INTERFACE_ID": ENI1}


def expect_public_ipv4(stub: Stubber, on: bool) -> None:
    stub.add_response(
        "describe_network_interface_attribute",
        {"NetworkInterfaceId": ENI1, "AssociatePublicIpAddress": on},
        {"NetworkInterfaceId": ENI1, "Attribute": "associatePublicIpAddress"},
    )


def test_public_ipv4_turns_on_associate_public_ip_address_on_the_interface(ssm):
    stub = ssm.ec2()
    expect_public_ipv4(stub, on=False)
    stub.add_response(
        "modify_network_interface_attribute",
        {},
        {"NetworkInterfaceId": ENI1, "AssociatePublicIpAddress": True},
    )

    result = ssm.run("public-ipv4", public_ipv4_env())

    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        f"wg-site-to-site: public IPv4 on {ENI1} (eu-west-1): turned on (AssociatePublicIpAddress)"
    ]


def test_public_ipv4_is_idempotent_an_interface_that_has_it_is_not_modified(ssm):
    # Only the read is stubbed: a modify call would be unexpected and fail the command.
    expect_public_ipv4(ssm.ec2(), on=True)

    result = ssm.run("public-ipv4", public_ipv4_env())

    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        f"wg-site-to-site: public IPv4 on {ENI1} (eu-west-1): already on, nothing to do"
    ]


def test_public_ipv4_aws_error_is_one_line_and_exit_1(ssm):
    stub = ssm.ec2()
    expect_public_ipv4(stub, on=False)
    stub.add_client_error(
        "modify_network_interface_attribute",
        "UnauthorizedOperation",
        "not authorized to perform: ec2:ModifyNetworkInterfaceAttribute",
    )

    result = ssm.run("public-ipv4", public_ipv4_env())

    assert result.code == 1
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith(
        f"wg-site-to-site: public IPv4 on {ENI1} (eu-west-1) failed calling AWS: "
    )
    assert "ec2:ModifyNetworkInterfaceAttribute" in result.err


def drain_env(gateway: int = 1, deadline: int = 120) -> dict[str, str]:
    own, other = (ENI0, ENI1) if gateway == 0 else (ENI1, ENI0)
    return {
        "WG_S2S_SITE": "alpha",
        "WG_S2S_REGION": "eu-west-1",
        "WG_S2S_GATEWAY": str(gateway),
        "WG_S2S_NETWORK_INTERFACE_ID": own,
        "WG_S2S_OTHER_NETWORK_INTERFACE_ID": other,
        "WG_S2S_ALLOCATION_ID": ALLOCATION,
        "WG_S2S_DEADLINE_SECONDS": str(deadline),
    }


def expect_holder(stub: Stubber, eni: str | None) -> None:
    address: dict[str, Any] = {
        "AllocationId": ALLOCATION,
        "PublicIp": "203.0.113.10",
        "Domain": "vpc",
    }
    if eni is not None:
        address["NetworkInterfaceId"] = eni
    stub.add_response(
        "describe_addresses", {"Addresses": [address]}, {"AllocationIds": [ALLOCATION]}
    )


def expect_attachment(stub: Stubber, eni: str, instance: str | None) -> None:
    interface: dict[str, Any] = {"NetworkInterfaceId": eni}
    if instance is not None:
        interface["Attachment"] = {"InstanceId": instance, "Status": "attached", "DeviceIndex": 0}
    stub.add_response(
        "describe_network_interfaces",
        {"NetworkInterfaces": [interface]},
        {"NetworkInterfaceIds": [eni]},
    )


def test_drain_of_the_holder_runs_takeover_on_the_other_and_waits_for_the_elastic_ip(ssm):
    ec2 = ssm.ec2()
    expect_holder(ec2, ENI0)
    expect_attachment(ec2, ENI1, BETA)
    # The move is seen on the second read after the takeover (1 s apart).
    expect_holder(ec2, ENI0)
    expect_holder(ec2, ENI1)
    stub = ssm.stub()
    expect_send(stub, BETA, TAKEOVER)
    expect_status(stub, BETA, "InProgress")
    expect_status(stub, BETA, "Success", stdout="failover: alpha gateway 1 took over\n")

    result = ssm.run("drain", drain_env(gateway=0))

    assert (result.code, result.err) == (0, "")
    # 2 s of Run Command polling, then 1 s waiting for the Elastic IP to move.
    assert ssm.clock.sleeps == [2.0, 1.0]
    assert result.out.splitlines() == [
        f"wg-site-to-site: drain of alpha gateway 0 ({ENI0}): the other gateway ({BETA}, "
        f"{ENI1}) took over in 3 s"
    ]


@pytest.mark.parametrize(
    ("holder", "said"),
    [
        (ENI0, f"the Elastic IP {ALLOCATION} is on the other gateway's {ENI0}"),
        (None, f"the Elastic IP {ALLOCATION} is associated with no interface"),
        (ELSEWHERE, f"the Elastic IP {ALLOCATION} is on {ELSEWHERE}"),
    ],
    ids=["standby", "first-up", "elsewhere"],
)
def test_drain_of_a_gateway_that_does_not_hold_the_elastic_ip_does_nothing(ssm, holder, said):
    expect_holder(ssm.ec2(), holder)
    ssm.stub()  # no SSM answer: a Run Command would fail the drain

    result = ssm.run("drain", drain_env(gateway=1))

    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        f"wg-site-to-site: drain of alpha gateway 1 ({ENI1}): nothing to do, {said}"
    ]


def test_drain_when_the_other_gateway_has_no_instance_yet_does_nothing(ssm):
    ec2 = ssm.ec2()
    expect_holder(ec2, ENI1)
    expect_attachment(ec2, ENI0, None)
    ssm.stub()

    result = ssm.run("drain", drain_env(gateway=1))

    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        f"wg-site-to-site: drain of alpha gateway 1 ({ENI1}): nothing to do, the other "
        f"gateway's interface {ENI0} has no instance to take over (the site has one gateway "
        "until it has)"
    ]


def test_drain_fails_when_the_takeover_fails_with_the_gateways_output(ssm):
    ec2 = ssm.ec2()
    expect_holder(ec2, ENI1)
    expect_attachment(ec2, ENI0, ALPHA)
    stub = ssm.stub()
    expect_send(stub, ALPHA, TAKEOVER)
    expect_status(
        stub, ALPHA, "Failed", code=1, stderr="wg-site-to-site-failover: wgA: config not applied\n"
    )

    result = ssm.run("drain", drain_env(gateway=1))

    assert result.code == 1
    assert result.out == ""
    assert result.err_lines[0] == (
        f"wg-site-to-site: drain of alpha gateway 1 ({ENI1}) failed: the takeover on {ALPHA} "
        f"ended Failed (exit code 1, command {CMD1})"
    )
    assert "    wg-site-to-site-failover: wgA: config not applied" in result.err_lines


def test_drain_fails_at_the_deadline_when_the_elastic_ip_does_not_move(ssm):
    ec2 = ssm.ec2()
    expect_holder(ec2, ENI1)
    expect_attachment(ec2, ENI0, ALPHA)
    stub = ssm.stub()
    expect_send(stub, ALPHA, TAKEOVER)
    expect_status(stub, ALPHA, "Success")
    # Read at 0, 1, 2 and 3 s: the deadline is 3 s.
    for _ in range(4):
        expect_holder(ec2, ENI1)

    result = ssm.run("drain", drain_env(gateway=1, deadline=3))

    assert result.code == 1
    assert ssm.clock.sleeps == [1.0, 1.0, 1.0]
    assert result.err_lines == [
        f"wg-site-to-site: drain of alpha gateway 1 ({ENI1}) did not finish within the deadline "
        f"of 3 s (WG_S2S_DEADLINE_SECONDS): still waiting for the Elastic IP {ALLOCATION} to "
        f"move to {ENI0} (the takeover on {ALPHA} succeeded; it is on {ENI1})"
    ]


def test_drain_aws_error_is_one_line_and_exit_1(ssm):
    ssm.ec2().add_client_error(
        "describe_addresses", "InvalidAllocationID.NotFound", "The allocation ID does not exist"
    )

    result = ssm.run("drain", drain_env())

    assert result.code == 1
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith(
        f"wg-site-to-site: drain of alpha gateway 1 ({ENI1}) failed calling AWS: "
    )
    assert "InvalidAllocationID.NotFound" in result.err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"WG_S2S_GATEWAY": "2"},
            "wg-site-to-site: WG_S2S_GATEWAY='2' is not a gateway index (0 or 1)",
        ),
        (
            {"WG_S2S_ALLOCATION_ID": "203.0.113.10"},
            "wg-site-to-site: WG_S2S_ALLOCATION_ID='203.0.113.10' is not an Elastic IP "
            "allocation id",
        ),
        (
            {"WG_S2S_OTHER_NETWORK_INTERFACE_ID": ENI1},
            f"wg-site-to-site: WG_S2S_OTHER_NETWORK_INTERFACE_ID='{ENI1}' is the gateway's own "
            "interface (WG_S2S_NETWORK_INTERFACE_ID)",
        ),
        (
            {"WG_S2S_OTHER_NETWORK_INTERFACE_ID": ""},
            "wg-site-to-site: environment variable WG_S2S_OTHER_NETWORK_INTERFACE_ID is missing "
            "or empty",
        ),
    ],
    ids=["gateway", "allocation", "same-interface", "missing"],
)
def test_drain_bad_input_is_one_line_and_exit_2(ssm, change, expected):
    ssm.ec2()  # no answer: nothing may be called
    result = ssm.run("drain", {**drain_env(), **change})
    assert (result.code, result.err_lines, result.out) == (2, [expected], "")


def test_public_ipv4_bad_interface_is_one_line_and_exit_2(ssm):
    ssm.ec2()
    env = {**public_ipv4_env(), "WG_S2S_NETWORK_INTERFACE_ID": "i-0123456789abcdef0"}
    result = ssm.run("public-ipv4", env)
    assert (result.code, result.err_lines) == (
        2,
        [
            "wg-site-to-site: WG_S2S_NETWORK_INTERFACE_ID='i-0123456789abcdef0' is not a "
            "network interface id"
        ],
    )
