"""What the AWS provider does to an instance's inputs and state, where this project relies on it.

The mock engine answers a resource with its own inputs; a real provider does more. For
`aws:ec2/instance:Instance` and `aws:ec2/networkInterface:NetworkInterface` the
difference decides whether a second `pulumi up` turns a gateway's source/dest check
back on (terraform-provider-aws#44768), so this module models exactly that part of
hashicorp/terraform-provider-aws `internal/service/ec2/ec2_instance.go`
(`ResourceInstance`, `resourceInstanceRead`, `resourceInstanceUpdate`) and
`internal/service/ec2/vpc_network_interface.go`:

- Schema default: the instance's `source_dest_check` is `Optional, Default: true`; so is
  the interface's. Unset means true, never "whatever AWS has".
- ConflictsWith: the `network_interface` block lists `source_dest_check` in its
  `ConflictsWith`; so does `primary_network_interface` (PR #49198's description: "you
  can't sidestep it by setting the correct value on the instance either"). Setting both
  fails the plan.
- Read: `resourceInstanceRead` sets `source_dest_check` from the device-0 interface
  (`primaryNetworkInterface.SourceDestCheck`, then `instance.SourceDestCheck`), i.e. from
  the attached interface, whatever the instance's own configuration says.
- Suppression: `source_dest_check`'s `DiffSuppressFunc` is
  `_, ok := d.GetOk("network_interface"); return ok`, and `resourceInstanceUpdate` calls
  `ModifyInstanceAttribute(SourceDestCheck)` only `if _, ok := d.GetOk("network_interface");
  !ok`. Both look at the deprecated `network_interface` block only, not at
  `primary_network_interface` (the open fix PRs #47082 and #49198 add it).

So with `primaryNetworkInterface`, the second run compares the default (true) with the
state Read filled in (false) and plans false -> true, which ModifyInstanceAttribute
writes through to the interface. With `networkInterfaces` (device 0) the change is
suppressed and nothing is written.

`second_run_changes` uses this model: run 1's outputs are the state, run 2's inputs
with the schema defaults applied are compared with them, as the provider's Diff would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from core.facts import architecture

INSTANCE = "aws:ec2/instance:Instance"
NETWORK_INTERFACE = "aws:ec2/networkInterface:NetworkInterface"

# Schema `Default:` values the provider fills in for an unset input (only those this
# project depends on). ec2_instance.go: "source_dest_check": {Optional, Default: true};
# vpc_network_interface.go: "source_dest_check": {Optional, Default: true}.
SCHEMA_DEFAULTS: dict[str, dict[str, Any]] = {
    INSTANCE: {"sourceDestCheck": True},
    NETWORK_INTERFACE: {"sourceDestCheck": True},
}


def _present(value: Any) -> bool:
    return value is not None and value not in ([], {})


def device_zero_interface(inputs: Mapping[str, Any]) -> tuple[str, str] | None:
    """(block, interface id) of the instance's device 0, if a standalone interface is it.

    `block` is the input that attaches it: `networkInterfaces` (the deprecated block, at
    deviceIndex 0) or `primaryNetworkInterface`.
    """
    for attached in inputs.get("networkInterfaces") or []:
        if isinstance(attached, Mapping) and attached.get("deviceIndex") == 0:
            return "networkInterfaces", str(attached.get("networkInterfaceId"))
    primary = inputs.get("primaryNetworkInterface")
    if isinstance(primary, Mapping) and primary.get("networkInterfaceId"):
        return "primaryNetworkInterface", str(primary["networkInterfaceId"])
    return None


def conflicts(type_: str, inputs: Mapping[str, Any]) -> list[str]:
    """The schema's ConflictsWith errors for these inputs (the provider's Check fails)."""
    if type_ != INSTANCE or not _present(inputs.get("sourceDestCheck")):
        return []
    return [
        f'"{block}": conflicts with sourceDestCheck (ec2_instance.go ConflictsWith)'
        for block in ("networkInterfaces", "primaryNetworkInterface")
        if _present(inputs.get(block))
    ]


def with_defaults(type_: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs as the provider sees them: unset attributes take their schema default."""
    filled = dict(inputs)
    for key, default in SCHEMA_DEFAULTS.get(type_, {}).items():
        if filled.get(key) is None:
            filled[key] = default
    return filled


