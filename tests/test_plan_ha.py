"""Two gateways per site (issue 16, the Pulumi side): tests/stacks/Pulumi.ha.yaml planned by
the real program under the mock engine.

Per site: two instances in two zones on two standalone interfaces, one Elastic IP and no
EipAssociation (the gateways move it), routes to gateway 0's interface that ignore their
target, failover rights by ARN, and the rolling order of a replacement. Each scenario is
planned once per session (tests.conftest.planned): the stack as `pulumi up` and as the
next `pulumi preview`, the stack with a new image, and dev going to two gateways.
"""

from __future__ import annotations

import copy
import graphlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from plan import cost, diff
from plan.document import public_document
from plan.engine import Plan, PlanError, PlannedResource, read_stack_file, reveal, run_program
from plan.second_run import changes_between
from policy import offline, rules
from tests.conftest import planned

TEST_STACKS = Path(__file__).resolve().parent / "stacks"
INSTANCE = "aws:ec2/instance:Instance"
INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
SUBNET = "aws:ec2/subnet:Subnet"
ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
ROUTE = "aws:ec2/route:Route"
EIP = "aws:ec2/eip:Eip"
EIP_ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
COMMAND = "command:local:Command"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
PARAMETER = "aws:ssm/parameter:Parameter"
SITES = {"alpha": ("us-east-1", "10.1"), "beta": ("eu-west-1", "10.2")}
TUNNEL = "10.255.255.0/31"
# The steps of a rolling replacement, in the order `pulumi up` must take them.
ROLLING = ("drain-1", "gateway-2", "apply-2", "drain-0", "gateway", "apply")


def _config() -> dict[str, Any]:
    return read_stack_file("ha", TEST_STACKS)


@pytest.fixture(scope="module")
def ha() -> Plan:
    """The HA stack as `pulumi up` runs it (shared: tests only read it)."""
    return planned("ha", _config(), preview=False, shared=True)


@pytest.fixture(scope="module")
def ha_next_preview() -> Plan:
    """The next `pulumi preview` of the HA stack (the second run's declarations)."""
    return planned("ha", _config(), preview=True, shared=True)


@pytest.fixture(scope="module")
def image_roll() -> Plan:
    config = _config()
    for site in config["sites"]:
        site["image"] = "20990101"
    return planned("ha", config, preview=True, shared=True)


@pytest.fixture(scope="module")
def dev_two_gateways() -> Plan:
    """dev with `gateways: 2` on both sites and no secondAvailabilityZone: chosen."""
    config = read_stack_file("dev")
    for site in config["sites"]:
        site["gateways"] = 2
    return planned("dev", config, preview=True, shared=True)


def _id(plan: Plan, type_: str, name: str) -> str:
    return str(plan.one(type_, name).outputs["id"])


def _named(plan: Plan, type_: str, prefix: str) -> list[PlannedResource]:
    return [r for r in plan.by_type(type_) if r.name.startswith(prefix)]


def _ancestors(plan: Plan, resource: PlannedResource) -> set[str]:
    """Every URN `resource` depends on, directly or through others."""
    seen: set[str] = set()
    todo = list(resource.options["dependsOn"])
    while todo:
        urn = todo.pop()
        if urn not in seen:
            seen.add(urn)
            todo += plan.get(urn).options["dependsOn"]
    return seen


def _step(plan: Plan, site: str, step: str) -> PlannedResource:
    type_ = INSTANCE if step.startswith("gateway") else COMMAND
    return plan.one(type_, f"{site}-{step}")


# ------------------------------------------------------------------ what a site has


