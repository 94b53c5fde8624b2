"""The stack config contract, validated before anything is declared.

Every consumer (the Pulumi program, the offline plan, the lab) loads config through
`load_stack_config`, so a bad stack fails the same way everywhere: one line per
problem, naming the config key and the offending value.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from core.stack_file import clip

PROJECT = "wg-site-to-site"
CONFIG_KEYS = (
    "tunnel",
    "topology",
    "sites",
    "firewall",
    "tags",
    "deployer",
    "verify",
    "deadlineSeconds",
    "alerts",
    "allowUnknownRegions",
)
# Namespaces a stack file may use besides the project's own: the providers this program
# uses and Pulumi's. Any other (`wg-site2site:firewall`) is a typo whose keys would
# otherwise be dropped without a word.
OTHER_NAMESPACES = ("aws", "random", "command", "pulumi")

# Addresses that cannot be a site or the tunnel: nothing routes them between VPCs.
UNROUTABLE = tuple(
    (ipaddress.IPv4Network(net), what)
    for net, what in (
        ("0.0.0.0/8", "'this network' (RFC 1122)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (and the instance metadata service)"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved (RFC 1112)"),
    )
)

# wg-quick's own rule for interface names (it refuses anything else), which is also
# within Linux's IFNAMSIZ of 15 characters; `+` is refused on its own (_tunnel_interface).
INTERFACE_NAME = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")
# The gateway's own interfaces: its ENI (ens5 on Nitro, eth0 on Xen types, enX0 on Xen
# with systemd's naming) and loopback. wg-quick would replace their address and routes.
GATEWAY_NIC = re.compile(r"^(eth|ens|enX).*$|^lo$")
# us-east-1, eu-central-2, ap-southeast-4, us-gov-west-1, cn-north-1 ...
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[1-9]$")
SITE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,22}$")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
PORT_RANGE = re.compile(r"^(\d{1,5})-(\d{1,5})$")
# Canonical's build serial of an Ubuntu image: 20251113 or 20251113.1 (the last part of
# ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20251113).
IMAGE_SERIAL = re.compile(r"^20\d{6}(\.\d{1,2})?$")
AVAILABILITY_ZONE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[1-9][a-z]$")

# Tags the program sets itself (components/): on every resource `project` and `stack`
# (site_to_site.py), and on most a `Name` (gateway.py, site_network.py, tunnel_health.py)
# or the alarms' `GatewayInstance` (core/health.GATEWAY_TAG). A user tag of that key would
# be overridden without a word. Tag keys are case sensitive on AWS.
PROGRAM_TAGS = ("project", "stack", "Name", "GatewayInstance")
# The most of them on one resource: project, stack and one of Name / GatewayInstance
# (tests/test_config.py checks both against the plan).
PROGRAM_TAGS_PER_RESOURCE = 3
# AWS's tag limits: at most 50 user-created tags per resource (aws: tags do not count),
# keys and values case sensitive,
# https://docs.aws.amazon.com/tag-editor/latest/userguide/tagging.html (also in each
# service's tag restrictions, e.g. the EC2 CreateTags API: "a maximum of 50 tags").
AWS_MAX_TAGS = 50
MAX_USER_TAGS = AWS_MAX_TAGS - PROGRAM_TAGS_PER_RESOURCE


class FieldProblem(ValueError):
    """A check over several fields that blames one of them: the message then names that
    field's full key (`sites[0].vpcId`), not the whole entry."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name
        self.message = message


@functools.cache
def known_regions() -> frozenset[str]:
    """Every region botocore's endpoint data lists for EC2, in every partition.

    Read once per process (botocore parses its endpoint data, ~0.2 s, twice per plan
    otherwise); the installed botocore does not change while a process runs.

    botocore is the maintained source the AWS SDKs use; a region newer than the installed
    botocore needs `wg-site-to-site:allowUnknownRegions: true` (README).
    """
    import botocore.session

    session = botocore.session.get_session()
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("ec2", partition_name=partition)
    )


