"""The project's policies as pure functions, shared by the Pulumi policy pack and `make policy`.

Resource rules look at one resource's type and props; stack rules look at every
resource at once, because "a gateway may read only its own key" spans an instance,
its instance profile, a role and the role's policies. Props use the provider's
camelCase names, as the engine passes them to a policy pack and as the offline plan
records them.

A value that is not known yet (during a preview, before the resource it comes from
exists) is passed as UNKNOWN; a rule then cannot tell and reports nothing. A value that
is simply absent is judged as absent: AWS's defaults are what this policy forbids.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from core import health
from core.config import PROJECT
from core.facts import DESIRED_STATE_LEAF, KEY_PARAMETER_LEAF, PRESHARED_KEY_LEAF
from core.render import decode_user_data

Props = Mapping[str, Any]

INSTANCE = "aws:ec2/instance:Instance"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SSM_PARAMETER = "aws:ssm/parameter:Parameter"
INSTANCE_PROFILE = "aws:iam/instanceProfile:InstanceProfile"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
IAM_POLICY = "aws:iam/policy:Policy"
NETWORK_INTERFACE = "aws:ec2/networkInterface:NetworkInterface"
KMS_KEY = "aws:kms/key:Key"
METRIC_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
SNS_TOPIC = "aws:sns/topic:Topic"
SNS_SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
RANDOM_BYTES = "random:index/randomBytes:RandomBytes"

KEY_PARAMETER_SUFFIX = "/" + KEY_PARAMETER_LEAF
PRESHARED_KEY_SUFFIX = "/" + PRESHARED_KEY_LEAF
DESIRED_STATE_SUFFIX = "/" + DESIRED_STATE_LEAF
# Every parameter holding key material: the private key and the pair's pre-shared key.
SECRET_PARAMETER_SUFFIXES = (KEY_PARAMETER_SUFFIX, PRESHARED_KEY_SUFFIX)
WG_CONFIG_GLOB = "/etc/wireguard/*.conf"

# A WireGuard key is 32 bytes: 43 base64 digits, the last of which carries only four
# bits (so it is one of these 16), and one "=" of padding.
_KEY_SHAPED = re.compile(
    r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=(?![A-Za-z0-9+/=])"
)
# wg(8) reads config keys case-insensitively.
_PRIVATE_KEY_LINE = re.compile(r"^\s*PrivateKey\s*=", re.IGNORECASE)
_PUBLIC_KEY_LINE = re.compile(r"^\s*PublicKey\s*=", re.IGNORECASE)
# `wg set <iface> peer <public key> ...` (a PostUp of the desired config): wg(8) takes
# the peer's public key there, and private and pre-shared keys only as file paths.
_PEER_PUBLIC_KEY = re.compile(r"\bpeer\s+[A-Za-z0-9+/]{43}=", re.IGNORECASE)
_WG_CONFIG_PATH = re.compile(r"/etc/wireguard/[^/\s\"']+\.conf\b")
_KEY_PARAMETER = re.compile(
    r"(?<![\w./-])(/[\w./-]*" + re.escape(KEY_PARAMETER_SUFFIX) + r")(?![\w./-])"
)
# iptables' NAT targets and table (in every spelling iptables accepts), and nftables'
# nat chains and statements.
_NAT = re.compile(
    r"\b(?:MASQUERADE|SNAT|DNAT)\b"
    r"|(?:^|[\s,\[])(?:-t[\s,'\"]*nat|--table[=\s,'\"]+nat)\b"
    r"|\btype\s+nat\b"
    # iptables-restore's table header: `*nat`.
    r"|^\s*\*nat\b",
    re.IGNORECASE,
)
_USER_DATA_DIGEST = re.compile(r"[0-9a-f]{40}")
# Every parameter of this project: /wg-site-to-site/<stack>/<site>/<what>, and a pair's
# pre-shared key /wg-site-to-site/<stack>/<site>/<peer>/<what>.
_PROJECT_PARAMETER = re.compile(
    r"(?<![\w./-])(/" + re.escape(PROJECT) + r"/[\w.-]+/[\w.-]+(?:/[\w.-]+)?/[\w.-]+)(?![\w./-])"
)
# /wg-site-to-site/<stack>/<site>/: the part of a parameter's name that says whose it is.
_SITE_PREFIX = re.compile(r"^(/" + re.escape(PROJECT) + r"/[\w.-]+/[\w.-]+/)")
# A gateway reads its desired state, its private key and one pre-shared key per peer.
_MOST_PARAMETERS = 3
_SSM_PARAMETER_ARN = re.compile(r"^arn:[\w-]+:ssm:[\w-]*:\d*:parameter(/.+)$")
_READ_PARAMETER_ACTIONS = (
    "ssm:getparameter",
    "ssm:getparameters",
    "ssm:getparametersbypath",
    "ssm:getparameterhistory",
)


class _Unknown:
    """A value the engine does not know yet (only during a preview)."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()


def is_unknown(value: Any) -> bool:
    return value is UNKNOWN


@dataclass(frozen=True)
class Resource:
    """One resource as a stack rule sees it."""

    type: str
    name: str
    urn: str
    props: Props
    dependencies: frozenset[str] = frozenset()  # URNs this resource depends on


@dataclass(frozen=True)
class Violation:
    policy: str
    type: str
    name: str
    urn: str
    message: str
    advisory: bool = False  # a finding to read, which fails nothing


ResourceCheck = Callable[[str, Props], list[str]]
StackCheck = Callable[[Sequence[Resource]], list[tuple[Resource, str]]]


@dataclass(frozen=True)
class ResourceRule:
    name: str
    description: str
    check: ResourceCheck
    advisory: bool = False  # else mandatory: a violation fails the preview


@dataclass(frozen=True)
class StackRule:
    name: str
    description: str
    check: StackCheck
    advisory: bool = False


# ---------------------------------------------------------------------------- user data


@dataclass(frozen=True)
class _UserData:
    text: str
    written: Mapping[str, str]  # path -> content, for every file cloud-init writes
    extra: Mapping[str, str]  # path -> content of files not readable in `text` (base64)


def _user_data(props: Props) -> _UserData | None:
    """The instance's user data, or None if it is not known yet (or there is none)."""
    text, packed = props.get("userData"), props.get("userDataBase64")
    if text is None and isinstance(packed, str):
        return _unpacked_user_data(packed)
    return _parsed_user_data(text) if isinstance(text, str) else None


def _without_user_data(props: Props) -> bool:
    """An instance with no user data at all (known to be absent, not merely unknown)."""
    values = (props.get("userData"), props.get("userDataBase64"))
    return all(value is None or value == "" for value in values)


# Every rule reads every instance's user data: decode and parse each text once.
@functools.lru_cache(maxsize=16)
def _unpacked_user_data(packed: str) -> _UserData | None:
    try:
        return _parsed_user_data(decode_user_data(packed))
    except (binascii.Error, UnicodeDecodeError, OSError, EOFError):
        return None


