"""TunnelHealth under the project's mock engine, and the health policies on its plan."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.tunnel_health import PEER_RULES, HealthSite, dashboard_body
from core import health
from core.config import load_stack_config
from core.facts import gateway_facts
from plan.engine import Plan, read_stack_file, run_program
from policy import offline, rules
from tests.conftest import stack_config

PROGRAM = Path(__file__).resolve().parent / "health_program.py"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
TOPIC = "aws:sns/topic:Topic"
REGIONS = {"alpha": "us-east-1", "beta": "eu-west-1"}
PEER = {"alpha": "beta", "beta": "alpha"}
EXISTING_TOPIC = "arn:aws:sns:eu-west-1:123456789012:ops-pager"


def plan_health(
    monkeypatch: pytest.MonkeyPatch, alerts: dict[str, Any] | None, preview: bool = False
) -> Plan:
    if alerts is not None:
        monkeypatch.setenv("WG_S2S_TEST_ALERTS", json.dumps(alerts))
    return run_program("dev", stack_config("dev"), program=PROGRAM, preview=preview)


@pytest.fixture(scope="module", params=[False, True], ids=["update", "preview"])
def plan(request: pytest.FixtureRequest) -> Iterator[Plan]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield plan_health(
            monkeypatch,
            {"emails": ["ops@example.com", "noc@example.com"], "topicArn": EXISTING_TOPIC},
            preview=request.param,
        )


@pytest.fixture(scope="module")
def update_plan() -> Iterator[Plan]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield plan_health(monkeypatch, None)


def topic_arn(plan: Plan, region: str) -> str:
    (topic,) = [t for t in plan.by_type(TOPIC) if plan.region_of(t) == region]
    return str(topic.outputs["arn"])


@pytest.mark.parametrize("site", ["alpha", "beta"])
@pytest.mark.parametrize("rule", health.TUNNEL_RULES, ids=lambda r: r.key)
def test_each_site_has_its_tunnel_alarms_from_the_shared_rules(update_plan, site, rule):
    # A rule about one pair has an alarm per peer (named with it); not-reporting is the
    # gateway's, on its first peer's series.
    per_peer = rule in PEER_RULES
    name = f"{site}-{PEER[site]}-{rule.key}" if per_peer else f"{site}-{rule.key}"
    alarm = update_plan.one(ALARM, name)
    inputs = alarm.inputs

    assert update_plan.region_of(alarm) == REGIONS[site]
    assert inputs["name"] == f"wg-site-to-site-dev-{name}"
    assert inputs["namespace"] == health.NAMESPACE
    assert inputs["metricName"] == rule.metric
    instance = update_plan.one("aws:ec2/instance:Instance", f"{site}-gateway")
    expected = {"Stack": "dev", "Site": site, "Peer": PEER[site]}
    if rule.per_instance:
        expected["InstanceId"] = instance.outputs["id"]
    assert inputs["dimensions"] == expected
    assert (inputs["statistic"], inputs["comparisonOperator"], inputs["threshold"]) == (
        rule.statistic,
        rule.comparison,
        rule.threshold,
    )
    assert (inputs["period"], inputs["evaluationPeriods"], inputs["datapointsToAlarm"]) == (
        rule.period_seconds,
        rule.evaluation_periods,
        rule.datapoints_to_alarm,
    )
    assert inputs["treatMissingData"] == rule.treat_missing_data
    topic = topic_arn(update_plan, REGIONS[site])
    # The topic on exactly the states core.health.notifications models.
    for state, key in (
        ("ALARM", "alarmActions"),
        ("OK", "okActions"),
        ("INSUFFICIENT_DATA", "insufficientDataActions"),
    ):
        assert inputs.get(key) == ([topic] if state in rule.notify else None), key


@pytest.mark.parametrize("site", ["alpha", "beta"])
def test_silence_of_a_gateway_that_reported_pages_and_a_new_one_starts_quiet(update_plan, site):
    down = update_plan.one(ALARM, f"{site}-{PEER[site]}-tunnel-down")
    silent = update_plan.one(ALARM, f"{site}-not-reporting")
    instance = update_plan.one("aws:ec2/instance:Instance", f"{site}-gateway")
    topic = topic_arn(update_plan, REGIONS[site])
    # Missing data is not breaching: a gateway that never reported does not page...
    assert down.inputs["treatMissingData"] == "missing"
    # ...one that stops reporting does, through INSUFFICIENT_DATA, after 1 empty range.
    assert (silent.inputs["metricName"], silent.inputs["statistic"]) == ("TunnelUp", "SampleCount")
    assert silent.inputs["evaluationPeriods"] == 1
    assert silent.inputs["insufficientDataActions"] == [topic]
    # Both watch this instance's metric and are replaced with it (a new alarm starts in
    # INSUFFICIENT_DATA); the old alarm goes first, since the name is the same.
    for alarm in (down, silent):
        assert alarm.inputs["dimensions"]["InstanceId"] == instance.outputs["id"]
        assert alarm.options["replaceOnChanges"] == ["dimensions"]
        assert alarm.options["deleteBeforeReplace"] is True


@pytest.mark.parametrize("site", ["alpha", "beta"])
def test_recovery_alarm_recovers_the_gateway(update_plan, site):
    alarm = update_plan.one(ALARM, f"{site}-system-check")
    instance = update_plan.one("aws:ec2/instance:Instance", f"{site}-gateway")
    inputs = alarm.inputs

    assert update_plan.region_of(alarm) == REGIONS[site]
    assert (inputs["namespace"], inputs["metricName"]) == ("AWS/EC2", "StatusCheckFailed_System")
    assert inputs["dimensions"] == {"InstanceId": instance.outputs["id"]}
    assert inputs["alarmActions"][0] == f"arn:aws:automate:{REGIONS[site]}:ec2:recover"
    assert topic_arn(update_plan, REGIONS[site]) in inputs["alarmActions"]


def test_one_topic_per_region_with_the_configured_addresses(plan):
    topics = plan.by_type(TOPIC)
    assert sorted(str(plan.region_of(t)) for t in topics) == sorted(REGIONS.values())
    subscriptions = plan.by_type("aws:sns/topicSubscription:TopicSubscription")
    by_region = sorted((plan.region_of(s), s.inputs["endpoint"]) for s in subscriptions)
    assert by_region == sorted(
        (region, address)
        for region in REGIONS.values()
        for address in ("ops@example.com", "noc@example.com")
    )
    assert all(s.inputs["protocol"] == "email" for s in subscriptions)


def test_an_existing_topic_is_notified_by_alarms_of_its_region_only(plan):
    beta = plan.one(ALARM, "beta-alpha-tunnel-down").inputs
    alpha = plan.one(ALARM, "alpha-beta-tunnel-down").inputs
    assert EXISTING_TOPIC in beta["alarmActions"]
    assert EXISTING_TOPIC in beta["okActions"]
    assert EXISTING_TOPIC not in alpha["alarmActions"]


def test_dashboard_has_a_row_per_site_and_a_line_per_peer(update_plan):
    (dashboard,) = update_plan.by_type("aws:cloudwatch/dashboard:Dashboard")
    body = json.loads(dashboard.inputs["dashboardBody"])
    shown = {
        (w["properties"]["region"], w["y"], tuple(m[1] for m in w["properties"]["metrics"]))
        for w in body["widgets"]
    }
    for metrics in [
        (health.TUNNEL_UP,),
        (health.HANDSHAKE_AGE,),
        (health.PROBE_RTT,),
        (health.RECEIVED_BYTES, health.SENT_BYTES),
    ]:
        assert ("us-east-1", 0, metrics) in shown
        assert ("eu-west-1", 5, metrics) in shown
    for widget in body["widgets"]:
        site = widget["properties"]["title"].split(":")[0]
        for line in widget["properties"]["metrics"]:
            assert line[2:8] == ["Stack", "dev", "Site", site, "Peer", PEER[site]]
    assert update_plan.exports["dashboardUrl"] == (
        "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1"
        "#dashboards:name=wg-site-to-site-dev"
    )


def test_outputs_name_each_sites_alarms(update_plan):
    assert update_plan.exports["alarmNames"]["beta"] == {
        "not-reporting": "wg-site-to-site-dev-beta-not-reporting",
        "system-check": "wg-site-to-site-dev-beta-system-check",
    }
    assert update_plan.exports["peerAlarmNames"]["beta"] == {
        "alpha": {
            "tunnel-down": "wg-site-to-site-dev-beta-alpha-tunnel-down",
            "handshake-stale": "wg-site-to-site-dev-beta-alpha-handshake-stale",
        }
    }


def test_gateway_may_put_metrics_into_the_namespace_only(update_plan):
    policy = json.loads(
        update_plan.one("aws:iam/rolePolicy:RolePolicy", "alpha-put-metrics").inputs["policy"]
    )
    (statement,) = policy["Statement"]
    assert statement["Action"] == "cloudwatch:PutMetricData"
    assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "WgSiteToSite"}}


# ------------------------------------------------------------------------------ policies


def health_violations(resources: list[rules.Resource]) -> list[tuple[str, str, str]]:
    found = [
        ("metrics-permission-namespace-limited", r.name, message)
        for r in resources
        for message in rules.metrics_permission_namespace_limited(r.type, r.props)
    ]
    found += [
        (rule.name, r.name, message)
        for rule in rules.STACK_RULES
        if rule.name == "gateway-has-tunnel-alarm"
        for r, message in rule.check(resources)
    ]
    return found


def test_the_health_plan_passes_every_policy(plan):
    resources = offline.resources_from_plan(plan)
    assert rules.evaluate(resources) == []
    assert health_violations(resources) == []


def _edit(
    resources: list[rules.Resource], type_: str, name: str, **props: Any
) -> list[rules.Resource]:
    edited = []
    for r in resources:
        if r.type == type_ and r.name == name:
            new = copy.deepcopy(dict(r.props))
            for key, value in props.items():
                if value is None:
                    new.pop(key, None)
                else:
                    new[key] = value
            edited.append(rules.Resource(r.type, r.name, r.urn, new, r.dependencies))
        else:
            edited.append(r)
    return edited


def test_a_gateway_without_tunnel_alarm_fails(plan):
    resources = [
        r
        for r in offline.resources_from_plan(plan)
        if not (r.type == ALARM and r.name in ("beta-alpha-tunnel-down", "beta-not-reporting"))
    ]
    (violation,) = health_violations(resources)
    assert violation[:2] == ("gateway-has-tunnel-alarm", "beta-gateway")
    assert violation[2].startswith("gateway beta-gateway has no TunnelUp alarm")


def test_a_tunnel_alarm_without_action_fails(plan):
    resources = _edit(
        offline.resources_from_plan(plan), ALARM, "alpha-beta-tunnel-down", alarmActions=[]
    )
    # Only tunnel-down is blamed: not-reporting has no alarm action by design (it pages
    # on INSUFFICIENT_DATA), so it is not an alarm that tells no one.
    (violation,) = health_violations(resources)
    assert violation[:2] == ("gateway-has-tunnel-alarm", "alpha-beta-tunnel-down")
    assert "has no alarm action" in violation[2]


def test_a_not_reporting_alarm_alone_does_not_count(plan):
    # It pages when the gateway goes silent, never when its tunnel is down.
    resources = [
        r
        for r in offline.resources_from_plan(plan)
        if not (r.type == ALARM and r.name == "beta-alpha-tunnel-down")
    ]
    (violation,) = health_violations(resources)
    assert violation[:2] == ("gateway-has-tunnel-alarm", "beta-gateway")
    assert "nobody would hear that its tunnel is down" in violation[2]


def test_a_tunnel_alarm_that_names_no_gateway_does_not_count(update_plan):
    resources = offline.resources_from_plan(update_plan)
    untagged = []
    for r in resources:
        if r.type == ALARM and r.name in ("alpha-beta-tunnel-down", "alpha-not-reporting"):
            props = copy.deepcopy(dict(r.props))
            del props["tags"][health.GATEWAY_TAG]
            # Without the tag, the reference (and so the dependency) to the instance is gone.
            deps = frozenset(d for d in r.dependencies if "Instance::" not in d)
            untagged.append(rules.Resource(r.type, r.name, r.urn, props, deps))
        else:
            untagged.append(r)
    (violation,) = health_violations(untagged)
    assert violation[:2] == ("gateway-has-tunnel-alarm", "alpha-gateway")


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (None, "without a StringEquals cloudwatch:namespace condition"),
        ({"StringLike": {"cloudwatch:namespace": "*"}}, "without a StringEquals"),
        ({"StringEquals": {"cloudwatch:namespace": ["WgSiteToSite", "AWS/EC2"]}}, "not only"),
    ],
    ids=["no-condition", "string-like", "second-namespace"],
)
def test_a_metrics_grant_not_limited_to_the_namespace_fails(plan, condition, message):
    document = json.loads(gateway_policy(plan))
    if condition is None:
        del document["Statement"][0]["Condition"]
    else:
        document["Statement"][0]["Condition"] = condition
    resources = _edit(
        offline.resources_from_plan(plan),
        "aws:iam/rolePolicy:RolePolicy",
        "beta-put-metrics",
        policy=json.dumps(document),
    )
    (violation,) = health_violations(resources)
    assert violation[:2] == ("metrics-permission-namespace-limited", "beta-put-metrics")
    assert message in violation[2]


def test_wildcard_actions_count_as_putting_metrics():
    document = {"Statement": [{"Effect": "Allow", "Action": "cloudwatch:*", "Resource": "*"}]}
    props = {"policy": json.dumps(document)}
    assert rules.metrics_permission_namespace_limited(rules.ROLE_POLICY, props) != []
    document["Statement"][0]["Action"] = "cloudwatch:GetMetricData"
    props = {"policy": json.dumps(document)}
    assert rules.metrics_permission_namespace_limited(rules.ROLE_POLICY, props) == []


def gateway_policy(plan: Plan) -> str:
    policy = plan.one("aws:iam/rolePolicy:RolePolicy", "beta-put-metrics").inputs["policy"]
    assert isinstance(policy, str)
    return policy


# ------------------------------------------------------------------ two gateways per site

HA_STACK = Path(__file__).resolve().parent / "stacks"


@pytest.fixture(scope="module")
def ha_plan() -> Iterator[Plan]:
    """tests/stacks/Pulumi.ha.yaml (both sites with gateways: 2) under the health program."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("WG_S2S_TEST_ALERTS", json.dumps({"emails": ["ops@example.com"]}))
        yield run_program("ha", read_stack_file("ha", HA_STACK), program=PROGRAM, preview=False)


