"""Tunnel health: the metrics a gateway publishes and the alarms on them, as data.

One definition, two consumers: the Pulumi component builds its CloudWatch alarms from
the rules here, and the lab evaluates the same rules over what the gateways sent, with
`evaluate` (CloudWatch's M-of-N evaluation with its missing-data treatments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from core.config import PROJECT

T = TypeVar("T")

NAMESPACE = "WgSiteToSite"
DIMENSION_STACK = "Stack"
DIMENSION_SITE = "Site"
# TunnelUp also names the instance that measured it: the tunnel alarms watch one
# instance's metric and are replaced with it, so a gateway that has never reported (a
# first deploy, a planned replacement) has an alarm of its own with no data yet.
DIMENSION_INSTANCE = "InstanceId"
# A gateway with several peers publishes its tunnel metrics once per peer, named here by
# the peer's site name (issue 15): each peer has its own TunnelUp, its own alarms and its
# own line on the dashboard.
DIMENSION_PEER = "Peer"

# Each tunnel alarm names its gateway instance (its id) in this tag, so a policy can
# tell which gateway an alarm watches: the metric's dimensions name only the site.
GATEWAY_TAG = "GatewayInstance"

TUNNEL_UP = "TunnelUp"
HANDSHAKE_AGE = "HandshakeAgeSeconds"
PROBE_RTT = "ProbeRttMilliseconds"
RECEIVED_BYTES = "ReceivedBytes"
SENT_BYTES = "SentBytes"
# 1 while the gateway interface's source/dest check is on (the VPC then drops every
# forwarded packet, and TunnelUp is 0), 0 while it is off.
SOURCE_DEST_CHECK = "SourceDestCheck"
# Metric name -> CloudWatch unit, as the probe publishes them.
METRICS: dict[str, str] = {
    TUNNEL_UP: "Count",
    SOURCE_DEST_CHECK: "Count",
    HANDSHAKE_AGE: "Seconds",
    PROBE_RTT: "Milliseconds",
    RECEIVED_BYTES: "Bytes",
    SENT_BYTES: "Bytes",
}

# Published once per peer (Stack, Site, Peer): the tunnel to that peer, measured here.
PER_PEER_METRICS: tuple[str, ...] = (
    TUNNEL_UP,
    HANDSHAKE_AGE,
    PROBE_RTT,
    RECEIVED_BYTES,
    SENT_BYTES,
)
# Published once per gateway (Stack, Site): the instance's interface, whatever the peer.
PER_GATEWAY_METRICS: tuple[str, ...] = (SOURCE_DEST_CHECK,)
# Published a second time per peer with the instance's id too (Stack, Site, Peer,
# InstanceId: the tunnel alarms' series): each is one more custom metric per peer
# (cloud-init/probe.sh.j2, add_tunnel_up).
PER_INSTANCE_METRICS: tuple[str, ...] = (TUNNEL_UP,)


# --- two gateways per site (issue 16) ------------------------------------------------
# The failover agent (cloud-init/, /usr/local/sbin/wg-site-to-site-failover) publishes these,
# in NAMESPACE, with the probe's Stack and Site dimensions (metric_dimensions):
# 1 while this gateway holds the site's Elastic IP (it is the active), else 0; from both
# gateways, each with its own InstanceId. Its not-reporting alarm watches this series: a
# standby publishes no TunnelUp.
ACTIVE = "Active"
# From the standby only (Stack, Site): 1 when its config is applied and both of its probes
# (the partner's private address, the peers' tunnel addresses through the active) answer,
# else 0. A dead standby publishes nothing: the redundancy-lost alarm treats that as 0.
STANDBY_READY = "StandbyReady"
# 1 (Stack, Site) from the gateway that just took over, once per takeover.
FAILOVERS = "Failovers"
FAILOVER_METRICS: dict[str, str] = {ACTIVE: "Count", STANDBY_READY: "Count", FAILOVERS: "Count"}
# Published once per gateway with its InstanceId (Stack, Site, InstanceId).
HA_GATEWAY_METRICS: tuple[str, ...] = (ACTIVE,)
# Published per site (Stack, Site), whichever gateway sends them.
HA_SITE_METRICS: tuple[str, ...] = (STANDBY_READY, FAILOVERS)


def ha_custom_metric_count(gateways: int = 2) -> int:
    """How many custom metrics a site's failover agents add (none with one gateway)."""
    if gateways < 2:
        return 0
    return len(HA_GATEWAY_METRICS) * gateways + len(HA_SITE_METRICS)


def custom_metric_count(peers: int) -> int:
    """How many custom metrics (name + dimension set) one gateway's probe publishes."""
    return (len(PER_PEER_METRICS) + len(PER_INSTANCE_METRICS)) * peers + len(PER_GATEWAY_METRICS)