@functools.lru_cache(maxsize=16)
def _parsed_user_data(text: str) -> _UserData:
    written: dict[str, str] = {}
    extra: dict[str, str] = {}
    if text.startswith("#cloud-config"):
        try:
            # libyaml's safe loader where PyYAML has it: ten times faster on user data.
            if yaml.__with_libyaml__:
                document = yaml.load(text, Loader=yaml.CSafeLoader)
            else:
                document = yaml.safe_load(text)
        except yaml.YAMLError:
            document = None
        entries = document.get("write_files") if isinstance(document, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                continue
            content = entry.get("content", "")
            if not isinstance(content, str):
                continue
            if str(entry.get("encoding", "")).lower() in ("b64", "base64"):
                try:
                    content = base64.b64decode(content).decode(errors="replace")
                except binascii.Error:
                    continue
                extra[entry["path"]] = content
            written[entry["path"]] = content
    return _UserData(text=text, written=written, extra=extra)


def _sources(data: _UserData) -> Iterator[tuple[str, str]]:
    """(where, text) for everything a rule must read: user data, then decoded files."""
    yield "userData", data.text
    for path, content in sorted(data.extra.items()):
        yield f"userData file {path}", content


def _is_gateway(data: _UserData) -> bool:
    # It writes a wg-quick config, or a script that does (the apply script).
    if any(fnmatch.fnmatchcase(path, WG_CONFIG_GLOB) for path in data.written):
        return True
    return any(_WG_CONFIG_PATH.search(text) for _, text in _sources(data)) or any(
        _WG_CONFIG_PATH.search(content) for content in data.written.values()
    )


def key_parameters_read(data: _UserData) -> set[str]:
    """SSM parameter names of WireGuard keys that the user data's scripts mention."""
    return {m for _, text in _sources(data) for m in _KEY_PARAMETER.findall(text)}


# ---------------------------------------------------------------------- resource rules


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


# Ranges the internet does not route to a VPC (RFC 1918, shared address space, IPv6
# unique local). Not `is_private`: Python counts the documentation ranges as private,
# and here they stand for internet addresses.
_INTERNAL = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def _more_than_one_public_address(cidr: Any) -> bool:
    """A source reaching beyond one internet address: 0.0.0.0/1 is as open as /0 for an
    attacker. Internal ranges (the site's own CIDR) are not routed from the internet."""
    if not isinstance(cidr, str):
        return False
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    internal = any(
        network.version == r.version and network.subnet_of(r)  # type: ignore[arg-type]
        for r in _INTERNAL
    )
    return network.num_addresses > 1 and not internal


def _udp_from_internet(protocol: Any, cidrs: list[Any], what: str) -> list[str]:
    if not isinstance(protocol, str) or protocol.lower() not in ("udp", "17", "-1", "all"):
        return []
    label = "all protocols" if protocol.lower() in ("-1", "all") else "udp"
    return [
        f"{what} admits {label} from {cidr}: the WireGuard port must admit only the peer's "
        "address (a single /32 or /128, or the sourceCidr its office declares, on that "
        "office's rule), and nothing else here needs UDP from the internet"
        for cidr in cidrs
        if _more_than_one_public_address(cidr)
    ]


# The component that declares the whole deployment, and where in its props it names each
# office's declared sources (`sites[].external`: publicIp, sourceCidr) and the gateways'
# tunnel rules that admit them (components/site_to_site.py).
SITE_TO_SITE = "wg-site-to-site:index:SiteToSite"
EXTERNAL_SITES_PROP = "externalSites"


def _network(text: str) -> str:
    return str(ipaddress.ip_network(text if "/" in text else f"{text}/32", strict=False))


def declared_sources(resources: Sequence[Resource]) -> dict[str, set[str]]:
    """Tunnel rule name -> the CIDRs its office declares (publicIp /32, sourceCidr)."""
    declared: dict[str, set[str]] = {}
    for component in (r for r in resources if r.type == SITE_TO_SITE):
        sites = component.props.get(EXTERNAL_SITES_PROP)
        for site in sites.values() if isinstance(sites, Mapping) else []:
            if not isinstance(site, Mapping):
                continue
            cidrs = {
                _network(str(site[key])) for key in ("publicIp", "sourceCidr") if site.get(key)
            }
            for rule in _as_list(site.get("tunnelRules")):
                declared.setdefault(str(rule), set()).update(cidrs)
    return declared


def tunnel_port_admits_only_peers(resources: Sequence[Resource]) -> list[tuple[Resource, str]]:
    """(a) UDP (so the WireGuard port) is open only to single internet addresses, or to
    the sourceCidr an office behind NAT declares, on that office's own tunnel rules:
    never on another peer's rule, never a wider one."""
    declared = declared_sources(resources)
    found: list[tuple[Resource, str]] = []
    for resource in resources:
        allowed = declared.get(resource.name, set()) if resource.type == INGRESS_RULE else set()
        found += [
            (resource, problem)
            for problem in tunnel_port_not_public(resource.type, resource.props, allowed)
        ]
    return found


def tunnel_port_not_public(
    type_: str, props: Props, declared: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """(a) UDP (so the WireGuard port) is open only to single internet addresses.

    A resource rule cannot see which port the gateways listen on, so every UDP and
    all-protocol ingress from a public range wider than one address (/32, /128) is a
    violation, not only /0; this project has no other UDP service that would need one.
    Private ranges (a site's own CIDR, admitted for forwarding) cannot arrive from the
    internet and are allowed.
    """
    if type_ == INGRESS_RULE:
        cidrs = [props.get("cidrIpv4"), props.get("cidrIpv6")]
        cidrs = [c for c in cidrs if not (isinstance(c, str) and c in declared)]
        return _udp_from_internet(props.get("ipProtocol"), cidrs, "ingress rule")
    if type_ == SECURITY_GROUP_RULE:
        if props.get("type") != "ingress":
            return []
        cidrs = _as_list(props.get("cidrBlocks")) + _as_list(props.get("ipv6CidrBlocks"))
        return _udp_from_internet(props.get("protocol"), cidrs, "ingress rule")
    if type_ == SECURITY_GROUP:
        problems = []
        for index, rule in enumerate(_as_list(props.get("ingress"))):
            if isinstance(rule, Mapping):
                cidrs = _as_list(rule.get("cidrBlocks")) + _as_list(rule.get("ipv6CidrBlocks"))
                problems += _udp_from_internet(rule.get("protocol"), cidrs, f"ingress[{index}]")
        return problems
    return []


def _device_zero(props: Props) -> tuple[str, Any] | None:
    """(block, interface id) when a standalone interface is the instance's device 0."""
    for attached in _as_list(props.get("networkInterfaces")):
        if isinstance(attached, Mapping) and attached.get("deviceIndex") == 0:
            return "networkInterfaces", attached.get("networkInterfaceId")
    primary = props.get("primaryNetworkInterface")
    if isinstance(primary, Mapping):
        return "primaryNetworkInterface", primary.get("networkInterfaceId")
    return None


def gateway_instance_settings(type_: str, props: Props) -> list[str]:
    """(b) A gateway forwards packets (no source/dest check); every instance of the stack
    (gateways and canaries) requires IMDSv2."""
    if type_ != INSTANCE:
        return []
    data = _user_data(props)
    gateway = data is not None and _is_gateway(data)
    problems = []
    check = props.get("sourceDestCheck")
    # On a standalone interface the check is the interface's (gateway-interface-forwards),
    # but only the deprecated block keeps it so: with primaryNetworkInterface the
    # provider's next update writes the instance's default (true) through to the
    # interface (plan.provider_model; terraform-provider-aws#44768).
    attached = _device_zero(props)
    if gateway and attached is not None and attached[0] == "primaryNetworkInterface":
        problems.append(
            "device 0 is attached with primaryNetworkInterface: the next `pulumi up` writes "
            "sourceDestCheck true (its default) to the interface (terraform-provider-aws"
            "#44768); attach it with networkInterfaces at deviceIndex 0"
        )
    if gateway and check is not False and not is_unknown(check) and attached is None:
        shown = "absent (AWS defaults it to true)" if check is None else repr(check)
        problems.append(
            f"sourceDestCheck is {shown}: a gateway forwards other hosts' packets, which the "
            "VPC drops unless it is false"
        )
    metadata = props.get("metadataOptions")
    tokens = metadata.get("httpTokens") if isinstance(metadata, Mapping) else None
    if not is_unknown(metadata) and tokens != "required" and not is_unknown(tokens):
        shown = "absent" if tokens is None else repr(tokens)
        problems.append(
            f"metadataOptions.httpTokens is {shown}, not 'required': "
            + (
                "the instance role can read a private key, so its credentials must need IMDSv2"
                if gateway
                else "an instance's role credentials must need IMDSv2 (no SSRF can read them)"
            )
        )
    return problems


def encrypted_root_volume(type_: str, props: Props) -> list[str]:
    """(c) Every instance's root volume is encrypted (it holds the key file)."""
    if type_ != INSTANCE:
        return []
    device = props.get("rootBlockDevice")
    if is_unknown(device):
        return []
    encrypted = device.get("encrypted") if isinstance(device, Mapping) else None
    if encrypted is True or is_unknown(encrypted):
        return []
    shown = "absent" if encrypted is None else repr(encrypted)
    return [f"rootBlockDevice.encrypted is {shown}, not true"]


def _walk_strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(where, text) for every string in a value; JSON text is read as what it holds."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk_strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk_strings(item, f"{where}[{index}]")
    elif isinstance(value, str):
        parsed: Any = None
        if value.lstrip()[:1] in ("{", "["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
        if isinstance(parsed, dict | list):
            # The desired state is JSON whose strings are the wg-quick config and the
            # firewall: read them line by line, as the gateway will.
            yield from _walk_strings(parsed, where)
        else:
            yield where, value


def _held_texts(type_: str, props: Props) -> Iterator[tuple[str, str]]:
    """(where, text) for every text a resource holds where a gateway's config or firewall
    can be: user data (decoded), the desired-state parameter's JSON, any string input.

    Not the places key material belongs: a SecureString's value, the RandomBytes a key
    comes from.
    """
    if type_ == RANDOM_BYTES:
        return
    skip: set[str] = set()
    if type_ == INSTANCE:
        skip = {"userData", "userDataBase64"}
        data = _user_data(props)
        if data is not None:
            yield from _sources(data)
    elif type_ == SSM_PARAMETER and (
        props.get("type") != "String" or _secret_parameter_kind(props.get("name"))
    ):
        # A SecureString (or not known yet), or a key parameter: the key-parameter rules
        # judge where its key is.
        skip = {"value"}
    for key, value in props.items():
        if key not in skip and not is_unknown(value):
            yield from _walk_strings(value, key)


def no_private_key_in_gateway_config(type_: str, props: Props) -> list[str]:
    """(d) No private key in user data, the desired state or any other string input:
    each is readable by anyone who can describe the resource (or read the plan).

    Public keys are allowed where wg(8) takes them (`PublicKey =`, `wg set ... peer`).
    Messages name the line, never its content.
    """
    problems = []
    for where, text in _scanned_texts(type_, props):
        for number, line in enumerate(text.splitlines(), start=1):
            if _PRIVATE_KEY_LINE.match(line.strip()):
                problems.append(
                    f"{where} line {number} is a PrivateKey line; the gateway must load its "
                    "key from SSM at boot"
                )
            elif not _PUBLIC_KEY_LINE.match(line.strip()) and _KEY_SHAPED.search(
                _PEER_PUBLIC_KEY.sub("", line)
            ):
                problems.append(
                    f"{where} line {number} holds a WireGuard-key-shaped value outside a "
                    "PublicKey line"
                )
    return problems


def _scanned_texts(type_: str, props: Props) -> Iterator[tuple[str, str]]:
    """The held texts a key or NAT scan reads. The desired state names each peer's public
    key (peers[].publicKey): skipped only where it is one the config names on a PublicKey
    line, so no private key passes as a peer's."""
    texts = list(_held_texts(type_, props))
    public = {
        line.split("=", 1)[1].strip()
        for _, text in texts
        for line in text.splitlines()
        if _PUBLIC_KEY_LINE.match(line.strip())
    }
    for where, text in texts:
        if not (where.endswith(".publicKey") and text.strip() in public):
            yield where, text


def _secret_parameter_kind(name: Any) -> str | None:
    """'private key' or 'pre-shared key' for a parameter holding one, else None."""
    if not isinstance(name, str):
        return None
    if name.endswith(KEY_PARAMETER_SUFFIX):
        return "private key"
    if name.endswith(PRESHARED_KEY_SUFFIX):
        return "pre-shared key"
    return None


def key_parameter_is_secure_string(type_: str, props: Props) -> list[str]:
    """(e) An SSM parameter holding a WireGuard key, private or pre-shared, is a
    SecureString (KMS-encrypted)."""
    if type_ != SSM_PARAMETER:
        return []
    name, kind = props.get("name"), props.get("type")
    what = _secret_parameter_kind(name)
    if what is None or kind == "SecureString" or is_unknown(kind):
        return []
    return [f"parameter {name} holds a {what} but has type {kind!r}, not 'SecureString'"]


def no_nat(type_: str, props: Props) -> list[str]:
    """(g) Sites are routed, never translated: no NAT rule in user data, the desired
    state's config and firewall, or any other string input."""
    problems = []
    for where, text in _scanned_texts(type_, props):
        for number, line in enumerate(text.splitlines(), start=1):
            # Comments (YAML, shell, wg-quick, iptables-restore) do not run, and rule
            # descriptions land there.
            if line.strip().startswith("#"):
                continue
            match = _NAT.search(line)
            if match:
                problems.append(
                    f"{where} line {number} uses NAT ({match.group(0).strip()!r}); the sites "
                    "are routed with their own addresses"
                )
    return problems


def _policy_texts(type_: str, props: Props) -> Iterator[tuple[str, Any]]:
    """(what, policy JSON) for every policy document a resource carries."""
    if type_ in (ROLE_POLICY, IAM_POLICY):
        yield "policy", props.get("policy")
    elif type_ == ROLE:
        for index, inline in enumerate(_as_list(props.get("inlinePolicies"))):
            if isinstance(inline, Mapping):
                yield f"inline policy [{index}]", inline.get("policy")


def _grants_put_metric_data(statement: Mapping[str, Any]) -> bool:
    if statement.get("Effect") != "Allow":
        return False
    if "NotAction" in statement:
        return True
    return any(
        isinstance(a, str) and fnmatch.fnmatchcase("cloudwatch:putmetricdata", a.lower())
        for a in _as_list(statement.get("Action"))
    )


def _namespace_limit(statement: Mapping[str, Any]) -> list[Any] | None:
    """The values of the statement's StringEquals cloudwatch:namespace condition, if any."""
    condition = statement.get("Condition")
    equals = condition.get("StringEquals") if isinstance(condition, Mapping) else None
    if not isinstance(equals, Mapping):
        return None
    # Condition key names are case-insensitive.
    values = [v for k, v in equals.items() if str(k).lower() == "cloudwatch:namespace"]
    return _as_list(values[0]) if values else None


def metrics_permission_namespace_limited(type_: str, props: Props) -> list[str]:
    """(h) Whoever may put metrics may put them only into the tunnel health namespace.

    PutMetricData has no resource type, so only the `cloudwatch:namespace` condition
    key limits it; without it a gateway's credentials could write (and so fake) any
    namespace's metrics, alarms included.
    """
    problems = []
    for what, document in _policy_texts(type_, props):
        if is_unknown(document) or not isinstance(document, str):
            continue
        try:
            parsed = json.loads(document)
        except ValueError:
            continue
        statements = _as_list(parsed.get("Statement")) if isinstance(parsed, dict) else []
        for index, statement in enumerate(statements):
            if not isinstance(statement, Mapping) or not _grants_put_metric_data(statement):
                continue
            values = _namespace_limit(statement)
            where = f"{what} statement [{index}] allows cloudwatch:PutMetricData"
            if values is None:
                problems.append(
                    f"{where} without a StringEquals cloudwatch:namespace condition; limit "
                    f"it to {health.NAMESPACE!r}"
                )
            elif not values or any(v != health.NAMESPACE for v in values):
                problems.append(f"{where} into namespace {values!r}, not only {health.NAMESPACE!r}")
    return problems


# Actions on a KMS key that reach the plaintext of what it encrypted: decrypting,
# re-encrypting it out under a key one controls, or granting oneself either.
_PLAINTEXT_ACTIONS = ("kms:decrypt", "kms:reencryptfrom", "kms:creategrant")
_ACTION_NAMES = {
    "kms:decrypt": "Decrypt",
    "kms:reencryptfrom": "ReEncryptFrom",
    "kms:creategrant": "CreateGrant",
}


def _grant_for_aws_resource_only(statement: Mapping[str, Any]) -> bool:
    conditions = statement.get("Condition")
    bool_ = conditions.get("Bool") if isinstance(conditions, Mapping) else None
    if not isinstance(bool_, Mapping):
        return False
    values = [v for k, v in bool_.items() if str(k).lower() == "kms:grantisforawsresource"]
    return bool(values) and all(str(v).lower() == "true" for v in _as_list(values[0]))


def key_policy_as_claimed(type_: str, props: Props) -> list[str]:
    """(j) A gateway key's policy grants what its comment claims, and no more.

    Every Allow statement lists its actions: no NotAction, and no wildcard that reaches
    kms:Decrypt, kms:ReEncryptFrom or kms:CreateGrant (`kms:*`, `kms:Create*`: with
    CreateGrant any IAM principal allowed it can grant itself Decrypt). CreateGrant only
    with `kms:GrantIsForAWSResource`; nobody re-encrypts out of the key; Decrypt only for
    named principals (never the account root, an account id or everyone), through
    kms:ViaService, and at most one of them (the deployer) without the encryption
    context of its parameters (key-decrypted-only-by-own-gateway checks whose).
    """
    if type_ != KMS_KEY:
        return []
    document = props.get("policy")
    if is_unknown(document) or document is None:
        return [] if is_unknown(document) else ["has no key policy: the account's IAM decides"]
    try:
        parsed = json.loads(str(document))
    except ValueError:
        return ["its key policy is not JSON"]
    statements = _as_list(parsed.get("Statement")) if isinstance(parsed, dict) else []
    problems = []
    without_context = []
    for index, statement in enumerate(statements):
        if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
            continue
        sid = f"statement {statement.get('Sid', f'[{index}]')}"
        if "NotAction" in statement:
            problems.append(f"{sid} allows NotAction: everything it does not list, Decrypt too")
            continue
        actions = [a for a in _as_list(statement.get("Action")) if isinstance(a, str)]
        reached: set[str] = set()
        for action in actions:
            hits = {p for p in _PLAINTEXT_ACTIONS if fnmatch.fnmatchcase(p, action.lower())}
            wildcard = "*" in action or "?" in action
            if wildcard and hits:
                listed = ", ".join(sorted(_ACTION_NAMES[h] for h in hits))
                problems.append(f"{sid} allows {action!r}, which includes {listed}")
            reached |= hits
        if "kms:creategrant" in reached and not _grant_for_aws_resource_only(statement):
            problems.append(
                f"{sid} allows kms:CreateGrant without Bool kms:GrantIsForAWSResource true: "
                "its principals can grant anyone Decrypt"
            )
        if "kms:reencryptfrom" in reached:
            problems.append(f"{sid} allows kms:ReEncryptFrom: re-encrypting out is decrypting")
        if "kms:decrypt" not in reached:
            continue
        principals = _principals(statement)
        problems += [
            f"{sid} lets {principal} decrypt: the account's IAM policies would decide who may"
            for principal in principals
            if _whole_account(principal)
        ]
        if _condition(statement, "kms:ViaService") is None:
            problems.append(f"{sid} allows kms:Decrypt without kms:ViaService (SSM)")
        if _condition(statement, "kms:EncryptionContext:PARAMETER_ARN") is None:
            without_context.append(sid)
    if len(without_context) > 1:
        problems.append(
            f"{len(without_context)} statements allow kms:Decrypt without the parameters' "
            f"encryption context ({', '.join(without_context)}); only the deployer's may"
        )
    return problems


# ------------------------------------------------------------------------- stack rules


def _resolve(ref: Any, source: Resource, candidates: Sequence[Resource]) -> list[Resource]:
    """The candidates `source` refers to with `ref` (a name, id or ARN).

    By value where the candidate's props say its name, id or ARN (the engine's outputs
    do); otherwise by dependency, since a reference to another resource's output makes
    the referring resource depend on it (a plan of inputs only has no physical names).
    """
    if ref is None:
        return []
    if isinstance(ref, str):
        by_value = [
            c
            for c in candidates
            if ref in (c.props.get("name"), c.props.get("id"), c.props.get("arn"))
        ]
        if by_value:
            return by_value
    return [c for c in candidates if c.urn in source.dependencies]


def _policy_documents(
    role: Resource, resources: Sequence[Resource]
) -> Iterator[tuple[Resource, str, Any]]:
    """(resource to blame, what, policy JSON) for every policy that applies to `role`."""
    roles = [role]
    for policy in (r for r in resources if r.type == ROLE_POLICY):
        if _resolve(policy.props.get("role"), policy, roles):
            yield policy, "role policy", policy.props.get("policy")
    for index, inline in enumerate(_as_list(role.props.get("inlinePolicies"))):
        if isinstance(inline, Mapping):
            yield role, f"inline policy [{index}]", inline.get("policy")
    managed = [r for r in resources if r.type == IAM_POLICY]
    attachments = [
        (a, a.props.get("policyArn"))
        for a in resources
        if a.type == ROLE_POLICY_ATTACHMENT and _resolve(a.props.get("role"), a, roles)
    ]
    attachments += [(role, arn) for arn in _as_list(role.props.get("managedPolicyArns"))]
    for blame, arn in attachments:
        found = _resolve(arn, blame, managed)
        if found:
            yield blame, f"managed policy {found[0].name}", found[0].props.get("policy")
        elif not is_unknown(arn):
            # Outside this stack we cannot read what it grants; AmazonSSMManagedInstanceCore,
            # for one, allows ssm:GetParameter on every parameter.
            yield blame, f"managed policy {arn}", None


@dataclass(frozen=True)
class _Own:
    """The parameters a gateway reads, as far as its user data's scripts tell."""

    names: frozenset[str]
    arns: frozenset[str]
    most: int = _MOST_PARAMETERS  # the most a gateway of this plan reads


def parameters_read(data: _UserData) -> set[str]:
    """The project's SSM parameter names that the user data's scripts mention."""
    return {m for _, text in _sources(data) for m in _PROJECT_PARAMETER.findall(text)} | {
        m for content in data.written.values() for m in _PROJECT_PARAMETER.findall(content)
    }


def _site_prefix(name: Any) -> str | None:
    match = _SITE_PREFIX.match(name) if isinstance(name, str) else None
    return match.group(1) if match else None


def _preshared_key_parameters(parameters: Sequence[Resource]) -> dict[str, set[str]]:
    """Site prefix -> its gateway's pre-shared key parameters, one per peer
    (<prefix><peer>/wireguard-preshared-key): the apply names them from the peers of the
    desired state, so a new site is day 2 and the user data need not list them."""
    found: dict[str, set[str]] = {}
    for parameter in parameters:
        name = parameter.props.get("name")
        prefix = _site_prefix(name)
        if (
            prefix
            and isinstance(name, str)
            and name.endswith(PRESHARED_KEY_SUFFIX)
            and name.count("/") == prefix.count("/") + 1
        ):
            found.setdefault(prefix, set()).add(name)
    return found


def _own(data: _UserData | None, parameters: Sequence[Resource]) -> _Own:
    names = set(parameters_read(data)) if data is not None else set()
    preshared = _preshared_key_parameters(parameters)
    for prefix in {_site_prefix(n) for n in names if n.endswith(KEY_PARAMETER_SUFFIX)}:
        names |= preshared.get(prefix or "", set())
    arns = {p.props.get("arn") for p in parameters if p.props.get("name") in names}
    most = 2 + max((len(keys) for keys in preshared.values()), default=1)
    return _Own(frozenset(names), frozenset(a for a in arns if isinstance(a, str)), most)


def _grants_read(actions: list[Any]) -> bool:
    return any(
        isinstance(a, str) and fnmatch.fnmatchcase(candidate, a.lower())
        for a in actions
        for candidate in _READ_PARAMETER_ACTIONS
    )


def _granted(statement: Any) -> list[Any] | None:
    """The Resource list of an Allow statement that grants ssm:GetParameter*, else None."""
    if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
        return None
    if "NotAction" in statement or _grants_read(_as_list(statement.get("Action"))):
        return _as_list(statement.get("Resource"))
    return None


def _statement_problems(statement: Mapping[str, Any], own: _Own) -> list[str]:
    if "NotAction" in statement:
        return ["allows NotAction, which grants ssm:GetParameter* on whatever it does not list"]
    actions = _as_list(statement.get("Action"))
    problems = [
        f"Action {a!r} is a wildcard"
        for a in actions
        if isinstance(a, str) and ("*" in a or "?" in a)
    ]
    if "NotResource" in statement:
        return [*problems, "uses NotResource with ssm:GetParameter*"]
    for resource in _as_list(statement.get("Resource")):
        if is_unknown(resource):
            continue
        if not isinstance(resource, str) or "*" in resource or "?" in resource:
            problems.append(f"Resource {resource!r} is a wildcard")
            continue
        match = _SSM_PARAMETER_ARN.match(resource)
        if own.arns and resource in own.arns:
            continue
        if own.names and (match is None or match.group(1) not in own.names):
            listed = ", ".join(sorted(own.names))
            problems.append(f"Resource {resource!r} is not one of its own parameters ({listed})")
    return problems


def _document_problems(document: Any, own: _Own) -> list[str]:
    if is_unknown(document):
        return []
    if not isinstance(document, str):
        return ["its policy document cannot be read here, so it may grant any parameter"]
    try:
        parsed = json.loads(document)
    except ValueError:
        return ["its policy document is not JSON"]
    statements = _as_list(parsed.get("Statement")) if isinstance(parsed, dict) else []
    granting = [s for s in statements if _granted(s) is not None]
    problems = [p for s in granting for p in _statement_problems(s, own)]
    named = {r for s in granting for r in _granted(s) or [] if isinstance(r, str)}
    if not own.names and len(named) > own.most:
        # Which ones are its own is not known here, but a gateway reads at most these.
        problems.append(
            f"grants ssm:GetParameter* on {len(named)} parameters, more than a gateway's {own.most}"
        )
    return problems


def gateway_reads_only_own_key(resources: Sequence[Resource]) -> list[tuple[Resource, str]]:
    """(f) A gateway's role can read exactly one parameter: the one its boot script reads.

    Follows instance -> iamInstanceProfile -> the profile's role -> every policy of that
    role. A leaked instance credential then exposes one key, not the other site's.

    A stack policy sees resource outputs, where the AWS provider keeps only a digest of
    user data; such an instance is held to "no wildcard, at most one parameter".
    """
    profiles = [r for r in resources if r.type == INSTANCE_PROFILE]
    roles = [r for r in resources if r.type == ROLE]
    parameters = [r for r in resources if r.type == SSM_PARAMETER]
    found: list[tuple[Resource, str]] = []
    for instance in (r for r in resources if r.type == INSTANCE):
        data = _user_data(instance.props)
        if data is not None and _USER_DATA_DIGEST.fullmatch(data.text):
            data = None  # what the provider keeps in state: the user data's SHA-1
        # Without readable user data an instance may be a gateway; judge it as one.
        if data is not None and not _is_gateway(data):
            continue
        read = key_parameters_read(data) if data is not None else set()
        if len(read) > 1:
            listed = ", ".join(sorted(read))
            found.append((instance, f"user data reads {len(read)} key parameters: {listed}"))
        own = _own(data, parameters)
        for profile in _resolve(instance.props.get("iamInstanceProfile"), instance, profiles):
            for role in _resolve(profile.props.get("role"), profile, roles):
                for blame, what, document in _policy_documents(role, resources):
                    found += [
                        (blame, f"{what} of gateway {instance.name}'s role {role.name}: {problem}")
                        for problem in _document_problems(document, own)
                    ]
    return found


def gateway_interface_forwards(resources: Sequence[Resource]) -> list[tuple[Resource, str]]:
    """(g) A gateway's standalone interface has its source/dest check off."""
    interfaces = [r for r in resources if r.type == NETWORK_INTERFACE]
    found: list[tuple[Resource, str]] = []
    for instance in (r for r in resources if r.type == INSTANCE):
        data = _user_data(instance.props)
        attached = _device_zero(instance.props)
        if attached is None or (data is not None and not _is_gateway(data)):
            continue
        for interface in _resolve(attached[1], instance, interfaces):
            check = interface.props.get("sourceDestCheck")
            if check is not False and not is_unknown(check):
                shown = "absent (AWS defaults it to true)" if check is None else repr(check)
                found.append(
                    (
                        interface,
                        f"sourceDestCheck is {shown} on gateway {instance.name}'s interface: "
                        "the VPC drops the packets it forwards unless it is false",
                    )
                )
    return found


_DECRYPT = "kms:decrypt"


def _grants_decrypt(statement: Mapping[str, Any]) -> bool:
    if statement.get("Effect") != "Allow":
        return False
    if "NotAction" in statement:
        return not any(
            isinstance(a, str) and fnmatch.fnmatchcase(_DECRYPT, a.lower())
            for a in _as_list(statement.get("NotAction"))
        )
    return any(
        isinstance(a, str) and fnmatch.fnmatchcase(_DECRYPT, a.lower())
        for a in _as_list(statement.get("Action"))
    )


def _principals(statement: Mapping[str, Any]) -> list[Any]:
    principal = statement.get("Principal")
    if principal == "*" or "NotPrincipal" in statement:
        return ["*"]
    if isinstance(principal, Mapping):
        return _as_list(principal.get("AWS"))
    return _as_list(principal)


def _condition(statement: Mapping[str, Any], key: str) -> Any:
    conditions = statement.get("Condition")
    equals = conditions.get("StringEquals") if isinstance(conditions, Mapping) else None
    return equals.get(key) if isinstance(equals, Mapping) else None


def _whole_account(principal: Any) -> bool:
    text = str(principal)
    return text == "*" or text.endswith(":root") or re.fullmatch(r"\d{12}", text) is not None


def _readers(parameter: Resource, resources: Sequence[Resource]) -> set[str]:
    """URNs of roles given ssm:GetParameter on `parameter` by a role policy."""
    roles = [r for r in resources if r.type == ROLE]
    readers = set()
    arn = parameter.props.get("arn")
    for policy in (r for r in resources if r.type == ROLE_POLICY):
        named = isinstance(arn, str) and arn in str(policy.props.get("policy"))
        if parameter.urn not in policy.dependencies and not named:
            continue
        readers |= {role.urn for role in _resolve(policy.props.get("role"), policy, roles)}
    return readers


def _referenced_roles(key: Resource, roles: Sequence[Resource]) -> list[Resource]:
    """Roles the key policy names: by ARN where known (the engine), else by dependency."""
    policy = str(key.props.get("policy"))
    by_arn = [r for r in roles if isinstance(r.props.get("arn"), str) and r.props["arn"] in policy]
    return by_arn or [r for r in roles if r.urn in key.dependencies]


def key_decrypted_only_by_own_gateway(
    resources: Sequence[Resource],
) -> list[tuple[Resource, str]]:
    """(h) A WireGuard key parameter, private or pre-shared, is under its own gateway's
    KMS key.

    The account's default aws/ssm key lets any principal with ssm:GetParameter decrypt.
    On the stack's own key, a role of the plan named in the key policy must read this
    parameter, and the encryption context of the statements that carry one must name this
    parameter (a parameter under another gateway's key is not) and only its own site's.
    What the policy allows at all (no wildcards, no grants, no account-wide Decrypt,
    only through SSM) is key-policy-as-claimed's.
    """
    keys = [r for r in resources if r.type == KMS_KEY]
    roles = [r for r in resources if r.type == ROLE]
    found: list[tuple[Resource, str]] = []
    for parameter in (r for r in resources if r.type == SSM_PARAMETER):
        name = parameter.props.get("name")
        if _secret_parameter_kind(name) is None:
            continue
        key_id = parameter.props.get("keyId")
        if key_id is None or (isinstance(key_id, str) and key_id.endswith("alias/aws/ssm")):
            found.append(
                (
                    parameter,
                    "encrypted with the account's default aws/ssm key, which every principal "
                    "allowed ssm:GetParameter can decrypt: give it its gateway's KMS key",
                )
            )
            continue
        readers = _readers(parameter, resources)
        for key in _resolve(key_id, parameter, keys):
            found += [
                (key, f"{problem} (parameter {name})")
                for problem in _key_problems(key, str(name), readers, _referenced_roles(key, roles))
            ]
    return found


def _key_problems(
    key: Resource, parameter: str, readers: set[str], referenced: list[Resource]
) -> list[str]:
    document = key.props.get("policy")
    if is_unknown(document):
        return []
    try:
        statements = _as_list(json.loads(str(document)).get("Statement"))
    except (ValueError, AttributeError):
        return ["its key policy cannot be read here, so anyone may decrypt"]
    problems = [
        f"role {role.name} is named in the key policy but does not read the parameter"
        for role in referenced
        if role.urn not in readers
    ]
    named: list[Any] = []
    for statement in (s for s in statements if isinstance(s, Mapping) and _grants_decrypt(s)):
        sid = statement.get("Sid", "(no Sid)")
        context = _condition(statement, "kms:EncryptionContext:PARAMETER_ARN")
        if context is None:
            continue
        # Its own site's parameters only (the key and the pre-shared keys, one per peer,
        # all under /wg-site-to-site/<stack>/<site>/).
        site = _site_prefix(parameter) or parameter.rsplit("/", 1)[0] + "/"
        for arn in _as_list(context):
            named.append(arn)
            match = _SSM_PARAMETER_ARN.match(str(arn))
            if not is_unknown(arn) and (match is None or not match.group(1).startswith(site)):
                problems.append(f"statement {sid} names another site's parameter: {arn}")
    known = [_SSM_PARAMETER_ARN.match(str(a)) for a in named if not is_unknown(a)]
    if (
        named
        and len(known) == len(named)
        and all(m is None or m.group(1) != parameter for m in known)
    ):
        problems.append(
            "its gateway may not decrypt this parameter with it (no encryption context names "
            "it): the key is another gateway's, or the parameter is missing from its policy"
        )
    return problems


def _tag(resource: Resource, key: str) -> Any:
    tags = resource.props.get("tags")
    return tags.get(key) if isinstance(tags, Mapping) else None


def _has_action(actions: Any) -> bool:
    return is_unknown(actions) or any(
        is_unknown(a) or (isinstance(a, str) and a) for a in _as_list(actions)
    )


def gateway_has_tunnel_alarm(resources: Sequence[Resource]) -> list[tuple[Resource, str]]:
    """(i) Every gateway has a TunnelUp alarm with at least one alarm action.

    An alarm belongs to the gateway its GATEWAY_TAG tag names (by the instance's id, or
    by the dependency that reference makes). An instance known only by a digest of its
    user data is judged as a gateway, as in gateway_reads_only_own_key.
    """
    alarms = [
        r
        for r in resources
        if r.type == METRIC_ALARM
        and r.props.get("namespace") == health.NAMESPACE
        and r.props.get("metricName") == health.TUNNEL_UP
    ]
    found: list[tuple[Resource, str]] = []
    for instance in (r for r in resources if r.type == INSTANCE):
        if _without_user_data(instance.props):
            continue  # a canary (components/canary.py): a gateway boots from user data
        data = _user_data(instance.props)
        if data is not None and _USER_DATA_DIGEST.fullmatch(data.text):
            data = None
        if data is not None and not _is_gateway(data):
            continue
        mine = [a for a in alarms if _resolve(_tag(a, health.GATEWAY_TAG), a, [instance])]
        if not mine:
            found.append(
                (
                    instance,
                    f"gateway {instance.name} has no {health.TUNNEL_UP} alarm "
                    f"(namespace {health.NAMESPACE}, tag {health.GATEWAY_TAG} naming it): "
                    "nobody would hear that its tunnel is down",
                )
            )
        elif not any(_has_action(a.props.get("alarmActions")) for a in mine):
            # An alarm that pages only on INSUFFICIENT_DATA (not-reporting: the gateway went
            # silent) tells someone, but not that the tunnel is down.
            silent = [
                alarm
                for alarm in mine
                if not _has_action(alarm.props.get("insufficientDataActions"))
            ]
            found += [
                (
                    alarm,
                    f"{health.TUNNEL_UP} alarm of gateway {instance.name} has no alarm action: "
                    "it would change state and tell no one",
                )
                for alarm in silent
            ] or [
                (
                    instance,
                    f"no {health.TUNNEL_UP} alarm of gateway {instance.name} has an alarm "
                    "action: nobody would hear that its tunnel is down",
                )
            ]
    return found


ROUTE = "aws:ec2/route:Route"
EIP_ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
# What a failover agent does to its site (README "High availability"): move the Elastic IP
# and point the route tables at its own interface. Granted on `*`, or on another site's
# ARNs, a gateway could take any site's address or routes.
_MOVING_ACTIONS = ("ec2:associateaddress", "ec2:replaceroute")
_EC2_ARN = re.compile(r"^arn:[\w-]+:ec2:[\w-]*:\d*:([\w-]+)/(.+)$")


def _grants_moving(statement: Any) -> list[str]:
    """The moving actions an Allow statement grants (by name or wildcard)."""
    if not isinstance(statement, Mapping) or statement.get("Effect") != "Allow":
        return []
    if "NotAction" in statement:
        excluded = [a.lower() for a in _as_list(statement["NotAction"]) if isinstance(a, str)]
        return [m for m in _MOVING_ACTIONS if not any(fnmatch.fnmatchcase(m, a) for a in excluded)]
    actions = [a.lower() for a in _as_list(statement.get("Action")) if isinstance(a, str)]
    return [m for m in _MOVING_ACTIONS if any(fnmatch.fnmatchcase(m, a) for a in actions)]


def _failover_ids(parameter: Resource) -> set[str] | None:
    """Every id a desired state's failover section names (allocation, interfaces, route
    tables), or None if it has none (or cannot be read)."""
    value = parameter.props.get("insecureValue", parameter.props.get("value"))
    try:
        section = json.loads(value)["failover"] if isinstance(value, str) else None
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(section, Mapping):
        return None
    ids = {str(section.get("allocationId"))}
    ids |= {str(g.get("networkInterfaceId")) for g in _as_list(section.get("gateways"))}
    ids |= {str(r.get("routeTableId")) for r in _as_list(section.get("routes"))}
    return ids


def _own_site_ids(role: Resource, resources: Sequence[Resource]) -> set[str] | None:
    """The ids of the site whose gateways run with `role`: their device-0 interfaces, the
    route tables routing to those, the Elastic IP associated with them or named with them
    in a desired state's failover section. None if an interface is not known yet."""
    profiles = [r for r in resources if r.type == INSTANCE_PROFILE]
    interfaces: set[str] = set()
    for instance in (r for r in resources if r.type == INSTANCE):
        attached = _device_zero(instance.props)
        uses = any(
            _resolve(profile.props.get("role"), profile, [role])
            for profile in _resolve(instance.props.get("iamInstanceProfile"), instance, profiles)
        )
        if not uses or attached is None:
            continue
        if not isinstance(attached[1], str):
            return None
        interfaces.add(attached[1])
    own = set(interfaces)
    for other in resources:
        if other.type == ROUTE and other.props.get("networkInterfaceId") in interfaces:
            own.add(str(other.props.get("routeTableId")))
        elif other.type == EIP_ASSOCIATION and other.props.get("networkInterfaceId") in interfaces:
            own.add(str(other.props.get("allocationId")))
        elif other.type == SSM_PARAMETER:
            named = _failover_ids(other)
            if named is not None and named & interfaces:
                own |= named
    return own


def failover_rights_scoped(resources: Sequence[Resource]) -> list[tuple[Resource, str]]:
    """(l) ec2:AssociateAddress and ec2:ReplaceRoute only on the role's own site's ARNs.

    A gateway's role may move its own site's Elastic IP between the site's interfaces and
    point its own route tables at them: never on `*` (any address or route table of the
    account, in any region) and never on another site's. Its own: the interfaces of the
    instances that run with the role, the route tables routing to them, and the Elastic
    IP associated with them or named in their desired state's failover section.
    """
    found: list[tuple[Resource, str]] = []
    for role in (r for r in resources if r.type == ROLE):
        grants = [
            (blame, f"{what} of role {role.name}: {', '.join(moving)}", statement)
            for blame, what, document in _policy_documents(role, resources)
            for statement in _statements(document)
            for moving in [_grants_moving(statement)]
            if moving
        ]
        own = _own_site_ids(role, resources) if grants else None
        for blame, where, statement in grants:
            found += [(blame, problem) for problem in _moving_problems(where, statement, own)]
    return found


def _statements(document: Any) -> list[Any]:
    """A policy document's statements (none if it is unknown or cannot be read)."""
    try:
        parsed = json.loads(document) if isinstance(document, str) else None
    except ValueError:
        return []
    return _as_list(parsed.get("Statement")) if isinstance(parsed, dict) else []


def _moving_problems(where: str, statement: Mapping[str, Any], own: set[str] | None) -> list[str]:
    """What is wrong with a statement granting moving actions; `own`: the ids of the role's
    own site (None if not known yet: then only wildcards can be judged)."""
    if "NotResource" in statement or "NotAction" in statement:
        key = "NotResource" if "NotResource" in statement else "NotAction"
        return [f"{where} with {key}: it reaches other sites' too"]
    problems = []
    for arn in _as_list(statement.get("Resource")):
        if is_unknown(arn):
            continue
        if not isinstance(arn, str) or "*" in arn or "?" in arn:
            problems.append(
                f"{where} on {arn!r}, a wildcard: it could move any site's Elastic IP or "
                "routes; name the site's own ARNs"
            )
            continue
        match = _EC2_ARN.match(arn)
        if own is not None and (match is None or match.group(2) not in own):
            problems.append(
                f"{where} on {arn}, which is not its own site's (Elastic IP, gateway "
                "interfaces, route tables)"
            )
    return problems


def _is_sns_arn(value: Any) -> bool:
    return isinstance(value, str) and re.match(r"^arn:aws[\w-]*:sns:", value) is not None


def _topics_of(ref: Any, source: Resource, topics: Sequence[Resource]) -> list[Resource]:
    """The plan's topics `ref` (an SNS topic ARN) names: by ARN where known, else by
    name (an ARN ends with it) among the topics `source` depends on (two regions' topics
    share one name)."""
    if not isinstance(ref, str):
        return []
    by_arn = [t for t in topics if ref == t.props.get("arn")]
    if by_arn:
        return by_arn
    leaf = ref.rsplit(":", 1)[-1]
    return [t for t in topics if t.urn in source.dependencies and t.props.get("name") == leaf]


def alarm_reaches_a_subscriber(resources: Sequence[Resource]) -> list[tuple[Resource, str]]:
    """(k, advisory) An alarm tells someone: one of its paging actions (ALARM, or
    INSUFFICIENT_DATA) is a topic of the plan with a subscription, or a topic from outside
    the plan (`alerts.topicArn`).

    A topic without a subscription takes the notification and tells nobody. Advisory:
    a stack may subscribe by hand, outside the plan, which the plan cannot see.
    """
    topics = [r for r in resources if r.type == SNS_TOPIC]
    subscribed = {
        t.urn
        for sub in resources
        if sub.type == SNS_SUBSCRIPTION
        for t in _topics_of(sub.props.get("topic"), sub, topics)
    }
    found: list[tuple[Resource, str]] = []
    for alarm in (r for r in resources if r.type == METRIC_ALARM):
        # What pages: the ALARM actions, and the INSUFFICIENT_DATA ones of an alarm that
        # pages on silence (not-reporting). OK actions only say a page is over.
        paging = [alarm.props.get(key) for key in ("alarmActions", "insufficientDataActions")]
        actions = [a for value in paging for a in _as_list(value)]
        if any(is_unknown(value) for value in paging) or any(is_unknown(a) for a in actions):
            continue
        notified = [a for a in actions if _is_sns_arn(a)]
        reached = False
        silent: list[str] = []
        for action in notified:
            mine = _topics_of(action, alarm, topics)
            if not mine or any(t.urn in subscribed for t in mine):
                reached = True  # a topic from outside the plan, or a subscribed one
            else:
                silent += [t.name for t in mine]
        if reached:
            continue
        where = (
            f"only topic {', '.join(sorted(set(silent)))} (no subscription)"
            if silent
            else "no SNS topic"
        )
        found.append(
            (
                alarm,
                f"notifies {where}: nobody hears it; set wg-site-to-site:alerts (emails, or "
                "the topicArn of your on-call)",
            )
        )
    return found


RESOURCE_RULES: Final = (
    ResourceRule(
        "gateway-instance-settings",
        "A gateway instance has sourceDestCheck false; every instance requires IMDSv2 tokens.",
        gateway_instance_settings,
    ),
    ResourceRule(
        "encrypted-root-volume",
        "Every instance's root volume is encrypted.",
        encrypted_root_volume,
    ),
    ResourceRule(
        "no-private-key-in-gateway-config",
        "No WireGuard private key (or key-shaped value) in user data, the desired state or "
        "any other string input.",
        no_private_key_in_gateway_config,
    ),
    ResourceRule(
        "key-parameter-secure-string",
        "Every SSM parameter holding a WireGuard key, private or pre-shared, is a SecureString.",
        key_parameter_is_secure_string,
    ),
    ResourceRule(
        "no-nat",
        "No NAT (MASQUERADE, SNAT, DNAT, the nat table) in user data, the desired state or "
        "any other string input.",
        no_nat,
    ),
    ResourceRule(
        "key-policy-as-claimed",
        "A KMS key policy lists its actions: no wildcard reaching Decrypt or CreateGrant, "
        "CreateGrant only for AWS resources, Decrypt only for named principals through SSM.",
        key_policy_as_claimed,
    ),
    ResourceRule(
        "metrics-permission-namespace-limited",
        "cloudwatch:PutMetricData is granted only with a StringEquals cloudwatch:namespace "
        "condition on the tunnel health namespace.",
        metrics_permission_namespace_limited,
    ),
)

STACK_RULES: Final = (
    StackRule(
        "wireguard-port-not-public",
        "The WireGuard port (any UDP) admits only single internet addresses (/32, /128), or "
        "an office's declared sourceCidr on that office's rule.",
        tunnel_port_admits_only_peers,
    ),
    StackRule(
        "gateway-reads-only-own-key",
        "A gateway's instance role may read only the key parameter its boot script reads.",
        gateway_reads_only_own_key,
    ),
    StackRule(
        "gateway-interface-forwards",
        "A gateway's standalone network interface has sourceDestCheck false.",
        gateway_interface_forwards,
    ),
    StackRule(
        "key-decrypted-only-by-own-gateway",
        "A WireGuard key parameter, private or pre-shared, uses its own gateway's KMS key, "
        "whose policy lets that gateway decrypt it and no other role of the stack.",
        key_decrypted_only_by_own_gateway,
    ),
    StackRule(
        "gateway-has-tunnel-alarm",
        "Every gateway has a TunnelUp alarm with at least one alarm action.",
        gateway_has_tunnel_alarm,
    ),
    StackRule(
        "failover-rights-scoped",
        "ec2:AssociateAddress and ec2:ReplaceRoute only on the role's own site's Elastic IP, "
        "gateway interfaces and route tables by ARN: never a wildcard, never another site's.",
        failover_rights_scoped,
    ),
    StackRule(
        "alarm-reaches-a-subscriber",
        "Every alarm notifies a topic with a subscription, or one from outside the stack "
        "(advisory: a subscription made by hand is not in the plan).",
        alarm_reaches_a_subscriber,
        advisory=True,
    ),
)


def evaluate(resources: Sequence[Resource]) -> list[Violation]:
    """Every rule over every resource, sorted by policy, type, name and message.

    The engine registers resources in whatever order its threads finish, so sorting
    here keeps reports (and CI summaries) identical from run to run.
    """
    violations = [
        Violation(rule.name, r.type, r.name, r.urn, message, rule.advisory)
        for rule in RESOURCE_RULES
        for r in resources
        for message in rule.check(r.type, r.props)
    ]
    violations += [
        Violation(rule.name, r.type, r.name, r.urn, message, rule.advisory)
        for rule in STACK_RULES
        for r, message in rule.check(resources)
    ]
    # Mandatory violations first, then advisory findings.
    return sorted(
        violations, key=lambda v: (v.advisory, v.policy, v.type, v.name, v.urn, v.message)
    )


def mandatory(violations: Sequence[Violation]) -> list[Violation]:
    return [v for v in violations if not v.advisory]


def advisory(violations: Sequence[Violation]) -> list[Violation]:
    return [v for v in violations if v.advisory]


def all_rules() -> list[ResourceRule | StackRule]:
    return [*RESOURCE_RULES, *STACK_RULES]