def gateway_ids(plan: Plan, site: str) -> tuple[str, str]:
    first = plan.one("aws:ec2/instance:Instance", f"{site}-gateway").outputs["id"]
    second = plan.one("aws:ec2/instance:Instance", f"{site}-gateway-1").outputs["id"]
    return str(first), str(second)


@pytest.mark.parametrize("site", ["alpha", "beta"])
def test_ha_each_gateway_has_its_own_tunnel_down_and_a_not_reporting_on_active(ha_plan, site):
    topic = topic_arn(ha_plan, REGIONS[site])
    for index, instance in enumerate(gateway_ids(ha_plan, site)):
        suffix = "-gateway-1" if index else ""
        down = ha_plan.one(ALARM, f"{site}-{PEER[site]}-tunnel-down{suffix}")
        assert down.inputs["name"] == f"wg-site-to-site-ha-{site}-{PEER[site]}-tunnel-down{suffix}"
        assert (down.inputs["metricName"], down.inputs["treatMissingData"]) == (
            "TunnelUp",
            "missing",
        )
        assert down.inputs["dimensions"] == {
            "Stack": "ha",
            "Site": site,
            "Peer": PEER[site],
            "InstanceId": instance,
        }
        assert down.inputs["tags"][health.GATEWAY_TAG] == instance
        silent = ha_plan.one(ALARM, f"{site}-not-reporting{suffix}")
        inputs = silent.inputs
        assert inputs["name"] == f"wg-site-to-site-ha-{site}-not-reporting{suffix}"
        # The standby sends no TunnelUp: each gateway's silence is read on its Active series.
        assert (inputs["namespace"], inputs["metricName"], inputs["statistic"]) == (
            "WgSiteToSite",
            "Active",
            "SampleCount",
        )
        assert inputs["dimensions"] == {"Stack": "ha", "Site": site, "InstanceId": instance}
        assert (inputs["evaluationPeriods"], inputs["treatMissingData"]) == (1, "missing")
        assert inputs["insufficientDataActions"] == [topic]
        assert inputs.get("alarmActions") is None
        for alarm in (down, silent):
            assert alarm.options["replaceOnChanges"] == ["dimensions"]
            assert alarm.options["deleteBeforeReplace"] is True
        recovery = ha_plan.one(ALARM, f"{site}-system-check{suffix}")
        assert recovery.inputs["dimensions"] == {"InstanceId": instance}
        assert recovery.inputs["alarmActions"][0] == f"arn:aws:automate:{REGIONS[site]}:ec2:recover"
    # The handshake age is the site's (whichever gateway is active sends it): one alarm.
    stale = [a.name for a in ha_plan.by_type(ALARM) if a.name.startswith(f"{site}-")]
    assert [name for name in stale if "handshake-stale" in name] == [
        f"{site}-{PEER[site]}-handshake-stale"
    ]


