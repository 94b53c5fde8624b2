"""core/health.py: CloudWatch's alarm evaluation, the alarm rules, and the config checks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core import health
from core.alerts import AlertsConfig, alerts_problems
from core.config import ConfigError
from core.health import HANDSHAKE_STALE, TUNNEL_DOWN, AlarmRule, MissingData, evaluate

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


def test_tunnel_down_is_three_of_three_minutes_below_one_missing_breaching():
    assert (TUNNEL_DOWN.metric, TUNNEL_DOWN.statistic) == ("TunnelUp", "Minimum")
    assert (TUNNEL_DOWN.evaluation_periods, TUNNEL_DOWN.datapoints_to_alarm) == (3, 3)
    assert TUNNEL_DOWN.period_seconds == 60
    assert evaluate(TUNNEL_DOWN, [1, 1, 1, 1, 1]) == "OK"
    assert evaluate(TUNNEL_DOWN, [1, 1, 0, 0, 1]) == "OK"
    assert evaluate(TUNNEL_DOWN, [1, 1, 0, 0, 0]) == "ALARM"


def test_a_silent_gateway_is_tunnel_down():
    # Missing as breaching: a gateway that stops reporting pages like one that is down.
    assert evaluate(TUNNEL_DOWN, [None] * 5, "OK") == "ALARM"
    # Real points still in the range count: the guide's "0 - - - -" row stays OK until
    # they age out of the evaluation range.
    assert evaluate(TUNNEL_DOWN, [1, 1, None, None, None], "OK") == "OK"
    assert evaluate(TUNNEL_DOWN, [1, None, None, None, None], "OK") == "OK"
    assert evaluate(TUNNEL_DOWN, [0, None, None, None, None], "OK") == "ALARM"
    assert evaluate(TUNNEL_DOWN, [None, None, None, None, 1], "ALARM") == "OK"
    assert evaluate(replace(TUNNEL_DOWN, treat_missing_data="missing"), [None] * 5) == (
        "INSUFFICIENT_DATA"
    )


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