def read_back(
    type_: str, inputs: Mapping[str, Any], interface_inputs: Callable[[str], Mapping[str, Any]]
) -> dict[str, Any]:
    """What the provider's Read writes into state beyond the inputs.

    `interface_inputs(id)` gives the inputs of the network interface with that id. An
    instance's sourceDestCheck is its device-0 interface's (resourceInstanceRead), and
    an interface whose check was never set has AWS's default, on.
    """
    if type_ != INSTANCE:
        return {}
    attached = device_zero_interface(inputs)
    if attached is None:
        return {"sourceDestCheck": with_defaults(INSTANCE, inputs)["sourceDestCheck"]}
    interface = with_defaults(NETWORK_INTERFACE, interface_inputs(attached[1]))
    return {"sourceDestCheck": interface["sourceDestCheck"]}


def suppressed(type_: str, key: str, inputs: Mapping[str, Any]) -> bool:
    """The provider's DiffSuppressFunc: no diff for `key`, whatever old and new are."""
    if type_ == INSTANCE and key == "sourceDestCheck":
        # `_, ok := d.GetOk("network_interface"); return ok`: only the deprecated block.
        return _present(inputs.get("networkInterfaces"))
    return False


# ------------------------------------------------------------------- invoke stand-ins
# What `ec2:DescribeInstanceTypeOfferings` (LocationType availability-zone, filtered by
# instance-type) answers, for the mocks. AWS answers an unknown type, or one a zone does
# not offer, with no offering at all, not an error
# (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceTypeOfferings.html),
# so the mock must too: a mock that echoes any type hides a typo until RunInstances.
#
# The zones: us-east-1 has six (a-f), the other regions three (a-c). Not every zone
# offers every type: the mock's us-east-1e offers no Graviton type, as the program's own
# note says (zone names map to zone ids per account; this is the mock account's map).
# Real type names: the InstanceType enum of the installed botocore's EC2 service model,
# the list the EC2 API itself validates against.
_ZONE_LETTERS = {"us-east-1": "abcdef"}
_NO_GRAVITON_ZONES = frozenset({"us-east-1e"})


@functools.cache
def known_instance_types() -> frozenset[str]:
    """Every instance type name the EC2 API knows (botocore's `InstanceType` enum)."""
    import botocore.loaders

    model = botocore.loaders.Loader().load_service_model("ec2", "service-2")
    return frozenset(model["shapes"]["InstanceType"]["enum"])


def zones_offering(region: str, instance_type: str) -> list[str]:
    """The zones of `region` that offer `instance_type` (none for an unknown type)."""
    if instance_type not in known_instance_types():
        return []
    zones = [f"{region}{letter}" for letter in _ZONE_LETTERS.get(region, "abc")]
    if architecture(instance_type) == "arm64":
        zones = [zone for zone in zones if zone not in _NO_GRAVITON_ZONES]
    return zones


def subnet_matches(subnet: Mapping[str, Any], region: str, args: Mapping[str, Any]) -> bool:
    """Whether `ec2:DescribeSubnets` with these filters (`tag:<key>`, `vpc-id`,
    `availability-zone`, `cidr-block`) and tags finds this subnet, in this region."""
    if subnet.get("region", region) != region:
        return False
    tags = subnet.get("tags") or {}
    for key, value in (args.get("tags") or {}).items():
        if tags.get(key) != value:
            return False
    fields = {
        "vpc-id": subnet.get("vpcId"),
        "availability-zone": subnet.get("availabilityZone"),
        "cidr-block": subnet.get("cidrBlock"),
    }
    for item in args.get("filters") or []:
        name, values = str(item["name"]), [str(v) for v in item["values"]]
        found = tags.get(name.removeprefix("tag:")) if name.startswith("tag:") else fields.get(name)
        if found not in values:
            return False
    return True


def effective_source_dest_check(
    instance_inputs: Mapping[str, Any], interface_inputs: Mapping[str, Any]
) -> bool:
    """The check AWS holds on a gateway's device-0 interface once `pulumi up` ran again.

    The interface's own value, unless the instance's value is not suppressed: then the
    second run writes the instance's (default true) through ModifyInstanceAttribute.
    """
    interface = with_defaults(NETWORK_INTERFACE, interface_inputs)["sourceDestCheck"]
    if suppressed(INSTANCE, "sourceDestCheck", instance_inputs):
        return bool(interface)
    instance = with_defaults(INSTANCE, instance_inputs)["sourceDestCheck"]
    return bool(interface) or bool(instance)
