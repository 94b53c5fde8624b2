"""Alarms, notifications, recovery and a dashboard for the tunnel's health metrics.

The gateways publish the metrics (the probe of core/render.py); this declares what
watches them. The alarm settings come from core/health.py, which the lab evaluates too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
    """One site's gateway (or two), as its health alarms need it."""

    facts: GatewayFacts
    """The gateway's facts: its site name, region and stack name the metric dimensions."""
    provider: aws.Provider
    """The site's regional provider: its alarms (and its region's topic) are created there,
    because a metric alarm sees only its own region's metrics."""
    instance_id: pulumi.Input[str]
    """The gateway instance (the first gateway, index 0, of a site with two): the recovery
    alarm watches it and recovers it."""
    second_instance_id: pulumi.Input[str] | None = None
    """The second gateway's instance (index 1), exactly when the site has two gateways
    (facts.highly_available): it gets its own tunnel-down, not-reporting and recovery
    alarms, and the site its redundancy-lost and failed-over alarms."""

    @property
    def instance_ids(self) -> tuple[pulumi.Input[str], ...]:
        """Each gateway's instance, first gateway first."""
        if self.facts.highly_available != (self.second_instance_id is not None):
            raise ValueError(
                f"site {self.facts.name} has {self.facts.gateway_count} gateway(s): "
                "second_instance_id is "
                + ("required" if self.facts.highly_available else "for two gateways only")
            )
        if self.second_instance_id is None:
            return (self.instance_id,)
        return (self.instance_id, self.second_instance_id)


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
# With two gateways, each gateway has its own alarms of the per-instance peer rules
# (tunnel-down: the active's pings; the standby has none, so its alarm stays quiet) and
# its own not-reporting (on Active) and recovery alarms; the rest is the site's.


def peer_alarm_name(stack: str, site: str, peer: str, rule: health.AlarmRule) -> str:
    return f"{PROJECT}-{stack}-{site}-{peer}-{rule.key}"


