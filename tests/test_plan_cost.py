"""The monthly cost at the end of a plan: counted from the plan, each price cited."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from core import health
from plan import cost
from plan.document import Document, public_document
from plan.engine import REPO, Plan


@pytest.fixture(scope="module")
def base(dev_preview_plan: Plan) -> Document:
    return public_document(dev_preview_plan)


def _added(document: Document, type_: str, name: str, **fields: Any) -> Document:
    """`document` with one more resource like the first of `type_`, renamed."""
    changed = copy.deepcopy(document)
    model = next(r for r in changed["resources"] if r["type"] == type_)
    extra = copy.deepcopy(model)
    extra.update(urn=f"{model['urn']}-{name}", name=name, **fields)
    changed["resources"].append(extra)
    return changed


def test_dev_cost_counts_every_billed_resource(base):
    found = cost.monthly_cost(base)

    lines = {line.item: line for line in found.lines}
    assert lines["EC2 t4g.nano (us-east-1)"].quantity == "1 x $0.0042/h"
    assert lines["EC2 t4g.nano (eu-west-1)"].quantity == "1 x $0.0046/h"
    assert lines["public IPv4 (Elastic IP)"].quantity == "2 x $0.005/h"
    assert lines["EBS gp3 root volumes (us-east-1)"].quantity == "8 GB x $0.08/GB-month"
    assert lines["KMS keys"].quantity == "2 x $1.00/month"
    # What the probes publish: the source/dest check per gateway (Stack, Site), every other
    # metric per peer (Stack, Site, Peer) and TunnelUp again per instance and peer (the
    # tunnel alarms' series); each of the two gateways has one peer.
    per_gateway = len(health.METRICS) + len(health.PER_INSTANCE_METRICS)
    assert per_gateway == 7
    assert lines["CloudWatch custom metrics"].quantity == f"{2 * per_gateway} x $0.30/month"
    alarms = sum(
        1 for r in base["resources"] if r["type"] == "aws:cloudwatch/metricAlarm:MetricAlarm"
    )
    assert lines["CloudWatch alarms (standard resolution)"].quantity == f"{alarms} x $0.10/month"
    assert lines["CloudWatch dashboards"].quantity == "1 x $3.00/month"
    assert found.unpriced == ()
    assert found.total_cents == sum(line.cents or 0 for line in found.lines)


def test_adding_a_site_or_an_alarm_changes_the_total(base):
    before = cost.monthly_cost(base).total_cents
    alarm = _added(base, "aws:cloudwatch/metricAlarm:MetricAlarm", "gamma-tunnel-down")
    assert cost.monthly_cost(alarm).total_cents == before + 10

    site = _added(base, "aws:ec2/instance:Instance", "gamma-gateway", region="us-east-1")
    site = _added(site, "aws:ec2/eip:Eip", "gamma-address")
    site = _added(site, "aws:kms/key:Key", "gamma-wireguard-key")
    state = {"peers": [{"name": "alpha"}, {"name": "beta"}]}
    site = _added(
        site,
        "aws:ssm/parameter:Parameter",
        "gamma-desired-state",
        inputs={
            "name": "/wg-site-to-site/dev/gamma/desired-state",
            "insecureValue": json.dumps(state),
        },
    )
    found = cost.monthly_cost(site)
    # One more t4g.nano and its 8 GB in us-east-1, an address, a key, and its metrics: the
    # source/dest check, and 5 metrics plus the per-instance TunnelUp for each of 2 peers.
    hours = cost.HOURS_PER_MONTH
    more = 0.0042 * hours + 0.005 * hours + 8 * 0.08 + 1.00 + (1 + 6 * 2) * 0.30
    assert found.total_cents - before == pytest.approx(more * 100, abs=2)
    assert found.total_cents == sum(line.cents or 0 for line in found.lines)


def test_a_region_without_prices_is_said_not_guessed(base):
    elsewhere = copy.deepcopy(base)
    for resource in elsewhere["resources"]:
        if resource["name"] == "beta-gateway":
            resource["region"] = "ap-south-2"

    found = cost.monthly_cost(elsewhere)

    line = next(x for x in found.lines if x.item == "EC2 t4g.nano (ap-south-2)")
    assert line.cents is None
    assert line.note == "region not in plan/cost.py's table"
    text = "\n".join(cost.render_lines(found))
    assert "not priced" in text
    assert "(without 2 unpriced: EC2 t4g.nano (ap-south-2), EBS gp3 root volumes (ap-south-2))" in (
        text
    )


def test_every_price_names_its_source_and_date():
    source = (REPO / "plan" / "cost.py").read_text()
    assert re.search(r'^AS_OF = "\d{4}-\d{2}"', source, re.MULTILINE)
    for name in ("EC2", "VPC", "EBS", "KMS", "CLOUDWATCH", "SSM", "VPN"):
        assert re.search(rf'^{name}_PRICING = "https://aws\.amazon\.com/', source, re.MULTILINE)
    assert cost.vpn_monthly_cents() == 3650


def test_readme_cost_paragraph_uses_the_plans_count(base):
    readme = (REPO / "README.md").read_text()
    paragraph = next(p for p in readme.split("\n\n") if p.startswith("Cost ("))
    found = cost.monthly_cost(base)
    assert f"{cost.dollars(found.total_cents)} a month" in paragraph
    assert f"{cost.dollars(cost.vpn_monthly_cents())}" in paragraph
    for line in found.lines:
        if line.cents:
            assert cost.dollars(line.cents) in paragraph, line.item
