"""The policy pack: each rule passes the shipped stacks and catches its violation."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import runpy
import sys
from collections.abc import Callable
from typing import Any

import pulumi_policy
import pytest
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from components.gateway import KEY_ADMINISTRATION_ACTIONS
from components.tunnel_health import PEER_RULES
from core import health
from core.render import decode_user_data
from plan.document import public_document
from plan.engine import REPO
from policy import offline, pack, rules
from tests.conftest import shipped_plan

Document = dict[str, Any]
INSTANCE = "aws:ec2/instance:Instance"
INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
PARAMETER = "aws:ssm/parameter:Parameter"
KMS_KEY = "aws:kms/key:Key"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
ALPHA_KEY = "/wg-site-to-site/dev/alpha/wireguard-private-key"
ALPHA_PSK = "/wg-site-to-site/dev/alpha/beta/wireguard-preshared-key"
BETA_ARN = (
    "arn:aws:ssm:eu-west-1:123456789012:parameter/wg-site-to-site/dev/beta/wireguard-private-key"
)


@pytest.fixture(scope="module")
def dev() -> Document:
    # The session's plan of dev (as a preview), never planned again here: each test
    # changes a deep copy of this document.
    return public_document(shipped_plan("dev", preview=True))


def resource(document: Document, type_: str, name: str) -> Document:
    found: list[Document] = [
        r for r in document["resources"] if r["type"] == type_ and r["name"] == name
    ]
    assert len(found) == 1
    return found[0]


def findings(document: Document) -> list[rules.Violation]:
    """Every violation and advisory finding."""
    return rules.evaluate(offline.resources_from_document(document, document["stack"]))


def violations(document: Document) -> list[rules.Violation]:
    """The mandatory violations (the shipped dev stack has advisory findings)."""
    return rules.mandatory(findings(document))


def set_input(type_: str, name: str, path: str, value: Any) -> Callable[[Document], None]:
    def mutate(document: Document) -> None:
        *parents, last = path.split(".")
        target = resource(document, type_, name)["inputs"]
        for key in parents:
            target = target[key]
        if value is None:
            del target[last]
        else:
            target[last] = value

    return mutate


def edit_user_data(name: str, old: str, new: str) -> Callable[[Document], None]:
    def mutate(document: Document) -> None:
        inputs = resource(document, INSTANCE, name)["inputs"]
        text = decode_user_data(inputs["userDataBase64"])
        assert old in text
        packed = gzip.compress(text.replace(old, new, 1).encode(), mtime=0)
        inputs["userDataBase64"] = base64.b64encode(packed).decode()

    return mutate


def edit_policy(name: str, edit: Callable[[dict[str, Any]], None]) -> Callable[[Document], None]:
    def mutate(document: Document) -> None:
        inputs = resource(document, "aws:iam/rolePolicy:RolePolicy", name)["inputs"]
        policy = json.loads(inputs["policy"])
        edit(policy["Statement"][0])
        inputs["policy"] = json.dumps(policy)

    return mutate


def edit_key_policy(
    name: str, edit: Callable[[list[dict[str, Any]]], None], depends_on: str | None = None
) -> Callable[[Document], None]:
    def mutate(document: Document) -> None:
        key = resource(document, "aws:kms/key:Key", name)
        policy = json.loads(key["inputs"]["policy"])
        edit(policy["Statement"])
        key["inputs"]["policy"] = json.dumps(policy)
        if depends_on is not None:
            urn = resource(document, "aws:iam/role:Role", depends_on)["urn"]
            key["options"]["dependsOn"].append(urn)

    return mutate


def _statement(sid: str) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    return lambda statements: next(s for s in statements if s["Sid"] == sid)


def _let_root_decrypt(statements: list[dict[str, Any]]) -> None:
    statements[0]["Action"] = [*statements[0]["Action"], "kms:Decrypt"]
    statements[0]["Condition"] = {"StringEquals": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}}


def _administer_with_wildcards(statements: list[dict[str, Any]]) -> None:
    # The administration statement as d82e7db wrote it (AWS's key administrators).
    statements[0]["Action"] = ["kms:Create*", "kms:Describe*", "kms:Put*", "kms:Get*"]


def _allow_create_grant(condition: dict[str, Any] | None) -> Callable[[list[dict[str, Any]]], None]:
    def edit(statements: list[dict[str, Any]]) -> None:
        statements[0]["Action"] = [*statements[0]["Action"], "kms:CreateGrant"]
        if condition is not None:
            statements[0]["Condition"] = condition

    return edit


def _drop_encryption_context(statements: list[dict[str, Any]]) -> None:
    gateway = _statement("GatewayDecryptsOwnParameter")(statements)
    del gateway["Condition"]["StringEquals"]["kms:EncryptionContext:PARAMETER_ARN"]


def _drop_via_service(statements: list[dict[str, Any]]) -> None:
    del _statement("DeployerWritesThroughSsm")(statements)["Condition"]


def _add_statement(statement: dict[str, Any]) -> Callable[[list[dict[str, Any]]], None]:
    return lambda statements: statements.append(statement)


def _name_the_other_gateway(statements: list[dict[str, Any]]) -> None:
    gateway = _statement("GatewayDecryptsOwnParameter")(statements)
    gateway["Principal"]["AWS"] = "arn:aws:iam::123456789012:role/beta-gateway"


def edit_desired_state(name: str, field: str, old: str, new: str) -> Callable[[Document], None]:
    """Changes one text (config or firewall) of a gateway's desired-state parameter."""

    def mutate(document: Document) -> None:
        inputs = resource(document, PARAMETER, name)["inputs"]
        state = json.loads(inputs["insecureValue"])
        assert old in state[field]
        state[field] = state[field].replace(old, new, 1)
        inputs["insecureValue"] = json.dumps(state)

    return mutate


