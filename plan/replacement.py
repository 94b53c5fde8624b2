"""Which input changes replace a resource instead of updating it in place.

`pulumi preview` asks each provider; offline there is no provider, so this table says
what the providers decide. pulumi-aws bridges terraform-provider-aws, where a schema
attribute with `ForceNew: true` (or a plan modifier `RequiresReplace()`) makes a change
a replacement; the paths below are those attributes under their Pulumi (camelCase)
names. Each entry cites the schema it comes from: a path relative to
hashicorp/terraform-provider-aws `internal/service/` unless another repository is named.

A type the program declares but this table lacks fails `tests/test_plan_diff.py`, so a
new resource type cannot slip into the review with every change shown as an update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ForceNew:
    source: str
    paths: tuple[str, ...]


TABLE: dict[str, ForceNew] = {
    # ---------------------------------------------------------------- network
    "aws:ec2/vpc:Vpc": ForceNew(
        "ec2/vpc_.go",
        ("cidrBlock", "ipv4IpamPoolId", "ipv4NetmaskLength"),
    ),
    "aws:ec2/subnet:Subnet": ForceNew(
        "ec2/vpc_subnet.go",
        (
            "vpcId",
            "cidrBlock",
            "availabilityZone",
            "availabilityZoneId",
            "outpostArn",
            "ipv6Native",
        ),
    ),
    # Subnets, security groups and private DNS are updated in place
    # (ModifyVpcEndpoint); what the endpoint is, and where, is not.
    "aws:ec2/vpcEndpoint:VpcEndpoint": ForceNew(
        "ec2/vpc_endpoint.go",
        ("vpcId", "serviceName", "vpcEndpointType", "serviceRegion", "autoAccept"),
    ),
    # vpc_id is updated in place (detach, then attach).
    "aws:ec2/internetGateway:InternetGateway": ForceNew("ec2/vpc_internet_gateway.go", ()),
    "aws:ec2/routeTable:RouteTable": ForceNew("ec2/vpc_route_table.go", ("vpcId",)),
    # route_table_id is updated in place (ReplaceRouteTableAssociation).
    "aws:ec2/routeTableAssociation:RouteTableAssociation": ForceNew(
        "ec2/vpc_route_table_association.go", ("subnetId", "gatewayId")
    ),
    # A route's target (gatewayId, networkInterfaceId, ...) is updated with ReplaceRoute;
    # its table and destination identify it.
    "aws:ec2/route:Route": ForceNew(
        "ec2/vpc_route.go",
        (
            "routeTableId",
            "destinationCidrBlock",
            "destinationIpv6CidrBlock",
            "destinationPrefixListId",
        ),
    ),
    "aws:ec2/securityGroup:SecurityGroup": ForceNew(
        "ec2/vpc_security_group.go", ("name", "namePrefix", "description", "vpcId")
    ),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": ForceNew(
        "ec2/vpc_security_group_ingress_rule.go (RequiresReplace)", ("securityGroupId",)
    ),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": ForceNew(
        "ec2/vpc_security_group_egress_rule.go (RequiresReplace)", ("securityGroupId",)
    ),
    "aws:ec2/networkInterface:NetworkInterface": ForceNew(
        "ec2/vpc_network_interface.go", ("subnetId", "privateIp", "interfaceType")
    ),
    "aws:ec2/eip:Eip": ForceNew(
        "ec2/ec2_eip.go",
        (
            "domain",
            "vpc",
            "address",
            "customerOwnedIpv4Pool",
            "ipamPoolId",
            "networkBorderGroup",
            "publicIpv4Pool",
        ),
    ),
    # Every argument of an association is ForceNew: it is re-made, never modified.
    "aws:ec2/eipAssociation:EipAssociation": ForceNew(
        "ec2/ec2_eip_association.go",
        (
            "allocationId",
            "allowReassociation",
            "instanceId",
            "networkInterfaceId",
            "privateIpAddress",
            "publicIp",
        ),
    ),
    # instance_type is not here: the provider changes it in place by stopping and
    # starting the instance (resourceInstanceUpdate). user_data and user_data_base64
    # replace only with user_data_replace_on_change (a CustomizeDiff), handled in
    # plan.diff. ami is ForceNew, but this program ignores its changes.
    "aws:ec2/instance:Instance": ForceNew(
        "ec2/ec2_instance.go",
        (
            "ami",
            "availabilityZone",
            "subnetId",
            "privateIp",
            "networkInterfaces",
            # Device 0 cannot change on a running instance.
            "primaryNetworkInterface",
            "associatePublicIpAddress",
            "keyName",
            "placementGroup",
            "placementPartitionNumber",
            "ipv6AddressCount",
            "ipv6Addresses",
            "launchTemplate",
            "cpuCoreCount",
            "cpuThreadsPerCore",
            "cpuOptions",
            "hibernation",
            "enclaveOptions",
            "ebsBlockDevices",
            "ephemeralBlockDevices",
            "rootBlockDevice.encrypted",
            "rootBlockDevice.kmsKeyId",
        ),
    ),
    # ---------------------------------------------------------------- identity, keys
    "aws:iam/role:Role": ForceNew("iam/role.go", ("name", "namePrefix", "path")),
    "aws:iam/rolePolicy:RolePolicy": ForceNew("iam/role_policy.go", ("name", "namePrefix", "role")),
    # role is updated in place (remove, then add the role).
    "aws:iam/instanceProfile:InstanceProfile": ForceNew(
        "iam/instance_profile.go", ("name", "namePrefix", "path")
    ),
    "aws:ssm/parameter:Parameter": ForceNew("ssm/parameter.go", ("name", "dataType")),
    "aws:kms/key:Key": ForceNew(
        "kms/key.go",
        ("customerMasterKeySpec", "keySpec", "customKeyStoreId", "multiRegion", "xksKeyId"),
    ),
    "aws:kms/alias:Alias": ForceNew("kms/alias.go", ("name", "namePrefix")),
    # ---------------------------------------------------------------- monitoring
    # Pulumi names alarm_name `name`.
    "aws:cloudwatch/metricAlarm:MetricAlarm": ForceNew("cloudwatch/metric_alarm.go", ("name",)),
    "aws:cloudwatch/dashboard:Dashboard": ForceNew("cloudwatch/dashboard.go", ("dashboardName",)),
    "aws:sns/topic:Topic": ForceNew("sns/topic.go", ("name", "namePrefix", "fifoTopic")),
    # Pulumi names topic_arn `topic`.
    "aws:sns/topicSubscription:TopicSubscription": ForceNew(
        "sns/topic_subscription.go", ("topic", "protocol", "endpoint")
    ),
    # ---------------------------------------------------------------- other providers
    "random:index/randomBytes:RandomBytes": ForceNew(
        "hashicorp/terraform-provider-random internal/provider/resource_bytes.go (RequiresReplace)",
        ("keepers", "length"),
    ),
    # Changing create/update/delete re-runs a command in place; only triggers replace.
    "command:local:Command": ForceNew(
        "pulumi/pulumi-command provider/pkg/provider/local/commandInputs.go (triggers)",
        ("triggers",),
    ),
    # A provider whose region changes is replaced, and so is everything it manages
    # (pulumi-aws's provider DiffConfig; see plan.diff).
    "pulumi:providers:aws": ForceNew("pulumi/pulumi-aws provider config", ("region",)),
    "pulumi:providers:random": ForceNew("pulumi/pulumi-random provider config", ()),
    "pulumi:providers:command": ForceNew("pulumi/pulumi-command provider config", ()),
}


@dataclass(frozen=True)
class ForceNewIfChange:
    """A provider's CustomizeDiff `ForceNewIfChange(path, f)`: a change of `path` replaces
    the resource only when `f(old, new)` holds; any other change of it is in place."""

    source: str
    path: str
    condition: Callable[[Any, Any], bool]


def _advanced_to_standard(old: Any, new: Any) -> bool:
    return bool(old == "Advanced" and new == "Standard")


CONDITIONAL: dict[str, tuple[ForceNewIfChange, ...]] = {
    # SSM refuses to downgrade a parameter ("You can't downgrade a parameter from the
    # advanced-parameter tier to the standard-parameter tier"), so the provider replaces
    # it: internal/service/ssm/parameter.go, CustomizeDiff,
    #   customdiff.ForceNewIfChange("tier", func(_ context.Context, old, new, meta any) bool {
    #       return awstypes.ParameterTier(old.(string)) == awstypes.ParameterTierAdvanced &&
    #           awstypes.ParameterTier(new.(string)) == awstypes.ParameterTierStandard
    #   })
    # (hashicorp/terraform-provider-aws at 0073593e7d6993ba482409f4dc35438daaa79bb3).
    # Standard -> Advanced is an in-place PutParameter with the new tier.
    "aws:ssm/parameter:Parameter": (
        ForceNewIfChange("ssm/parameter.go (CustomizeDiff)", "tier", _advanced_to_standard),
    ),
}


def forces_new_on_change(type_: str, key: str, old: Any, new: Any) -> bool:
    """Whether changing input `key` of a `type_` from `old` to `new` replaces it under a
    conditional rule (CONDITIONAL); the unconditional ones are in TABLE."""
    return any(rule.path == key and rule.condition(old, new) for rule in CONDITIONAL.get(type_, ()))


def force_new_paths(type_: str) -> tuple[str, ...]:
    """The input paths of `type_` whose change replaces it; () for an unknown type."""
    entry = TABLE.get(type_)
    return entry.paths if entry else ()