@pytest.mark.parametrize("site", SITES)
def test_two_gateways_in_two_zones_each_on_its_own_interface(ha: Plan, site: str) -> None:
    region, net = SITES[site]
    zones = []
    for suffix, address in (("", f"{net}.0.4"), ("-2", f"{net}.2.4")):
        instance = ha.one(INSTANCE, f"{site}-gateway{suffix}")
        interface = ha.one(INTERFACE, f"{site}-gateway{suffix}")
        assert instance.inputs["networkInterfaces"] == [
            {"deviceIndex": 0, "networkInterfaceId": interface.outputs["id"]}
        ]
        assert interface.inputs["sourceDestCheck"] is False
        assert interface.inputs["privateIps"] == [address]
        subnet = ha.one(SUBNET, f"{site}-public{suffix}")
        assert interface.inputs["subnetId"] == subnet.outputs["id"]
        zones.append(subnet.inputs["availabilityZone"])
    assert zones == [f"{region}a", f"{region}b"]
    assert ha.one(SUBNET, f"{site}-public-2").inputs["cidrBlock"] == f"{net}.2.0/24"


@pytest.mark.parametrize("site", SITES)
def test_one_identity_for_both_gateways(ha: Plan, site: str) -> None:
    first, second = (ha.one(INSTANCE, f"{site}-gateway{s}") for s in ("", "-2"))
    for key in ("iamInstanceProfile", "userDataBase64", "ami", "instanceType"):
        assert first.inputs[key] == second.inputs[key], key
    assert len(_named(ha, "aws:iam/role:Role", f"{site}-")) == 1
    assert len(_named(ha, "aws:kms/key:Key", f"{site}-")) == 1
    assert len([p for p in _named(ha, PARAMETER, site) if p.name.endswith("-desired-state")]) == 1


@pytest.mark.parametrize("site", SITES)
def test_workloads_admit_the_icmp_errors_of_either_gateway(ha: Plan, site: str) -> None:
    _, net = SITES[site]
    ingress = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
    for kind in ("frag-needed-from-gateway", "time-exceeded-from-gateway"):
        for suffix, address in (("", f"{net}.0.4"), ("-2", f"{net}.2.4")):
            rule = ha.one(ingress, f"{site}-{kind}{suffix}")
            assert rule.inputs["cidrIpv4"] == f"{address}/32"
            assert rule.inputs["securityGroupId"] == _id(
                ha, "aws:ec2/securityGroup:SecurityGroup", f"{site}-from-peer-site"
            )


def test_the_verification_checks_both_gateways_of_each_site(ha: Plan) -> None:
    verify = ha.one(COMMAND, "verify-tunnel")
    checked = json.loads(verify.inputs["environment"]["WG_S2S_GATEWAYS"])
    assert [(g["site"], g["instanceId"]) for g in checked] == [
        (site, _id(ha, INSTANCE, f"{site}-gateway{suffix}"))
        for site in SITES
        for suffix in ("", "-2")
    ]
    applies = {_step(ha, site, step).urn for site in SITES for step in ("apply", "apply-2")}
    assert applies <= set(verify.options["dependsOn"])


def test_one_elastic_ip_per_site_and_no_association(ha: Plan) -> None:
    assert sorted(r.name for r in ha.by_type(EIP)) == ["alpha-address", "beta-address"]
    # The gateways associate it themselves: a Pulumi-owned association would be put back
    # on gateway 0 by the next `pulumi up --refresh`.
    assert ha.by_type(EIP_ASSOCIATION) == []


@pytest.mark.parametrize("site", SITES)
def test_every_table_routes_to_gateway_0_and_ignores_the_target(ha: Plan, site: str) -> None:
    peer_cidr = "10.2.0.0/16" if site == "alpha" else "10.1.0.0/16"
    tables = [_id(ha, ROUTE_TABLE, f"{site}-{role}") for role in ("public", "private", "public-2")]
    gateway_0 = _id(ha, INTERFACE, f"{site}-gateway")
    routes = _named(ha, ROUTE, f"{site}-to-")
    found = {(r.inputs["routeTableId"], r.inputs["destinationCidrBlock"]) for r in routes}
    assert found == {(t, d) for t in tables for d in (peer_cidr, TUNNEL)}
    for route in routes:
        assert route.inputs["networkInterfaceId"] == gateway_0
        assert route.options["ignoreChanges"] == ["networkInterfaceId"]
    # Both public tables reach the internet (cloud-init of either gateway needs it).
    for role in ("public", "public-2"):
        default = ha.one(ROUTE, f"{site}-{role}-internet")
        assert default.inputs["routeTableId"] == _id(ha, ROUTE_TABLE, f"{site}-{role}")
        assert default.inputs["gatewayId"] == _id(
            ha, "aws:ec2/internetGateway:InternetGateway", f"{site}-igw"
        )