def under_key(parameter: str, key: str) -> Callable[[Document], None]:
    """Puts a key parameter under another KMS key of the plan (by ARN and dependency)."""

    def mutate(document: Document) -> None:
        target = resource(document, PARAMETER, parameter)
        own = resource(document, KMS_KEY, parameter.split("-", maxsplit=1)[0] + "-wireguard-key")
        other = resource(document, KMS_KEY, key)
        target["inputs"]["keyId"] = f"arn:aws:kms:eu-west-1:123456789012:key/{key}"
        depends = target["options"]["dependsOn"]
        depends[depends.index(own["urn"])] = other["urn"]

    return mutate


def add_resource(type_: str, name: str, inputs: dict[str, Any]) -> Callable[[Document], None]:
    def mutate(document: Document) -> None:
        document["resources"].append(
            {
                "urn": f"urn:pulumi:dev::wg-site-to-site::{type_}::{name}",
                "type": type_,
                "name": name,
                "parent": None,
                "provider": None,
                "region": "us-east-1",
                "custom": True,
                "inputs": inputs,
                "options": {"dependsOn": []},
            }
        )

    return mutate


def add_role_policy(name: str, role: str, statement: dict[str, Any]) -> Callable[[Document], None]:
    """A role policy of `role` (by dependency, as a plan of inputs knows it) with one
    statement; `{eni:SITE}` in its Resource is SITE's gateway interface id."""

    def mutate(document: Document) -> None:
        planted = json.loads(json.dumps(statement))
        for site in ("alpha", "beta"):
            interface = resource(document, INTERFACE, f"{site}-gateway")["id"]
            planted["Resource"] = [
                r.replace(f"{{eni:{site}}}", interface) for r in planted["Resource"]
            ]
        add_resource(
            "aws:iam/rolePolicy:RolePolicy",
            name,
            {"role": role, "policy": json.dumps({"Version": "2012-10-17", "Statement": [planted]})},
        )(document)
        document["resources"][-1]["options"]["dependsOn"] = [
            resource(document, "aws:iam/role:Role", role)["urn"]
        ]

    return mutate


# A line of the apply script, indented as the files are inside the cloud-config.
WG_LINE = "      set -euo pipefail\n"
# Key-shaped, made up: not the key of anything.
FAKE_KEY = "mC" + "A" * 41 + "="

