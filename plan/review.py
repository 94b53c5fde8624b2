"""What makes the diff read like a review: text decoded, names short, costs said.

- Values a person reads as lines (gzip+base64 user data, the desired-state JSON with its
  config and firewall text, IAM policies) become text, so a diff shows the lines that
  changed (`readable_text`).
- URNs become short names (`Instance beta-gateway`), long digests are abbreviated, and
  no printed line is longer than MAX_LINE characters (`clip`).
- A created resource shows its main properties (`MAIN_PROPERTIES`).
- Each change says what it costs the running tunnel (`impact`), and a paragraph at the
  top sums them up (`summary_paragraph`).

It works on public documents only (plan.document), so it can print nothing secret.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from core.render import decode_user_data
from plan.show import has_text_fields, json_document, scalar, value_lines

if TYPE_CHECKING:
    from plan.diff import ResourceChange

MAX_LINE = 200
CLIPPED = "more characters)"
SECRET_CHANGED = "[secret changed]"  # noqa: S105 - a marker, not a password

# What a gateway replacement costs: the README's "Rolling the image" (launch, cloud-init
# with its packages, the boot-time apply), not measurable offline.
GATEWAY_BOOT = "about 1-3 min on AWS"
# What an apply re-run costs, measured in the lab (README, "Day 2"): 0 pings lost at 10/s
# for a firewall, keepalive or key change, 1 (0.1 s) when wg-quick restarts (MTU,
# address, port).
APPLY_RERUN = "in place, no outage (lab: 0 pings lost, 0.1 s when wg-quick restarts)"

_INSTANCE = "aws:ec2/instance:Instance"
_COMMAND = "command:local:Command"
_PARAMETER = "aws:ssm/parameter:Parameter"

_SECURITY_GROUP_RULE = (
    "description",
    "ipProtocol",
    "fromPort",
    "toPort",
    "cidrIpv4",
    "referencedSecurityGroupId",
)
# What a reviewer needs to see of a resource that is created: a few inputs per type.
MAIN_PROPERTIES: dict[str, tuple[str, ...]] = {
    "aws:ec2/vpc:Vpc": ("cidrBlock",),
    "aws:ec2/subnet:Subnet": ("cidrBlock", "availabilityZone", "mapPublicIpOnLaunch"),
    "aws:ec2/internetGateway:InternetGateway": ("vpcId",),
    "aws:ec2/routeTable:RouteTable": ("vpcId",),
    "aws:ec2/routeTableAssociation:RouteTableAssociation": ("routeTableId", "subnetId"),
    "aws:ec2/route:Route": ("routeTableId", "destinationCidrBlock", "networkInterfaceId"),
    "aws:ec2/securityGroup:SecurityGroup": ("name", "description", "vpcId"),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": _SECURITY_GROUP_RULE,
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": _SECURITY_GROUP_RULE,
    "aws:ec2/networkInterface:NetworkInterface": ("subnetId", "privateIps", "sourceDestCheck"),
    "aws:ec2/eip:Eip": ("domain",),
    "aws:ec2/vpcEndpoint:VpcEndpoint": ("serviceName", "vpcEndpointType", "subnetIds"),
    "aws:ec2/eipAssociation:EipAssociation": ("allocationId", "networkInterfaceId"),
    "aws:ec2/instance:Instance": (
        "instanceType",
        "ami",
        "availabilityZone",
        "rootBlockDevice.volumeType",
        "rootBlockDevice.volumeSize",
        "rootBlockDevice.encrypted",
        "metadataOptions.httpTokens",
    ),
    "aws:iam/role:Role": ("description",),
    "aws:iam/rolePolicy:RolePolicy": ("role",),
    "aws:iam/instanceProfile:InstanceProfile": ("role",),
    "aws:ssm/parameter:Parameter": ("name", "type", "tier", "keyId", "value"),
    "aws:kms/key:Key": ("description", "enableKeyRotation", "deletionWindowInDays"),
    "aws:kms/alias:Alias": ("name", "targetKeyId"),
    "aws:cloudwatch/metricAlarm:MetricAlarm": (
        "name",
        "metricName",
        "comparisonOperator",
        "threshold",
        "period",
        "evaluationPeriods",
        "treatMissingData",
    ),
    "aws:cloudwatch/dashboard:Dashboard": ("dashboardName",),
    "aws:sns/topic:Topic": ("name",),
    "aws:sns/topicSubscription:TopicSubscription": ("protocol", "endpoint"),
    "random:index/randomBytes:RandomBytes": ("length", "keepers.generation"),
    "command:local:Command": ("create",),
    "pulumi:providers:aws": ("region",),
}
_DEFAULT_MAIN = 3  # inputs shown for a type the table lacks: its first scalar ones


# ------------------------------------------------------------------------ short forms


def short_type(type_: str) -> str:
    """`aws:ec2/instance:Instance` -> `Instance`; `pulumi:providers:aws` -> `provider:aws`."""
    if type_.startswith("pulumi:providers:"):
        return f"provider:{type_.removeprefix('pulumi:providers:')}"
    return type_.rsplit(":", 1)[-1]


def short_urn(urn: str) -> str:
    """`urn:pulumi:dev::proj::parent$aws:ec2/vpc:Vpc::beta-vpc` -> `Vpc beta-vpc`."""
    qualified, _, name = urn.rpartition("::")
    return f"{short_type(qualified.rsplit('$', 1)[-1])} {name}"


_DIGEST = re.compile(r"[0-9a-f]{40,}")


def short_value(value: Any) -> str:
    """One value on one line: URNs as short names, long hex digests abbreviated."""
    if isinstance(value, str) and value.startswith("urn:pulumi:"):
        return short_urn(value)
    if isinstance(value, str) and _DIGEST.fullmatch(value):
        return f"digest {value[:12]}..."
    document = json_document(value)
    if document is not None:
        # A JSON document inside a string: as JSON, not as an escaped string.
        return f"JSON {json.dumps(document, sort_keys=True, ensure_ascii=False)}"
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, str) and v.startswith("urn:pulumi:") for v in value)
    ):
        return ", ".join(short_urn(v) for v in value)
    return scalar(value)


def clip(line: str) -> str:
    """The line, cut to MAX_LINE characters with a note of how much is left out."""
    if len(line) <= MAX_LINE:
        return line
    marker = f"... ({{}} {CLIPPED}"
    keep = MAX_LINE - len(marker.format(len(line)))
    return line[:keep] + marker.format(len(line) - keep)


def abbreviate(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    suffix = f"... ({len(text)} characters)"
    return text[: max(limit - len(suffix), 20)] + suffix


# ---------------------------------------------------------------------- decoded text


def readable_text(key: str, value: Any) -> tuple[str, str] | None:
    """(how it is shown, text) for a value read as lines, or None for a plain value.

    User data is decoded (gzip+base64 -> cloud-config); a JSON document whose fields hold
    text (the desired state: wg-quick config and firewall) is shown as YAML-style blocks,
    one text line per line; any other JSON document (an IAM policy) is indented.
    """
    if not isinstance(value, str):
        return None
    if key.rsplit(".", 1)[-1] == "userDataBase64":
        try:
            return "gzip+base64, shown decoded", decode_user_data(value)
        except (ValueError, OSError, EOFError):
            return None
    document = json_document(value)
    if document is None:
        return ("text", value) if "\n" in value else None
    if has_text_fields(document):
        items = sorted(document.items()) if isinstance(document, dict) else document
        lines: list[str] = []
        for child_key, child in (
            items if isinstance(document, dict) else (("-", item) for item in items)
        ):
            lines += value_lines(str(child_key), child)
        return "JSON, text fields shown as blocks", "\n".join(lines) + "\n"
    return "JSON", json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------- main properties


def _lookup(inputs: dict[str, Any], path: str) -> tuple[bool, Any]:
    value: Any = inputs
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def main_properties(resource: dict[str, Any]) -> list[str]:
    """`key: value` lines for a created resource's main inputs (MAIN_PROPERTIES)."""
    inputs = resource.get("inputs") or {}
    paths = MAIN_PROPERTIES.get(resource["type"])
    if paths is None:
        paths = tuple(
            k
            for k in sorted(inputs)
            if k != "tags" and isinstance(inputs[k], str | int | float | bool)
        )[:_DEFAULT_MAIN]
    lines = []
    for path in paths:
        found, value = _lookup(inputs, path)
        if found:
            lines.append(f"{path}: {short_value(value)}")
    return lines