@pytest.mark.parametrize("site", ["alpha", "beta"])
def test_ha_site_has_a_redundancy_lost_alarm_on_standby_ready_missing_breaching(ha_plan, site):
    alarm = ha_plan.one(ALARM, f"{site}-redundancy-lost")
    inputs = alarm.inputs
    topic = topic_arn(ha_plan, REGIONS[site])
    assert ha_plan.region_of(alarm) == REGIONS[site]
    assert inputs["name"] == f"wg-site-to-site-ha-{site}-redundancy-lost"
    assert (inputs["namespace"], inputs["metricName"]) == ("WgSiteToSite", "StandbyReady")
    assert inputs["dimensions"] == {"Stack": "ha", "Site": site}
    assert (inputs["statistic"], inputs["comparisonOperator"], inputs["threshold"]) == (
        "Maximum",
        "LessThanThreshold",
        1,
    )
    assert (inputs["period"], inputs["evaluationPeriods"], inputs["datapointsToAlarm"]) == (
        health.DEFAULT_PROBE_INTERVAL_SECONDS,
        3,
        3,
    )
    # A dead standby publishes nothing: silence pages.
    assert inputs["treatMissingData"] == "breaching"
    assert (inputs["alarmActions"], inputs["okActions"]) == ([topic], [topic])