CASES = [
    (
        "gateway-has-tunnel-alarm",
        set_input(
            "aws:cloudwatch/metricAlarm:MetricAlarm", "alpha-beta-tunnel-down", "alarmActions", []
        ),
        "alpha-beta-tunnel-down",
        "TunnelUp alarm of gateway alpha-gateway has no alarm action",
    ),
    (
        "wireguard-port-not-public",
        set_input(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "alpha-tunnel-from-beta",
            "cidrIpv4",
            "0.0.0.0/0",
        ),
        "alpha-tunnel-from-beta",
        "admits udp from 0.0.0.0/0",
    ),
    (
        "wireguard-port-not-public",
        set_input(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "alpha-tunnel-from-beta",
            "cidrIpv4",
            "0.0.0.0/1",
        ),
        "alpha-tunnel-from-beta",
        "admits udp from 0.0.0.0/1: the WireGuard port must admit only the peer's address",
    ),
    (
        "wireguard-port-not-public",
        set_input(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "beta-tunnel-from-alpha",
            "cidrIpv4",
            "203.0.113.0/24",
        ),
        "beta-tunnel-from-alpha",
        "admits udp from 203.0.113.0/24",
    ),
    (
        "wireguard-port-not-public",
        set_input(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "alpha-tunnel-from-beta",
            "cidrIpv6",
            "2001:db8::/64",
        ),
        "alpha-tunnel-from-beta",
        "admits udp from 2001:db8::/64",
    ),
    (
        "wireguard-port-not-public",
        set_input(
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
            "beta-from-site",
            "cidrIpv4",
            "0.0.0.0/0",
        ),
        "beta-from-site",
        "admits all protocols from 0.0.0.0/0",
    ),
    (
        "wireguard-port-not-public",
        set_input(
            "aws:ec2/securityGroup:SecurityGroup",
            "alpha-gateway",
            "ingress",
            [{"protocol": "udp", "fromPort": 51000, "toPort": 51000, "ipv6CidrBlocks": ["::/0"]}],
        ),
        "alpha-gateway",
        "ingress[0] admits udp from ::/0",
    ),
    (
        "wireguard-port-not-public",
        add_resource(
            "aws:ec2/securityGroupRule:SecurityGroupRule",
            "open-tunnel",
            {
                "type": "ingress",
                "protocol": "-1",
                "fromPort": 0,
                "toPort": 0,
                "cidrBlocks": ["0.0.0.0/0"],
            },
        ),
        "open-tunnel",
        "admits all protocols from 0.0.0.0/0",
    ),
    (
        "gateway-interface-forwards",
        set_input(INTERFACE, "alpha-gateway", "sourceDestCheck", True),
        "alpha-gateway",
        "sourceDestCheck is True on gateway alpha-gateway's interface",
    ),
    (
        "gateway-interface-forwards",
        set_input(INTERFACE, "beta-gateway", "sourceDestCheck", None),
        "beta-gateway",
        "sourceDestCheck is absent (AWS defaults it to true) on gateway beta-gateway's",
    ),
    (
        "gateway-instance-settings",
        # An instance without a standalone interface carries the check itself.
        lambda document: (
            set_input(INSTANCE, "alpha-gateway", "networkInterfaces", None)(document),
            set_input(INSTANCE, "alpha-gateway", "sourceDestCheck", True)(document),
        ),
        "alpha-gateway",
        "sourceDestCheck is True",
    ),
    (
        "gateway-instance-settings",
        # d82e7db's attachment: the provider's second update turns the check back on.
        lambda document: (
            set_input(INSTANCE, "beta-gateway", "networkInterfaces", None)(document),
            set_input(
                INSTANCE,
                "beta-gateway",
                "primaryNetworkInterface",
                {"networkInterfaceId": "eni-0123456789abcdef0"},
            )(document),
        ),
        "beta-gateway",
        "device 0 is attached with primaryNetworkInterface",
    ),
    (
        "key-decrypted-only-by-own-gateway",
        set_input("aws:ssm/parameter:Parameter", "alpha-wireguard-key", "keyId", None),
        "alpha-wireguard-key",
        "encrypted with the account's default aws/ssm key",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy("alpha-wireguard-key", _let_root_decrypt),
        "alpha-wireguard-key",
        "statement AccountAdministersNotUses lets arn:aws:iam::123456789012:root decrypt",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy("beta-wireguard-key", _drop_encryption_context),
        "beta-wireguard-key",
        "2 statements allow kms:Decrypt without the parameters' encryption context",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy("alpha-wireguard-key", _administer_with_wildcards),
        "alpha-wireguard-key",
        "statement AccountAdministersNotUses allows 'kms:Create*', which includes CreateGrant",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy("alpha-wireguard-key", lambda st: st[0].update(Action="kms:*")),
        "alpha-wireguard-key",
        "allows 'kms:*', which includes CreateGrant, Decrypt, ReEncryptFrom",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy("beta-wireguard-key", _allow_create_grant(None)),
        "beta-wireguard-key",
        "allows kms:CreateGrant without Bool kms:GrantIsForAWSResource true",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy(
            "beta-wireguard-key",
            _allow_create_grant({"Bool": {"kms:GrantIsForAWSResource": "false"}}),
        ),
        "beta-wireguard-key",
        "allows kms:CreateGrant without Bool kms:GrantIsForAWSResource true",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy(
            "alpha-wireguard-key",
            lambda st: st[0].update(NotAction="kms:Encrypt", Action=None),
        ),
        "alpha-wireguard-key",
        "allows NotAction",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy("alpha-wireguard-key", _drop_via_service),
        "alpha-wireguard-key",
        "statement DeployerWritesThroughSsm allows kms:Decrypt without kms:ViaService",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy(
            "alpha-wireguard-key",
            _add_statement(
                {
                    "Sid": "AuditorDecrypts",
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::123456789012:role/auditor"},
                    "Action": "kms:Decrypt",
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}
                    },
                }
            ),
        ),
        "alpha-wireguard-key",
        "2 statements allow kms:Decrypt without the parameters' encryption context",
    ),
    (
        "key-policy-as-claimed",
        edit_key_policy(
            "beta-wireguard-key",
            _add_statement(
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::123456789012:role/mover"},
                    "Action": "kms:ReEncryptFrom",
                    "Resource": "*",
                }
            ),
        ),
        "beta-wireguard-key",
        "allows kms:ReEncryptFrom",
    ),
    (
        "key-decrypted-only-by-own-gateway",
        set_input(PARAMETER, "alpha-preshared-key-beta", "keyId", None),
        "alpha-preshared-key-beta",
        "encrypted with the account's default aws/ssm key",
    ),
    (
        "key-decrypted-only-by-own-gateway",
        set_input(PARAMETER, "beta-preshared-key-alpha", "keyId", "alias/aws/ssm"),
        "beta-preshared-key-alpha",
        "encrypted with the account's default aws/ssm key",
    ),
    (
        "key-decrypted-only-by-own-gateway",
        under_key("alpha-preshared-key-beta", "beta-wireguard-key"),
        "beta-wireguard-key",
        "its gateway may not decrypt this parameter with it",
    ),
    (
        "key-decrypted-only-by-own-gateway",
        under_key("alpha-wireguard-key", "beta-wireguard-key"),
        "beta-wireguard-key",
        f"the key is another gateway's, or the parameter is missing from its policy "
        f"(parameter {ALPHA_KEY})",
    ),
    (
        "key-decrypted-only-by-own-gateway",
        edit_key_policy("alpha-wireguard-key", _name_the_other_gateway, depends_on="beta-gateway"),
        "alpha-wireguard-key",
        "role beta-gateway is named in the key policy but does not read the parameter",
    ),
    (
        "gateway-instance-settings",
        set_input(INSTANCE, "alpha-gateway", "metadataOptions.httpTokens", "optional"),
        "alpha-gateway",
        "metadataOptions.httpTokens is 'optional', not 'required'",
    ),
    (
        "encrypted-root-volume",
        set_input(INSTANCE, "beta-gateway", "rootBlockDevice.encrypted", False),
        "beta-gateway",
        "rootBlockDevice.encrypted is False, not true",
    ),
    (
        "encrypted-root-volume",
        set_input(INSTANCE, "beta-gateway", "rootBlockDevice", None),
        "beta-gateway",
        "rootBlockDevice.encrypted is absent, not true",
    ),
    (
        "no-private-key-in-gateway-config",
        edit_user_data("alpha-gateway", WG_LINE, f"{WG_LINE}      PrivateKey = {FAKE_KEY}\n"),
        "alpha-gateway",
        "is a PrivateKey line",
    ),
    (
        "no-private-key-in-gateway-config",
        edit_user_data("beta-gateway", "runcmd:\n", f"runcmd:\n  - [echo, {FAKE_KEY}]\n"),
        "beta-gateway",
        "holds a WireGuard-key-shaped value outside a PublicKey line",
    ),
    (
        "no-private-key-in-gateway-config",
        edit_desired_state(
            "alpha-desired-state",
            "config",
            "[Interface]\n",
            f"[Interface]\nPrivateKey = {FAKE_KEY}\n",
        ),
        "alpha-desired-state",
        "insecureValue.config line 6 is a PrivateKey line",
    ),
    (
        "no-private-key-in-gateway-config",
        edit_desired_state("beta-desired-state", "firewall", "COMMIT\n", f"COMMIT\n# {FAKE_KEY}\n"),
        "beta-desired-state",
        "insecureValue.firewall line 8 holds a WireGuard-key-shaped value",
    ),
    (
        "no-private-key-in-gateway-config",
        set_input("command:local:Command", "alpha-apply", "environment.WG_S2S_KEY", FAKE_KEY),
        "alpha-apply",
        "environment.WG_S2S_KEY line 1 holds a WireGuard-key-shaped value",
    ),
    (
        "key-parameter-secure-string",
        set_input(PARAMETER, "alpha-wireguard-key", "type", "String"),
        "alpha-wireguard-key",
        f"parameter {ALPHA_KEY} holds a private key but has type 'String'",
    ),
    (
        "key-parameter-secure-string",
        set_input(PARAMETER, "alpha-preshared-key-beta", "type", "String"),
        "alpha-preshared-key-beta",
        f"parameter {ALPHA_PSK} holds a pre-shared key but has type 'String'",
    ),
    (
        "gateway-reads-only-own-key",
        edit_policy("alpha-read-own-parameters", lambda s: s.update(Resource="*")),
        "alpha-read-own-parameters",
        "Resource '*' is a wildcard",
    ),
    (
        "gateway-reads-only-own-key",
        edit_policy("alpha-read-own-parameters", lambda s: s.update(Resource=BETA_ARN)),
        "alpha-read-own-parameters",
        f"Resource '{BETA_ARN}' is not one of its own parameters (",
    ),
    (
        "gateway-reads-only-own-key",
        edit_policy("alpha-read-own-parameters", lambda s: s.update(Action="ssm:Get*")),
        "alpha-read-own-parameters",
        "Action 'ssm:Get*' is a wildcard",
    ),
    (
        "metrics-permission-namespace-limited",
        add_resource(
            "aws:iam/rolePolicy:RolePolicy",
            "alpha-put-any-metrics",
            {
                "role": "alpha-gateway",
                "policy": json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": "cloudwatch:PutMetricData",
                                "Resource": "*",
                            }
                        ],
                    }
                ),
            },
        ),
        "alpha-put-any-metrics",
        "allows cloudwatch:PutMetricData without a StringEquals cloudwatch:namespace condition",
    ),
    (
        "failover-rights-scoped",
        add_role_policy(
            "alpha-move-any-address",
            "alpha-gateway",
            {"Effect": "Allow", "Action": "ec2:AssociateAddress", "Resource": ["*"]},
        ),
        "alpha-move-any-address",
        "role policy of role alpha-gateway: ec2:associateaddress on '*', a wildcard",
    ),
    (
        "failover-rights-scoped",
        add_role_policy(
            "alpha-move-beta-address",
            "alpha-gateway",
            {
                "Effect": "Allow",
                "Action": "ec2:AssociateAddress",
                "Resource": [
                    "arn:aws:ec2:us-east-1:123456789012:network-interface/{eni:alpha}",
                    "arn:aws:ec2:eu-west-1:123456789012:network-interface/{eni:beta}",
                ],
            },
        ),
        "alpha-move-beta-address",
        "ec2:associateaddress on arn:aws:ec2:eu-west-1:123456789012:network-interface/eni-",
    ),
    (
        "no-nat",
        edit_user_data(
            "beta-gateway",
            WG_LINE,
            f"{WG_LINE}      PostUp = iptables -t nat -A POSTROUTING -o ens5 -j MASQUERADE\n",
        ),
        "beta-gateway",
        "uses NAT",
    ),
    (
        "no-nat",
        edit_desired_state(
            "alpha-desired-state",
            "firewall",
            "*filter\n",
            "*nat\n-A POSTROUTING -o ens5 -j MASQUERADE\nCOMMIT\n*filter\n",
        ),
        "alpha-desired-state",
        "insecureValue.firewall line 8 uses NAT ('*nat')",
    ),
    (
        "no-nat",
        edit_desired_state(
            "alpha-desired-state",
            "firewall",
            "*filter\n",
            "*nat\n-A POSTROUTING -o ens5 -j MASQUERADE\nCOMMIT\n*filter\n",
        ),
        "alpha-desired-state",
        "insecureValue.firewall line 9 uses NAT ('MASQUERADE')",
    ),
    (
        "no-nat",
        edit_desired_state(
            "beta-desired-state",
            "config",
            "[Interface]\n",
            "[Interface]\nPostUp = iptables -t nat -A POSTROUTING -j SNAT --to 10.2.0.4\n",
        ),
        "beta-desired-state",
        "insecureValue.config line 6 uses NAT",
    ),
]


