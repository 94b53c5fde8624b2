"""What a stack costs a month on AWS, counted from its plan (a public document).

One table of prices, each with the AWS pricing page it comes from and the date the rate
was read there (`AS_OF`). Prices are on-demand, in USD, without tax or free tiers that
depend on the rest of the account (10 free custom metrics and alarms, 3 free dashboards):
the stack's own cost, as if it were alone in an account that has used its free tier.
A region that is not in a region-dependent table is said so on its line, never guessed.

Not counted (they depend on traffic, not on the stack): data transfer out of AWS and
between regions (the tunnel's traffic), API requests, SNS deliveries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.health import METRICS, PER_INSTANCE_METRICS, SOURCE_DEST_CHECK, ha_custom_metric_count
from plan.document import Document

# The rates below are those the linked AWS pricing pages published in this month. They
# were written down from those pages, not fetched where this table was made (no network
# there): us-east-1's t4g.nano, public IPv4 and VPN rates agree with the project's
# reference notes; re-check the others against the pages before quoting a figure.
AS_OF = "2025-06"
# AWS prices a month of hourly resources as 730 hours (the pricing calculator's month).
HOURS_PER_MONTH = 730

EC2_PRICING = "https://aws.amazon.com/ec2/pricing/on-demand/"
VPC_PRICING = "https://aws.amazon.com/vpc/pricing/"  # public IPv4 addresses, since 2024-02-01
EBS_PRICING = "https://aws.amazon.com/ebs/pricing/"
KMS_PRICING = "https://aws.amazon.com/kms/pricing/"
CLOUDWATCH_PRICING = "https://aws.amazon.com/cloudwatch/pricing/"
SSM_PRICING = "https://aws.amazon.com/systems-manager/pricing/"
VPN_PRICING = "https://aws.amazon.com/vpn/pricing/"

# EC2 on-demand, Linux, USD per instance-hour (EC2_PRICING), for the shipped stacks'
# regions and the gateway sizes the README suggests.
INSTANCE_HOURLY: dict[str, dict[str, float]] = {
    "us-east-1": {
        "t4g.nano": 0.0042,
        "t4g.micro": 0.0084,
        "t4g.small": 0.0168,
        "t3.nano": 0.0052,
        "t3.micro": 0.0104,
        "t3.small": 0.0208,
    },
    "eu-west-1": {
        "t4g.nano": 0.0046,
        "t4g.micro": 0.0092,
        "t4g.small": 0.0184,
        "t3.nano": 0.0057,
        "t3.micro": 0.0114,
        "t3.small": 0.0228,
    },
    "eu-central-1": {
        "t4g.nano": 0.0048,
        "t4g.micro": 0.0096,
        "t4g.small": 0.0192,
        "t3.nano": 0.006,
        "t3.micro": 0.012,
        "t3.small": 0.024,
    },
}
# EBS gp3 storage, USD per GB-month (EBS_PRICING); the baseline 3,000 IOPS and 125 MB/s
# are included, and the program provisions no more.
GP3_GB_MONTH: dict[str, float] = {"us-east-1": 0.08, "eu-west-1": 0.088, "eu-central-1": 0.0952}
# The same in every region of the table above:
PUBLIC_IPV4_HOURLY = 0.005  # per public IPv4 address, in use or idle (VPC_PRICING)
KMS_KEY_MONTHLY = 1.00  # per customer managed key (KMS_PRICING); requests not counted
CUSTOM_METRIC_MONTHLY = 0.30  # per metric (name + dimension set), first 10,000 (CLOUDWATCH)
ALARM_METRIC_MONTHLY = 0.10  # per metric of a standard-resolution alarm (CLOUDWATCH)
HIGH_RESOLUTION_ALARM_METRIC_MONTHLY = 0.30  # period under 60 s (CLOUDWATCH)
DASHBOARD_MONTHLY = 3.00  # per dashboard beyond the account's first 3 (CLOUDWATCH)
ADVANCED_PARAMETER_MONTHLY = 0.05  # per advanced-tier parameter (SSM_PRICING)
VPN_CONNECTION_HOURLY = 0.05  # per AWS Site-to-Site VPN connection-hour (VPN_PRICING)
# Interface VPC endpoints (the canaries' way to SSM), USD per endpoint per zone-hour
# (PRIVATELINK_PRICING); data processed is not counted.
PRIVATELINK_PRICING = "https://aws.amazon.com/privatelink/pricing/"
INTERFACE_ENDPOINT_HOURLY: dict[str, float] = {
    "us-east-1": 0.01,
    "eu-west-1": 0.011,
    "eu-central-1": 0.012,
}

_INSTANCE = "aws:ec2/instance:Instance"
_EIP = "aws:ec2/eip:Eip"
_KMS_KEY = "aws:kms/key:Key"
_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
_DASHBOARD = "aws:cloudwatch/dashboard:Dashboard"
_PARAMETER = "aws:ssm/parameter:Parameter"
_ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
# What the probe publishes once per gateway (Stack, Site): the interface's check. Every
# other metric is about one tunnel, published per peer (Stack, Site, Peer), and the
# tunnel alarms' ones once more per instance (cloud-init/probe.sh.j2).
SITE_METRICS: tuple[str, ...] = (SOURCE_DEST_CHECK,)
PEER_METRICS: tuple[str, ...] = tuple(m for m in METRICS if m not in SITE_METRICS)


def _is_gateway(resource: dict[str, Any]) -> bool:
    """A gateway instance (not a canary): it is the one that boots from user data."""
    return bool(resource["inputs"].get("userDataBase64") or resource["inputs"].get("userData"))


@dataclass(frozen=True)
class CostLine:
    item: str  # what is counted, e.g. "EC2 t4g.nano (us-east-1)"
    quantity: str  # how many at what price, e.g. "1 x $0.0042/h"
    cents: int | None  # per month, rounded to a cent; None if the price is unknown
    note: str = ""


@dataclass(frozen=True)
class Cost:
    lines: tuple[CostLine, ...]
    unpriced: tuple[str, ...] = field(default=())

    @property
    def total_cents(self) -> int:
        """The sum of the priced lines, as printed (each already rounded to a cent)."""
        return sum(line.cents for line in self.lines if line.cents is not None)


def _cents(dollars: float) -> int:
    return round(dollars * 100 + 1e-9)


def dollars(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


def _price(value: float) -> str:
    return f"${value:.4f}".rstrip("0").rstrip(".") if value < 0.1 else f"${value:.2f}"


def _peers(resource: dict[str, Any]) -> int:
    """How many peers a gateway has: the peers of its desired state (one if unknown)."""
    value = resource["inputs"].get("insecureValue")
    try:
        peers = json.loads(value)["peers"] if isinstance(value, str) else None
    except (ValueError, KeyError, TypeError):
        peers = None
    return len(peers) if isinstance(peers, list) else 1


def _highly_available(resource: dict[str, Any]) -> bool:
    """Whether a desired state is a two-gateway site's (it has a failover section)."""
    value = resource["inputs"].get("insecureValue")
    try:
        return isinstance(value, str) and "failover" in json.loads(value)
    except ValueError:
        return False