class ConfigError(Exception):
    """The stack config is invalid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _network(value: Any) -> ipaddress.IPv4Network:
    if isinstance(value, ipaddress.IPv4Network):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an IPv4 CIDR string such as 10.1.0.0/16")
    text = value.strip()
    if "/" not in text:
        raise ValueError("must be an IPv4 CIDR with a prefix length, such as 10.1.0.0/16")
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as strict_error:
        try:
            loose = ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            raise ValueError(f"is not an IPv4 CIDR ({strict_error})") from None
        raise ValueError(f"has host bits set (did you mean {loose}?)") from None


def _routable(net: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    for reserved, what in UNROUTABLE:
        if net.overlaps(reserved):
            raise ValueError(f"overlaps {reserved}, {what}, which cannot be routed between sites")
    return net


Cidr = Annotated[ipaddress.IPv4Network, BeforeValidator(_network), AfterValidator(_routable)]


def _tunnel_prefix(net: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    # One address per site; whether the prefix holds every site is a cross check.
    if not 16 <= net.prefixlen <= 31:
        raise ValueError("must be between /16 and /31 (one address per site; /31 for two)")
    return net


def tunnel_capacity(net: ipaddress.IPv4Network) -> int:
    """How many sites a tunnel cidr holds: both addresses of a /31 (RFC 3021), else its
    usable hosts."""
    return 2 if net.prefixlen == 31 else net.num_addresses - 2


# An office's `sourceCidr` is where its NATed packets come from: its ISP's pool, at most
# a /24, so the tunnel port is never open to the internet at large.
SOURCE_CIDR_WIDEST = 24


def _site_prefix(net: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    # The widest a VPC may be is /16; an office network outside AWS may be narrower than
    # a VPC can (SiteConfig checks /27 for AWS sites, which need two subnets).
    if not 16 <= net.prefixlen <= 32:
        raise ValueError("must be between /16 and /32")
    return net


def _public_key(value: str) -> str:
    from core.keys import is_key

    if not is_key(value):
        raise ValueError("is not a WireGuard public key (32 bytes of base64, 44 characters)")
    return value


def _public_address(value: Any) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.IPv4Address(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError("is not an IPv4 address such as 198.51.100.7") from None
    if (address.is_private and not _documentation(address)) or address.is_unspecified:
        raise ValueError("is not a public address (peers reach the office on it)")
    return address


def _documentation(address: ipaddress.IPv4Address) -> bool:
    # RFC 5737's ranges: the examples' and the lab's "public" addresses.
    return any(
        address in ipaddress.IPv4Network(net)
        for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
    )


def _source_cidr(value: Any) -> ipaddress.IPv4Network:
    net = _network(value)
    if net.prefixlen < SOURCE_CIDR_WIDEST:
        raise ValueError(
            f"is wider than a /{SOURCE_CIDR_WIDEST}: it opens the tunnel port to "
            f"{net.num_addresses} addresses; name the office's NAT pool"
        )
    return net


def _tunnel_interface(name: str) -> str:
    if GATEWAY_NIC.fullmatch(name):
        raise ValueError(
            "is one of the gateway's own interfaces (eth*, ens*, enX*, lo); "
            "name the tunnel e.g. wgA"
        )
    if "+" in name:
        # iptables reads `-i wg+` as every interface whose name starts with `wg`, so the
        # firewall and MSS chains of this interface would match other interfaces too.
        raise ValueError("has '+', which iptables reads as a wildcard (wg+ matches every wg*)")
    if ".." in name:
        raise ValueError("has '..' (Linux refuses '.' and '..', and sysctl paths split on dots)")
    return name


def _unique_ids(ids: list[str]) -> list[str]:
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"lists {', '.join(repeated)} more than once (each table gets one route)")
    return ids


def _matches(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"is not {what}")
        return value

    return AfterValidator(check)


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        # Integers are integers and booleans booleans: `port: true` is not port 1, and
        # `persistentKeepalive: 25.0` is a typo, not 25.
        strict=True,
    )


class TunnelConfig(_Model):
    """`wg-site-to-site:tunnel`: the transfer net, one address per site in site order."""

    cidr: Annotated[Cidr, AfterValidator(_tunnel_prefix)]
    port: Annotated[int, Field(ge=1, le=65535)]
    mtu: Annotated[int, Field(ge=1280, le=1500)] = 1420
    persistent_keepalive: Annotated[int, Field(ge=1, le=65535)] | None = None
    # Raising it makes new private keys (and a new pre-shared key) for both gateways,
    # applied in place.
    key_generation: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    # One pre-shared key per pair of peers (post-quantum resistance for recorded traffic),
    # in its own SecureString per gateway, readable by exactly that gateway.
    preshared_key: bool = True


class ExternalSite(_Model):
    """`sites[].external`: a site outside AWS (an office) with its own gateway host.

    The office makes its key with `wg genkey` and gives only the public half: its
    private key never enters the stack. It is reached on `publicIp`, or, behind NAT,
    dials out from `sourceCidr` (its peers then have no Endpoint for it)."""

    public_key: Annotated[str, AfterValidator(_public_key)]
    public_ip: Annotated[ipaddress.IPv4Address, BeforeValidator(_public_address)] | None = None
    source_cidr: Annotated[ipaddress.IPv4Network, BeforeValidator(_source_cidr)] | None = None

    @model_validator(mode="after")
    def _reachable(self) -> ExternalSite:
        if self.public_ip is None and self.source_cidr is None:
            raise FieldProblem(
                "publicIp",
                "is missing, and so is sourceCidr: give the office's static address, or "
                "where its packets come from when it is behind NAT",
            )
        return self

    @property
    def admitted(self) -> ipaddress.IPv4Network:
        """What the AWS security groups admit on the tunnel port for this office."""
        if self.source_cidr is not None:
            return self.source_cidr
        assert self.public_ip is not None
        return ipaddress.IPv4Network(f"{self.public_ip}/32")

    @property
    def behind_nat(self) -> bool:
        """It dials out: no peer has an Endpoint for it."""
        return self.public_ip is None


# Keys of an AWS site's gateway that mean nothing for a site outside AWS.
AWS_ONLY_KEYS = (
    "region",
    "instanceType",
    "image",
    "availabilityZone",
    "vpcId",
    "subnetId",
    "routeTableIds",
    "canary",
    "gateways",
    "secondAvailabilityZone",
)


class SiteConfig(_Model):
    """One entry of `wg-site-to-site:sites`: a network and its gateway."""

    name: Annotated[str, _matches(SITE_NAME, "a lowercase name (a-z, 0-9, -; at most 23)")]
    # Required for an AWS site; none for a site outside AWS (`external`).
    region: Annotated[str, _matches(REGION, "an AWS region name such as us-east-1")] | None = None
    cidr: Annotated[Cidr, AfterValidator(_site_prefix)]
    interface: Annotated[
        str,
        _matches(INTERFACE_NAME, "a Linux interface name (1-15 of a-z A-Z 0-9 _=.-)"),
        AfterValidator(_tunnel_interface),
    ]
    instance_type: Annotated[
        str, _matches(INSTANCE_TYPE, "an EC2 instance type such as t4g.nano")
    ] = "t4g.nano"
    # The image the gateway boots, pinned so that a new one is a reviewed change;
    # `make pin STACK=...` writes Canonical's current build. None: the current build,
    # looked up on every run (each new build then replaces the gateway).
    # Text, not a number: YAML would read 20251113.1 as a float (the tool writes it quoted).
    image: (
        Annotated[str, _matches(IMAGE_SERIAL, "an Ubuntu build serial such as '20251113'")] | None
    ) = None
    # Where the site's subnets (and so its gateway) live. None: the first zone offering the
    # instance type, chosen on the first run and kept afterwards.
    availability_zone: (
        Annotated[str, _matches(AVAILABILITY_ZONE, "an availability zone such as us-east-1a")]
        | None
    ) = None
    vpc_id: Annotated[str, _matches(re.compile(r"^vpc-[0-9a-f]{8,17}$"), "a VPC id")] | None = None
    subnet_id: (
        Annotated[str, _matches(re.compile(r"^subnet-[0-9a-f]{8,17}$"), "a subnet id")] | None
    ) = None
    route_table_ids: (
        Annotated[
            list[Annotated[str, _matches(re.compile(r"^rtb-[0-9a-f]{8,17}$"), "a route table id")]],
            AfterValidator(_unique_ids),
        ]
        | None
    ) = None
    # A workload host in the private subnet (t4g.nano, SSM-managed): the peer's probe pings
    # it through the tunnel, and `make e2e` runs its checks on it (components/canary.py).
    canary: bool = False
    # Two gateways in two zones: one holds the site's Elastic IP and routes, the other
    # takes them over in seconds when it fails, and an image roll hands over between them
    # (README "High availability"). Only for a VPC this program makes (two public subnets).
    gateways: Annotated[int, Field(ge=1, le=2)] = 1
    # The second gateway's zone (gateways: 2). None: another zone offering the instance
    # type, chosen on the first run and kept afterwards.
    second_availability_zone: (
        Annotated[str, _matches(AVAILABILITY_ZONE, "an availability zone such as us-east-1b")]
        | None
    ) = None
    external: ExternalSite | None = None

    @model_validator(mode="after")
    def _external_or_aws(self) -> SiteConfig:
        if self.external is not None:
            given = [
                key
                for key in AWS_ONLY_KEYS
                if (key if key in type(self).model_fields else _snake(key)) in self.model_fields_set
            ]
            if given:
                raise FieldProblem(
                    given[0],
                    "is set on a site outside AWS (external); "
                    f"{', '.join(AWS_ONLY_KEYS)} are for AWS sites only",
                )
            return self
        if self.region is None:
            raise FieldProblem("region", "is missing: an AWS site needs a region (or external)")
        if self.cidr.prefixlen > 27:
            raise FieldProblem(
                "cidr",
                f"{self.cidr} is narrower than /27: an AWS site is a VPC split into two subnets",
            )
        return self._existing_vpc_is_complete()

    def _existing_vpc_is_complete(self) -> SiteConfig:
        fields = {
            "vpcId": self.vpc_id,
            "subnetId": self.subnet_id,
            "routeTableIds": self.route_table_ids or None,
        }
        given = {k: v for k, v in fields.items() if v is not None}
        missing = [k for k, v in fields.items() if v is None]
        if given and missing:
            blamed, value = next(iter(given.items()))
            raise FieldProblem(
                blamed,
                f"{_shown(value)} needs {' and '.join(missing)} too: an existing VPC needs "
                "all of vpcId, subnetId and routeTableIds (non-empty)",
            )
        if self.canary and self.vpc_id is not None:
            raise FieldProblem(
                "canary",
                "true needs the private subnet this program makes; a site with vpcId has "
                "none (leave canary off, or let the program make the VPC)",
            )
        if self.availability_zone and not self.availability_zone.startswith(self.region or "-"):
            raise FieldProblem(
                "availabilityZone",
                f"{_shown(self.availability_zone)} is not in region {self.region}",
            )
        return self._two_gateways_fit()

    def _two_gateways_fit(self) -> SiteConfig:
        second = self.second_availability_zone
        if self.gateways == 1:
            if second is not None:
                raise FieldProblem(
                    "secondAvailabilityZone", f"{_shown(second)} is set but gateways is 1"
                )
            return self
        if self.vpc_id is not None:
            raise FieldProblem(
                "gateways",
                "2 needs the two public subnets in two zones this program makes; a site "
                "with vpcId has one (leave gateways at 1, or let the program make the VPC)",
            )
        if self.cidr.prefixlen > 22:
            raise FieldProblem(
                "gateways",
                f"2 needs three subnets (two public, one private) and {self.cidr} holds two;"
                " use a /22 or wider",
            )
        if second is not None and not second.startswith(self.region or "-"):
            raise FieldProblem(
                "secondAvailabilityZone", f"{_shown(second)} is not in region {self.region}"
            )
        if second is not None and second == self.availability_zone:
            raise FieldProblem(
                "secondAvailabilityZone",
                f"{_shown(second)} is the first gateway's zone too; two gateways need two zones",
            )
        return self

    @property
    def uses_existing_vpc(self) -> bool:
        return self.vpc_id is not None

    @property
    def is_aws(self) -> bool:
        return self.external is None

    @property
    def aws_region(self) -> str:
        """The region of an AWS site (an external site has none)."""
        if self.region is None:
            raise ValueError(f"site {self.name} is outside AWS and has no region")
        return self.region


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


class TopologyConfig(_Model):
    """`wg-site-to-site:topology`: absent, a full mesh; with `hub`, hub and spokes."""

    # Every spoke's only peer; it forwards spoke to spoke, subject to the firewall.
    hub: Annotated[str, _matches(SITE_NAME, "a site name")] | None = None


def _port_spec(value: Any) -> int | str:
    if isinstance(value, bool):
        raise ValueError("must be a port number or a range such as 1000-2000")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError("must be between 1 and 65535")
        return value
    if isinstance(value, str):
        if value.isdigit():
            return _port_spec(int(value))
        match = PORT_RANGE.fullmatch(value)
        if match:
            low, high = int(match[1]), int(match[2])
            if not (1 <= low <= 65535 and 1 <= high <= 65535):
                raise ValueError("range ends must be between 1 and 65535")
            if low > high:
                raise ValueError(f"range is reversed (did you mean {high}-{low}?)")
            return value
    raise ValueError("must be a port number or a range such as 1000-2000")


class FirewallRule(_Model):
    """One entry of `wg-site-to-site:firewall`: traffic arriving from the tunnel."""

    # Becomes a comment line in the wg-quick config: one printable line.
    description: Annotated[
        str,
        Field(min_length=1, max_length=200),
        _matches(re.compile(r"^[^\x00-\x1f\x7f]+$"), "one line of printable text"),
    ]
    protocol: Literal["tcp", "udp", "icmp"]
    port: Annotated[int | str, BeforeValidator(_port_spec)] | None = None
    action: Literal["reject", "drop", "accept"]

    @property
    def port_range(self) -> tuple[int, int] | None:
        """The first and last port the rule matches (the same for a single port)."""
        if self.port is None:
            return None
        low, _, high = str(self.port).partition("-")
        return int(low), int(high or low)

    @model_validator(mode="after")
    def _no_port_on_icmp(self) -> FirewallRule:
        if self.protocol == "icmp" and self.port is not None:
            raise FieldProblem(
                "port",
                f"{_shown(self.port)} is set, but icmp has no ports; remove port from this rule",
            )
        return self


def _tag_text(value: str) -> str:
    # AWS allows letters, numbers and spaces in any script, and _ . : / = + - @.
    if not all(c.isalnum() or c == " " or c in "_.:/=+-@" for c in value):
        raise ValueError("has characters AWS does not allow in tags (letters, digits, _.:/=+-@)")
    return value


def _tag_key(value: str) -> str:
    if value.lower().startswith("aws:"):
        raise ValueError("starts with aws:, which AWS reserves")
    if value in PROGRAM_TAGS:
        raise ValueError("is a tag the program sets itself; yours would be overridden")
    return value


def _tag_count(tags: dict[str, str]) -> dict[str, str]:
    if len(tags) > MAX_USER_TAGS:
        raise ValueError(
            f"has {len(tags)} tags, more than {MAX_USER_TAGS}: AWS allows {AWS_MAX_TAGS} per "
            f"resource and the program adds up to {PROGRAM_TAGS_PER_RESOURCE}"
        )
    return tags


TagKey = Annotated[
    str, Field(min_length=1, max_length=128), AfterValidator(_tag_text), AfterValidator(_tag_key)
]
TagValue = Annotated[str, Field(max_length=256), AfterValidator(_tag_text)]


class StackConfig(_Model):
    """All of the project's config for one stack."""

    tunnel: TunnelConfig
    sites: list[SiteConfig]
    topology: TopologyConfig = TopologyConfig()
    firewall: list[FirewallRule] = []
    # Extra tags for every resource (ephemeral test stacks add owner and expiry).
    tags: Annotated[dict[TagKey, TagValue], AfterValidator(_tag_count)] = {}
    # Where the tunnel alarms notify (e-mail addresses and/or an existing SNS topic);
    # without it they notify the stack's own topic, which nobody reads until subscribed.
    alerts: AlertsConfig | None = None
    # After both gateways applied their desired state, `pulumi up` checks on each that
    # the tunnel carries traffic (pulumi-command, SSM Run Command); false skips that.
    verify: bool = True
    # How long `pulumi up` waits for a gateway's apply or check (a first `up` waits for
    # the instance to boot and register with SSM).
    deadline_seconds: Annotated[int, Field(ge=60, le=3600)] = 900
    # The IAM role (or user) ARN that runs `pulumi up`: the gateway keys' KMS policies let
    # it write the keys. Default: the role of whoever runs the program, which differs
    # when a read-only role runs `pulumi preview`; set it to keep previews quiet.
    deployer: (
        Annotated[
            str,
            _matches(
                re.compile(r"^arn:aws[\w-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$"),
                "an IAM role or user ARN",
            ),
        ]
        | None
    ) = None
    # For a region AWS opened after the installed botocore was released.
    allow_unknown_regions: bool = False


