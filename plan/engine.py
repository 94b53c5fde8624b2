"""Runs this Pulumi program under the SDK's mock engine and records what it declares.

This is how the project looks at itself without a cloud account or the Pulumi CLI:
the unit tests, the offline plan (`make plan`) and the lab all start here, from a
stack's config file, and so all see the same resources and the same rendered user data.

The mocks stand in for AWS with stable, made-up values: resource ids derived from
names, Elastic IPs from the documentation range 203.0.113.0/24, and private keys
derived from the stack and resource name (or planted by a test). Nothing here talks to
a network.
"""

from __future__ import annotations

import base64
import functools
import graphlib
import hashlib
import ipaddress
import json
import logging
import os
import runpy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core import stack_file
from core.config import PROJECT, ConfigError, load_stack_config, project_config_from_stack_file
from plan import provider_model

REPO = Path(__file__).resolve().parent.parent
PROGRAM = REPO / "__main__.py"
STACKS = REPO / "stacks"
ACCOUNT = "123456789012"
# Elastic IPs come from here, in site order: 203.0.113.10, 203.0.113.20, ...
ELASTIC_IP_BASE = ipaddress.IPv4Address("203.0.113.0")


# Every shipped stack sets `pulumi:disable-default-providers: [aws]`, so a resource that
# forgot its site's provider fails instead of landing in the ambient AWS_REGION.
DISABLED_DEFAULT_PROVIDERS = ("aws",)
DISABLE_DEFAULT_PROVIDERS_KEY = "pulumi:disable-default-providers"


class PlanError(Exception):
    """The program could not be planned; the message is one line per problem."""


@dataclass(frozen=True)
class Secret:
    """An input the program marked secret. Printers must show it as `[secret]`."""

    # Kept out of repr, so a failing assertion or a debug print cannot show a key.
    value: Any = field(repr=False)


@dataclass(frozen=True)
class Unknown:
    """An input whose value is not known until the real deployment."""


@dataclass
class PlannedResource:
    urn: str
    type: str
    name: str
    parent: str | None
    custom: bool
    provider: str | None  # URN of the explicit provider, if any
    inputs: dict[str, Any]  # may hold Secret and Unknown values
    outputs: dict[str, Any]  # what the mocks answered (plain values)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    stack: str
    config: dict[str, Any]  # the project's keys from the stack file
    resources: list[PlannedResource]
    exports: dict[str, Any]
    # What the program logged as a warning (`pulumi up` shows these as diagnostics).
    notes: list[str] = field(default_factory=list)

    def by_type(self, type_: str) -> list[PlannedResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str) -> PlannedResource:
        found = [r for r in self.resources if r.type == type_ and r.name == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources of type {type_} named {name}")
        return found[0]

    def get(self, urn: str) -> PlannedResource:
        return next(r for r in self.resources if r.urn == urn)

    def destroy_order(self) -> list[str]:
        """URNs in an order `pulumi destroy` may delete them: dependents first.

        The engine deletes a resource only after everything that depends on it (inputs
        taken from it, `depends_on`, children) is gone; this is that order, made from
        the same dependencies the engine records.
        """
        graph: dict[str, set[str]] = {r.urn: set() for r in self.resources}
        for resource in self.resources:
            needed = set(resource.options.get("dependsOn", []))
            if resource.parent:
                needed.add(resource.parent)
            for urn in needed & graph.keys():
                # `urn` may go only once `resource` is gone.
                graph[urn].add(resource.urn)
        return list(graphlib.TopologicalSorter(graph).static_order())

    def region_of(self, resource: PlannedResource) -> str | None:
        """The region a resource is created in: its own `region`, else its provider's."""
        if isinstance(resource.inputs.get("region"), str):
            return str(resource.inputs["region"])
        if resource.provider:
            provider = self.get(resource.provider)
            region = provider.inputs.get("region")
            return region if isinstance(region, str) else None
        return None


def reveal(value: Any) -> Any:
    """The value with Secret markers removed (for consumers that need the real key)."""
    if isinstance(value, Secret):
        return reveal(value.value)
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def plan_private_key(stack: str, resource_name: str, generation: str = "1") -> str:
    """The made-up private key the mocks give a RandomBytes key: stable per stack, name and
    key generation (its keepers), so raising the generation makes a new key, as on AWS."""
    seed = f"{PROJECT}-plan-key:{stack}:{resource_name}"
    if generation != "1":
        seed += f":generation-{generation}"
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def _short_hash(*parts: str, length: int = 17) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:length]