def _alarm_metrics(inputs: dict[str, Any]) -> int:
    """How many metrics an alarm watches: CloudWatch bills an alarm per metric."""
    queries = inputs.get("metricQueries")
    if isinstance(queries, list) and queries:
        return sum(1 for query in queries if isinstance(query, dict) and query.get("metric"))
    return 1


def _not_priced(
    lines: list[CostLine], unpriced: list[str], item: str, quantity: str, why: str
) -> None:
    """A line the table has no price for: shown without one, and named under the total."""
    lines.append(CostLine(item, quantity, None, why))
    unpriced.append(item)


def monthly_cost(document: Document) -> Cost:
    """The stack's monthly cost, one line per kind of thing that costs, by region."""
    resources = [r for r in document["resources"] if r.get("custom")]
    lines: list[CostLine] = []
    unpriced: list[str] = []

    instances: dict[tuple[str, str], int] = {}
    volumes: dict[str, int] = {}
    for resource in (r for r in resources if r["type"] == _INSTANCE):
        region = str(resource.get("region"))
        key = (str(resource["inputs"].get("instanceType")), region)
        instances[key] = instances.get(key, 0) + 1
        root = resource["inputs"].get("rootBlockDevice") or {}
        if root.get("volumeType", "gp3") == "gp3" and isinstance(root.get("volumeSize"), int):
            volumes[region] = volumes.get(region, 0) + root["volumeSize"]
        else:
            unpriced.append(f"root volume of {resource['name']} (no gp3 size in the plan)")
    for (type_, region), count in sorted(instances.items()):
        hourly = INSTANCE_HOURLY.get(region, {}).get(type_)
        item = f"EC2 {type_} ({region})"
        if hourly is None:
            why = "region" if region not in INSTANCE_HOURLY else "instance type"
            _not_priced(lines, unpriced, item, f"{count} x ?", f"{why} not in plan/cost.py's table")
            continue
        cents = _cents(count * hourly * HOURS_PER_MONTH)
        lines.append(CostLine(item, f"{count} x {_price(hourly)}/h", cents))
    addresses = sum(1 for r in resources if r["type"] == _EIP)
    lines.append(
        CostLine(
            "public IPv4 (Elastic IP)",
            f"{addresses} x {_price(PUBLIC_IPV4_HOURLY)}/h",
            _cents(addresses * PUBLIC_IPV4_HOURLY * HOURS_PER_MONTH),
        )
    )
    states = [
        r
        for r in resources
        if r["type"] == _PARAMETER and str(r["name"]).endswith("-desired-state")
    ]
    # A site with two gateways: the one not holding the Elastic IP has a public IPv4 of
    # its own (the interface's AssociatePublicIpAddress, for SSM, the EC2 API and
    # CloudWatch), and AWS charges every public IPv4, in use or not (VPC_PRICING). The
    # holder's own is released while the Elastic IP is on its interface: one per site.
    standby = sum(1 for state in states if _highly_available(state))
    if standby:
        lines.append(
            CostLine(
                "public IPv4 (standby gateways)",
                f"{standby} x {_price(PUBLIC_IPV4_HOURLY)}/h",
                _cents(standby * PUBLIC_IPV4_HOURLY * HOURS_PER_MONTH),
                "one per site with two gateways",
            )
        )
    for region, size in sorted(volumes.items()):
        item = f"EBS gp3 root volumes ({region})"
        per_gb = GP3_GB_MONTH.get(region)
        if per_gb is None:
            _not_priced(lines, unpriced, item, f"{size} GB x ?", "region not in the table")
            continue
        lines.append(
            CostLine(item, f"{size} GB x {_price(per_gb)}/GB-month", _cents(size * per_gb))
        )
    keys = sum(1 for r in resources if r["type"] == _KMS_KEY)
    kms = _cents(keys * KMS_KEY_MONTHLY)
    lines.append(CostLine("KMS keys", f"{keys} x {_price(KMS_KEY_MONTHLY)}/month", kms))
    # A custom metric is a name plus a dimension set: each gateway's probe publishes the
    # site metrics once, the peer metrics once per peer and the per-instance ones once
    # more per peer. Offices publish nothing here (no AWS gateway), nor do canaries.
    gateways = sum(1 for r in resources if r["type"] == _INSTANCE and _is_gateway(r))
    peers = sum(_peers(state) for state in states)
    per_peer = len(PEER_METRICS) + len(PER_INSTANCE_METRICS)
    metrics = len(SITE_METRICS) * gateways + per_peer * peers
    note = (
        f"{len(SITE_METRICS)} per gateway x {gateways} + {per_peer} per peer"
        f" x {peers} gateway-peer pairs"
    )
    # A site with two gateways: both publish the site and per-peer metrics under the same
    # dimensions (Stack, Site[, Peer]), whichever is active, so those count once per site;
    # the per-instance ones (InstanceId) once more for the second gateway, and the
    # failover agents add theirs (core.health: Active per gateway, StandbyReady, Failovers).
    paired = [state for state in states if _highly_available(state)]
    if paired:
        sites = gateways - len(paired)
        second = len(PER_INSTANCE_METRICS) * sum(_peers(state) for state in paired)
        agents = ha_custom_metric_count(2) * len(paired)
        metrics = len(SITE_METRICS) * sites + per_peer * peers + second + agents
        note = (
            f"{len(SITE_METRICS)} per site x {sites} + {per_peer} per peer x {peers} site-peer"
            f" pairs + {second} per-instance of second gateways + {agents} failover metrics"
        )
    lines.append(
        CostLine(
            "CloudWatch custom metrics",
            f"{metrics} x {_price(CUSTOM_METRIC_MONTHLY)}/month",
            _cents(metrics * CUSTOM_METRIC_MONTHLY),
            note,
        )
    )
    standard = high = 0
    for alarm in (r for r in resources if r["type"] == _ALARM):
        period = alarm["inputs"].get("period")
        if isinstance(period, int) and period < 60:
            high += _alarm_metrics(alarm["inputs"])
        else:
            standard += _alarm_metrics(alarm["inputs"])
    lines.append(
        CostLine(
            "CloudWatch alarms (standard resolution)",
            f"{standard} x {_price(ALARM_METRIC_MONTHLY)}/month",
            _cents(standard * ALARM_METRIC_MONTHLY),
        )
    )
    if high:
        lines.append(
            CostLine(
                "CloudWatch alarms (high resolution)",
                f"{high} x {_price(HIGH_RESOLUTION_ALARM_METRIC_MONTHLY)}/month",
                _cents(high * HIGH_RESOLUTION_ALARM_METRIC_MONTHLY),
            )
        )
    dashboards = sum(1 for r in resources if r["type"] == _DASHBOARD)
    lines.append(
        CostLine(
            "CloudWatch dashboards",
            f"{dashboards} x {_price(DASHBOARD_MONTHLY)}/month",
            _cents(dashboards * DASHBOARD_MONTHLY),
            "free if the account has fewer than 3 others",
        )
    )
    advanced = sum(
        1 for r in resources if r["type"] == _PARAMETER and r["inputs"].get("tier") == "Advanced"
    )
    lines.append(
        CostLine(
            "SSM advanced parameters",
            f"{advanced} x {_price(ADVANCED_PARAMETER_MONTHLY)}/month",
            _cents(advanced * ADVANCED_PARAMETER_MONTHLY),
        )
    )
    endpoints: dict[str, int] = {}
    for endpoint in (r for r in resources if r["type"] == _ENDPOINT):
        region = str(endpoint.get("region"))
        # One subnet each (components/canary.py): one zone-hour per hour.
        endpoints[region] = endpoints.get(region, 0) + 1
    for region, count in sorted(endpoints.items()):
        item = f"VPC interface endpoints ({region})"
        hourly = INTERFACE_ENDPOINT_HOURLY.get(region)
        if hourly is None:
            _not_priced(lines, unpriced, item, f"{count} x ?", "region not in the table")
            continue
        lines.append(
            CostLine(
                item,
                f"{count} x {_price(hourly)}/h",
                _cents(count * hourly * HOURS_PER_MONTH),
                "the canaries' way to SSM",
            )
        )
    return Cost(tuple(lines), tuple(unpriced))