@pytest.mark.parametrize("site", SITES)
def test_desired_state_names_the_failover_ids(ha: Plan, site: str) -> None:
    region, net = SITES[site]
    state = json.loads(ha.one(PARAMETER, f"{site}-desired-state").inputs["insecureValue"])
    failover = state["failover"]
    assert failover["allocationId"] == ha.one(EIP, f"{site}-address").outputs["allocationId"]
    assert failover["elasticIp"] == ha.one(EIP, f"{site}-address").outputs["publicIp"]
    assert failover["region"] == region
    assert failover["gateways"] == [
        {"networkInterfaceId": _id(ha, INTERFACE, f"{site}-gateway"), "privateIp": f"{net}.0.4"},
        {"networkInterfaceId": _id(ha, INTERFACE, f"{site}-gateway-2"), "privateIp": f"{net}.2.4"},
    ]
    tables = [_id(ha, ROUTE_TABLE, f"{site}-{role}") for role in ("public", "private", "public-2")]
    assert [r["routeTableId"] for r in failover["routes"]] == [t for t in tables for _ in (1, 2)]


# ---------------------------------------------------------------------- failover rights


@pytest.mark.parametrize("site", SITES)
def test_failover_rights_name_the_site_s_own_arns(ha: Plan, site: str) -> None:
    region = SITES[site][0]
    arn = f"arn:aws:ec2:{region}:123456789012"
    policy = json.loads(reveal(ha.one(ROLE_POLICY, f"{site}-move-own-address").inputs["policy"]))
    statements = {s["Sid"]: s for s in policy["Statement"]}
    allocation = ha.one(EIP, f"{site}-address").outputs["allocationId"]
    interfaces = [_id(ha, INTERFACE, f"{site}-gateway{s}") for s in ("", "-2")]
    tables = [_id(ha, ROUTE_TABLE, f"{site}-{r}") for r in ("public", "private", "public-2")]
    assert statements["MoveOwnElasticIp"]["Action"] == "ec2:AssociateAddress"
    assert statements["MoveOwnElasticIp"]["Resource"] == [
        f"{arn}:elastic-ip/{allocation}",
        *(f"{arn}:network-interface/{eni}" for eni in interfaces),
    ]
    assert statements["MoveOwnRoutes"]["Action"] == "ec2:ReplaceRoute"
    assert statements["MoveOwnRoutes"]["Resource"] == [f"{arn}:route-table/{t}" for t in tables]
    # Reads only, on `*` (no resource-level permissions for these two).
    assert statements["ReadAddressesAndRoutes"]["Action"] == [
        "ec2:DescribeAddresses",
        "ec2:DescribeRouteTables",
    ]
    assert statements["ReadAddressesAndRoutes"]["Resource"] == "*"
    # The role of both gateways: the policy is on the site's one role.
    role = ha.one("aws:iam/role:Role", f"{site}-gateway")
    assert role.urn in ha.one(ROLE_POLICY, f"{site}-move-own-address").options["dependsOn"]


def test_the_ha_stack_passes_every_mandatory_policy(ha: Plan) -> None:
    found = rules.mandatory(rules.evaluate(offline.resources_from_plan(ha)))
    assert [(v.policy, v.name, v.message) for v in found] == []