_ID_PREFIX = {
    "aws:ec2/vpc:Vpc": "vpc",
    "aws:ec2/subnet:Subnet": "subnet",
    "aws:ec2/internetGateway:InternetGateway": "igw",
    "aws:ec2/routeTable:RouteTable": "rtb",
    "aws:ec2/routeTableAssociation:RouteTableAssociation": "rtbassoc",
    "aws:ec2/securityGroup:SecurityGroup": "sg",
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": "sgr",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": "sgr",
    "aws:ec2/instance:Instance": "i",
    "aws:ec2/eip:Eip": "eipalloc",
    "aws:ec2/eipAssociation:EipAssociation": "eipassoc",
    "aws:ec2/networkInterface:NetworkInterface": "eni",
}
# Invokes answered with a made-up Canonical image and the plan's own account; the caller
# is this role unless a test names another (`caller_role`: a preview role, a person).
_MOCK_CALLER_ROLE = "wg-site-to-site-deployer"


class _NoteTaker(logging.Handler):
    """Keeps the program's warnings, which `pulumi up` would print as diagnostics."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.append(record.getMessage())


class _Recorder:
    """Mock answers for resources and invokes, and the record of what was declared."""

    def __init__(
        self,
        stack: str,
        site_names: list[str],
        planted_keys: Mapping[str, str],
        caller_role: str = _MOCK_CALLER_ROLE,
        existing_subnets: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.stack = stack
        self.caller_role = caller_role
        self.site_names = site_names
        self.planted_keys = dict(planted_keys)
        self.existing_subnets = [dict(s) for s in existing_subnets]
        self.resources: list[PlannedResource] = []
        # Inputs of what was declared, by the id the mocks gave it: what the provider's
        # Read would find behind an id (an instance reads its interface's check).
        self.inputs_by_id: dict[str, dict[str, Any]] = {}
        self.provider_regions: dict[str, str] = {}
        self.lock = threading.Lock()
        self.disabled_default_providers: tuple[str, ...] = DISABLED_DEFAULT_PROVIDERS
        self.problems: list[str] = []

    def require_explicit_provider(self, what: str, token: str, provider: str) -> None:
        """What the engine does with `pulumi:disable-default-providers`: refuse."""
        package = token.split(":", 1)[0]
        if package in self.disabled_default_providers and not provider:
            with self.lock:
                self.problems.append(
                    f"{what} has no explicit provider, and the default {package} provider is "
                    f"disabled ({DISABLE_DEFAULT_PROVIDERS_KEY}): pass the site's provider"
                )

    def region_for_provider(self, provider_ref: str) -> str:
        # A provider reference is "<provider urn>::<provider id>".
        return self.provider_regions.get(provider_ref.rsplit("::", 1)[0], "us-east-1")

    def elastic_ip(self, name: str) -> str:
        for index, site in enumerate(self.site_names):
            if name == f"{site}-address":
                return str(ELASTIC_IP_BASE + 10 * (index + 1))
        return str(ELASTIC_IP_BASE + 200 + int(_short_hash(name, length=2), 16) % 50)

    def outputs_for(
        self, type_: str, name: str, inputs: dict[str, Any], region: str
    ) -> tuple[str, dict[str, Any]]:
        plain = reveal(inputs)
        prefix = _ID_PREFIX.get(type_, type_.rsplit(":", 1)[-1].lower())
        id_ = f"{prefix}-{_short_hash(self.stack, type_, name)}"
        service = type_.split(":")[1].split("/", maxsplit=1)[0]
        # The provider stores its schema defaults for what the program left unset.
        outputs = provider_model.with_defaults(type_, plain)
        outputs["arn"] = f"arn:aws:{service}:{region}:{ACCOUNT}:{prefix}/{id_}"
        if type_ == "random:index/randomBytes:RandomBytes":
            generation = str((plain.get("keepers") or {}).get("generation", "1"))
            key = self.planted_keys.get(name) or plan_private_key(self.stack, name, generation)
            outputs["base64"] = key
            outputs["hex"] = base64.b64decode(key).hex()
        elif type_ == "aws:ec2/eip:Eip":
            outputs["publicIp"] = self.elastic_ip(name)
            outputs["allocationId"] = id_
        elif type_ == provider_model.INSTANCE:
            problems = provider_model.conflicts(type_, plain)
            if problems:
                with self.lock:
                    self.problems += [f"{type_} {name}: {problem}" for problem in problems]
            attached = provider_model.device_zero_interface(plain)
            outputs["primaryNetworkInterfaceId"] = (
                attached[1] if attached else f"eni-{_short_hash(self.stack, name, 'eni')}"
            )
            outputs.setdefault("privateIp", "10.0.0.4")
            # What Read writes into state: the check of the interface at device 0.
            outputs.update(
                provider_model.read_back(type_, plain, lambda id_: self.inputs_by_id.get(id_, {}))
            )
        elif type_ == "aws:ec2/networkInterface:NetworkInterface":
            fixed = plain.get("privateIps") or []
            # An existing VPC's subnet: AWS picks the address; the mock says so plainly.
            outputs["privateIp"] = fixed[0] if fixed else "10.0.0.4"
        elif type_ == "aws:kms/key:Key":
            outputs["keyId"] = id_.removeprefix("key-")
            outputs["arn"] = f"arn:aws:kms:{region}:{ACCOUNT}:key/{outputs['keyId']}"
        elif type_ == "aws:ssm/parameter:Parameter":
            outputs["arn"] = (
                f"arn:aws:ssm:{region}:{ACCOUNT}:parameter{plain.get('name', '/' + name)}"
            )
        elif type_ == "aws:iam/role:Role":
            outputs["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{name}"
            outputs["name"] = f"{name}-{_short_hash(name, length=7)}"
        elif type_ == "aws:sns/topic:Topic":
            # As SNS forms it: arn:aws:sns:<region>:<account>:<topic name>.
            outputs["arn"] = f"arn:aws:sns:{region}:{ACCOUNT}:{plain.get('name', name)}"
        elif type_ == "aws:iam/instanceProfile:InstanceProfile":
            outputs["name"] = f"{name}-{_short_hash(name, length=7)}"
        with self.lock:
            self.inputs_by_id[id_] = plain
        return id_, outputs

    def call(self, token: str, args: dict[str, Any], provider: str) -> dict[str, Any]:
        self.require_explicit_provider(f"invoke {token}", token, provider)
        region = self.region_for_provider(provider)
        if token == "aws:ssm/getParameter:getParameter":
            ami = f"ami-{_short_hash(region, str(args.get('name')))}"
            return {"name": args.get("name"), "value": ami, "insecureValue": ami, "type": "String"}
        if token == "aws:ec2/getAmi:getAmi":
            name = str(args["filters"][0]["values"][0])
            return {"id": f"ami-{_short_hash(region, name)}", "name": name, "imageId": ""}
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT,
                "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{self.caller_role}/plan",
                "userId": "AROAPLANPLANPLAN:plan",
                "id": ACCOUNT,
            }
        if token == "aws:iam/getSessionContext:getSessionContext":
            return {
                "arn": args["arn"],
                "issuerArn": f"arn:aws:iam::{ACCOUNT}:role/{self.caller_role}",
                "issuerId": "AROAPLANPLANPLAN",
                "issuerName": self.caller_role,
                "sessionName": "plan",
                "id": args["arn"],
            }
        if token.startswith("aws:ec2/"):
            return self.ec2_call(token, args, region)
        raise PlanError(f"the offline plan has no stand-in for the invoke {token}")

    def ec2_call(self, token: str, args: dict[str, Any], region: str) -> dict[str, Any]:
        """EC2's describe calls, answered as AWS would (plan.provider_model)."""
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            wanted = [str(v) for f in args.get("filters") or [] for v in f["values"]]
            offered = [
                (zone, type_)
                for type_ in wanted
                for zone in provider_model.zones_offering(region, type_)
            ]
            return {
                "locations": [zone for zone, _ in offered],
                "locationTypes": ["availability-zone"] * len(offered),
                "instanceTypes": [type_ for _, type_ in offered],
            }
        if token == "aws:ec2/getSubnets:getSubnets":
            found = [
                s for s in self.existing_subnets if provider_model.subnet_matches(s, region, args)
            ]
            return {"ids": [s["id"] for s in found], "filters": args.get("filters"), "id": region}
        if token == "aws:ec2/getSubnet:getSubnet":
            for subnet in self.existing_subnets:
                if subnet["id"] == args.get("id"):
                    return dict(subnet)
        raise PlanError(f"the offline plan has no stand-in for the invoke {token}")