def test_shipped_stacks_pass_every_mandatory_policy(dev, single_region_plan):
    assert violations(dev) == []
    assert rules.mandatory(rules.evaluate(offline.resources_from_plan(single_region_plan))) == []


def test_every_mandatory_policy_has_a_violating_case():
    names = {r.name for r in rules.all_rules() if not r.advisory}
    assert {case[0] for case in CASES} == names


def test_key_administration_lists_its_actions_without_grants_or_use():
    assert all("*" not in action for action in KEY_ADMINISTRATION_ACTIONS)
    used = {"kms:CreateGrant", "kms:Decrypt", "kms:Encrypt", "kms:ReEncryptFrom"}
    assert used.isdisjoint(KEY_ADMINISTRATION_ACTIONS)
    assert "kms:PutKeyPolicy" in KEY_ADMINISTRATION_ACTIONS  # what the comment owns up to


def test_create_grant_for_aws_resources_only_passes(dev):
    document = copy.deepcopy(dev)
    condition = {"Bool": {"kms:GrantIsForAWSResource": "true"}}
    edit_key_policy("alpha-wireguard-key", _allow_create_grant(condition))(document)
    assert violations(document) == []


# ----------------------------------------------------------- advisory: alarm subscribers

SILENT = "notifies only topic tunnel-health-{} (no subscription): nobody hears it"
# Every alarm a site has, by the last part of its resource name.
ALARM_RULES = sorted(rule.key for rule in (*health.TUNNEL_RULES, health.SYSTEM_CHECK))
PEER_RULE_KEYS = {rule.key for rule in PEER_RULES}