# ---------------------------------------------------------------------------- impact


def site_of(name: str, suffix: str) -> str:
    return name.removesuffix(suffix) if name.endswith(suffix) else name


def _instance_impact(change: ResourceChange) -> str:
    site = site_of(change.name, "-gateway")
    if change.op == "replace":
        return f"gateway replaced: site {site} down for its boot ({GATEWAY_BOOT})"
    if any(p.key == "instanceType" for p in change.properties):
        return f"instance stopped and started for its new type: site {site} down minutes"
    return "in place, no outage"


def _command_impact(change: ResourceChange) -> str:
    if change.name.endswith("-apply"):
        return f"{site_of(change.name, '-apply')}'s apply re-runs: {APPLY_RERUN}"
    return "re-runs (read-only check), no outage"


def _path_impact(change: ResourceChange) -> str:
    if change.op == "update":
        return "in place (the route's target is swapped), no outage"
    return "re-made: that path carries nothing between delete and create (seconds)"


def _parameter_impact(change: ResourceChange) -> str:
    if change.op == "replace":
        if any(p.key == "name" for p in change.properties):
            # Create before delete: the new name exists before the old one goes.
            return "replaced: made under its new name, then the old one deleted"
        return "replaced: deleted and created again under the same name"
    if any(p.secret for p in change.properties):
        return "in place: new secret value, read by the gateway at its apply"
    return "in place: new value, read by the gateway at its apply"