def metric_dimensions(
    metric: str, stack: str, site: str, peer: str | None = None, instance: str | None = None
) -> dict[str, str]:
    """The dimensions one series of `metric` carries, as the probe publishes it: a
    per-peer metric names the peer, and a per-instance one (with `instance`) the instance."""
    dimensions = {DIMENSION_STACK: stack, DIMENSION_SITE: site}
    if metric in PER_PEER_METRICS:
        if peer is None:
            raise ValueError(f"{metric} is published per peer: name the peer")
        dimensions[DIMENSION_PEER] = peer
    if instance is not None:
        if metric not in PER_INSTANCE_METRICS + HA_GATEWAY_METRICS:
            raise ValueError(f"{metric} is not published per instance")
        dimensions[DIMENSION_INSTANCE] = instance
    elif metric in HA_GATEWAY_METRICS:
        raise ValueError(f"{metric} is published per instance: name the instance")
    return dimensions


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
# CloudWatch creates an alarm in INSUFFICIENT_DATA (PutMetricAlarm: "When this operation
# creates an alarm, the alarm state is immediately set to INSUFFICIENT_DATA"), and runs
# an alarm's actions only when its state changes, those of the state it changes to
# (alarm_actions, ok_actions, insufficient_data_actions).
INITIAL_STATE: AlarmState = "INSUFFICIENT_DATA"
# The states whose actions page someone; OK's actions only say that a page is over.
ALERT_STATES: frozenset[AlarmState] = frozenset({"ALARM", "INSUFFICIENT_DATA"})


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
    # The states whose actions are set (the topic is notified on entering them).
    notify: frozenset[AlarmState] = frozenset({"ALARM", "OK"})
    # Whether the metric names the instance (DIMENSION_INSTANCE): the alarm then belongs
    # to one instance and is replaced with it.
    per_instance: bool = False

    @property
    def per_peer(self) -> bool:
        """One alarm per peer: the rule watches a per-peer metric of the probe's."""
        return self.namespace == NAMESPACE and self.metric in PER_PEER_METRICS

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
        "No successful ping across the tunnel (or the gateway's source/dest check is on) "
        "for 3 minutes."
    ),
    metric=TUNNEL_UP,
    statistic="Minimum",
    comparison="LessThanThreshold",
    threshold=1,
    period_seconds=60,
    evaluation_periods=3,
    datapoints_to_alarm=3,
    # Silence is not-reporting's to page: with `breaching` a gateway that never reported
    # (a first deploy, a replacement still booting) would page within 3 minutes.
    treat_missing_data="missing",
    per_instance=True,
)