def alarm(site: str, rule: str) -> str:
    """The alarm's resource name: a pair's rule is per peer (dev: each site has one)."""
    peer = {"alpha": "beta", "beta": "alpha"}[site]
    return f"{site}-{peer}-{rule}" if rule in PEER_RULE_KEYS else f"{site}-{rule}"


def _alarm_findings(document: Document) -> dict[str, str]:
    found = rules.advisory(findings(document))
    assert {v.policy for v in found} <= {"alarm-reaches-a-subscriber"}
    return {v.name: v.message for v in found}


def test_alarms_of_topics_without_subscribers_are_advisory_findings(dev):
    found = _alarm_findings(dev)

    assert sorted(found) == sorted(
        alarm(site, rule) for site in ("alpha", "beta") for rule in ALARM_RULES
    )
    assert found["alpha-beta-tunnel-down"].startswith(SILENT.format("us-east-1"))
    assert found["beta-system-check"].startswith(SILENT.format("eu-west-1"))


def _subscribe(document: Document, region: str) -> None:
    topic = resource(document, "aws:sns/topic:Topic", f"tunnel-health-{region}")
    arn = f"arn:aws:sns:{region}:123456789012:{topic['inputs']['name']}"
    add_resource(
        "aws:sns/topicSubscription:TopicSubscription",
        f"tunnel-health-{region}-email-0",
        {"topic": arn, "protocol": "email", "endpoint": "noc@example.com"},
    )(document)
    document["resources"][-1]["options"]["dependsOn"] = [topic["urn"]]