class TunnelHealth(pulumi.ComponentResource):
    """Per stack an SNS topic (one per region in use); per gateway and peer the tunnel
    alarms, per gateway not-reporting and the recovery alarm; one dashboard with a row per
    site and a line per peer."""

    alarm_names: dict[str, dict[str, pulumi.Output[str]]]
    """Per site: rule key (not-reporting, system-check) -> alarm name; a site with two
    gateways adds not-reporting-gateway-1, system-check-gateway-1, redundancy-lost and
    failed-over."""
    peer_alarm_names: dict[str, dict[str, dict[str, pulumi.Output[str]]]]
    """Per site, per peer: rule key (tunnel-down, handshake-stale) -> alarm name; with two
    gateways also tunnel-down-gateway-1."""
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
            instances = site.instance_ids
            self.peer_alarm_names[facts.name] = {
                peer.name: {
                    health.alarm_key(rule, gateway): self._tunnel_alarm(
                        site, rule, actions[region], peer.name, first=position == 0, gateway=gateway
                    ).name
                    for rule in PEER_RULES
                    for gateway in (range(len(instances)) if rule.per_instance else (0,))
                }
                for position, peer in enumerate(facts.peers)
            }
            names: dict[str, pulumi.Output[str]] = {}
            for gateway in range(len(instances)):
                if facts.highly_available:
                    # Each gateway's own Active series: both publish it, active or not.
                    rule = health.NOT_REPORTING_HA
                    names[health.alarm_key(rule, gateway)] = self._tunnel_alarm(
                        site, rule, actions[region], None, gateway=gateway
                    ).name
                else:
                    # The probe publishes every peer's series at once: the first peer's
                    # TunnelUp stops when the gateway or its probe does.
                    for rule in SITE_RULES:
                        names[rule.key] = self._tunnel_alarm(
                            site, rule, actions[region], facts.peers[0].name
                        ).name
                names[health.alarm_key(health.SYSTEM_CHECK, gateway)] = self._recovery_alarm(
                    site, actions[region], gateway
                ).name
            if facts.highly_available:
                for rule in health.HA_SITE_RULES:
                    names[rule.key] = self._site_alarm(site, rule, actions[region]).name
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
        peer: str | None,
        *,
        first: bool = False,
        gateway: int = 0,
    ) -> aws.cloudwatch.MetricAlarm:
        """A tunnel rule's alarm on the series of one peer of the gateway: for a peer
        rule its own alarm (named with the peer), for a site rule the first peer's; with
        no peer (an HA gateway's not-reporting), the gateway's own series. `gateway` is
        the gateway's index in its site (1: the second of two)."""
        facts, stack = site.facts, self._args.stack
        instance = site.instance_ids[gateway]
        per_peer = rule in PEER_RULES
        dimensions: dict[str, pulumi.Input[str]] = {
            health.DIMENSION_STACK: stack,
            health.DIMENSION_SITE: facts.name,
        }
        if peer is not None:
            dimensions[health.DIMENSION_PEER] = peer
        opts = self._opts(site.provider)
        if per_peer and first and gateway == 0:
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
            dimensions[health.DIMENSION_INSTANCE] = instance
            opts = pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(
                    replace_on_changes=["dimensions"], delete_before_replace=True
                ),
            )
        key = health.alarm_key(rule, gateway)
        which = _which(facts, gateway)
        if per_peer:
            assert peer is not None
            resource_name = f"{facts.name}-{peer}-{key}"
            name = health.alarm_name(stack, facts.name, rule, peer, gateway)
            what = f"{facts.name}{which} -> {peer} ({facts.interface})"
        else:
            resource_name = f"{facts.name}-{key}"
            name = health.alarm_name(stack, facts.name, rule, gateway=gateway)
            series = f"{peer}'s series" if peer is not None else f"its {rule.metric} series"
            what = f"{facts.name} gateway{which} ({facts.interface}, {series})"
        return aws.cloudwatch.MetricAlarm(
            resource_name,
            name=name,
            alarm_description=f"{what}: {rule.description}",
            namespace=rule.namespace,
            metric_name=rule.metric,
            dimensions=dimensions,
            **_evaluation(rule),
            **_actions(rule, actions),
            tags={**self._args.tags, GATEWAY_TAG: instance},
            opts=opts,
        )

    def _recovery_alarm(
        self, site: HealthSite, actions: list[pulumi.Input[str]], gateway: int = 0
    ) -> aws.cloudwatch.MetricAlarm:
        facts, rule = site.facts, health.SYSTEM_CHECK
        instance = site.instance_ids[gateway]
        key = health.alarm_key(rule, gateway)
        return aws.cloudwatch.MetricAlarm(
            f"{facts.name}-{key}",
            name=health.alarm_name(self._args.stack, facts.name, rule, gateway=gateway),
            alarm_description=f"{facts.name} gateway{_which(facts, gateway)}: {rule.description}",
            namespace=rule.namespace,
            metric_name=rule.metric,
            dimensions={"InstanceId": instance},
            **_evaluation(rule),
            # Recovery keeps the instance id, ENI, private address and Elastic IP, and the
            # boot-time apply brings the tunnel back.
            alarm_actions=[health.recover_action(facts.site.aws_region), *actions],
            ok_actions=actions,
            tags={**self._args.tags, GATEWAY_TAG: instance},
            opts=self._opts(site.provider),
        )

    def _site_alarm(
        self, site: HealthSite, rule: health.AlarmRule, actions: list[pulumi.Input[str]]
    ) -> aws.cloudwatch.MetricAlarm:
        """An alarm about an HA site as a whole (redundancy-lost, failed-over), on the
        series whichever gateway publishes (Stack, Site)."""
        facts, stack = site.facts, self._args.stack
        return aws.cloudwatch.MetricAlarm(
            f"{facts.name}-{rule.key}",
            name=health.alarm_name(stack, facts.name, rule),
            alarm_description=f"{facts.name} ({facts.gateway_count} gateways): {rule.description}",
            namespace=rule.namespace,
            metric_name=rule.metric,
            dimensions=health.metric_dimensions(rule.metric, stack, facts.name),
            **_evaluation(rule),
            **_actions(rule, actions),
            tags=self._args.tags,
            opts=self._opts(site.provider),
        )

    def _dashboard(self) -> aws.cloudwatch.Dashboard:
        args = self._args
        first = args.sites[0]
        stack, facts = args.stack, [s.facts for s in args.sites]
        body: pulumi.Input[str]
        ha = [s for s in args.sites if s.facts.highly_available]
        if not ha:
            body = json.dumps(dashboard_body(stack, facts))
        else:
            # An HA site's row shows Active per gateway: each line names an instance id.
            ids = {s.facts.name: pulumi.Output.all(*s.instance_ids) for s in ha}
            body = pulumi.Output.all(**ids).apply(
                lambda known: json.dumps(dashboard_body(stack, facts, known))
            )
        return aws.cloudwatch.Dashboard(
            f"{self._name}-dashboard",
            dashboard_name=f"{PROJECT}-{_safe(args.stack)}",
            dashboard_body=body,
            # A dashboard lives in one region but each widget names its own.
            opts=self._opts(first.provider),
        )