def _scoped_violations(document: dict[str, Any]) -> list[str]:
    found = rules.evaluate(offline.resources_from_document(document, document["stack"]))
    return [v.message for v in found if v.policy == "failover-rights-scoped"]


def _edit_statement(document: dict[str, Any], sid: str, **changes: Any) -> None:
    policy = next(
        r
        for r in document["resources"]
        if r["type"] == ROLE_POLICY and r["name"] == "alpha-move-own-address"
    )
    parsed = json.loads(policy["inputs"]["policy"])
    next(s for s in parsed["Statement"] if s["Sid"] == sid).update(changes)
    policy["inputs"]["policy"] = json.dumps(parsed)


def test_failover_rights_policy_passes_and_catches_planted_violations(ha: Plan) -> None:
    document = public_document(ha)
    assert _scoped_violations(document) == []

    wildcard = copy.deepcopy(document)
    _edit_statement(wildcard, "MoveOwnElasticIp", Resource="*")
    assert _scoped_violations(wildcard) == [
        "role policy of role alpha-gateway: ec2:associateaddress on '*', a wildcard: it could "
        "move any site's Elastic IP or routes; name the site's own ARNs"
    ]

    beta_table = _id(ha, ROUTE_TABLE, "beta-private")
    other = f"arn:aws:ec2:eu-west-1:123456789012:route-table/{beta_table}"
    another_site = copy.deepcopy(document)
    _edit_statement(another_site, "MoveOwnRoutes", Resource=[other])
    assert _scoped_violations(another_site) == [
        f"role policy of role alpha-gateway: ec2:replaceroute on {other}, which is not its own "
        "site's (Elastic IP, gateway interfaces, route tables)"
    ]

    # NotAction grants whatever it does not list: the moving actions too.
    inverted = copy.deepcopy(document)
    _edit_statement(inverted, "ReadAddressesAndRoutes", NotAction="iam:*")
    planted = next(r for r in inverted["resources"] if r["name"] == "alpha-move-own-address")
    parsed = json.loads(planted["inputs"]["policy"])
    del parsed["Statement"][2]["Action"]
    planted["inputs"]["policy"] = json.dumps(parsed)
    assert _scoped_violations(inverted) == [
        "role policy of role alpha-gateway: ec2:associateaddress, ec2:replaceroute with "
        "NotAction: it reaches other sites' too"
    ]

    # A wildcard action reaches the moving ones too.
    broad = copy.deepcopy(document)
    _edit_statement(broad, "ReadAddressesAndRoutes", Action="ec2:*")
    assert len(_scoped_violations(broad)) == 1
    assert "ec2:associateaddress, ec2:replaceroute on '*'" in _scoped_violations(broad)[0]


# ---------------------------------------------------------------- commands and order


@pytest.mark.parametrize("site", SITES)
def test_each_interface_gets_its_public_ipv4_before_its_instance_boots(ha: Plan, site: str) -> None:
    for index, suffix in enumerate(("", "-2")):
        command = ha.one(COMMAND, f"{site}-public-ipv4{suffix}")
        eni = _id(ha, INTERFACE, f"{site}-gateway{suffix}")
        assert command.inputs["create"] == ".venv/bin/python -m deployer public-ipv4"
        assert command.inputs["environment"] == {
            "WG_S2S_SITE": site,
            "WG_S2S_REGION": SITES[site][0],
            "WG_S2S_GATEWAY": str(index),
            "WG_S2S_NETWORK_INTERFACE_ID": eni,
        }
        instance = ha.one(INSTANCE, f"{site}-gateway{suffix}")
        assert command.urn in instance.options["dependsOn"]