def test_a_subscription_or_an_outside_topic_reaches_someone(dev):
    document = copy.deepcopy(dev)
    _subscribe(document, "us-east-1")
    # Only beta's alarms are left: the subscription is to the us-east-1 topic.
    assert sorted(_alarm_findings(document)) == sorted(alarm("beta", rule) for rule in ALARM_RULES)

    pager = "arn:aws:sns:eu-west-1:123456789012:ops-pager"  # alerts.topicArn
    for rule in ALARM_RULES:
        found = resource(document, ALARM, alarm("beta", rule))
        # not-reporting pages on silence (INSUFFICIENT_DATA), the others on ALARM.
        key = "insufficientDataActions" if rule == "not-reporting" else "alarmActions"
        found["inputs"][key] = [*found["inputs"].get(key, []), pager]
    assert _alarm_findings(document) == {}


def test_an_alarm_without_any_topic_is_a_finding(dev):
    document = copy.deepcopy(dev)
    _subscribe(document, "us-east-1")
    set_input(
        ALARM, "alpha-system-check", "alarmActions", ["arn:aws:automate:us-east-1:ec2:recover"]
    )(document)
    found = _alarm_findings(document)
    assert found["alpha-system-check"].startswith("notifies no SNS topic")
    assert violations(document) == []  # advisory only: nothing fails


@pytest.mark.parametrize(
    ("policy", "mutate", "name", "message"),
    CASES,
    ids=[f"{case[0]}-{index}" for index, case in enumerate(CASES)],
)
def test_policy_catches_its_violation(dev, policy, mutate, name, message):
    document = copy.deepcopy(dev)
    mutate(document)

    found = violations(document)

    # One mutation may break a rule more than once (a nat table and its MASQUERADE).
    assert {(v.policy, v.name) for v in found} == {(policy, name)}
    assert any(message in v.message for v in found), [v.message for v in found]
    assert all(FAKE_KEY not in v.message for v in found)


def test_gateway_role_with_a_second_parameter_is_caught(dev):
    document = copy.deepcopy(dev)
    own = f"arn:aws:ssm:us-east-1:123456789012:parameter{ALPHA_KEY}"
    edit_policy("alpha-read-own-parameters", lambda s: s.update(Resource=[own, BETA_ARN]))(document)

    found = violations(document)

    assert [(v.policy, v.name) for v in found] == [
        ("gateway-reads-only-own-key", "alpha-read-own-parameters")
    ]


def test_gateway_known_only_by_user_data_digest_may_read_one_parameter(dev):
    # Stack policies see outputs, where the provider keeps a SHA-1 of the user data.
    document = copy.deepcopy(dev)
    set_input(INSTANCE, "alpha-gateway", "userDataBase64", None)(document)
    set_input(INSTANCE, "alpha-gateway", "userData", "0" * 40)(document)
    assert violations(document) == []

    own = [f"arn:aws:ssm:us-east-1:123456789012:parameter/x/{n}" for n in range(3)]
    edit_policy("alpha-read-own-parameters", lambda s: s.update(Resource=[*own, BETA_ARN]))(
        document
    )
    found = violations(document)

    assert [(v.policy, v.name) for v in found] == [
        ("gateway-reads-only-own-key", "alpha-read-own-parameters")
    ]
    assert found[0].message.endswith(
        "grants ssm:GetParameter* on 4 parameters, more than a gateway's 3"
    )