def _which(facts: GatewayFacts, gateway: int) -> str:
    """ " <i>" after "gateway" for a site with two gateways; nothing with one."""
    return f" {gateway}" if facts.highly_available else ""


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
# A site with two gateways has a second row: which gateway is active, whether the standby
# can take over, and how often the site failed over.
_HA_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("active (1 = holds the site's Elastic IP)", health.ACTIVE, "Maximum"),
    ("standby ready (1 = the standby can take over)", health.STANDBY_READY, "Maximum"),
    ("failovers", health.FAILOVERS, "Sum"),
)
_HA_WIDTH = 24 // len(_HA_COLUMNS)


def dashboard_body(
    stack: str,
    sites: list[GatewayFacts],
    instances: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """One row per site, one widget per metric, a line per peer: as readable at ten sites
    (ten rows of four, at most nine lines a widget) as at two. A site with two gateways
    has a second row (Active per gateway, StandbyReady, Failovers); `instances` gives its
    gateways' instance ids (site name -> ids, first gateway first)."""
    widgets: list[dict[str, Any]] = []
    y = 0
    for facts in sites:
        for column, (title, metrics, stat) in enumerate(_COLUMNS):
            lines = [
                [
                    *_site_metric(stack, facts, metric),
                    health.DIMENSION_PEER,
                    peer.name,
                    {"label": peer.name if len(metrics) == 1 else f"{peer.name} {metric}"},
                ]
                for peer in facts.peers
                for metric in metrics
            ]
            widget = _metric_widget(facts, title, stat, lines, x=column * _WIDTH, y=y, width=_WIDTH)
            properties = widget["properties"]
            if metrics == (health.HANDSHAKE_AGE,):
                properties["annotations"] = {
                    "horizontal": [{"label": "stale", "value": health.HANDSHAKE_STALE_SECONDS}]
                }
            if metrics == (health.TUNNEL_UP,):
                properties["yAxis"] = {"left": {"min": 0, "max": 1}}
            widgets.append(widget)
        y += _HEIGHT
        if facts.highly_available:
            ids = (instances or {}).get(facts.name)
            if ids is None or len(ids) != facts.gateway_count:
                raise ValueError(f"site {facts.name}: the dashboard needs both gateways' ids")
            widgets += _ha_widgets(stack, facts, ids, y)
            y += _HEIGHT
    return {"widgets": widgets}


def _metric_widget(
    facts: GatewayFacts,
    title: str,
    stat: str,
    lines: list[list[Any]],
    *,
    x: int,
    y: int,
    width: int,
) -> dict[str, Any]:
    """A time-series widget of the site's region, one minute per point."""
    return {
        "type": "metric",
        "x": x,
        "y": y,
        "width": width,
        "height": _HEIGHT,
        "properties": {
            "title": f"{facts.name}: {title}",
            "region": facts.site.aws_region,
            "view": "timeSeries",
            "stat": stat,
            "period": 60,
            "metrics": lines,
        },
    }


def _site_metric(stack: str, facts: GatewayFacts, metric: str) -> list[Any]:
    """A dashboard line's metric with the site's dimensions (more may follow)."""
    return [
        health.NAMESPACE,
        metric,
        health.DIMENSION_STACK,
        stack,
        health.DIMENSION_SITE,
        facts.name,
    ]


def _ha_widgets(
    stack: str, facts: GatewayFacts, ids: Sequence[str], y: int
) -> list[dict[str, Any]]:
    widgets = []
    for column, (title, metric, stat) in enumerate(_HA_COLUMNS):
        site = _site_metric(stack, facts, metric)
        if metric in health.HA_GATEWAY_METRICS:
            lines = [
                [
                    *site,
                    health.DIMENSION_INSTANCE,
                    instance,
                    {"label": f"gateway {index} ({instance})"},
                ]
                for index, instance in enumerate(ids)
            ]
        else:
            lines = [[*site, {"label": metric}]]
        widget = _metric_widget(
            facts, title, stat, lines, x=column * _HA_WIDTH, y=y, width=_HA_WIDTH
        )
        if stat == "Maximum":
            widget["properties"]["yAxis"] = {"left": {"min": 0, "max": 1}}
        widgets.append(widget)
    return widgets