@pytest.mark.parametrize("site", SITES)
def test_drains_name_the_gateway_the_other_and_the_address(ha: Plan, site: str) -> None:
    enis = [_id(ha, INTERFACE, f"{site}-gateway{s}") for s in ("", "-2")]
    allocation = ha.one(EIP, f"{site}-address").outputs["allocationId"]
    key = reveal(ha.one("random:index/randomBytes:RandomBytes", f"{site}-wireguard-key").outputs)
    ami = ha.one(INSTANCE, f"{site}-gateway").inputs["ami"]
    for index in (0, 1):
        drain = ha.one(COMMAND, f"{site}-drain-{index}")
        assert drain.inputs["create"] == ".venv/bin/python -m deployer drain"
        assert drain.inputs["environment"] == {
            "WG_S2S_SITE": site,
            "WG_S2S_REGION": SITES[site][0],
            "WG_S2S_GATEWAY": str(index),
            "WG_S2S_NETWORK_INTERFACE_ID": enis[index],
            "WG_S2S_OTHER_NETWORK_INTERFACE_ID": enis[1 - index],
            "WG_S2S_ALLOCATION_ID": allocation,
            "WG_S2S_DEADLINE_SECONDS": "900",
        }
        triggers = drain.inputs["triggers"]
        assert triggers[:2] == [f"image={ami}", "instance-type=t4g.nano"]
        assert triggers[2].startswith("user-data=") and len(triggers[2]) == len("user-data=") + 64
        assert key["base64"] not in json.dumps(drain.inputs)


@pytest.mark.parametrize("site", SITES)
def test_rolling_order_is_in_the_dependency_graph(ha: Plan, site: str) -> None:
    steps = [_step(ha, site, step) for step in ROLLING]
    for before, after in itertools.pairwise(steps):
        assert before.urn in _ancestors(ha, after), f"{after.name} does not wait for {before.name}"
    # And never the other way round (that would be a cycle, or gateway 0 first).
    assert steps[-2].urn not in _ancestors(ha, steps[1])


def test_an_image_roll_replaces_both_gateways_in_order_and_nothing_of_the_network(
    ha_next_preview: Plan, image_roll: Plan
) -> None:
    changes = diff.compare(public_document(ha_next_preview), public_document(image_roll))
    replaced = {(c.type, c.name) for c in changes if c.op == "replace"}
    for site in SITES:
        for step in ROLLING:
            assert (_step(image_roll, site, step).type, f"{site}-{step}") in replaced
    untouched = (INTERFACE, EIP, ROUTE, ROUTE_TABLE, SUBNET, "aws:ec2/vpc:Vpc", PARAMETER)
    assert [c for c in changes if c.type in untouched and c.op != "same"] == []
    # The engine runs the replacements in an order of the dependency graph: every order it
    # may take puts the steps of a site in the rolling order (each waits for the one before).
    graph = {r.urn: set(r.options["dependsOn"]) for r in image_roll.resources}
    order = list(graphlib.TopologicalSorter(graph).static_order())
    for site in SITES:
        urns = [_step(image_roll, site, step).urn for step in ROLLING]
        assert sorted(urns, key=order.index) == urns
        for before, after in itertools.pairwise(ROLLING):
            assert _step(image_roll, site, before).urn in _ancestors(
                image_roll, _step(image_roll, site, after)
            )


def test_a_day2_change_applies_on_both_gateways_and_replaces_no_gateway(
    ha_next_preview: Plan,
) -> None:
    config = _config()
    config["tunnel"]["persistentKeepalive"] = 10
    syslog = {"description": "syslog", "protocol": "udp", "port": 514, "action": "drop"}
    config["firewall"].append(syslog)
    day2 = planned("ha", config, preview=True, shared=True)

    changes = diff.compare(public_document(ha_next_preview), public_document(day2))

    # The standby's apply runs too: a takeover starts its tunnel from the files it wrote.
    replaced = {c.name for c in changes if c.op == "replace"}
    for site in SITES:
        assert {f"{site}-apply", f"{site}-apply-2"} <= replaced
    assert not [c for c in changes if c.type == INSTANCE and c.op != "same"]
    assert not [c for c in changes if "-drain-" in c.name and c.op != "same"]