# Late: core.alerts builds on this module's helpers.
from core.alerts import AlertsConfig, alerts_problems  # noqa: E402

StackConfig.model_rebuild()


def _key(loc: tuple[int | str, ...]) -> str:
    """('sites', 1, 'cidr') -> 'wg-site-to-site:sites[1].cidr'."""
    text = f"{PROJECT}:{clip(str(loc[0]), 40)}" if loc else PROJECT
    for part in loc[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{clip(str(part), 40)}"
    return text


def _shown(value: Any) -> str:
    """The value as a message echoes it: at most about 80 characters."""
    if isinstance(value, dict | list):
        return clip(json.dumps(value, default=str))
    return clip(repr(value) if isinstance(value, str) else str(value))


def _non_text_keys(value: Any, loc: tuple[int | str, ...]) -> list[str]:
    """One line per mapping key that is not text (`12:`, or `yes:`, which YAML reads as True)."""
    problems = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                problems += _non_text_keys(item, (*loc, key))
            else:
                kind = "a boolean" if isinstance(key, bool) else "a number"
                kind = kind if isinstance(key, int | float) else type(key).__name__
                problems.append(f"{_key(loc)}: key {_shown(key)} is {kind}, not text; quote it")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += _non_text_keys(item, (*loc, index))
    return problems


def _format_pydantic(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        loc = tuple(
            p
            for p in item["loc"]
            if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]"))
        )
        message = item["msg"].removeprefix("Value error, ")
        problem = item.get("ctx", {}).get("error")
        if isinstance(problem, FieldProblem):
            lines.append(f"{_key((*loc, problem.field_name))}: {problem.message}")
        elif item["type"] == "extra_forbidden":
            lines.append(f"{_key(loc)}: unknown key (value {_shown(item['input'])})")
        elif item["type"] == "missing":
            lines.append(f"{_key(loc)}: required key is missing")
        elif item["type"] == "value_error":
            # Our own messages read on from the value: "10.1.0.1/16 has host bits set".
            lines.append(f"{_key(loc)}: {_shown(item['input'])} {message}")
        else:
            lines.append(f"{_key(loc)}: {message} (got {_shown(item['input'])})")
    return lines


def _cross_checks(config: StackConfig) -> list[str]:
    problems = []
    sites = config.sites
    regions = frozenset() if config.allow_unknown_regions else known_regions()
    for i, site in enumerate(sites):
        if regions and site.region is not None and site.region not in regions:
            problems.append(
                f"{_key(('sites', i, 'region'))}: {site.region!r} is not an AWS region "
                f"(botocore knows {len(regions)}); for a region newer than botocore set "
                f"{PROJECT}:allowUnknownRegions: true"
            )
    if len(sites) < 2:
        problems.append(f"{_key(('sites',))}: at least two sites are needed, got {len(sites)}")
    if not any(site.is_aws for site in sites):
        problems.append(f"{_key(('sites',))}: every site is external; at least one must be in AWS")
    capacity = tunnel_capacity(config.tunnel.cidr)
    if len(sites) > capacity:
        problems.append(
            f"{_key(('tunnel', 'cidr'))}: {config.tunnel.cidr} holds {capacity} gateway "
            f"addresses, too few for {len(sites)} sites (one each); use a shorter prefix"
        )
    for i, site in enumerate(sites):
        for j in range(i):
            other = sites[j]
            if site.cidr.overlaps(other.cidr):
                problems.append(
                    f"{_key(('sites', i, 'cidr'))}: {site.cidr} overlaps site "
                    f"{other.name!r} ({other.cidr}); sites are routed without NAT"
                )
            if site.name == other.name:
                problems.append(f"{_key(('sites', i, 'name'))}: {site.name!r} is used twice")
            if (
                site.external is not None
                and other.external is not None
                and site.external.public_key == other.external.public_key
            ):
                problems.append(
                    f"{_key(('sites', i, 'external', 'publicKey'))}: the same key as site "
                    f"{other.name!r}; every site needs its own key"
                )
        if config.tunnel.cidr.overlaps(site.cidr):
            problems.append(
                f"{_key(('tunnel', 'cidr'))}: {config.tunnel.cidr} overlaps site "
                f"{site.name!r} ({site.cidr})"
            )
    hub = config.topology.hub
    names = {site.name: site for site in sites}
    if hub is not None and hub not in names:
        problems.append(
            f"{_key(('topology', 'hub'))}: {hub!r} is not a site (sites: {', '.join(names)})"
        )
    elif hub is not None and not names[hub].is_aws:
        problems.append(
            f"{_key(('topology', 'hub'))}: {hub!r} is outside AWS; the hub must be an AWS site"
        )
    elif hub is None:
        nated = [i for i, site in enumerate(sites) if site.external and site.external.behind_nat]
        if len(nated) > 1:
            first, second = sites[nated[0]].name, sites[nated[1]].name
            problems.append(
                f"{_key(('sites', nated[1], 'external'))}: {second!r} and {first!r} are both "
                "behind NAT (no publicIp), so in a mesh neither can reach the other; give one "
                f"a publicIp, or set {PROJECT}:topology.hub to an AWS site"
            )
    problems += alerts_problems(
        config.alerts,
        [site.region for site in sites if site.region is not None],
        config.tunnel.persistent_keepalive,
    )
    return problems


def load_stack_config(raw: Mapping[str, Any]) -> StackConfig:
    """Validates the project's config keys (without the `wg-site-to-site:` prefix).

    Raises ConfigError with every problem found, one line each.
    """
    problems = _non_text_keys(raw, ())
    if problems:
        raise ConfigError(problems)
    try:
        config = StackConfig.model_validate(dict(raw))
    except ValidationError as error:
        raise ConfigError(_format_pydantic(error)) from None
    problems = _cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def foreign_namespace_problems(keys: Iterable[Any]) -> list[str]:
    """One line per config key outside this project's, a provider's or Pulumi's namespace."""
    problems = []
    allowed = (PROJECT, *OTHER_NAMESPACES)
    for key in sorted(keys, key=str):
        if not isinstance(key, str):
            problems.append(f"config: key {_shown(key)} is not text; quote it")
            continue
        namespace, colon, _ = key.partition(":")
        shown = clip(key)
        if not colon:
            problems.append(
                f"{shown}: config key without a namespace; this project's keys are {PROJECT}:<key>"
            )
        elif namespace not in allowed:
            problems.append(
                f"{shown}: unknown namespace {clip(repr(namespace), 40)}; its keys would be "
                "ignored "
                f"(expected {PROJECT}: or one of {', '.join(n + ':' for n in OTHER_NAMESPACES)})"
            )
    return problems


def project_config_from_stack_file(document: Mapping[str, Any]) -> dict[str, Any]:
    """Picks `wg-site-to-site:*` keys out of a parsed Pulumi.<stack>.yaml.

    Keys of the providers' and Pulumi's namespaces (aws:region, ...) are left alone; a key
    in any other namespace is an error, since it can only be a typo of this project's.
    """
    config = document.get("config") or {}
    if not isinstance(config, Mapping):
        raise ConfigError(["config: must be a mapping of keys to values"])
    problems = foreign_namespace_problems(config.keys())
    if problems:
        raise ConfigError(problems)
    prefix = f"{PROJECT}:"
    return {key[len(prefix) :]: value for key, value in config.items() if key.startswith(prefix)}