NOT_REPORTING = AlarmRule(
    key="not-reporting",
    description=(
        "The gateway reported before and has sent no TunnelUp for about 3 minutes: the "
        "instance or its probe is down."
    ),
    metric=TUNNEL_UP,
    # Any report is a data point; a period without one is missing. SampleCount is at
    # least 1 wherever there is data, so this alarm is only ever OK or INSUFFICIENT_DATA.
    statistic="SampleCount",
    comparison="LessThanThreshold",
    threshold=1,
    period_seconds=60,
    # One period: with `missing`, the alarm goes to INSUFFICIENT_DATA once every period
    # of its evaluation range is empty ("Configuring how CloudWatch alarms treat missing
    # data"); CloudWatch retrieves more periods than N, N + 2 here (see evaluation_range),
    # so 3 minutes. A new alarm starts in INSUFFICIENT_DATA and stays there without data:
    # no transition, no notification, for a gateway that has never reported.
    evaluation_periods=1,
    datapoints_to_alarm=1,
    treat_missing_data="missing",
    notify=frozenset({"INSUFFICIENT_DATA", "OK"}),
    per_instance=True,
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

TUNNEL_RULES = (TUNNEL_DOWN, NOT_REPORTING, HANDSHAKE_STALE)

# --- a site with two gateways ------------------------------------------------------------

# Each gateway of an HA site has its own not-reporting alarm, on its own Active series: the
# standby publishes no TunnelUp, so the single-gateway rule would read a healthy standby as
# silent. Same evaluation (and the same "never reported: no message" start).
NOT_REPORTING_HA = replace(
    NOT_REPORTING,
    description=(
        "The gateway reported before and has sent no Active for about 3 minutes: the instance "
        "or its failover agent is down."
    ),
    metric=ACTIVE,
)

REDUNDANCY_LOST = AlarmRule(
    key="redundancy-lost",
    description=(
        "No standby ready to take over for 3 minutes (StandbyReady below 1, or not sent): "
        "the site runs on one gateway, and losing it takes the site down."
    ),
    metric=STANDBY_READY,
    statistic="Maximum",
    comparison="LessThanThreshold",
    threshold=1,
    period_seconds=DEFAULT_PROBE_INTERVAL_SECONDS,
    evaluation_periods=3,
    datapoints_to_alarm=3,
    # A dead standby (terminated, stopped, its agent crashed) publishes nothing: silence is
    # the very thing to page on. On a first deploy this pages until the standby is ready.
    treat_missing_data="breaching",
)

FAILED_OVER = AlarmRule(
    key="failed-over",
    description=(
        "A gateway took the site over (Failovers): the other gateway stopped forwarding. "
        "Nothing to do for traffic; find out why the other one failed."
    ),
    metric=FAILOVERS,
    statistic="Sum",
    comparison="GreaterThanOrEqualToThreshold",
    threshold=1,
    period_seconds=DEFAULT_PROBE_INTERVAL_SECONDS,
    evaluation_periods=1,
    datapoints_to_alarm=1,
    # A minute without a takeover is a minute without one.
    treat_missing_data="notBreaching",
    # One message per failover; its return to OK a minute later is no news.
    notify=frozenset({"ALARM"}),
)

# The alarms about the site as a whole that a site with two gateways adds.
HA_SITE_RULES = (REDUNDANCY_LOST, FAILED_OVER)


def not_reporting_rule(highly_available: bool) -> AlarmRule:
    """The not-reporting rule of a gateway: on Active with two gateways, else TunnelUp."""
    return NOT_REPORTING_HA if highly_available else NOT_REPORTING


def alarm_name(
    stack: str, site: str, rule: AlarmRule, peer: str | None = None, gateway: int = 0
) -> str:
    """<project>-<stack>-<site>-<key>, the site's alarm; with `peer`, the alarm of one
    peer's series: <project>-<stack>-<site>-<peer>-<key> (the same rule as the
    components' per-peer alarms; config refuses site names whose pairs would join alike).
    The second gateway of an HA site (`gateway` 1) adds `-gateway-1` at the end: the first
    keeps the names it had with one gateway, and no rule key ends that way, so no other
    site's or pair's alarm can take the name."""
    key = alarm_key(rule, gateway)
    if peer is not None:
        return f"{PROJECT}-{stack}-{site}-{peer}-{key}"
    return f"{PROJECT}-{stack}-{site}-{key}"


def alarm_key(rule: AlarmRule, gateway: int = 0) -> str:
    """The rule's key for one gateway of a site: `<key>`, or `<key>-gateway-1`."""
    return rule.key if gateway == 0 else f"{rule.key}-gateway-{gateway}"


def alarm_dimensions(
    rule: AlarmRule, stack: str, site: str, peer: str | None, instance: T
) -> dict[str, str | T]:
    """The dimensions of the series `rule`'s alarm watches, for the gateway `instance` of
    `site` and its `peer` (None for a rule that is not per peer). `instance` may be any
    value (e.g. a Pulumi Output): it is only placed, never read."""
    if rule.namespace != NAMESPACE:
        # EC2's own metrics name the instance alone (SYSTEM_CHECK).
        return {DIMENSION_INSTANCE: instance}
    dimensions: dict[str, str | T] = {DIMENSION_STACK: stack, DIMENSION_SITE: site}
    if rule.per_peer:
        if peer is None:
            raise ValueError(f"the {rule.key} alarm is per peer: name the peer")
        dimensions[DIMENSION_PEER] = peer
    if rule.per_instance:
        dimensions[DIMENSION_INSTANCE] = instance
    return dimensions


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


def states(
    rule: AlarmRule,
    period_values: Sequence[float | None],
    initial: AlarmState = INITIAL_STATE,
) -> list[AlarmState]:
    """The alarm's state after each period, as CloudWatch evaluates it at each period's end.

    `period_values` are the rule's statistic per period since the alarm was created,
    oldest first (None: no data). Each evaluation sees the last `evaluation_range`
    periods; before the alarm existed there is no data.
    """
    state, result = initial, []
    width = rule.evaluation_range
    for end in range(1, len(period_values) + 1):
        seen = list(period_values[max(0, end - width) : end])
        window: list[float | None] = [None] * (width - len(seen))
        window += seen
        state = evaluate(rule, window, state)
        result.append(state)
    return result


@dataclass(frozen=True)
class Notification:
    period: int  # index of the period after which the alarm changed state
    old: AlarmState
    new: AlarmState

    @property
    def alert(self) -> bool:
        return self.new in ALERT_STATES


def notifications(
    rule: AlarmRule, period_values: Sequence[float | None], initial: AlarmState = INITIAL_STATE
) -> list[Notification]:
    """What the alarm's topic receives: one message per state change into a state whose
    actions are set (rule.notify), and nothing else."""
    found, previous = [], initial
    for index, state in enumerate(states(rule, period_values, initial)):
        if state != previous and state in rule.notify:
            found.append(Notification(period=index, old=previous, new=state))
        previous = state
    return found


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


def source_dest_check_policy() -> dict[str, Any]:
    """The gateway role's read of its interface's source/dest check (probe and check).

    ec2:DescribeNetworkInterfaceAttribute is read-only and, like EC2's other Describe*
    actions, supports no resource-level permissions: the Service Authorization Reference
    ("Actions, resources, and condition keys for Amazon EC2",
    https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html)
    lists no resource type for it, so its Resource must be "*". Its own statement, so
    nothing else rides on the wildcard.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadInterfaceSourceDestCheck",
                "Effect": "Allow",
                "Action": "ec2:DescribeNetworkInterfaceAttribute",
                "Resource": "*",
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