# ----------------------------------------------------------------- Pulumi and failover


def _failed_over(first: Plan) -> Plan:
    """`first`'s state after every site failed over to gateway 1, as the provider's Read
    would store it: every route targets gateway 1's interface, and the Elastic IP is
    associated with it (an EipAssociation of the site, had there been one, is gone)."""
    state = copy.deepcopy(first)
    for site in SITES:
        second = _id(state, INTERFACE, f"{site}-gateway-2")
        for route in _named(state, ROUTE, f"{site}-to-"):
            route.outputs["networkInterfaceId"] = second
        address = state.one(EIP, f"{site}-address")
        address.outputs.update(networkInterface=second, associationId="eipassoc-failedover")
    state.resources = [r for r in state.resources if r.type != EIP_ASSOCIATION]
    return state


def test_after_a_failover_the_next_up_changes_nothing(ha: Plan, ha_next_preview: Plan) -> None:
    assert changes_between(_failed_over(ha), ha_next_preview) == []


def test_without_ignore_changes_the_next_up_would_undo_the_failover(
    ha: Plan, ha_next_preview: Plan
) -> None:
    # The control: the same state, the routes declared without ignore_changes.
    declared = copy.deepcopy(ha_next_preview)
    for route in declared.by_type(ROUTE):
        route.options["ignoreChanges"] = []
    undone = changes_between(_failed_over(ha), declared)
    assert len(undone) == 2 * 3 * 2  # sites x tables x destinations
    assert all("networkInterfaceId" in line for line in undone)


# ---------------------------------------------------------------- one gateway to two


def test_dev_going_to_two_gateways_keeps_the_network_and_chooses_second_zones(
    dev_preview_plan: Plan, dev_two_gateways: Plan
) -> None:
    changes = diff.compare(public_document(dev_preview_plan), public_document(dev_two_gateways))
    by_op: dict[str, set[tuple[str, str]]] = {}
    for change in changes:
        by_op.setdefault(change.op, set()).add((change.type.rsplit(":", 1)[-1], change.name))
    assert by_op["delete"] == {
        ("EipAssociation", "alpha-address"),
        ("EipAssociation", "beta-address"),
    }
    # Nothing of the network, the identity or the keys is replaced or deleted: the site
    # keeps its subnets, interface, address, routes and key (what is replaced: the
    # applies, the verification, alarms whose metric or instance changes, and gateway 0
    # exactly when its user data changes: the failover agent).
    kept = {
        "Vpc", "InternetGateway", "Subnet", "RouteTable", "RouteTableAssociation", "Route",
        "NetworkInterface", "Eip", "SecurityGroup", "SecurityGroupIngressRule",
        "SecurityGroupEgressRule", "Role", "RolePolicy", "InstanceProfile", "Key",
        "Parameter", "RandomBytes",
    }  # fmt: skip
    gone = by_op.get("replace", set()) | by_op["delete"]
    assert {(type_, name) for type_, name in gone if type_ in kept} == set()
    for site in SITES:
        before = dev_preview_plan.one(INSTANCE, f"{site}-gateway").inputs["userDataBase64"]
        after = dev_two_gateways.one(INSTANCE, f"{site}-gateway").inputs["userDataBase64"]
        assert (("Instance", f"{site}-gateway") in by_op["replace"]) == (before != after)
        assert ("Command", f"{site}-apply") in by_op["replace"]
    for site, zone in (("alpha", "us-east-1b"), ("beta", "eu-west-1b")):
        for made in ("Subnet", "RouteTable", "NetworkInterface", "Instance"):
            name = f"{site}-public-2" if made in ("Subnet", "RouteTable") else f"{site}-gateway-2"
            assert (made, name) in by_op["create"]
        # Not pinned: the first other zone offering the type, kept afterwards.
        subnet = dev_two_gateways.one(SUBNET, f"{site}-public-2")
        assert subnet.inputs["availabilityZone"] == zone
        assert subnet.options["ignoreChanges"] == ["availabilityZone"]


