"""Tunnel health: the metrics a gateway publishes and the alarms on them, as data.

One definition, two consumers: the Pulumi component builds its CloudWatch alarms from
the rules here, and the lab evaluates the same rules over what the gateways sent, with
`evaluate` (CloudWatch's M-of-N evaluation with its missing-data treatments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from core.config import PROJECT

NAMESPACE = "WgSiteToSite"
DIMENSION_STACK = "Stack"
DIMENSION_SITE = "Site"

# Each tunnel alarm names its gateway instance (its id) in this tag, so a policy can
# tell which gateway an alarm watches: the metric's dimensions name only the site.
GATEWAY_TAG = "GatewayInstance"

TUNNEL_UP = "TunnelUp"
HANDSHAKE_AGE = "HandshakeAgeSeconds"
PROBE_RTT = "ProbeRttMilliseconds"
RECEIVED_BYTES = "ReceivedBytes"
SENT_BYTES = "SentBytes"
# Metric name -> CloudWatch unit, as the probe publishes them.
METRICS: dict[str, str] = {
    TUNNEL_UP: "Count",
    HANDSHAKE_AGE: "Seconds",
    PROBE_RTT: "Milliseconds",
    RECEIVED_BYTES: "Bytes",
    SENT_BYTES: "Bytes",
}

DEFAULT_PROBE_INTERVAL_SECONDS = 60
# WireGuard rejects a session 180 s after its handshake (REJECT_AFTER_TIME); with
# keepalive a healthy peer rehandshakes every 120 s, so an age above this is a dead
# session, not an idle one (day2-operations.md, Health).
HANDSHAKE_STALE_SECONDS = 180

Statistic = Literal["Minimum", "Maximum", "Average", "Sum", "SampleCount"]
Comparison = Literal[
    "LessThanThreshold",
    "LessThanOrEqualToThreshold",
    "GreaterThanThreshold",
    "GreaterThanOrEqualToThreshold",
]
MissingData = Literal["breaching", "notBreaching", "ignore", "missing"]
AlarmState = Literal["OK", "ALARM", "INSUFFICIENT_DATA"]


@dataclass(frozen=True)
class AlarmRule:
    """A CloudWatch metric alarm's evaluation settings, independent of any one site."""

    key: str  # the alarm name's last part: <project>-<stack>-<site>-<key>
    description: str
    metric: str
    statistic: Statistic
    comparison: Comparison
    threshold: float
    period_seconds: int
    evaluation_periods: int  # N
    datapoints_to_alarm: int  # M
    treat_missing_data: MissingData
    namespace: str = NAMESPACE

    @property
    def evaluation_range(self) -> int:
        """How many recent periods CloudWatch retrieves to evaluate N of them.

        The CloudWatch guide's example retrieves 5 for N = 3; the exact number is not
        published, so the lab uses N + 2.
        """
        return self.evaluation_periods + 2

    def breaches(self, value: float) -> bool:
        if self.comparison == "LessThanThreshold":
            return value < self.threshold
        if self.comparison == "LessThanOrEqualToThreshold":
            return value <= self.threshold
        if self.comparison == "GreaterThanThreshold":
            return value > self.threshold
        return value >= self.threshold


TUNNEL_DOWN = AlarmRule(
    key="tunnel-down",
    description=(
        "No successful ping across the tunnel for 3 minutes (or the probe stopped reporting)."
    ),
    metric=TUNNEL_UP,
    statistic="Minimum",
    comparison="LessThanThreshold",
    threshold=1,
    period_seconds=60,
    evaluation_periods=3,
    datapoints_to_alarm=3,
    # A gateway that is down, or whose probe died, sends nothing: silence must page
    # (AWS advises the same for its own VPN's TunnelState).
    treat_missing_data="breaching",
)

HANDSHAKE_STALE = AlarmRule(
    key="handshake-stale",
    description=(
        f"The latest WireGuard handshake is older than {HANDSHAKE_STALE_SECONDS} s: the "
        "session has expired (REJECT_AFTER_TIME)."
    ),
    metric=HANDSHAKE_AGE,
    statistic="Maximum",
    comparison="GreaterThanThreshold",
    threshold=HANDSHAKE_STALE_SECONDS,
    period_seconds=60,
    # Two of three minutes: one late keepalive round must not page, two in a row is a
    # session that does not come back.
    evaluation_periods=3,
    datapoints_to_alarm=2,
    # Silence is tunnel-down's to report; paging twice for one dead probe helps no one.
    treat_missing_data="notBreaching",
)

# EC2's own recovery: AWS's example alarm for the recover action uses this metric,
# statistic, threshold and two one-minute periods, and advises treating missing data as
# missing for alarms with EC2 actions ("Add recover actions to Amazon CloudWatch alarms";
# "Configuring how CloudWatch alarms treat missing data").
SYSTEM_CHECK = AlarmRule(
    key="system-check",
    description="EC2 system status check failed: AWS recovers the instance onto other hardware.",
    metric="StatusCheckFailed_System",
    statistic="Maximum",
    comparison="GreaterThanOrEqualToThreshold",
    threshold=1,
    period_seconds=60,
    evaluation_periods=2,
    datapoints_to_alarm=2,
    treat_missing_data="missing",
    namespace="AWS/EC2",
)