@pytest.mark.parametrize("site", ["alpha", "beta"])
def test_ha_site_has_a_failed_over_alarm_counting_failovers(ha_plan, site):
    inputs = ha_plan.one(ALARM, f"{site}-failed-over").inputs
    assert (inputs["metricName"], inputs["statistic"], inputs["comparisonOperator"]) == (
        "Failovers",
        "Sum",
        "GreaterThanOrEqualToThreshold",
    )
    assert inputs["dimensions"] == {"Stack": "ha", "Site": site}
    assert inputs["treatMissingData"] == "notBreaching"
    assert inputs["alarmActions"] == [topic_arn(ha_plan, REGIONS[site])]
    assert inputs.get("okActions") is None


def test_ha_outputs_name_both_gateways_alarms_and_the_sites(ha_plan):
    assert ha_plan.exports["alarmNames"]["alpha"] == {
        "not-reporting": "wg-site-to-site-ha-alpha-not-reporting",
        "not-reporting-gateway-1": "wg-site-to-site-ha-alpha-not-reporting-gateway-1",
        "system-check": "wg-site-to-site-ha-alpha-system-check",
        "system-check-gateway-1": "wg-site-to-site-ha-alpha-system-check-gateway-1",
        "redundancy-lost": "wg-site-to-site-ha-alpha-redundancy-lost",
        "failed-over": "wg-site-to-site-ha-alpha-failed-over",
    }
    assert ha_plan.exports["peerAlarmNames"]["alpha"] == {
        "beta": {
            "tunnel-down": "wg-site-to-site-ha-alpha-beta-tunnel-down",
            "tunnel-down-gateway-1": "wg-site-to-site-ha-alpha-beta-tunnel-down-gateway-1",
            "handshake-stale": "wg-site-to-site-ha-alpha-beta-handshake-stale",
        }
    }