def test_a_moved_second_zone_of_an_existing_site_is_refused() -> None:
    # As for the first zone: AWS refuses the new subnet with the same CIDR while the old
    # one exists (InvalidSubnet.Conflict), after the gateway was deleted.
    existing = {
        "id": "subnet-0a1b2c3d4e5f60719",
        "region": "eu-west-1",
        "vpcId": "vpc-0a1b2c3d4e5f60718",
        "availabilityZone": "eu-west-1c",
        "cidrBlock": "10.2.2.0/24",
        "tags": {"project": "wg-site-to-site", "stack": "ha", "Name": "beta-public-2"},
    }
    with pytest.raises(PlanError) as error:
        run_program("ha", _config(), existing_subnets=[existing])
    assert str(error.value) == (
        "wg-site-to-site:sites[1].secondAvailabilityZone: eu-west-1b, but site beta's subnets "
        "exist in eu-west-1c, and AWS refuses a second subnet 10.2.2.0/24 while the old one "
        "exists (InvalidSubnet.Conflict): keep secondAvailabilityZone eu-west-1c, or change "
        "the site's cidr as well, or destroy the site first"
    )


def test_a_second_zone_that_does_not_offer_the_type_is_one_line() -> None:
    config = _config()
    config["sites"][0]["secondAvailabilityZone"] = "us-east-1e"  # no Graviton there
    with pytest.raises(PlanError) as error:
        planned("ha", config)
    assert str(error.value) == (
        "wg-site-to-site:sites[0].secondAvailabilityZone: us-east-1e does not offer t4g.nano "
        "(zones that do: us-east-1a, us-east-1b, us-east-1c, us-east-1d, us-east-1f); pin one "
        "of those or choose another instanceType"
    )


# ------------------------------------------------------------------------------ cost


def test_cost_counts_both_gateways_the_standby_address_and_the_failover_metrics(
    dev_preview_plan: Plan, dev_two_gateways: Plan
) -> None:
    one = cost.monthly_cost(public_document(dev_preview_plan))
    two = cost.monthly_cost(public_document(dev_two_gateways))
    lines = {line.item: line for line in two.lines}
    assert lines["EC2 t4g.nano (us-east-1)"].quantity == "2 x $0.0042/h"
    assert lines["EC2 t4g.nano (eu-west-1)"].quantity == "2 x $0.0046/h"
    assert lines["EBS gp3 root volumes (us-east-1)"].quantity == "16 GB x $0.08/GB-month"
    # One Elastic IP per site, and the standby's own public IPv4 (billed in use or not).
    assert lines["public IPv4 (Elastic IP)"].quantity == "2 x $0.005/h"
    assert lines["public IPv4 (standby gateways)"].quantity == "2 x $0.005/h"
    assert "public IPv4 (standby gateways)" not in {line.item for line in one.lines}
    # Per site: the second gateway's per-instance TunnelUp (one peer) and the agents'
    # Active x 2, StandbyReady and Failovers; the site and per-peer series are shared.
    assert lines["CloudWatch custom metrics"].quantity == f"{14 + 2 * (1 + 4)} x $0.30/month"
    alarms = len(dev_two_gateways.by_type("aws:cloudwatch/metricAlarm:MetricAlarm"))
    assert lines["CloudWatch alarms (standard resolution)"].quantity == f"{alarms} x $0.10/month"
    hours = cost.HOURS_PER_MONTH
    more = (
        (0.0042 + 0.0046) * hours  # the second instances
        + 2 * 0.005 * hours  # the standbys' public IPv4
        + 8 * (0.08 + 0.088)  # their root volumes
        + 10 * 0.30  # metrics
        + (alarms - 8) * 0.10  # the extra alarms (dev has 8)
    )
    assert two.total_cents - one.total_cents == pytest.approx(more * 100, abs=3)
