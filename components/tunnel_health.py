"""Alarms, notifications, recovery and a dashboard for the tunnel's health metrics.

The gateways publish the metrics (the probe of core/render.py); this declares what
watches them. The alarm settings come from core/health.py, which the lab evaluates too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from core import health
from core.alerts import AlertsConfig, topic_region
from core.config import PROJECT
from core.facts import GatewayFacts

GATEWAY_TAG = health.GATEWAY_TAG


def gateway_metrics_policy() -> str:
    """The gateway role's policy document (JSON): PutMetricData into NAMESPACE only."""
    return json.dumps(health.put_metric_policy())


def dashboard_url(region: str, name: str) -> str:
    return (
        f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
        f"#dashboards:name={name}"
    )


@dataclass
class HealthSite:
    """One site's gateway, as its health alarms need it."""

    facts: GatewayFacts
    """The gateway's facts: its site name, region and stack name the metric dimensions."""
    provider: aws.Provider
    """The site's regional provider: its alarms (and its region's topic) are created there,
    because a metric alarm sees only its own region's metrics."""
    instance_id: pulumi.Input[str]
    """The gateway instance: the recovery alarm watches it and recovers it."""


@dataclass
class TunnelHealthArgs:
    """What the stack's health monitoring needs."""

    stack: str
    """The stack name: the metrics' Stack dimension and part of every name."""
    sites: list[HealthSite]
    """Every AWS site's gateway, in config order (the dashboard's rows)."""
    alerts: AlertsConfig | None
    """`wg-site-to-site:alerts`: addresses to subscribe and/or an existing topic."""
    tags: dict[str, str]
    """Tags for every resource."""


# The rules about one pair: an alarm per peer of each gateway, on that peer's series
# (dimension Peer). Not-reporting (the instance or its probe is down) and EC2's recovery
# are about the gateway: one per site.
PEER_RULES: tuple[health.AlarmRule, ...] = (health.TUNNEL_DOWN, health.HANDSHAKE_STALE)
SITE_RULES: tuple[health.AlarmRule, ...] = tuple(
    rule for rule in health.TUNNEL_RULES if rule not in PEER_RULES
)


def peer_alarm_name(stack: str, site: str, peer: str, rule: health.AlarmRule) -> str:
    return f"{PROJECT}-{stack}-{site}-{peer}-{rule.key}"