def test_ha_dashboard_row_shows_active_per_gateway_standby_ready_and_failovers(ha_plan):
    (dashboard,) = ha_plan.by_type("aws:cloudwatch/dashboard:Dashboard")
    widgets = json.loads(dashboard.inputs["dashboardBody"])["widgets"]
    for site, y in (("alpha", 5), ("beta", 15)):
        row = {
            w["properties"]["metrics"][0][1]: w
            for w in widgets
            if w["y"] == y and w["properties"]["title"].startswith(f"{site}:")
        }
        assert set(row) == {"Active", "StandbyReady", "Failovers"}
        first, second = gateway_ids(ha_plan, site)
        assert [line[:8] for line in row["Active"]["properties"]["metrics"]] == [
            ["WgSiteToSite", "Active", "Stack", "ha", "Site", site, "InstanceId", first],
            ["WgSiteToSite", "Active", "Stack", "ha", "Site", site, "InstanceId", second],
        ]
        assert [m[-1]["label"] for m in row["Active"]["properties"]["metrics"]] == [
            f"gateway 0 ({first})",
            f"gateway 1 ({second})",
        ]
        assert row["StandbyReady"]["properties"]["metrics"][0][:6] == [
            "WgSiteToSite",
            "StandbyReady",
            "Stack",
            "ha",
            "Site",
            site,
        ]
        assert row["Failovers"]["properties"]["stat"] == "Sum"
    # The tunnel rows move down to make room: no widget overlaps another.
    cells = [
        (x, y)
        for w in widgets
        for x in range(w["x"], w["x"] + w["width"])
        for y in range(w["y"], w["y"] + w["height"])
    ]
    assert len(cells) == len(set(cells))
    assert sorted({w["y"] for w in widgets}) == [0, 5, 10, 15]


