"""Components on their own, under minimal mocks: what they promise their callers."""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import settings as pulumi_settings

from components.wireguard_identity import WireGuardIdentity, WireGuardIdentityArgs
from core.keys import public_key
from plan.engine import run_program
from tests.conftest import stack_config

KEY = "YWxwaGEtcGxhbnRlZC1rZXktZm9yLXRoZS10ZXN0cyE="


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        if args.typ == "random:index/randomBytes:RandomBytes":
            outputs["base64"] = KEY
        if args.typ == "aws:ec2/eip:Eip":
            outputs.update(publicIp="203.0.113.10", allocationId="eipalloc-1")
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []


@pytest.fixture
def mocks() -> Iterator[None]:
    pulumi_settings.reset_options(project="wg-site-to-site", stack="test")
    pulumi.runtime.set_mocks(_Mocks(), project="wg-site-to-site", stack="test", preview=False)
    yield
    pulumi_settings.reset_options()


@pulumi.runtime.test
def test_identity_keeps_the_private_key_secret_and_the_public_key_plain(
    mocks: None,
) -> Awaitable[None]:
    identity = WireGuardIdentity(
        "alpha", WireGuardIdentityArgs(key_generation=1, tags={"stack": "test"})
    )

    async def check() -> None:
        assert await identity.private_key.is_secret()
        assert not await identity.public_key.is_secret()
        assert await identity.public_key.future() == public_key(KEY)
        assert await identity.public_ip.future() == "203.0.113.10"

    return check()


def test_an_output_in_an_f_string_fails_the_plan(tmp_path: Path) -> None:
    # The engine sets PULUMI_ERROR_OUTPUT_STRING, so this class of bug cannot hide in
    # the program: str() of an Output raises instead of rendering a warning text.
    program = tmp_path / "__main__.py"
    program.write_text(
        "import pulumi, pulumi_aws as aws\n"
        "vpc = aws.ec2.Vpc('v', cidr_block='10.9.0.0/16')\n"
        "aws.ec2.Subnet('s', vpc_id=vpc.id, cidr_block=f'{vpc.cidr_block}')\n"
    )
    with pytest.raises(Exception, match="Calling __str__ on an Output"):
        run_program("dev", stack_config("dev"), program=program)