def test_unknown_values_cannot_be_judged_but_absent_ones_can(dev):
    document = copy.deepcopy(dev)
    set_input(INSTANCE, "alpha-gateway", "sourceDestCheck", "(unknown)")(document)
    set_input(INSTANCE, "beta-gateway", "userDataBase64", "(unknown)")(document)
    set_input(INSTANCE, "beta-gateway", "sourceDestCheck", True)(document)
    set_input("aws:iam/rolePolicy:RolePolicy", "beta-read-own-parameters", "policy", "(unknown)")(
        document
    )
    # Not known to be a gateway (its user data is unknown), so no gateway settings apply.
    assert violations(document) == []


def test_user_data_comments_may_mention_nat():
    props = {"userData": "#cloud-config\n# no NAT: no MASQUERADE, no SNAT\nruncmd: []\n"}
    assert rules.no_nat(INSTANCE, props) == []
    props = {"userData": "#!/bin/sh\nnft add rule ip nat postrouting masquerade\n"}
    assert rules.no_nat(INSTANCE, props) != []


def write(tmp_path, document: Document) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document))
    return str(path)


MANDATORY = sum(not r.advisory for r in rules.all_rules())


@pytest.fixture
def shared_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner plans through plan_stack: give it the session's plans."""
    monkeypatch.setattr(offline, "plan_stack", shipped_plan)


def test_offline_runner_passes_shipped_stacks_printing_advisory_findings_apart(
    shared_plans, capsys
):
    assert offline.main(["dev"]) == 0
    assert offline.main(["single-region"]) == 0
    lines = capsys.readouterr().out.splitlines()
    summaries = [line for line in lines if line.startswith("stack ")]
    advisories = [line for line in lines if not line.startswith("stack ")]
    assert summaries[0].startswith(
        f"stack dev: all {MANDATORY} mandatory policies pass; {2 * len(ALARM_RULES)} advisory "
        "findings of 1 of 1 advisory policies"
    )
    assert summaries[1].startswith(f"stack single-region: all {MANDATORY} mandatory policies pass")
    assert len(advisories) == 2 * 2 * len(ALARM_RULES)
    assert all(
        line.startswith(
            "advisory: alarm-reaches-a-subscriber: aws:cloudwatch/metricAlarm:MetricAlarm "
        )
        for line in advisories
    )


def test_offline_runner_fails_a_violating_plan_json(dev, tmp_path, capsys):
    document = copy.deepcopy(dev)
    set_input(INTERFACE, "alpha-gateway", "sourceDestCheck", True)(document)
    set_input("aws:ssm/parameter:Parameter", "beta-wireguard-key", "type", "String")(document)

    assert offline.main(["dev", "--plan-json", write(tmp_path, document)]) == 1

    lines = capsys.readouterr().out.splitlines()
    # Sorted: stable across runs whatever order the engine reports resources in; the
    # mandatory violations first, the advisory findings after them.
    assert lines[0].startswith(
        "gateway-interface-forwards: aws:ec2/networkInterface:NetworkInterface alpha-gateway:"
    )
    assert lines[1].startswith(
        "key-parameter-secure-string: aws:ssm/parameter:Parameter beta-wireguard-key: parameter"
    )
    assert all(line.startswith("advisory: ") for line in lines[2:-1])
    assert lines[-1].startswith(f"stack dev: 2 violations of 2 of {MANDATORY} mandatory policies")


def test_violations_are_sorted_whatever_order_the_resources_come_in(dev, tmp_path, capsys):
    document = copy.deepcopy(dev)
    set_input(INTERFACE, "beta-gateway", "sourceDestCheck", True)(document)
    set_input(INTERFACE, "alpha-gateway", "sourceDestCheck", True)(document)
    set_input("aws:ssm/parameter:Parameter", "beta-wireguard-key", "type", "String")(document)
    set_input("aws:ssm/parameter:Parameter", "alpha-wireguard-key", "type", "String")(document)
    outputs = []
    for order in (1, -1):
        document["resources"] = document["resources"][::order]
        assert offline.main(["dev", "--plan-json", write(tmp_path, document)]) == 1
        outputs.append(capsys.readouterr().out)

    assert outputs[0] == outputs[1]
    lines = [line for line in outputs[0].splitlines()[:-1] if not line.startswith("advisory:")]
    assert len(lines) == 4
    assert lines == sorted(lines)


def test_offline_runner_accepts_its_own_plan_json(dev, tmp_path):
    assert offline.main(["dev", "--plan-json", write(tmp_path, dev)]) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"stack": "dev"}', "not a plan written by `python -m plan --json`"),
        ('{"stack": "single-region", "resources": []}', "the plan is of stack 'single-region'"),
    ],
    ids=["not-json", "not-a-plan", "other-stack"],
)
def test_offline_runner_bad_plan_json_is_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "plan.json"
    path.write_text(content)

    assert offline.main(["dev", "--plan-json", str(path)]) == 2

    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert message in err