def test_ha_plan_passes_every_policy(ha_plan):
    resources = offline.resources_from_plan(ha_plan)
    assert rules.evaluate(resources) == []
    assert health_violations(resources) == []


def test_ha_site_without_its_second_instance_is_refused_and_a_single_one_with_it_too():
    ha = gateway_facts(load_stack_config(read_stack_file("ha", HA_STACK)), "ha")[0]
    single = gateway_facts(load_stack_config(stack_config("dev")), "dev")[0]
    with pytest.raises(
        ValueError, match="alpha has 2 gateway\\(s\\): second_instance_id is required"
    ):
        _ = HealthSite(facts=ha, provider=None, instance_id="i-1").instance_ids  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="for two gateways only"):
        _ = HealthSite(
            facts=single,
            provider=None,  # type: ignore[arg-type]
            instance_id="i-1",
            second_instance_id="i-2",
        ).instance_ids
    with pytest.raises(ValueError, match="the dashboard needs both gateways' ids"):
        dashboard_body("ha", [ha], {"alpha": ["i-1"]})
    # One gateway: the dashboard needs no instance ids, as before.
    assert dashboard_body("dev", [single]) == dashboard_body("dev", [single], {})


README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_cost_rows() -> dict[str, list[str]]:
    """The README's HA cost table: first cell -> the other cells."""
    text = README.read_text()
    section = text[text.index("## High availability") :]
    section = section[section.index("| per site, per month |") :]
    rows = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _figure(cell: str) -> int | None:
    """The cell's amount in cents ($ figure after the last colon), None for "–"."""
    if cell == "–":
        return None
    amount = cell.rsplit("$", 1)[1]
    dollars_, cents = amount.split(".")
    return int(dollars_) * 100 + int(cents)


