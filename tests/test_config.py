"""Bad stack config is rejected before anything is declared, one line per problem."""

from __future__ import annotations

import copy
import functools
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import config as runtime_config
from pulumi.runtime import settings as pulumi_settings

from components.stack_config import read_stack_config
from core.config import (
    MAX_USER_TAGS,
    PROGRAM_TAGS,
    PROGRAM_TAGS_PER_RESOURCE,
    ConfigError,
    load_stack_config,
)
from plan.engine import STACKS, Plan, PlanError, plan_stack, read_stack_file, run_program
from tests.conftest import stack_config

Change = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Change:
    """A change that sets config[path] (dotted, with list indexes) to value."""

    def change(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = config
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return change


def _append_site(config: dict[str, Any]) -> None:
    config["sites"].append(
        {"name": "gamma", "region": "eu-north-1", "cidr": "10.3.0.0/16", "interface": "wgC"}
    )


def _drop_site(config: dict[str, Any]) -> None:
    config["sites"].pop()


# An office's public key, made for these tests (32 random bytes' X25519 public key).
OFFICE_KEY = "3EeDzdKW8qr3H8hAmdqtXoYft3W+tM1mTKnz1CW5qCI="


def _office(**external: str) -> dict[str, Any]:
    return {
        "name": "office",
        "cidr": "192.168.10.0/24",
        "interface": "wg0",
        "external": {"publicKey": OFFICE_KEY, **external},
    }


def _aws_site(name: str, cidr: str) -> dict[str, Any]:
    return {"name": name, "region": "eu-north-1", "cidr": cidr, "interface": "wg0"}


def _with_sites(*sites: dict[str, Any], hub: str | None = None) -> Change:
    """More sites (and room for them in the tunnel), and a hub if given."""

    def change(config: dict[str, Any]) -> None:
        config["tunnel"]["cidr"] = "10.255.255.0/29"
        config["sites"] += copy.deepcopy(list(sites))
        if hub is not None:
            config["topology"] = {"hub": hub}

    return change


def _existing_vpc(route_table_ids: list[str]) -> Change:
    def change(config: dict[str, Any]) -> None:
        config["sites"][1].update(
            vpcId="vpc-0123456789abcdef0",
            subnetId="subnet-0123456789abcdef0",
            routeTableIds=route_table_ids,
        )

    return change


RTB = "rtb-0123456789abcdef0"


def _two_gateways_in_existing_vpc(config: dict[str, Any]) -> None:
    _existing_vpc([RTB])(config)
    config["sites"][1]["gateways"] = 2


# (what is wrong, the change, every fragment the single error line must contain)
BAD_INPUTS: list[tuple[str, Change, list[str]]] = [
    (
        "boolean port",
        _set("tunnel.port", True),
        ["wg-site-to-site:tunnel.port", "valid integer", "(got True)"],
    ),
    (
        "boolean keepalive (YAML `yes`)",
        _set("tunnel.persistentKeepalive", True),
        ["wg-site-to-site:tunnel.persistentKeepalive", "valid integer", "(got True)"],
    ),
    (
        "whole float MTU",
        _set("tunnel.mtu", 1420.0),
        ["wg-site-to-site:tunnel.mtu", "valid integer", "(got 1420.0)"],
    ),
    (
        "boolean firewall port",
        _set("firewall.0.port", True),
        ["wg-site-to-site:firewall[0].port", "True", "port number"],
    ),
    (
        "string for a boolean",
        _set("allowUnknownRegions", "yes"),
        ["wg-site-to-site:allowUnknownRegions", "valid boolean", "(got 'yes')"],
    ),
    (
        "multicast site",
        _set("sites.0.cidr", "224.1.0.0/20"),
        ["wg-site-to-site:sites[0].cidr: '224.1.0.0/20' overlaps 224.0.0.0/4, multicast"],
    ),
    (
        "loopback site",
        _set("sites.0.cidr", "127.0.0.0/20"),
        ["wg-site-to-site:sites[0].cidr: '127.0.0.0/20' overlaps 127.0.0.0/8, loopback"],
    ),
    (
        "link-local site",
        _set("sites.1.cidr", "169.254.0.0/20"),
        ["wg-site-to-site:sites[1].cidr: '169.254.0.0/20' overlaps 169.254.0.0/16, link-local"],
    ),
    (
        "'this network' site",
        _set("sites.1.cidr", "0.0.0.0/16"),
        ["wg-site-to-site:sites[1].cidr: '0.0.0.0/16' overlaps 0.0.0.0/8"],
    ),
    (
        "multicast tunnel",
        _set("tunnel.cidr", "224.0.0.0/30"),
        ["wg-site-to-site:tunnel.cidr: '224.0.0.0/30' overlaps 224.0.0.0/4, multicast"],
    ),
    (
        "broadcast tunnel",
        _set("tunnel.cidr", "255.255.255.254/31"),
        ["wg-site-to-site:tunnel.cidr: '255.255.255.254/31' overlaps", "broadcast"],
    ),
    (
        "region AWS does not have",
        lambda config: config["sites"][0].update(region="us-east-9", availabilityZone=None),
        [
            "wg-site-to-site:sites[0].region: 'us-east-9' is not an AWS region",
            "wg-site-to-site:allowUnknownRegions: true",
        ],
    ),
    (
        "unknown key holding a mapping",
        _set("tunnel.extra", {"a": 1}),
        ['wg-site-to-site:tunnel.extra: unknown key (value {"a": 1})'],
    ),
    (
        "overlapping site CIDRs",
        _set("sites.1.cidr", "10.1.128.0/17"),
        ["wg-site-to-site:sites[1].cidr", "10.1.128.0/17", "overlaps site 'alpha'"],
    ),
    (
        "tunnel overlapping a site",
        _set("tunnel.cidr", "10.1.255.0/31"),
        ["wg-site-to-site:tunnel.cidr", "10.1.255.0/31", "overlaps site 'alpha'"],
    ),
    (
        "tunnel prefix wider than /16",
        _set("tunnel.cidr", "10.254.0.0/15"),
        ["wg-site-to-site:tunnel.cidr", "10.254.0.0/15", "between /16 and /31"],
    ),
    (
        "tunnel prefix too small for the sites",
        _append_site,
        ["wg-site-to-site:tunnel.cidr", "10.255.255.0/31 holds 2", "too few for 3 sites"],
    ),
    (
        "host bits set",
        _set("sites.0.cidr", "10.1.0.1/16"),
        ["wg-site-to-site:sites[0].cidr", "10.1.0.1/16", "host bits", "10.1.0.0/16"],
    ),
    (
        "not a CIDR",
        _set("sites.0.cidr", "10.1.0.0"),
        ["wg-site-to-site:sites[0].cidr", "'10.1.0.0'", "prefix length"],
    ),
    (
        "port out of range",
        _set("tunnel.port", 70000),
        ["wg-site-to-site:tunnel.port", "70000", "65535"],
    ),
    (
        "port zero",
        _set("tunnel.port", 0),
        ["wg-site-to-site:tunnel.port", "0", "greater than or equal to 1"],
    ),
    (
        "MTU too small",
        _set("tunnel.mtu", 1279),
        ["wg-site-to-site:tunnel.mtu", "1279", "1280"],
    ),
    (
        "MTU too large",
        _set("tunnel.mtu", 9001),
        ["wg-site-to-site:tunnel.mtu", "9001", "1500"],
    ),
    (
        "interface name too long",
        _set("sites.0.interface", "wg-alpha-to-beta1"),
        ["wg-site-to-site:sites[0].interface", "wg-alpha-to-beta1", "Linux interface name"],
    ),
    (
        "interface name with a slash",
        _set("sites.0.interface", "wg/A"),
        ["wg-site-to-site:sites[0].interface", "wg/A", "Linux interface name"],
    ),
    (
        "duplicate site names",
        _set("sites.1.name", "alpha"),
        ["wg-site-to-site:sites[1].name", "'alpha' is used twice"],
    ),
    (
        "one site",
        _drop_site,
        ["wg-site-to-site:sites", "at least two sites", "got 1"],
    ),
    (
        "overlapping CIDRs among three sites",
        _with_sites(_aws_site("gamma", "10.2.128.0/17")),
        ["wg-site-to-site:sites[2].cidr", "10.2.128.0/17", "overlaps site 'beta'"],
    ),
    (
        "hub outside AWS",
        _with_sites(_office(publicIp="198.51.100.7"), hub="office"),
        ["wg-site-to-site:topology.hub", "'office' is outside AWS", "must be an AWS site"],
    ),
    (
        "hub that is no site",
        _with_sites(hub="nowhere"),
        ["wg-site-to-site:topology.hub", "'nowhere' is not a site"],
    ),
    (
        "external site with neither publicIp nor sourceCidr",
        _with_sites(_office()),
        ["wg-site-to-site:sites[2].external.publicIp", "is missing, and so is sourceCidr"],
    ),
    *[
        (
            f"external site with {key}",
            _with_sites({**_office(publicIp="198.51.100.7"), key: value}),
            [f"wg-site-to-site:sites[2].{key}", "outside AWS", "for AWS sites only"],
        )
        for key, value in (
            ("region", "us-east-1"),
            ("instanceType", "t4g.nano"),
            ("image", "20251212"),
        )
    ],
    (
        "sourceCidr of the whole internet",
        _with_sites(_office(sourceCidr="0.0.0.0/0")),
        ["wg-site-to-site:sites[2].external.sourceCidr", "'0.0.0.0/0'", "wider than a /24"],
    ),
    (
        "sourceCidr wider than a /24",
        _with_sites(_office(sourceCidr="198.51.96.0/20")),
        ["wg-site-to-site:sites[2].external.sourceCidr", "'198.51.96.0/20'", "wider than a /24"],
    ),
    (
        "publicKey that is no base64 key",
        _with_sites(_office(publicIp="198.51.100.7", publicKey="AAAA")),
        ["wg-site-to-site:sites[2].external.publicKey", "'AAAA'", "32 bytes of base64"],
    ),
    (
        "publicKey of 31 bytes",
        _with_sites(_office(publicIp="198.51.100.7", publicKey="A" * 40 + "==")),
        ["wg-site-to-site:sites[2].external.publicKey", "32 bytes of base64"],
    ),
    (
        "two sites with the same publicKey",
        _with_sites(
            _office(publicIp="198.51.100.7"),
            {**_office(publicIp="198.51.100.8"), "name": "office2", "cidr": "192.168.20.0/24"},
        ),
        ["wg-site-to-site:sites[3].external.publicKey", "same key as site 'office'"],
    ),
    (
        "malformed region",
        _set("sites.0.region", "us-east"),
        ["wg-site-to-site:sites[0].region", "us-east", "AWS region"],
    ),
    (
        "unknown key in a site",
        _set("sites.0.cird", "10.9.0.0/16"),
        ["wg-site-to-site:sites[0].cird", "unknown key"],
    ),
    (
        "unknown key in the tunnel",
        _set("tunnel.keepalive", 25),
        ["wg-site-to-site:tunnel.keepalive", "unknown key"],
    ),
    (
        "unknown top-level key",
        _set("site", []),
        ["wg-site-to-site:site", "unknown key"],
    ),
    (
        "firewall rule with unknown protocol",
        _set("firewall.0.protocol", "sctp"),
        ["wg-site-to-site:firewall[0].protocol", "sctp", "'tcp', 'udp' or 'icmp'"],
    ),
    (
        "firewall rule with unknown action",
        _set("firewall.0.action", "deny"),
        ["wg-site-to-site:firewall[0].action", "deny", "'reject', 'drop' or 'accept'"],
    ),
    (
        "firewall port on icmp",
        _set("firewall.0.protocol", "icmp"),
        ["wg-site-to-site:firewall[0].port: 22 is set, but icmp has no ports"],
    ),
    (
        "firewall reversed range",
        _set("firewall.0.port", "2000-1000"),
        ["wg-site-to-site:firewall[0].port", "2000-1000", "reversed", "1000-2000"],
    ),
    (
        "firewall port out of range",
        _set("firewall.0.port", 65536),
        ["wg-site-to-site:firewall[0].port", "65536", "65535"],
    ),
    (
        "keepalive out of range",
        _set("tunnel.persistentKeepalive", 70000),
        ["wg-site-to-site:tunnel.persistentKeepalive", "70000", "65535"],
    ),
    (
        "keepalive negative",
        _set("tunnel.persistentKeepalive", -1),
        ["wg-site-to-site:tunnel.persistentKeepalive", "-1"],
    ),
    (
        "site too large for a VPC",
        _set("sites.0.cidr", "10.0.0.0/8"),
        ["wg-site-to-site:sites[0].cidr", "10.0.0.0/8", "/16"],
    ),
    (
        "existing VPC without route tables",
        _set("sites.0.vpcId", "vpc-0123456789abcdef0"),
        [
            "wg-site-to-site:sites[0].vpcId: 'vpc-0123456789abcdef0' needs subnetId and "
            "routeTableIds too",
            "vpcId, subnetId and routeTableIds",
        ],
    ),
    (
        "missing tunnel",
        lambda config: config.pop("tunnel"),
        ["wg-site-to-site:tunnel", "required"],
    ),
    (
        "tag value AWS would refuse",
        _set("tags", {"owner": "ops team <ops@example.com>"}),
        ["wg-site-to-site:tags.owner", "ops team <ops@example.com>", "AWS does not allow"],
    ),
    (
        "tag key in AWS's namespace",
        _set("tags", {"aws:owner": "ops"}),
        ["wg-site-to-site:tags.aws:owner: 'aws:owner' starts with aws:"],
    ),
    (
        "zone outside the site's region names sites[1].availabilityZone, not the site as JSON",
        _set("sites.1.availabilityZone", "us-east-1a"),
        ["wg-site-to-site:sites[1].availabilityZone: 'us-east-1a' is not in region eu-west-1"],
    ),
    *[
        (
            f"interface named like the gateway's own NIC {name}",
            _set("sites.1.interface", name),
            [
                f"wg-site-to-site:sites[1].interface: '{name}' is one of the gateway's own "
                "interfaces (eth*, ens*, enX*, lo)"
            ],
        )
        for name in ("ens5", "eth0", "lo")
    ],
    (
        "interface name with + (an iptables wildcard)",
        _set("sites.1.interface", "wg+"),
        ["wg-site-to-site:sites[1].interface: 'wg+' has '+', which iptables reads as a wildcard"],
    ),
    (
        "interface name with ..",
        _set("sites.1.interface", "wg..b"),
        ["wg-site-to-site:sites[1].interface: 'wg..b' has '..'"],
    ),
    *[
        (
            f"tag the program sets itself: {key}",
            _set("tags", {"owner": "ops", key: "mine"}),
            [
                f"wg-site-to-site:tags.{key}: '{key}' is a tag the program sets itself; "
                "yours would be overridden"
            ],
        )
        for key in ("Name", "stack", "project", "GatewayInstance")
    ],
    (
        "more tags than AWS's 50 per resource leaves room for",
        _set("tags", {f"t{i:02}": "v" for i in range(48)}),
        ["wg-site-to-site:tags:", "has 48 tags, more than 47: AWS allows 50 per resource"],
    ),
    (
        "route table listed twice",
        _existing_vpc([RTB, "rtb-0123456789abcdef1", RTB]),
        [
            "wg-site-to-site:sites[1].routeTableIds:",
            f"lists {RTB} more than once (each table gets one route)",
        ],
    ),
    (
        "key that is not text (YAML `12: 34`)",
        lambda config: config["tunnel"].update({12: 34}),
        ["wg-site-to-site:tunnel: key 12 is a number, not text; quote it"],
    ),
    (
        "key that is not text (YAML `yes:` reads as True)",
        lambda config: config["sites"][0].update({True: 1}),
        ["wg-site-to-site:sites[0]: key True is a boolean, not text; quote it"],
    ),
    (
        "three gateways",
        _set("sites.0.gateways", 3),
        ["wg-site-to-site:sites[0].gateways", "less than or equal to 2", "(got 3)"],
    ),
    (
        "two gateways in an existing VPC (one public subnet)",
        _two_gateways_in_existing_vpc,
        ["wg-site-to-site:sites[1].gateways: 2 needs the two public subnets in two zones"],
    ),
    (
        "two gateways in a cidr with room for two subnets",
        lambda config: config["sites"][1].update(gateways=2, cidr="10.2.0.0/23"),
        ["wg-site-to-site:sites[1].gateways: 2 needs three subnets", "10.2.0.0/23", "/22"],
    ),
    (
        "a second zone for one gateway",
        _set("sites.1.secondAvailabilityZone", "eu-west-1b"),
        ["wg-site-to-site:sites[1].secondAvailabilityZone: 'eu-west-1b' is set but gateways is 1"],
    ),
    (
        "a second zone outside the region",
        lambda config: config["sites"][1].update(gateways=2, secondAvailabilityZone="us-east-1b"),
        ["wg-site-to-site:sites[1].secondAvailabilityZone: 'us-east-1b' is not in region"],
    ),
    (
        "both gateways in one zone",
        lambda config: config["sites"][1].update(
            gateways=2, availabilityZone="eu-west-1a", secondAvailabilityZone="eu-west-1a"
        ),
        ["wg-site-to-site:sites[1].secondAvailabilityZone: 'eu-west-1a' is the first gateway's"],
    ),
    (
        "two gateways on an office",
        _with_sites({**_office(publicIp="198.51.100.7"), "gateways": 2}),
        ["wg-site-to-site:sites[2].gateways", "site outside AWS"],
    ),
    (
        "multi-line firewall description",
        _set("firewall.0.description", "line one\nPostUp = iptables -t nat -A POSTROUTING"),
        ["wg-site-to-site:firewall[0].description", "one line"],
    ),
]


def _problems(change: Change) -> list[str]:
    config = stack_config("dev")
    change(config)
    with pytest.raises(ConfigError) as caught:
        load_stack_config(config)
    return caught.value.problems


@pytest.mark.parametrize(
    ("change", "fragments"), [(c, f) for _, c, f in BAD_INPUTS], ids=[w for w, _, _ in BAD_INPUTS]
)
def test_bad_input_is_rejected_with_one_line_naming_key_and_value(
    change: Change, fragments: list[str]
) -> None:
    problems = _problems(change)
    assert len(problems) == 1, problems
    [line] = problems
    assert "\n" not in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_n_sites_with_offices_and_repeated_interface_names_are_valid() -> None:
    config = stack_config("dev")
    _with_sites(
        _aws_site("gamma", "10.3.0.0/16"),
        _office(sourceCidr="198.51.100.0/24"),
        hub="alpha",
    )(config)
    for site in config["sites"]:
        site["interface"] = "wg0"  # as in the example: one name on every gateway
    loaded = load_stack_config(config)
    assert [site.name for site in loaded.sites] == ["alpha", "beta", "gamma", "office"]
    assert [site.is_aws for site in loaded.sites] == [True, True, True, False]


def test_every_problem_is_reported_at_once() -> None:
    config = stack_config("dev")
    config["tunnel"]["port"] = 0
    config["tunnel"]["mtu"] = 100
    config["sites"][1]["region"] = "mars"
    problems = _problems(lambda c: c.update(copy.deepcopy(config)))
    assert len(problems) == 3
    assert {p.split(":", 2)[1] for p in problems} == {
        "tunnel.port",
        "tunnel.mtu",
        "sites[1].region",
    }


def test_no_message_hides_the_value_behind_an_ellipsis() -> None:
    for _, change, _ in BAD_INPUTS:
        for line in _problems(change):
            assert "{...}" not in line, line


def test_the_most_tags_aws_leaves_room_for_pass() -> None:
    config = stack_config("dev")
    config["tags"] = {f"t{i:02}": "v" for i in range(47)}
    assert len(load_stack_config(config).tags) == 47


def test_a_5_kb_value_under_a_typo_key_gives_a_short_line() -> None:
    config = stack_config("dev")
    rules = [{"description": f"rule {i}", "protocol": "tcp", "port": i} for i in range(1, 120)]
    config["firewal"] = rules
    assert len(json.dumps(rules)) > 5000
    [line] = _problems(lambda c: c.update(copy.deepcopy(config)))
    assert line.startswith("wg-site-to-site:firewal: unknown key (value [{")
    assert len(line) < 140, line
    assert "…" in line


def test_a_brand_new_region_passes_with_the_documented_escape() -> None:
    config = stack_config("dev")
    config["sites"][0]["region"] = "us-east-9"
    config["sites"][0]["availabilityZone"] = "us-east-9a"
    config["allowUnknownRegions"] = True
    assert load_stack_config(config).sites[0].region == "us-east-9"


def _write_stack(tmp_path: Path, text: str) -> Path:
    (tmp_path / "Pulumi.typo.yaml").write_text(text)
    return tmp_path


def test_stack_file_key_in_a_foreign_namespace_is_an_error(tmp_path: Path) -> None:
    text = (STACKS / "Pulumi.dev.yaml").read_text()
    assert text.count("wg-site-to-site:firewall:") == 1
    text = text.replace("wg-site-to-site:firewall:", "wg-site2site:firewall:")
    with pytest.raises(PlanError) as caught:
        read_stack_file("typo", _write_stack(tmp_path, text))
    [line] = str(caught.value).splitlines()
    assert "Pulumi.typo.yaml: wg-site2site:firewall: unknown namespace 'wg-site2site'" in line


def test_stack_file_keys_of_providers_and_pulumi_are_allowed(tmp_path: Path) -> None:
    text = (STACKS / "Pulumi.dev.yaml").read_text()
    text = text.replace("config:\n", "config:\n  aws:region: us-east-1\n  pulumi:tags: {a: b}\n", 1)
    assert "firewall" in read_stack_file("typo", _write_stack(tmp_path, text))


def test_program_rejects_a_foreign_namespace_from_the_engine() -> None:
    runtime_config.set_all_config({"wg-site2site:firewall": "[]", "aws:region": "us-east-1"}, [])
    try:
        with pytest.raises(pulumi.RunError) as caught:
            read_stack_config()
    finally:
        runtime_config.set_all_config({}, [])
    assert "wg-site2site:firewall: unknown namespace 'wg-site2site'" in str(caught.value)
    assert "aws:region" not in str(caught.value)


def test_yaml_errors_keep_line_column_and_problem(tmp_path: Path) -> None:
    text = "config:\n  wg-site-to-site:sites: [alpha, beta\n  wg-site-to-site:tunnel: {}\n"
    with pytest.raises(PlanError) as caught:
        read_stack_file("typo", _write_stack(tmp_path, text))
    [line] = str(caught.value).splitlines()
    assert line.endswith(
        "Pulumi.typo.yaml: line 3, column 25: not valid YAML: expected ',' or ']', "
        "but got ':' (while parsing a flow sequence)"
    ), line


def test_shipped_stacks_are_valid() -> None:
    for stack in ("dev", "single-region"):
        load_stack_config(stack_config(stack))


def _read_through_the_engine(config: dict[str, Any]) -> str:
    """What the program says when `pulumi preview` hands it this config."""
    flat = {f"wg-site-to-site:{k}": json.dumps(v) for k, v in config.items()}
    runtime_config.set_all_config(flat, [])
    try:
        with pytest.raises(pulumi.RunError) as caught:
            read_stack_config()
    finally:
        runtime_config.set_all_config({}, [])
    return str(caught.value)


def test_program_stops_with_a_run_error_naming_each_problem() -> None:
    config = stack_config("dev")
    config["sites"][1]["cidr"] = "10.1.0.0/16"
    message = _read_through_the_engine(config)
    assert message.splitlines() == [
        "invalid stack config:",
        "  wg-site-to-site:sites[1].cidr: 10.1.0.0/16 overlaps site 'alpha' (10.1.0.0/16);"
        " sites are routed without NAT",
    ]


def test_program_reports_a_misspelt_top_level_key() -> None:
    config = stack_config("dev")
    config["firewal"] = config.pop("firewall")
    message = _read_through_the_engine(config)
    assert "wg-site-to-site:firewal: unknown key" in message


def test_planning_bad_config_declares_nothing() -> None:
    config = stack_config("dev")
    config["tunnel"]["cidr"] = "10.255.0.0/15"
    with pytest.raises(PlanError) as caught:
        run_program("dev", config)
    assert "wg-site-to-site:tunnel.cidr" in str(caught.value)


# --- the stack file itself (core/stack_file.py): what PyYAML would accept silently -------


def _read_error(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(PlanError) as caught:
        read_stack_file("typo", _write_stack(tmp_path, text))
    return str(caught.value).splitlines()


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    text = (STACKS / "Pulumi.dev.yaml").read_text() + "  wg-site-to-site:firewall: []\n"
    first = text.splitlines().index("  wg-site-to-site:firewall:") + 1
    last = len(text.splitlines())
    assert _read_error(tmp_path, text) == [
        f"{tmp_path}/Pulumi.typo.yaml: line {last}: wg-site-to-site:firewall is given twice "
        f"(lines {first} and {last}); YAML would silently keep only the last"
    ]


def test_a_nested_key_given_twice_is_refused_with_its_full_key(tmp_path: Path) -> None:
    text = (STACKS / "Pulumi.dev.yaml").read_text()
    text = text.replace("      interface: wgB\n", "      interface: wgB\n      interface: wgC\n")
    [line] = _read_error(tmp_path, text)
    assert ": wg-site-to-site:sites[1].interface is given twice (lines " in line


@pytest.mark.parametrize(
    ("key", "kind"), [("12", "a number"), ("yes", "a boolean"), ("on", "a boolean")]
)
def test_a_key_that_is_not_text_is_one_line(tmp_path: Path, key: str, kind: str) -> None:
    text = (STACKS / "Pulumi.dev.yaml").read_text().replace("config:\n", f"config:\n  {key}: 34\n")
    [line] = _read_error(tmp_path, text)
    assert line.startswith(f"{tmp_path}/Pulumi.typo.yaml: line 3: key {key} under config is ")
    assert f"read as {kind}" in line
    assert line.endswith(f"not text; quote it ('{key}')")


def test_a_quoted_key_and_a_merge_key_are_fine(tmp_path: Path) -> None:
    text = (STACKS / "Pulumi.dev.yaml").read_text()
    text = text.replace("config:\n", "x-defaults: &defaults {'12': 34}\nconfig:\n  <<: *defaults\n")
    # A merged key is an override on purpose, not a duplicate; '12' is text (and, having
    # no namespace, the namespace check names it).
    [line] = _read_error(tmp_path, text)
    assert "12: config key without a namespace" in line


@pytest.mark.parametrize("cli", ["plan", "policy.offline"])
@pytest.mark.parametrize("key", ["12", "yes"])
def test_plan_and_policy_refuse_a_non_text_key_without_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cli: str,
    key: str,
) -> None:
    module = importlib.import_module("plan.cli" if cli == "plan" else "policy.offline")
    text = (STACKS / "Pulumi.dev.yaml").read_text().replace("config:\n", f"config:\n  {key}: 34\n")
    _write_stack(tmp_path, text)
    monkeypatch.setattr(module, "plan_stack", functools.partial(plan_stack, stacks_dir=tmp_path))
    assert module.main(["typo"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "TypeError" not in err
    [line] = err.splitlines()
    assert f"Pulumi.typo.yaml: line 3: key {key} under config is read as" in line


def test_the_refused_tags_are_the_ones_the_program_sets(dev_plan: Plan) -> None:
    """PROGRAM_TAGS and PROGRAM_TAGS_PER_RESOURCE (which bound the user's tags) match what
    the components really set; dev has no tags of its own."""
    assert "tags" not in stack_config("dev")
    seen: set[str] = set()
    for resource in dev_plan.resources:
        for field in ("tags", "volumeTags"):
            tags = resource.inputs.get(field) or {}
            assert set(tags) <= set(PROGRAM_TAGS), (resource.urn, sorted(tags))
            assert len(tags) <= PROGRAM_TAGS_PER_RESOURCE, resource.urn
            seen |= set(tags)
    assert seen == set(PROGRAM_TAGS)
    assert MAX_USER_TAGS == 50 - PROGRAM_TAGS_PER_RESOURCE


def test_the_program_also_refuses_a_key_given_twice_in_the_file_it_can_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pulumi preview` hands the program resolved values; the program re-reads the file.
    (tmp_path / "stacks").mkdir()
    (tmp_path / "Pulumi.yaml").write_text("name: wg-site-to-site\nstackConfigDir: stacks\n")
    text = (STACKS / "Pulumi.dev.yaml").read_text() + "  wg-site-to-site:firewall: []\n"
    (tmp_path / "stacks" / "Pulumi.dup.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    pulumi_settings.reset_options(project="wg-site-to-site", stack="dup")
    try:
        message = _read_through_the_engine(stack_config("dev"))
    finally:
        pulumi_settings.reset_options()
    [line] = message.splitlines()[1:]
    assert line.startswith("  stacks/Pulumi.dup.yaml: line ")
    assert "wg-site-to-site:firewall is given twice" in line