class TunnelHealth(pulumi.ComponentResource):
    """Per stack an SNS topic (one per region in use); per gateway and peer the tunnel
    alarms, per gateway not-reporting and the recovery alarm; one dashboard with a row per
    site and a line per peer."""

    alarm_names: dict[str, dict[str, pulumi.Output[str]]]
    """Per site: rule key (not-reporting, system-check) -> alarm name."""
    peer_alarm_names: dict[str, dict[str, dict[str, pulumi.Output[str]]]]
    """Per site, per peer: rule key (tunnel-down, handshake-stale) -> alarm name."""
    dashboard_url: pulumi.Output[str]
    topic_arns: dict[str, pulumi.Output[str]]
    """Region -> the topic the alarms of that region notify."""

    def __init__(
        self, name: str, args: TunnelHealthArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("wg-site-to-site:health:TunnelHealth", name, None, opts)
        self._name = name
        self._args = args
        self.topic_arns = {}
        actions: dict[str, list[pulumi.Input[str]]] = {}
        for site in args.sites:
            region = site.facts.site.aws_region
            if region not in actions:
                topic = self._topic(region, site.provider)
                self.topic_arns[region] = topic.arn
                actions[region] = [topic.arn, *self._existing_topic(region)]

        self.alarm_names = {}
        self.peer_alarm_names = {}
        for site in args.sites:
            region, facts = site.facts.site.aws_region, site.facts
            self.peer_alarm_names[facts.name] = {
                peer.name: {
                    rule.key: self._tunnel_alarm(
                        site, rule, actions[region], peer.name, first=position == 0
                    ).name
                    for rule in PEER_RULES
                }
                for position, peer in enumerate(facts.peers)
            }
            # The probe publishes every peer's series at once: the first peer's TunnelUp
            # stops when the gateway or its probe does.
            names = {
                rule.key: self._tunnel_alarm(site, rule, actions[region], facts.peers[0].name).name
                for rule in SITE_RULES
            }
            names[health.SYSTEM_CHECK.key] = self._recovery_alarm(site, actions[region]).name
            self.alarm_names[facts.name] = names

        dashboard = self._dashboard()
        home = args.sites[0].facts.site.aws_region
        self.dashboard_url = dashboard.dashboard_name.apply(lambda n: dashboard_url(home, n))
        self.register_outputs(
            {
                "alarmNames": self.alarm_names,
                "peerAlarmNames": self.peer_alarm_names,
                "dashboardUrl": self.dashboard_url,
                "topicArns": self.topic_arns,
            }
        )

    def _opts(self, provider: aws.Provider) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, provider=provider)

    def _existing_topic(self, region: str) -> list[str]:
        alerts = self._args.alerts
        # An alarm can notify only a topic in its own region; core.alerts rejects a
        # topic in a region with no site.
        if alerts is not None and alerts.topic_arn and topic_region(alerts.topic_arn) == region:
            return [alerts.topic_arn]
        return []

    def _topic(self, region: str, provider: aws.Provider) -> aws.sns.Topic:
        args = self._args
        topic = aws.sns.Topic(
            f"{self._name}-{region}",
            name=f"{PROJECT}-{_safe(args.stack)}-tunnel-health",
            tags={**args.tags, "Name": f"{PROJECT}-{args.stack}-tunnel-health"},
            opts=self._opts(provider),
        )
        # SNS mails a confirmation link first; nothing arrives until it is followed.
        for index, address in enumerate(args.alerts.emails if args.alerts else []):
            aws.sns.TopicSubscription(
                f"{self._name}-{region}-email-{index}",
                topic=topic.arn,
                protocol="email",
                endpoint=address,
                opts=self._opts(provider),
            )
        return topic

    def _tunnel_alarm(
        self,
        site: HealthSite,
        rule: health.AlarmRule,
        actions: list[pulumi.Input[str]],
        peer: str,
        first: bool = False,
    ) -> aws.cloudwatch.MetricAlarm:
        """A tunnel rule's alarm on the series of one peer of the gateway: for a peer
        rule its own alarm (named with the peer), for a site rule the first peer's."""
        facts, stack = site.facts, self._args.stack
        per_peer = rule in PEER_RULES
        dimensions: dict[str, pulumi.Input[str]] = {
            health.DIMENSION_STACK: stack,
            health.DIMENSION_SITE: facts.name,
            health.DIMENSION_PEER: peer,
        }
        opts = self._opts(site.provider)
        if per_peer and first:
            # A two-site stack's alarm of this rule was the site's (its only peer's).
            opts = pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(aliases=[pulumi.Alias(name=f"{facts.name}-{rule.key}")]),
            )
        if rule.per_instance:
            # The instance's own metric, and an alarm of its own: a new instance (a first
            # deploy, a replacement) gets a new alarm, which CloudWatch creates in
            # INSUFFICIENT_DATA and leaves there until the instance reports. Updating the
            # alarm in place would keep the old instance's state (PutMetricAlarm: "When
            # you update an existing alarm, its state is left unchanged"), so the new
            # instance's silence would read as "stopped reporting". Same name: the old
            # alarm goes first.
            dimensions[health.DIMENSION_INSTANCE] = site.instance_id
            opts = pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(
                    replace_on_changes=["dimensions"], delete_before_replace=True
                ),
            )
        if per_peer:
            resource_name = f"{facts.name}-{peer}-{rule.key}"
            name = peer_alarm_name(stack, facts.name, peer, rule)
            what = f"{facts.name} -> {peer} ({facts.interface})"
        else:
            resource_name = f"{facts.name}-{rule.key}"
            name = health.alarm_name(stack, facts.name, rule)
            what = f"{facts.name} gateway ({facts.interface}, {peer}'s series)"
        return aws.cloudwatch.MetricAlarm(
            resource_name,
            name=name,
            alarm_description=f"{what}: {rule.description}",
            namespace=rule.namespace,
            metric_name=rule.metric,
            dimensions=dimensions,
            **_evaluation(rule),
            **_actions(rule, actions),
            tags={**self._args.tags, GATEWAY_TAG: site.instance_id},
            opts=opts,
        )

    def _recovery_alarm(
        self, site: HealthSite, actions: list[pulumi.Input[str]]
    ) -> aws.cloudwatch.MetricAlarm:
        facts, rule = site.facts, health.SYSTEM_CHECK
        return aws.cloudwatch.MetricAlarm(
            f"{facts.name}-{rule.key}",
            name=health.alarm_name(self._args.stack, facts.name, rule),
            alarm_description=f"{facts.name} gateway: {rule.description}",
            namespace=rule.namespace,
            metric_name=rule.metric,
            dimensions={"InstanceId": site.instance_id},
            **_evaluation(rule),
            # Recovery keeps the instance id, ENI, private address and Elastic IP, and the
            # boot-time apply brings the tunnel back.
            alarm_actions=[health.recover_action(facts.site.aws_region), *actions],
            ok_actions=actions,
            tags={**self._args.tags, GATEWAY_TAG: site.instance_id},
            opts=self._opts(site.provider),
        )

    def _dashboard(self) -> aws.cloudwatch.Dashboard:
        args = self._args
        first = args.sites[0]
        return aws.cloudwatch.Dashboard(
            f"{self._name}-dashboard",
            dashboard_name=f"{PROJECT}-{_safe(args.stack)}",
            dashboard_body=json.dumps(dashboard_body(args.stack, [s.facts for s in args.sites])),
            # A dashboard lives in one region but each widget names its own.
            opts=self._opts(first.provider),
        )