TUNNEL_RULES = (TUNNEL_DOWN, HANDSHAKE_STALE)


def alarm_name(stack: str, site: str, rule: AlarmRule) -> str:
    return f"{PROJECT}-{stack}-{site}-{rule.key}"


def recover_action(region: str) -> str:
    """The EC2 recover action: the instance keeps its id, ENI, private IPs and EIPs."""
    return f"arn:aws:automate:{region}:ec2:recover"


def evaluate(  # noqa: PLR0911 - one outcome per case of the guide's rules
    rule: AlarmRule,
    datapoints: Sequence[float | None],
    current: AlarmState = "INSUFFICIENT_DATA",
) -> AlarmState:
    """The state CloudWatch would set, given the evaluation range's period values.

    `datapoints` are the rule's statistic per period, oldest first, None where the
    period has no data; pass the last `rule.evaluation_range` periods. `current` is the
    alarm's state before this evaluation (what `ignore` keeps).

    Follows "Configuring how CloudWatch alarms treat missing data" (CloudWatch User
    Guide, "How alarm state is evaluated when data is missing"): with at least N real
    data points the N most recent are evaluated and the treatment is not used; with
    fewer, every real point is evaluated and missing ones fill in as few times as
    possible, as the treatment says. The guide's two tables are the unit tests.
    """
    n, m = rule.evaluation_periods, rule.datapoints_to_alarm
    real = [value for value in datapoints if value is not None]
    if len(real) >= n:
        breaching = sum(rule.breaches(value) for value in real[-n:])
        return "ALARM" if breaching >= m else "OK"
    fill = n - len(real)
    treatment = rule.treat_missing_data
    if treatment == "breaching":
        return "ALARM" if sum(map(rule.breaches, real)) + fill >= m else "OK"
    if treatment == "notBreaching":
        return "ALARM" if sum(map(rule.breaches, real)) >= m else "OK"
    if not real:
        return current if treatment == "ignore" else "INSUFFICIENT_DATA"
    if not all(map(rule.breaches, real)):
        # A real non-breaching point among too few: the tables give OK for both
        # `ignore` and `missing` (rows "0 - - - -", "0 - X - -", "- - - - 0").
        return "ALARM" if sum(map(rule.breaches, real)) >= m else "OK"
    if treatment == "ignore":
        return current
    # `missing` with only breaching points: ALARM when the oldest point of the range is
    # one of them ("X - - - -"), otherwise not enough data ("- - - - X").
    return "ALARM" if datapoints and datapoints[0] is not None else "INSUFFICIENT_DATA"


def aggregate(
    rule: AlarmRule,
    samples: Sequence[tuple[float, float]],
    end: float,
    periods: int,
    period_seconds: float | None = None,
) -> list[float | None]:
    """Per-period statistic values for `evaluate`, from (timestamp, value) samples.

    The `periods` periods end at `end` (exclusive), oldest first. `period_seconds`
    overrides the rule's period, so the lab can run a one-minute rule on a shortened
    probe interval.
    """
    length = period_seconds if period_seconds is not None else rule.period_seconds
    start = end - periods * length
    buckets: list[list[float]] = [[] for _ in range(periods)]
    for timestamp, value in samples:
        if start <= timestamp < end:
            buckets[min(math.floor((timestamp - start) / length), periods - 1)].append(value)
    return [_statistic(rule.statistic, bucket) if bucket else None for bucket in buckets]


def _statistic(statistic: Statistic, values: list[float]) -> float:
    if statistic == "Minimum":
        return min(values)
    if statistic == "Maximum":
        return max(values)
    if statistic == "Sum":
        return sum(values)
    if statistic == "SampleCount":
        return float(len(values))
    return sum(values) / len(values)


def put_metric_policy() -> dict[str, Any]:
    """The gateway role's permission to publish: this namespace only.

    PutMetricData has no resource type, so the resource is "*" and the limit is the
    `cloudwatch:namespace` condition key (CloudWatch's "Using condition keys to limit
    access to CloudWatch namespaces").
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PublishTunnelHealth",
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": NAMESPACE}},
            }
        ],
    }


def keepalive_problems(alerts_configured: bool, persistent_keepalive: int | None) -> list[str]:
    """Health needs keepalive; without it an idle tunnel's handshake age only grows.

    One line per problem, in config.py's style, for its cross checks.
    """
    if alerts_configured and persistent_keepalive is None:
        return [
            f"{PROJECT}:tunnel.persistentKeepalive: required when {PROJECT}:alerts is set "
            "(without keepalive an idle tunnel's handshakes stop and the health alarms "
            "would fire); set it, for example to 25"
        ]
    return []