def test_offline_runner_passes_a_plan_with_only_advisory_findings(dev, tmp_path, capsys):
    # dev's own plan: one advisory finding per alarm, no violation, so exit 0.
    assert offline.main(["dev", "--plan-json", write(tmp_path, dev)]) == 0
    out = capsys.readouterr().out
    findings = 2 * len(ALARM_RULES)
    assert out.count("\nadvisory: ") + out.startswith("advisory: ") == findings
    assert f"; {findings} advisory findings of 1 of 1 advisory policies" in out.splitlines()[-1]


def test_offline_runner_unknown_stack_is_exit_2(capsys):
    assert offline.main(["nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "no config file for stack 'nope'" in err[0]


def test_policy_pack_builds_every_policy_as_mandatory_but_the_advisory_ones(monkeypatch):
    built: list[dict[str, Any]] = []
    # The real constructor serves the policies to the engine and never returns.
    monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kwargs: built.append(kwargs))
    monkeypatch.setattr(sys, "path", list(sys.path))

    runpy.run_path(str(REPO / "policy" / "__main__.py"), run_name="__main__")

    (kwargs,) = built
    assert kwargs["name"] == "wg-site-to-site"
    assert kwargs["enforcement_level"] == pulumi_policy.EnforcementLevel.MANDATORY
    policies = kwargs["policies"]
    assert [p.name for p in policies] == [r.name for r in rules.all_rules()]
    levels = {p.name: p.enforcement_level for p in policies}
    assert levels.pop("alarm-reaches-a-subscriber") == pulumi_policy.EnforcementLevel.ADVISORY
    assert set(levels.values()) == {pulumi_policy.EnforcementLevel.MANDATORY}
    assert sum(isinstance(p, pulumi_policy.StackValidationPolicy) for p in policies) == len(
        rules.STACK_RULES
    )


class Reports(list[tuple[str, str | None]]):
    """A report_violation callback that keeps what it is told."""

    def __call__(self, message: str, urn: str | None = None) -> None:
        self.append((message, urn))


def _resource_policy(name: str) -> pulumi_policy.ResourceValidationPolicy:
    (found,) = [p for p in pack.policies() if p.name == name]
    assert isinstance(found, pulumi_policy.ResourceValidationPolicy)
    return found


def _stack_policy(name: str) -> pulumi_policy.StackValidationPolicy:
    (found,) = [p for p in pack.policies() if p.name == name]
    assert isinstance(found, pulumi_policy.StackValidationPolicy)
    return found


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


def _resource_args(props: dict[str, Any]) -> ResourceValidationArgs:
    # As the engine passes props: behind the proxy that raises on unknown values.
    proxied = unknown_checking_proxy(props)
    return ResourceValidationArgs(INSTANCE, proxied, "urn:x", "gw", _options(), None)


def test_resource_policy_reports_through_the_pulumi_policy_api(dev):
    props = copy.deepcopy(resource(dev, INSTANCE, "alpha-gateway")["inputs"])
    props["metadataOptions"]["httpTokens"] = "optional"
    reported = Reports()

    _resource_policy("gateway-instance-settings").validate(_resource_args(props), reported)

    assert len(reported) == 1
    assert "httpTokens is 'optional'" in reported[0][0]


def test_resource_policy_treats_engine_unknowns_as_not_known_yet(dev):
    props = copy.deepcopy(resource(dev, INSTANCE, "alpha-gateway")["inputs"])
    props["sourceDestCheck"] = UNKNOWN_STRING_VALUE
    props["rootBlockDevice"]["encrypted"] = UNKNOWN_STRING_VALUE
    reported = Reports()
    for name in ("gateway-instance-settings", "encrypted-root-volume"):
        _resource_policy(name).validate(_resource_args(props), reported)
    assert reported == []


def test_stack_policy_follows_dependencies_through_the_pulumi_policy_api(dev):
    document = copy.deepcopy(dev)
    edit_policy("beta-read-own-parameters", lambda s: s.update(Resource="*"))(document)
    by_urn = {
        r["urn"]: PolicyResource(
            r["type"],
            unknown_checking_proxy(r["inputs"]),
            r["urn"],
            r["name"],
            _options(),
            None,
            None,
            [],
            {},
        )
        for r in document["resources"]
    }
    for r in document["resources"]:
        by_urn[r["urn"]].dependencies.extend(
            by_urn[d] for d in r["options"]["dependsOn"] if d in by_urn
        )
    reported = Reports()

    _stack_policy("gateway-reads-only-own-key").validate(
        StackValidationArgs(list(by_urn.values())), reported
    )

    beta_policy = resource(document, "aws:iam/rolePolicy:RolePolicy", "beta-read-own-parameters")
    assert reported == [
        (
            "role policy of gateway beta-gateway's role beta-gateway: Resource '*' is a wildcard",
            beta_policy["urn"],
        )
    ]