def _evaluation(rule: health.AlarmRule) -> dict[str, Any]:
    """How CloudWatch evaluates the alarm: the rule's settings, as the lab evaluates them."""
    return {
        "statistic": rule.statistic,
        "comparison_operator": rule.comparison,
        "threshold": rule.threshold,
        "period": rule.period_seconds,
        "evaluation_periods": rule.evaluation_periods,
        "datapoints_to_alarm": rule.datapoints_to_alarm,
        "treat_missing_data": rule.treat_missing_data,
    }


def _actions(rule: health.AlarmRule, actions: list[pulumi.Input[str]]) -> dict[str, Any]:
    """The topic on exactly the states the rule notifies (health.notifications models it);
    the other states' actions are left unset (none)."""
    return {
        key: actions
        for state, key in (
            ("ALARM", "alarm_actions"),
            ("OK", "ok_actions"),
            ("INSUFFICIENT_DATA", "insufficient_data_actions"),
        )
        if state in rule.notify
    }


def _safe(text: str) -> str:
    """Dashboard and topic names allow letters, digits, - and _ (a stack name may hold .)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


_COLUMNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("tunnel up (1 = ping across the tunnel answered)", (health.TUNNEL_UP,), "Minimum"),
    ("latest handshake age (s)", (health.HANDSHAKE_AGE,), "Maximum"),
    ("probe round trip (ms)", (health.PROBE_RTT,), "Average"),
    ("bytes per probe interval", (health.RECEIVED_BYTES, health.SENT_BYTES), "Sum"),
)
_WIDTH = 24 // len(_COLUMNS)
_HEIGHT = 5


def dashboard_body(stack: str, sites: list[GatewayFacts]) -> dict[str, Any]:
    """One row per site, one widget per metric, a line per peer: as readable at ten sites
    (ten rows of four, at most nine lines a widget) as at two."""
    widgets: list[dict[str, Any]] = []
    for row, facts in enumerate(sites):
        for column, (title, metrics, stat) in enumerate(_COLUMNS):
            properties: dict[str, Any] = {
                "title": f"{facts.name}: {title}",
                "region": facts.site.aws_region,
                "view": "timeSeries",
                "stat": stat,
                "period": 60,
                "metrics": [
                    [
                        health.NAMESPACE,
                        metric,
                        health.DIMENSION_STACK,
                        stack,
                        health.DIMENSION_SITE,
                        facts.name,
                        health.DIMENSION_PEER,
                        peer.name,
                        {"label": peer.name if len(metrics) == 1 else f"{peer.name} {metric}"},
                    ]
                    for peer in facts.peers
                    for metric in metrics
                ],
            }
            if metrics == (health.HANDSHAKE_AGE,):
                properties["annotations"] = {
                    "horizontal": [{"label": "stale", "value": health.HANDSHAKE_STALE_SECONDS}]
                }
            if metrics == (health.TUNNEL_UP,):
                properties["yAxis"] = {"left": {"min": 0, "max": 1}}
            widgets.append(
                {
                    "type": "metric",
                    "x": column * _WIDTH,
                    "y": row * _HEIGHT,
                    "width": _WIDTH,
                    "height": _HEIGHT,
                    "properties": properties,
                }
            )
    return {"widgets": widgets}
