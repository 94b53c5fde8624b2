"""The gateway keys' KMS policies do not depend on who runs the program (issue 13, point 5).

A preview runs as the read-only preview role, a deploy as the deploy role, a local `up`
as a person: the mocks answer getCallerIdentity and getSessionContext as the role a test
names, as AWS would for each of them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from plan.engine import ACCOUNT, Plan, PlanError, run_program
from tests.conftest import shipped_plan, stack_config

KEY = "aws:kms/key:Key"
PREVIEW_ROLE = "wg-site-to-site-preview"
DEPLOY_ROLE = "wg-site-to-site-deployer"  # the mocks' caller when a test names none


def key_policies(plan: Plan) -> dict[str, Any]:
    return {key.name: json.loads(str(key.inputs["policy"])) for key in plan.by_type(KEY)}


def deployer_principals(plan: Plan) -> set[str]:
    return {
        statement["Principal"]["AWS"]
        for policy in key_policies(plan).values()
        for statement in policy["Statement"]
        if statement["Sid"] == "DeployerWritesThroughSsm"
    }


def without_deployer() -> dict[str, Any]:
    config = stack_config("dev")
    del config["deployer"]
    return config


@pytest.fixture(scope="module")
def unset_by_preview_role() -> Plan:
    return run_program("dev", without_deployer(), caller_role=PREVIEW_ROLE)


@pytest.fixture(scope="module")
def unset_by_deploy_role() -> Plan:
    return run_program("dev", without_deployer(), caller_role=DEPLOY_ROLE)


def test_the_committed_stacks_set_the_deployer():
    for stack in ("dev", "single-region"):
        deployer = stack_config(stack)["deployer"]
        assert deployer.startswith(f"arn:aws:iam::{ACCOUNT}:role/"), stack


def test_with_the_deployer_set_two_callers_write_identical_key_policies():
    by_deploy_role = shipped_plan("dev", preview=True)
    by_preview_role = run_program("dev", stack_config("dev"), caller_role=PREVIEW_ROLE)

    assert len(key_policies(by_deploy_role)) == 2
    assert key_policies(by_preview_role) == key_policies(by_deploy_role)
    assert deployer_principals(by_preview_role) == {stack_config("dev")["deployer"]}


def test_without_it_each_caller_rewrites_both_key_policies(
    unset_by_preview_role, unset_by_deploy_role
):
    # What preview.yml and deploy.yml did on every PR before the stacks set it.
    before, after = key_policies(unset_by_preview_role), key_policies(unset_by_deploy_role)
    assert sorted(before) == sorted(after)
    assert all(before[key] != after[key] for key in before)
    assert deployer_principals(unset_by_preview_role) == {
        f"arn:aws:iam::{ACCOUNT}:role/{PREVIEW_ROLE}"
    }
    assert deployer_principals(unset_by_deploy_role) == {
        f"arn:aws:iam::{ACCOUNT}:role/{DEPLOY_ROLE}"
    }


def test_a_deployer_of_another_account_is_refused_in_one_line():
    config = stack_config("dev")
    config["deployer"] = "arn:aws:iam::111122223333:role/deploy"

    with pytest.raises(PlanError) as raised:
        run_program("dev", config)

    (line,) = str(raised.value).splitlines()
    assert line.startswith(
        "wg-site-to-site:deployer: arn:aws:iam::111122223333:role/deploy is not in account "
        f"{ACCOUNT}, where this stack deploys"
    )
