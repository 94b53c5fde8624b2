"""What keeps the suite fast (issue 13, point 17) without changing what it checks: the plan
engine reads botocore's region list once per process, the user data is parsed by libyaml,
and `planned` (tests/conftest.py) runs the program once per distinct input."""

from __future__ import annotations

import yaml

import core.config
import tests.conftest
from core.render import decode_user_data, parse_user_data
from plan.engine import plan_stack, reveal
from tests.conftest import planned, stack_config


def test_the_region_list_is_read_once_per_process(monkeypatch):
    import botocore.session

    sessions = []
    real = botocore.session.get_session

    def counting() -> botocore.session.Session:
        sessions.append(1)
        return real()

    monkeypatch.setattr(botocore.session, "get_session", counting)
    core.config.known_regions.cache_clear()
    config = stack_config("dev")
    for _ in range(3):
        core.config.load_stack_config(config)
    assert len(sessions) == 1
    assert "us-east-1" in core.config.known_regions()
    assert len(sessions) == 1


def test_user_data_parses_as_yaml_safe_load_reads_it(single_region_plan):
    (instance, *_) = single_region_plan.by_type("aws:ec2/instance:Instance")
    text = decode_user_data(reveal(instance.inputs["userDataBase64"]))
    assert parse_user_data(text) == yaml.safe_load(text)


def test_planned_runs_the_program_once_per_input_and_hands_out_copies(monkeypatch):
    runs = []

    def counting(stack, **kwargs):
        runs.append((stack, kwargs.get("preview")))
        return plan_stack(stack, **kwargs)

    monkeypatch.setattr(tests.conftest, "plan_stack", counting)
    monkeypatch.setattr(tests.conftest, "_PLANS", {})
    first = planned("single-region")
    second = planned("single-region")
    assert runs == [("single-region", True)]
    assert first is not second
    assert [r.urn for r in first.resources] == [r.urn for r in second.resources]
    first.resources.clear()
    assert planned("single-region").resources, "a caller's change reached the memo"
    planned("single-region", preview=False)
    assert runs == [("single-region", True), ("single-region", False)]