def _to_marked(value: Any) -> Any:
    """Turns the SDK's wire forms for secrets and unknowns into Secret and Unknown."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        return Secret(_to_marked(rpc.unwrap_rpc_secret(value)))
    if type(value).__name__ == "Unknown" or value == rpc.UNKNOWN:
        return Unknown()
    if isinstance(value, dict):
        return {k: _to_marked(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_to_marked(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the wire has only doubles; ports and sizes are whole numbers
    return value


def _outputs_marked(
    id_: str, registered: Any, inputs: dict[str, Any], request: Any
) -> dict[str, Any]:
    """What the mocks answered, with the values the engine would keep secret marked so."""
    secret = {key for key, value in inputs.items() if isinstance(value, Secret)}
    secret |= set(request.additionalSecretOutputs)
    state = dict(registered.state) if registered else {}
    return {"id": id_, **{k: Secret(v) if k in secret else v for k, v in state.items()}}


def _alias_urns(urn: str, request: Any) -> list[str]:
    """The URNs a resource's aliases name (`pulumi.Alias(name=...)`, or a whole URN):
    the engine treats a resource found under one of them as this one, renamed."""
    found = []
    for alias in getattr(request, "aliases", []):
        if alias.HasField("urn") and alias.urn:
            found.append(alias.urn)
        elif alias.HasField("spec") and alias.spec.name and not alias.spec.type:
            found.append(urn.rsplit("::", 1)[0] + "::" + alias.spec.name)
    found += [u for u in getattr(request, "aliasURNs", []) if u not in found]
    return sorted(found)


def read_stack_file(stack: str, stacks_dir: Path = STACKS) -> dict[str, Any]:
    """The project's config keys from stacks/Pulumi.<stack>.yaml."""
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = sorted(
            p.name.removeprefix("Pulumi.").removesuffix(".yaml")
            for p in stacks_dir.glob("Pulumi.*.yaml")
        )
        choices = ", ".join(known) or "none"
        raise PlanError(f"no config file for stack {stack!r}: {path} does not exist ({choices})")
    try:
        # Strict: a key given twice or a key that is not text is refused (core/stack_file).
        document = stack_file.parse(path.read_text()) or {}
    except stack_file.StackFileError as error:
        raise PlanError("\n".join(f"{path}: {problem}" for problem in error.problems)) from None
    if not isinstance(document, dict):
        raise PlanError(f"{path}: not a YAML mapping")
    try:
        return project_config_from_stack_file(document)
    except ConfigError as error:
        raise PlanError(f"{path}: {error}") from None