def test_readme_ha_cost_table_is_computed_from_plan_cost_and_the_plans(update_plan, ha_plan):
    """Per site (alpha: us-east-1, t4g.nano, one peer): the README's figures from
    plan/cost.py's prices and the counts the plans and core.health give."""
    from plan import cost
    from tests.conftest import shipped_plan

    region, hours = "us-east-1", cost.HOURS_PER_MONTH
    gateway = shipped_plan("dev").one("aws:ec2/instance:Instance", "alpha-gateway").inputs
    instance_type = gateway["instanceType"]
    volume = gateway["rootBlockDevice"]["volumeSize"]

    def alarms(plan: Plan) -> int:
        return sum(1 for a in plan.by_type(ALARM) if plan.region_of(a) == region)

    peers = 1
    metrics = {
        1: health.custom_metric_count(peers),
        # The per-peer and per-site series are the site's whichever gateway sends them; the
        # per-instance TunnelUp is each gateway's; plus the failover agents' metrics.
        2: health.custom_metric_count(peers)
        + len(health.PER_INSTANCE_METRICS) * peers
        + health.ha_custom_metric_count(2),
    }
    expected: dict[int, dict[str, int]] = {}
    for gateways, plan in ((1, update_plan), (2, ha_plan)):
        figures = {
            "EC2": gateways * cost.INSTANCE_HOURLY[region][instance_type] * hours,
            # The Elastic IP, and with two gateways the standby's own public IPv4.
            "public IPv4": gateways * cost.PUBLIC_IPV4_HOURLY * hours,
            "EBS": gateways * volume * cost.GP3_GB_MONTH[region],
            "KMS": cost.KMS_KEY_MONTHLY,
            "CloudWatch custom metrics": metrics[gateways] * cost.CUSTOM_METRIC_MONTHLY,
            "CloudWatch alarms": alarms(plan) * cost.ALARM_METRIC_MONTHLY,
        }
        expected[gateways] = {key: cost._cents(value) for key, value in figures.items()}
        expected[gateways]["total"] = sum(expected[gateways].values())

    rows = _readme_cost_rows()
    seen = set()
    for label, cells in rows.items():
        key = next((k for k in expected[1] if label.startswith(k) or label == k), None)
        if key is None:
            assert label.startswith("VPN connection")
            assert [_figure(c) for c in cells] == [None, None, cost.vpn_monthly_cents()]
            continue
        seen.add(key)
        assert [_figure(c) for c in cells] == [
            expected[1][key],
            expected[2][key],
            (cost.vpn_monthly_cents() if key == "total" else None),
        ], label
    assert seen == set(expected[1])
    # The counts the table names.
    assert rows["CloudWatch alarms ($0.10/month)"][:2] == [
        f"{alarms(update_plan)}: {cost.dollars(expected[1]['CloudWatch alarms'])}",
        f"{alarms(ha_plan)}: {cost.dollars(expected[2]['CloudWatch alarms'])}",
    ]
    assert rows["CloudWatch custom metrics ($0.30/month)"][:2] == [
        f"{metrics[1]}: {cost.dollars(expected[1]['CloudWatch custom metrics'])}",
        f"{metrics[2]}: {cost.dollars(expected[2]['CloudWatch custom metrics'])}",
    ]
