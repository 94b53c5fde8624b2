"""The second `pulumi up` is a no-op (issue 13, point 1).

The first run's outputs are the state; the second run's inputs, with the provider's
schema defaults filled in, are compared with them under the provider's diff suppression
(plan.provider_model, after terraform-provider-aws ec2_instance.go). On d82e7db the
gateway was attached with `primaryNetworkInterface`, and the second run planned
`sourceDestCheck false => true` on both instances: ModifyInstanceAttribute would have
turned the check back on and the VPC dropped every forwarded packet.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from plan.engine import Plan, PlanError, run_program
from plan.second_run import changes_between, second_run_changes
from tests.conftest import shipped_plan, stack_config

INSTANCE = "aws:ec2/instance:Instance"

# A gateway on a standalone interface, the two ways the provider offers to attach it.
_PROGRAM = """\
import pulumi_aws as aws
interface = aws.ec2.NetworkInterface(
    "gateway", subnet_id="subnet-0123456789abcdef0", source_dest_check=False
)
aws.ec2.Instance("gateway", ami="ami-0123456789abcdef0", instance_type="t4g.nano", {attach})
"""
_ATTACH = {
    "primary": "primary_network_interface={'network_interface_id': interface.id}",
    "device-0": "network_interfaces=[{'device_index': 0, 'network_interface_id': interface.id}]",
}


def _program(tmp_path: Path, attach: str) -> Path:
    program = tmp_path / "__main__.py"
    program.write_text(_PROGRAM.format(attach=attach))
    return program


@pytest.fixture(scope="module")
def dev_runs() -> tuple[Plan, Plan]:
    """`pulumi up` of dev, then the `pulumi preview` of the next run over its state (the
    session's shipped plans: neither is changed here)."""
    return shipped_plan("dev", preview=False), shipped_plan("dev", preview=True)


def test_a_second_up_of_the_dev_stack_changes_nothing(dev_runs: tuple[Plan, Plan]) -> None:
    assert changes_between(*dev_runs) == []


def test_the_gateway_is_attached_where_the_provider_suppresses_the_check(
    dev_runs: tuple[Plan, Plan],
) -> None:
    # The mechanism the no-op rests on, as the plan records it (see components/gateway.py).
    plan = dev_runs[1]
    for site in ("alpha", "beta"):
        instance = plan.one(INSTANCE, f"{site}-gateway")
        assert "primaryNetworkInterface" not in instance.inputs
        assert "sourceDestCheck" not in instance.inputs
        (attached,) = instance.inputs["networkInterfaces"]
        interface = plan.one("aws:ec2/networkInterface:NetworkInterface", f"{site}-gateway")
        assert attached == {"deviceIndex": 0, "networkInterfaceId": interface.outputs["id"]}
        # What the provider's Read stores: the interface's check, off.
        assert instance.outputs["sourceDestCheck"] is False


def test_primary_network_interface_turns_the_check_back_on_at_the_second_up(
    tmp_path: Path,
) -> None:
    # terraform-provider-aws#44768: the schema default (true) against the state Read
    # filled in from the interface (false), with no suppression for this block.
    changes = second_run_changes(
        "dev",
        stack_config("dev"),
        program=_program(tmp_path, _ATTACH["primary"]),
        disabled_default_providers=(),
    )
    assert changes == [f"{INSTANCE} gateway: sourceDestCheck false => true"]


def test_the_deprecated_block_at_device_0_keeps_the_check_off(tmp_path: Path) -> None:
    changes = second_run_changes(
        "dev",
        stack_config("dev"),
        program=_program(tmp_path, _ATTACH["device-0"]),
        disabled_default_providers=(),
    )
    assert changes == []


@pytest.mark.parametrize("attach", sorted(_ATTACH))
def test_the_check_cannot_be_set_on_the_instance_as_well(tmp_path: Path, attach: str) -> None:
    # ConflictsWith: source_dest_check next to either block fails the provider's Check.
    program = _program(tmp_path, _ATTACH[attach] + ", source_dest_check=False")
    with pytest.raises(PlanError, match="conflicts with sourceDestCheck"):
        run_program("dev", stack_config("dev"), program=program, disabled_default_providers=())