_REPLACED = {
    "aws:ec2/eipAssociation:EipAssociation": (
        "re-associated: the tunnel's public address is away for seconds"
    ),
    "random:index/randomBytes:RandomBytes": "new key material (key rotation)",
}
_BY_TYPE = {
    _INSTANCE: _instance_impact,
    _COMMAND: _command_impact,
    "aws:ec2/route:Route": _path_impact,
    "aws:ec2/routeTableAssociation:RouteTableAssociation": _path_impact,
    _PARAMETER: _parameter_impact,
}
_BY_OP = {"create": "new", "delete": "deleted", "replace": "replaced (delete, create)"}


def impact(change: ResourceChange) -> str | None:
    """What the change costs the running tunnel, in a few words; None if unchanged."""
    if change.op == "same":
        return None
    if change.op in ("update", "replace") and change.type in _BY_TYPE:
        return _BY_TYPE[change.type](change)
    if change.op == "replace" and change.type in _REPLACED:
        return _REPLACED[change.type]
    return _BY_OP.get(change.op, "in place")


def _names(sites: Sequence[str], suffix: str = "") -> str:
    """`alpha`, `alpha and beta`, `alpha, beta and gamma`; each with `suffix`."""
    named = [f"{site}{suffix}" for site in sites]
    if len(named) <= 1:
        return "".join(named)
    return ", ".join(named[:-1]) + f" and {named[-1]}"


def summary_paragraph(changes: Iterable[ResourceChange]) -> list[str]:
    """One paragraph on what the change costs, wrapped to lines of at most 100."""
    changes = [c for c in changes if c.op != "same"]
    if not changes:
        return ["This change changes nothing."]
    gateways = sorted(
        site_of(c.name, "-gateway") for c in changes if c.type == _INSTANCE and c.op == "replace"
    )
    restarted = sorted(
        site_of(c.name, "-gateway")
        for c in changes
        if c.type == _INSTANCE
        and c.op == "update"
        and any(p.key == "instanceType" for p in c.properties)
    )
    applies = sorted(
        site_of(c.name, "-apply")
        for c in changes
        if c.type == _COMMAND and c.name.endswith("-apply") and c.op in ("replace", "update")
    )
    secrets = sum(1 for c in changes for p in c.properties if p.secret)
    others = [c for c in changes if c.type not in (_INSTANCE, _COMMAND)]
    replaced = sum(1 for c in others if c.op == "replace")
    updated = sum(1 for c in others if c.op == "update")
    created = sum(1 for c in changes if c.op == "create")
    deleted = sum(1 for c in changes if c.op == "delete")

    plural = "gateway" if len(gateways) == 1 else "gateways"
    parts = [f"This change replaces {len(gateways)} {plural}"]
    if gateways:
        parts[0] += f" ({_names(gateways)}: down for the boot, {GATEWAY_BOOT})"
    if restarted:
        parts.append(f"stops and starts the gateway of {_names(restarted)} (a new instance type)")
    if applies:
        verb = "apply re-runs" if len(applies) == 1 else "applies re-run"
        parts.append(f"{_names(applies, chr(39) + 's')} {verb} in place, no outage")
    if secrets:
        parts.append(f"{secrets} secret inputs change ([secret changed], values never shown)")
    parts.append(
        f"other resources: {replaced} replaced, {updated} updated in place, "
        f"{created} created, {deleted} deleted"
    )
    if not gateways and not restarted:
        parts.append("the running gateways stay as they are")
    text = "; ".join(parts) + "."
    return textwrap.wrap(text, width=100)
