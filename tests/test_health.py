"""core/health.py: CloudWatch's alarm evaluation, the alarm rules, and the config checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from core import health
from core.alerts import AlertsConfig, alerts_problems
from core.config import ConfigError
from core.health import (
    HANDSHAKE_STALE,
    NOT_REPORTING,
    TUNNEL_DOWN,
    AlarmRule,
    MissingData,
    evaluate,
)

# A rule whose breaching points are "X" (value 1 > 0) and non-breaching "0".
RULE = AlarmRule(
    key="t",
    description="",
    metric="M",
    statistic="Maximum",
    comparison="GreaterThanThreshold",
    threshold=0,
    period_seconds=60,
    evaluation_periods=3,
    datapoints_to_alarm=3,
    treat_missing_data="missing",
)
TREATMENTS: tuple[MissingData, ...] = ("missing", "ignore", "breaching", "notBreaching")


def points(text: str) -> list[float | None]:
    return [{"0": 0.0, "X": 1.0, "-": None}[c] for c in text.split()]


# The two tables of "Configuring how CloudWatch alarms treat missing data" (CloudWatch
# User Guide): data points, then the state for MISSING, IGNORE, BREACHING, NOT BREACHING.
# "keep" is "Retain current state".
THREE_OF_THREE = [
    ("0 - X - X", "OK", "OK", "OK", "OK"),
    ("0 - - - -", "OK", "OK", "OK", "OK"),
    ("- - - - -", "INSUFFICIENT_DATA", "keep", "ALARM", "OK"),
    ("0 X X - X", "ALARM", "ALARM", "ALARM", "ALARM"),
    ("- - - - X", "INSUFFICIENT_DATA", "keep", "ALARM", "OK"),
    ("X - - - -", "ALARM", "keep", "ALARM", "OK"),
]
TWO_OF_THREE = [
    ("0 - X - X", "ALARM", "ALARM", "ALARM", "ALARM"),
    ("0 0 X 0 X", "ALARM", "ALARM", "ALARM", "ALARM"),
    ("0 - X - -", "OK", "OK", "ALARM", "OK"),
    ("- - - - 0", "OK", "OK", "ALARM", "OK"),
    ("- - - - X", "INSUFFICIENT_DATA", "keep", "ALARM", "OK"),
]


@pytest.mark.parametrize(
    ("m", "row"),
    [(3, row) for row in THREE_OF_THREE] + [(2, row) for row in TWO_OF_THREE],
    ids=[f"3of3 {r[0]}" for r in THREE_OF_THREE] + [f"2of3 {r[0]}" for r in TWO_OF_THREE],
)
def test_evaluation_follows_the_cloudwatch_guide(m, row):
    data, *expected = row
    for treatment, state in zip(TREATMENTS, expected, strict=True):
        rule = replace(RULE, datapoints_to_alarm=m, treat_missing_data=treatment)
        for current in ("OK", "ALARM"):
            want = current if state == "keep" else state
            assert evaluate(rule, points(data), current) == want, (treatment, current)


def test_tunnel_down_is_three_of_three_minutes_below_one_missing_missing():
    assert (TUNNEL_DOWN.metric, TUNNEL_DOWN.statistic) == ("TunnelUp", "Minimum")
    assert (TUNNEL_DOWN.evaluation_periods, TUNNEL_DOWN.datapoints_to_alarm) == (3, 3)
    assert TUNNEL_DOWN.period_seconds == 60
    assert TUNNEL_DOWN.treat_missing_data == "missing"
    assert evaluate(TUNNEL_DOWN, [1, 1, 1, 1, 1]) == "OK"
    assert evaluate(TUNNEL_DOWN, [1, 1, 0, 0, 1]) == "OK"
    assert evaluate(TUNNEL_DOWN, [1, 1, 0, 0, 0]) == "ALARM"


# One value per minute since the alarm was created (None: the gateway sent nothing).
NEVER_REPORTED: list[float | None] = [None] * 30
REPORTED_THEN_SILENT: list[float | None] = [*([1.0] * 10), *([None] * 20)]
PING_FAILING: list[float | None] = [*([1.0] * 10), *([0.0] * 10)]


def _alerts(rule: AlarmRule, values: Sequence[float | None]) -> list[health.Notification]:
    return [n for n in health.notifications(rule, values) if n.alert]


@pytest.mark.parametrize("rule", health.TUNNEL_RULES, ids=lambda r: r.key)
def test_a_gateway_that_never_reported_notifies_no_one(rule: AlarmRule):
    # A first deploy or a planned replacement: a new instance, so a new alarm
    # (INSUFFICIENT_DATA) on a metric of its own, which has no data yet.
    assert _alerts(rule, NEVER_REPORTED) == []
    if rule.per_instance:
        # Not even an OK message: the alarm stays where CloudWatch created it.
        assert health.notifications(rule, NEVER_REPORTED) == []
        assert set(health.states(rule, NEVER_REPORTED)) == {"INSUFFICIENT_DATA"}


def test_a_gateway_that_stops_reporting_alerts_within_three_minutes():
    found = [n for rule in health.TUNNEL_RULES for n in _alerts(rule, REPORTED_THEN_SILENT)]
    assert found, "nobody hears that the gateway stopped reporting"
    first = min(n.period for n in found)
    # Period 10 is the first without a report; the state after period 12 is 3 minutes on.
    assert first <= 12
    assert [(n.old, n.new) for n in _alerts(NOT_REPORTING, REPORTED_THEN_SILENT)] == [
        ("OK", "INSUFFICIENT_DATA")
    ]
    # ...and only once: tunnel-down keeps quiet about the same silence.
    assert _alerts(TUNNEL_DOWN, REPORTED_THEN_SILENT) == []


def test_a_gateway_that_resumes_reporting_clears_the_alert():
    values = REPORTED_THEN_SILENT + [1.0] * 3
    assert [n.new for n in health.notifications(NOT_REPORTING, values)][-1] == "OK"


def test_a_failing_ping_while_reporting_is_tunnel_down():
    (alert,) = _alerts(TUNNEL_DOWN, PING_FAILING)
    assert (alert.old, alert.new) == ("OK", "ALARM")
    assert alert.period == 12  # three failing minutes: 10, 11, 12
    assert _alerts(NOT_REPORTING, PING_FAILING) == []


def test_failing_pings_from_the_first_report_page_after_three_minutes():
    # (The probe holds its per-instance TunnelUp back until this boot's tunnel first
    # answered; a rule fed zeros from its first period still pages, after 3 of them.)
    (alert,) = _alerts(TUNNEL_DOWN, [0.0] * 5)
    assert (alert.period, alert.new) == (2, "ALARM")


def test_the_old_rule_would_have_paged_on_every_deploy():
    # Negative control: missing data as breaching pages for a gateway that never reported.
    old = replace(TUNNEL_DOWN, treat_missing_data="breaching", notify=frozenset({"ALARM"}))
    assert _alerts(old, NEVER_REPORTED) != []


def test_handshake_stale_above_180_seconds_two_of_three():
    assert HANDSHAKE_STALE.metric == "HandshakeAgeSeconds"
    assert HANDSHAKE_STALE.threshold == 180
    assert evaluate(HANDSHAKE_STALE, [100, 120, 180, 60, 181]) == "OK"
    assert evaluate(HANDSHAKE_STALE, [100, 120, 181, 60, 300]) == "ALARM"
    assert evaluate(HANDSHAKE_STALE, [None] * 5, "OK") == "OK"


def test_aggregate_makes_period_values_for_the_rule_statistic():
    samples = [(0.5, 1.0), (1.5, 1.0), (1.9, 0.0), (3.2, 1.0)]
    assert health.aggregate(TUNNEL_DOWN, samples, end=4, periods=4, period_seconds=1) == [
        1.0,
        0.0,
        None,
        1.0,
    ]
    assert health.aggregate(HANDSHAKE_STALE, [(10, 5.0), (20, 7.0)], end=60, periods=1) == [7.0]


def test_put_metric_policy_is_limited_to_the_namespace():
    (statement,) = health.put_metric_policy()["Statement"]
    assert statement["Action"] == "cloudwatch:PutMetricData"
    assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "WgSiteToSite"}}


def test_alerts_need_keepalive():
    alerts = AlertsConfig.model_validate({"emails": ["ops@example.com"]})
    (problem,) = alerts_problems(alerts, ["us-east-1"], None)
    assert problem.startswith(
        "wg-site-to-site:tunnel.persistentKeepalive: required when wg-site-to-site:alerts is set"
    )
    assert alerts_problems(alerts, ["us-east-1"], 25) == []
    assert alerts_problems(None, ["us-east-1"], None) == []


def test_alerts_topic_must_be_in_a_site_region():
    arn = "arn:aws:sns:ap-south-1:123456789012:pager"
    alerts = AlertsConfig.model_validate({"topicArn": arn})
    (problem,) = alerts_problems(alerts, ["us-east-1", "eu-west-1"], 25)
    assert problem.startswith(f"wg-site-to-site:alerts.topicArn: '{arn}' is in ap-south-1")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "needs emails, topicArn or both"),
        ({"emails": ["not-an-address"]}, "is not an e-mail address"),
        ({"emails": ["a@example.com", "A@example.com"]}, "lists an address twice"),
        ({"topicArn": "arn:aws:sqs:us-east-1:123456789012:q"}, "is not an SNS topic ARN"),
        ({"email": ["a@example.com"]}, "unknown key"),
    ],
)
def test_bad_alerts_config_is_one_line(raw, message):
    # Through config.py's own formatter, as it will be once `alerts` is a key there.
    from pydantic import ValidationError

    from core.config import _format_pydantic

    with pytest.raises(ValidationError) as caught:
        AlertsConfig.model_validate(raw)
    problems = _format_pydantic(caught.value)
    assert len(problems) == 1
    assert message in problems[0]
    assert ConfigError(problems).problems == problems


# --- per peer: the dimensions the probe publishes and the alarms watch ------------------


def test_tunnel_metrics_are_per_peer_and_the_source_dest_check_per_gateway():
    assert health.DIMENSION_PEER == "Peer"
    up = health.metric_dimensions(health.TUNNEL_UP, "dev", "alpha", "beta")
    assert up == {"Stack": "dev", "Site": "alpha", "Peer": "beta"}
    for metric in (health.HANDSHAKE_AGE, health.PROBE_RTT):
        assert health.metric_dimensions(metric, "dev", "alpha", "beta")["Peer"] == "beta"
        with pytest.raises(ValueError, match="per peer"):
            health.metric_dimensions(metric, "dev", "alpha")
    assert health.metric_dimensions(health.SOURCE_DEST_CHECK, "dev", "alpha") == {
        "Stack": "dev",
        "Site": "alpha",
    }
    assert health.metric_dimensions(health.TUNNEL_UP, "dev", "alpha", "beta", "i-1") == {
        "Stack": "dev",
        "Site": "alpha",
        "Peer": "beta",
        "InstanceId": "i-1",
    }
    with pytest.raises(ValueError, match="not published per instance"):
        health.metric_dimensions(health.HANDSHAKE_AGE, "dev", "alpha", "beta", "i-1")


def test_custom_metrics_grow_per_peer():
    # Per peer: TunnelUp, handshake age, RTT and both byte counts, and TunnelUp again per
    # instance; per gateway: the source/dest check. A two-site gateway keeps its 7.
    assert health.custom_metric_count(1) == 7
    assert health.custom_metric_count(9) == 6 * 9 + 1


def test_each_tunnel_alarm_watches_one_peer_and_the_recovery_alarm_the_instance():
    dimensions = {
        rule.key: health.alarm_dimensions(rule, "dev", "alpha", "beta", "i-1")
        for rule in (*health.TUNNEL_RULES, health.SYSTEM_CHECK)
    }
    assert dimensions == {
        "tunnel-down": {"Stack": "dev", "Site": "alpha", "Peer": "beta", "InstanceId": "i-1"},
        "not-reporting": {"Stack": "dev", "Site": "alpha", "Peer": "beta", "InstanceId": "i-1"},
        "handshake-stale": {"Stack": "dev", "Site": "alpha", "Peer": "beta"},
        "system-check": {"InstanceId": "i-1"},
    }
    assert all(rule.per_peer for rule in health.TUNNEL_RULES)
    assert not health.SYSTEM_CHECK.per_peer
    with pytest.raises(ValueError, match="per peer"):
        health.alarm_dimensions(TUNNEL_DOWN, "dev", "alpha", None, "i-1")
    # Each alarm's series is one the probe publishes.
    for rule in health.TUNNEL_RULES:
        instance = "i-1" if rule.per_instance else None
        assert dimensions[rule.key] == health.metric_dimensions(
            rule.metric, "dev", "alpha", "beta", instance
        )


def test_alarm_names_name_the_site_or_the_pair():
    assert (
        health.alarm_name("dev", "alpha", TUNNEL_DOWN, "beta")
        == "wg-site-to-site-dev-alpha-beta-tunnel-down"
    )
    # Without a peer, the site's own alarm (as for a two-site stack before).
    assert (
        health.alarm_name("dev", "alpha", NOT_REPORTING)
        == "wg-site-to-site-dev-alpha-not-reporting"
    )
    assert (
        health.alarm_name("dev", "alpha", health.SYSTEM_CHECK)
        == "wg-site-to-site-dev-alpha-system-check"
    )


# --- two gateways per site ---------------------------------------------------------------

READY: list[float | None] = [1.0] * 10


def test_failover_metric_names_and_dimensions_the_agent_publishes():
    assert (health.ACTIVE, health.STANDBY_READY, health.FAILOVERS) == (
        "Active",
        "StandbyReady",
        "Failovers",
    )
    assert health.metric_dimensions(health.ACTIVE, "ha", "alpha", instance="i-1") == {
        "Stack": "ha",
        "Site": "alpha",
        "InstanceId": "i-1",
    }
    with pytest.raises(ValueError, match="Active is published per instance"):
        health.metric_dimensions(health.ACTIVE, "ha", "alpha")
    for metric in (health.STANDBY_READY, health.FAILOVERS):
        assert health.metric_dimensions(metric, "ha", "alpha") == {"Stack": "ha", "Site": "alpha"}
        with pytest.raises(ValueError, match="not published per instance"):
            health.metric_dimensions(metric, "ha", "alpha", instance="i-1")
    # Active per gateway, StandbyReady and Failovers per site; nothing with one gateway.
    assert health.ha_custom_metric_count(2) == 4
    assert health.ha_custom_metric_count(1) == 0


def test_redundancy_lost_pages_when_the_standby_goes_silent():
    # A dead standby publishes nothing: missing data is breaching.
    values = [*READY, *([None] * 5)]
    (alert,) = _alerts(health.REDUNDANCY_LOST, values)
    # Periods 10-14 silent: CloudWatch evaluates the real points of its range (N + 2) as
    # long as there are any and fills in as few missing ones as it can ("0 - - - -" is OK
    # even when missing is breaching), so silence pages once the range is empty: 5 periods.
    assert (alert.old, alert.new, alert.period) == ("OK", "ALARM", 14)
    # The negative control: with silence as missing, a dead standby never pages.
    quiet = replace(health.REDUNDANCY_LOST, treat_missing_data="missing")
    assert _alerts(quiet, values) == []


def test_redundancy_lost_pages_on_a_standby_that_cannot_take_over_and_clears_when_it_can():
    values = [*READY, 0.0, 0.0, 0.0, 1.0]
    found = health.notifications(health.REDUNDANCY_LOST, values)
    assert [(n.period, n.old, n.new) for n in found] == [
        (0, "INSUFFICIENT_DATA", "OK"),
        (12, "OK", "ALARM"),
        (13, "ALARM", "OK"),
    ]
    # One period in which nothing answered (a probe blip) is no page: 3 of 3.
    assert _alerts(health.REDUNDANCY_LOST, [*READY, 0.0, None, 1.0, 1.0]) == []


def test_redundancy_lost_pages_a_first_deploy_until_the_standby_is_ready():
    # The README says so: until the standby reports ready, the site has no redundancy.
    (alert, *_) = _alerts(health.REDUNDANCY_LOST, [None] * 5 + READY)
    assert (alert.new, alert.period) == ("ALARM", 0)
    assert health.states(health.REDUNDANCY_LOST, [None] * 5 + READY)[-1] == "OK"


def test_failed_over_sends_one_message_per_failover_and_nothing_otherwise():
    values: list[float | None] = [None] * 5 + [1.0] + [None] * 5
    found = health.notifications(health.FAILED_OVER, values)
    assert [(n.period, n.new) for n in found] == [(5, "ALARM")]
    assert health.notifications(health.FAILED_OVER, [None] * 10) == []


def test_ha_not_reporting_watches_active_so_a_gateway_turned_standby_is_not_silent():
    # A gateway that was active and stepped down: it sends Active (0 now) every period and
    # no TunnelUp any more. Per period, the rules' statistic (SampleCount) of each series:
    tunnel_up: list[float | None] = [*([1.0] * 10), *([None] * 10)]
    active: list[float | None] = [1.0] * 20
    assert health.not_reporting_rule(True) is health.NOT_REPORTING_HA
    assert health.not_reporting_rule(False) is NOT_REPORTING
    assert (health.NOT_REPORTING_HA.metric, health.NOT_REPORTING_HA.per_instance) == (
        "Active",
        True,
    )
    assert _alerts(health.NOT_REPORTING_HA, active) == []
    # The single-gateway rule on TunnelUp would page for a healthy standby.
    assert _alerts(NOT_REPORTING, tunnel_up) != []
    # ...and a gateway that stops sending Active does page, once.
    assert [(n.old, n.new) for n in _alerts(health.NOT_REPORTING_HA, tunnel_up)] == [
        ("OK", "INSUFFICIENT_DATA")
    ]
    assert health.alarm_dimensions(health.NOT_REPORTING_HA, "ha", "alpha", None, "i-1") == (
        health.metric_dimensions(health.ACTIVE, "ha", "alpha", instance="i-1")
    )


def test_the_second_gateways_alarms_end_in_gateway_1_and_the_first_keeps_its_names():
    assert health.alarm_name("ha", "alpha", NOT_REPORTING, gateway=1) == (
        "wg-site-to-site-ha-alpha-not-reporting-gateway-1"
    )
    assert health.alarm_name("ha", "alpha", TUNNEL_DOWN, "beta", gateway=1) == (
        "wg-site-to-site-ha-alpha-beta-tunnel-down-gateway-1"
    )
    assert health.alarm_name("ha", "alpha", TUNNEL_DOWN, "beta", gateway=0) == (
        health.alarm_name("ha", "alpha", TUNNEL_DOWN, "beta")
    )
    assert health.alarm_name("ha", "alpha", health.REDUNDANCY_LOST) == (
        "wg-site-to-site-ha-alpha-redundancy-lost"
    )