def vpn_monthly_cents(connections: int = 1) -> int:
    """AWS Site-to-Site VPN for comparison: per connection-hour, traffic not counted."""
    return _cents(connections * VPN_CONNECTION_HOURLY * HOURS_PER_MONTH)


def render_lines(cost: Cost, *, before: Cost | None = None, ref: str = "") -> list[str]:
    """The cost block that ends a plan, or a diff (with the cost at `ref` to compare)."""
    width = max(len(line.item) for line in cost.lines)
    qwidth = max(len(line.quantity) for line in cost.lines)
    lines = [
        f"Monthly cost (on-demand USD, {HOURS_PER_MONTH} h a month, prices as of {AS_OF}, "
        "sources in plan/cost.py):"
    ]
    for line in cost.lines:
        figure = dollars(line.cents) if line.cents is not None else "not priced"
        note = f"  ({line.note})" if line.note else ""
        lines.append(f"    {line.item:<{width}}  {line.quantity:<{qwidth}}  {figure:>10}{note}")
    total = f"    {'total':<{width}}  {'':<{qwidth}}  {dollars(cost.total_cents):>10}"
    if cost.unpriced:
        total += f"  (without {len(cost.unpriced)} unpriced: {', '.join(cost.unpriced)})"
    if before is not None:
        was = before.total_cents
        total += f"  (as at {ref})" if was == cost.total_cents else f"  (at {ref}: {dollars(was)})"
    lines.append(total)
    lines.append(
        f"    for comparison, one AWS Site-to-Site VPN connection: 1 x "
        f"{_price(VPN_CONNECTION_HOURLY)}/connection-hour = {dollars(vpn_monthly_cents())} "
        "a month (its traffic not counted either)"
    )
    return lines