def run_program(
    stack: str,
    config: Mapping[str, Any],
    *,
    preview: bool = True,
    planted_keys: Mapping[str, str] | None = None,
    program: Path = PROGRAM,
    disabled_default_providers: tuple[str, ...] = DISABLED_DEFAULT_PROVIDERS,
    caller_role: str = _MOCK_CALLER_ROLE,
    existing_subnets: Sequence[Mapping[str, Any]] = (),
) -> Plan:
    """Runs the program for `stack` with `config` (the project's keys, unprefixed).

    `planted_keys` maps a RandomBytes resource name to the private key the mocks return
    for it, so tests can look for a known key in every output. `caller_role` is the IAM
    role getCallerIdentity and getSessionContext answer with (who runs the program).
    `existing_subnets` are subnets the stand-in account already has (each as getSubnet
    answers it: id, region, availabilityZone, cidrBlock, tags), for the invokes that look
    for them; by default the account has none, as before a stack's first `pulumi up`.
    """
    import pulumi
    from pulumi.runtime import mocks as pulumi_mocks
    from pulumi.runtime import settings as pulumi_settings
    from pulumi.runtime.config import set_all_config
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    # An Output used where a string belongs must fail, not print a warning string.
    os.environ["PULUMI_ERROR_OUTPUT_STRING"] = "true"

    # Fail the same way the program would, before any mock is set up.
    try:
        validated = load_stack_config(config)
        site_names = [site.name for site in validated.sites]
    except ConfigError as error:
        raise PlanError(
            "invalid stack config:\n" + "\n".join(f"  {p}" for p in error.problems)
        ) from None

    recorder = _Recorder(stack, site_names, planted_keys or {}, caller_role, existing_subnets)
    recorder.disabled_default_providers = disabled_default_providers

    class Mocks(pulumi_mocks.Mocks):
        def new_resource(
            self, args: pulumi_mocks.MockResourceArgs
        ) -> tuple[str | None, dict[str, Any]]:
            region = "us-east-1"
            if args.typ == "pulumi:providers:aws":
                region = str(reveal(args.inputs).get("region", region))
            elif args.provider:
                region = recorder.region_for_provider(args.provider)
            return recorder.outputs_for(args.typ, args.name, args.inputs, region)

        def call(
            self, args: pulumi_mocks.MockCallArgs
        ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
            return recorder.call(args.token, reveal(_to_marked(args.args)), args.provider), []

    class Monitor(pulumi_mocks.MockMonitor):
        def RegisterResource(self, request: Any) -> Any:
            response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
            if request.type == "pulumi:pulumi:Stack":
                return response
            from pulumi.runtime import rpc

            if request.custom and not request.type.startswith("pulumi:providers:"):
                recorder.require_explicit_provider(
                    f"{request.type} {request.name}", request.type, request.provider
                )
            inputs = _to_marked(rpc.deserialize_properties(request.object, keep_unknowns=True))
            registered = self.resources.get(response.urn)
            with recorder.lock:
                if request.type.startswith("pulumi:providers:"):
                    region = reveal(inputs).get("region")
                    if isinstance(region, str):
                        recorder.provider_regions[response.urn] = region
                recorder.resources.append(
                    PlannedResource(
                        urn=response.urn,
                        type=request.type,
                        name=request.name,
                        parent=request.parent or None,
                        custom=bool(request.custom),
                        provider=request.provider.rsplit("::", 1)[0] if request.provider else None,
                        inputs=inputs,
                        outputs=_outputs_marked(response.id, registered, inputs, request),
                        options={
                            "dependsOn": sorted(request.dependencies),
                            "ignoreChanges": sorted(request.ignoreChanges),
                            # The SDK adds a type's own secret outputs (a Parameter's
                            # `value`) to those the program names: each once.
                            "additionalSecretOutputs": sorted(set(request.additionalSecretOutputs)),
                            "replaceOnChanges": sorted(request.replaceOnChanges),
                            "deleteBeforeReplace": bool(request.deleteBeforeReplace),
                            # The URNs it had under its old names: the diff matches them.
                            "aliases": _alias_urns(response.urn, request),
                        },
                    )
                )
            return response

    flat_config = {
        f"{PROJECT}:{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in config.items()
    }
    pulumi_settings.reset_options(project=PROJECT, stack=stack, preview=preview)
    set_all_config(flat_config, [])
    notes = _NoteTaker()
    logger = logging.Logger(f"{PROJECT}-plan")
    logger.addHandler(notes)
    pulumi_mocks.set_mocks(
        Mocks(),
        project=PROJECT,
        stack=stack,
        preview=preview,
        logger=logger,
        monitor=Monitor(Mocks()),
    )
    exports: dict[str, Any] = {}

    def program_and_exports() -> None:
        runpy.run_path(str(program), run_name="__main__")
        root = pulumi_settings.get_root_resource()
        outputs = getattr(root, "outputs", {})
        for name, value in outputs.items():
            pulumi.Output.from_input(value).apply(functools.partial(exports.__setitem__, name))

    try:
        _sync_await(run_pulumi_func(program_and_exports))
    except pulumi.RunError as error:
        raise PlanError(str(error)) from None
    finally:
        pulumi_settings.reset_options()
    if recorder.problems:
        raise PlanError("\n".join(sorted(set(recorder.problems))))
    return Plan(
        stack=stack,
        config=dict(config),
        resources=recorder.resources,
        exports=exports,
        notes=sorted(set(notes.notes)),
    )


def plan_stack(
    stack: str, *, preview: bool = True, stacks_dir: Path = STACKS, **kwargs: Any
) -> Plan:
    """Plans stacks/Pulumi.<stack>.yaml."""
    config = read_stack_file(stack, stacks_dir)
    kwargs.setdefault("disabled_default_providers", disabled_default_providers(stack, stacks_dir))
    return run_program(stack, config, preview=preview, **kwargs)


def disabled_default_providers(stack: str, stacks_dir: Path = STACKS) -> tuple[str, ...]:
    """The packages whose default provider the stack file disables."""
    document = stack_file.parse((stacks_dir / f"Pulumi.{stack}.yaml").read_text()) or {}
    config = document.get("config") if isinstance(document, dict) else None
    value = config.get(DISABLE_DEFAULT_PROVIDERS_KEY) if isinstance(config, dict) else None
    if isinstance(value, str):
        # The CLI also takes the list as JSON text (`pulumi config set --path`).
        value = yaml.safe_load(value)
    return tuple(str(package) for package in value) if isinstance(value, list) else ()
