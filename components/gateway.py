"""A site's WireGuard gateway: its interface, the instance, who may reach it, its key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_command as command

from components.tunnel_health import gateway_metrics_policy
from core import health
from core.facts import CANONICAL_OWNER, GatewayFacts
from core.render import (
    FailoverInputs,
    PeerEndpoint,
    desired_state_tier,
    render_bootstrap,
    render_desired_state,
)

# The deployer side of Run Command, run from the project directory by pulumi-command with
# the project's own virtualenv (Pulumi.yaml: virtualenv .venv).
DEPLOYER = ".venv/bin/python -m deployer"
# What the SSM agent needs to register and take Run Command, without the managed policy
# AmazonSSMManagedInstanceCore, whose ssm:GetParameter on * would let each gateway read
# the other's key (https://docs.aws.amazon.com/systems-manager/latest/userguide/
# setup-instance-permissions.html lists these actions).
SSM_AGENT_ACTIONS = [
    "ssm:UpdateInstanceInformation",
    "ssm:ListInstanceAssociations",
    "ssm:DescribeInstanceProperties",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
]

# The statement that grants them, for every instance Run Command reaches.
SSM_AGENT_STATEMENT = {
    "Sid": "SsmAgentForRunCommand",
    "Effect": "Allow",
    "Action": SSM_AGENT_ACTIONS,
    "Resource": "*",
}

EC2_ASSUME_ROLE = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)

# What the account may do with a gateway's key: administer it, never use it. The
# actions are listed one by one, for a symmetric key of SSM (AWS's "key administrators"
# statement uses wildcards, and `kms:Create*` includes kms:CreateGrant, with which any
# IAM principal allowed it could grant itself Decrypt:
# https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-default.html#key-policy-default-allow-administrators,
# action names from https://docs.aws.amazon.com/service-authorization/latest/reference/list_kms.html).
# Not here: CreateGrant, every cryptographic action (Decrypt, Encrypt, ReEncrypt*,
# GenerateDataKey*), and actions of keys this is not (imported material, asymmetric,
# multi-Region). SSM Parameter Store needs no grant (it calls Encrypt and Decrypt as the
# caller: https://docs.aws.amazon.com/kms/latest/developerguide/services-parameter-store.html).
#
# Who can decrypt a gateway's key, then: its gateway's role, through SSM, for its own
# parameters (the encryption context); the deployer, through SSM (it holds the keys in
# Pulumi state anyway); nobody else, since this statement delegates no cryptographic
# action to IAM and there are no grants. What remains for an administrator the account's
# IAM policies allow kms:PutKeyPolicy: rewrite this policy to give itself Decrypt. That
# is a management event CloudTrail records (PutKeyPolicy); `pulumi preview --refresh`
# shows the changed policy as drift, and `pulumi up --refresh` puts this one back.
KEY_ADMINISTRATION_ACTIONS = [
    "kms:CreateAlias",
    "kms:DescribeKey",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:ListGrants",
    "kms:ListKeyPolicies",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
    "kms:RevokeGrant",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:DeleteAlias",
    "kms:RotateKeyOnDemand",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
]
# The deployer writes the SecureString (Encrypt; GenerateDataKey for the advanced tier)
# and the provider reads it back with decryption on every refresh
# (terraform-provider-aws internal/service/ssm/parameter.go: WithDecryption: true). The
# deployer holds the key in Pulumi state anyway, so this exposes nothing new.
DEPLOYER_KEY_ACTIONS = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"]


def tunnel_rule_name(site: str, peer: str, index: int = 0) -> str:
    """The gateway security group's rule admitting `peer`'s index-th source on the tunnel
    port (the port policy finds an office's rules by these names)."""
    return f"{site}-tunnel-from-{peer}" + (f"-{index}" if index else "")


@dataclass
class PeerInputs:
    """What a gateway needs of one peer: its key, the address to dial, who may send."""

    public_key: pulumi.Input[str]
    public_ip: pulumi.Input[str] | None
    """An AWS peer's Elastic IP or an office's publicIp; None for a NATed office."""
    sources: list[pulumi.Input[str]]
    """The CIDRs the tunnel port admits for this peer: its Elastic IP /32, or an office's
    publicIp /32 and/or sourceCidr."""
    preshared_key: pulumi.Output[str] | None = None
    """The pair's pre-shared key (a secret), or None when the stack turns it off."""


@dataclass
class WireGuardGatewayArgs:
    facts: GatewayFacts
    """This gateway's addresses, peer, rules and paths, computed by the core."""
    vpc_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    """The public subnet the gateway's interface sits in."""
    route_table_ids: list[pulumi.Output[str]]
    """Every route table of the site: each gets a route to every other site via the
    gateway."""
    remote_sites: dict[str, str]
    """Every other site's name -> CIDR (facts.remote_cidrs, named): the routes' targets."""
    private_key: pulumi.Output[str]
    """This gateway's private key (a secret); it goes to SSM, never into user data."""
    allocation_id: pulumi.Input[str]
    """This gateway's Elastic IP, allocated beforehand."""
    peers: dict[str, PeerInputs]
    """Per peer (facts.peers, by site name): key, endpoint, admitted sources, PSK."""
    internet_path: list[pulumi.Resource]
    """The internet gateway, the public subnet's default route and its association: the
    Elastic IP and the instance need them at boot, and must go before them on destroy."""
    workload_security_group_id: pulumi.Input[str]
    """The site's workload group: it learns to admit this gateway's path-MTU messages."""
    deployer_arn: pulumi.Input[str]
    """The IAM principal that runs `pulumi up`: it may encrypt the key through SSM."""
    account_id: pulumi.Input[str]
    partition: pulumi.Input[str]
    """Where the key parameter's ARN lives, for the key policy written before it exists."""
    deadline_seconds: int
    """How long `pulumi up` waits for this gateway's apply through Run Command."""
    tags: dict[str, str]
    """Tags for every resource."""
    public_ip: pulumi.Input[str] | None = None
    """This site's Elastic IP address (two gateways: the failover section names it)."""
    second_subnet_id: pulumi.Input[str] | None = None
    """Two gateways: the second gateway's public subnet (another zone)."""


# A site with two gateways: gateway 0 keeps the names a one-gateway site has, gateway 1's
# resources are the same names with this suffix.
SECOND_GATEWAY_SUFFIX = "-2"


def gateway_suffix(index: int) -> str:
    """The suffix of gateway `index`'s resource names: none for 0, `-2` for 1."""
    return SECOND_GATEWAY_SUFFIX if index else ""


class WireGuardGateway(pulumi.ComponentResource):
    """The gateway: a network interface that outlives instances, and the instance on it.

    Routes, the Elastic IP and the private address belong to the interface, so replacing
    the instance (a new image, another type) changes none of them.

    A site with two gateways (`gateways: 2`, README "High availability") gets two of
    each, in two zones, sharing one identity (role, key, parameters, security group); the
    gateways move the Elastic IP and the routes between them, and an image roll replaces
    the standby first (drain, replace, apply; then the other).
    """

    instance_id: pulumi.Output[str]
    """The (first) gateway's instance."""
    instance_ids: list[pulumi.Output[str]]
    """Every gateway's instance, gateway 0 first."""
    network_interface_id: pulumi.Output[str]
    network_interface_ids: list[pulumi.Output[str]]
    """Every gateway's interface, gateway 0 first."""
    security_group_id: pulumi.Output[str]
    kms_key_arn: pulumi.Output[str]
    wg_config: pulumi.Output[str]
    desired_state_digest: pulumi.Output[str]
    apply: command.local.Command
    """The (first) gateway's apply."""
    applies: list[command.local.Command]
    """Every gateway's apply, gateway 0 first."""

    def __init__(
        self, name: str, args: WireGuardGatewayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("wg-site-to-site:gateway:WireGuardGateway", name, None, opts)
        self._site = name
        self._inputs = args
        self._child = pulumi.ResourceOptions(parent=self)

        security_group = self._security_group()
        count = args.facts.gateway_count
        interfaces = [self._network_interface(security_group, index) for index in range(count)]
        interface = interfaces[0]
        if args.facts.highly_available:
            # NO EipAssociation: the gateways associate the Elastic IP themselves (the
            # active one; AssociateAddress with AllowReassociation at each takeover). One
            # owned by Pulumi would be found gone (or on the other interface) by the next
            # `pulumi up --refresh` and put back on gateway 0, possibly the dead one: the
            # "Pulumi drift trap" of ../shared/reference/topologies-and-failover.md. A site
            # going from one gateway to two loses its association at the end of that `up`,
            # after drain-0 has handed the address to gateway 1: the provider's delete
            # (DisassociateAddress by association id) finds that association gone and
            # succeeds (terraform-provider-aws internal/service/ec2/ec2_eip_association.go,
            # resourceEIPAssociationDelete: InvalidAssociationID.NotFound returns no error).
            self._routes_to_peer(interface, follow_failover=True)
            self._frag_needed_to_workloads(interfaces)
            parameters, role_policy, profile = self._desired_state_and_keys(interfaces)
            failover_policy = self._failover_rights(interfaces)
            instances, applies = self._rolling_pair(
                interfaces, profile, [*parameters, role_policy, failover_policy]
            )
            instance, self.apply = instances[0], applies[0]
            self.applies = applies
        else:
            address = aws.ec2.EipAssociation(
                f"{name}-address",
                allocation_id=args.allocation_id,
                network_interface_id=interface.id,
                # An Elastic IP can only be associated in a VPC attached to an internet
                # gateway; on destroy it must let go before the internet gateway detaches
                # ("has some mapped public address(es)").
                opts=pulumi.ResourceOptions(parent=self, depends_on=args.internet_path),
            )
            self._routes_to_peer(interface)
            self._frag_needed_to_workloads(interfaces)
            parameters, role_policy, profile = self._desired_state_and_keys(interfaces)
            instance = self._instance(
                interface,
                profile,
                # cloud-init needs the internet (packages, SSM) the moment it starts.
                depends_on=[*parameters, role_policy, address, *args.internet_path],
            )
            self.apply = self._apply_in_place(instance, parameters)
            self.applies = [self.apply]
            instances = [instance]

        self.instance_id = instance.id
        self.instance_ids = [each.id for each in instances]
        self.network_interface_id = interface.id
        self.network_interface_ids = [each.id for each in interfaces]
        self.security_group_id = security_group.id
        self.register_outputs(
            {
                "instanceId": self.instance_id,
                "networkInterfaceId": self.network_interface_id,
                "securityGroupId": self.security_group_id,
                "kmsKeyArn": self.kms_key_arn,
                "wgConfig": self.wg_config,
            }
        )

    def _tags(self, role: str) -> dict[str, str]:
        return {**self._inputs.tags, "Name": f"{self._site}-{role}"}

    def _renamed(self, old_name: str | None) -> pulumi.ResourceOptions:
        """A child's options; `old_name` is its name in a two-site stack before N sites
        (its first peer's resource): the alias keeps it the same resource in state."""
        if old_name is None:
            return self._child
        return pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(name=old_name)])

    def _security_group(self) -> aws.ec2.SecurityGroup:
        name, args, facts = self._site, self._inputs, self._inputs.facts
        group = aws.ec2.SecurityGroup(
            f"{name}-gateway",
            vpc_id=args.vpc_id,
            description=f"WireGuard gateway of site {facts.name}: tunnel from its peer only",
            tags=self._tags("gateway"),
            opts=self._child,
        )
        # Only the peers' addresses may reach the tunnel port (an AWS peer's Elastic IP,
        # an office's publicIp or sourceCidr); the rest of the internet sees a closed port
        # (WireGuard would not answer it anyway). A hub's spoke has one peer, the hub.
        for position, peer in enumerate(facts.peers):
            sources = args.peers[peer.name].sources
            for index, source in enumerate(sources):
                rule = tunnel_rule_name(name, peer.name, index)
                aws.vpc.SecurityGroupIngressRule(
                    rule,
                    security_group_id=group.id,
                    description=f"WireGuard from the {peer.name} gateway",
                    ip_protocol="udp",
                    from_port=facts.listen_port,
                    to_port=facts.listen_port,
                    cidr_ipv4=source,
                    tags=self._tags(rule.removeprefix(f"{name}-")),
                    opts=self._renamed(
                        f"{name}-tunnel-from-peer" if position == 0 and index == 0 else None
                    ),
                )
        # Forwarded packets keep the site hosts' own addresses, so the gateway must
        # accept anything from its own site to route it into the tunnel.
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-from-site",
            security_group_id=group.id,
            description=f"traffic from site {facts.name} to be routed to the other sites",
            ip_protocol="-1",
            cidr_ipv4=str(facts.site.cidr),
            tags=self._tags("from-site"),
            opts=self._child,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-egress",
            security_group_id=group.id,
            description="tunnel packets to the peers, packages, SSM",
            ip_protocol="-1",
            cidr_ipv4="0.0.0.0/0",
            tags=self._tags("egress"),
            opts=self._child,
        )
        return group

    def _network_interface(
        self, security_group: aws.ec2.SecurityGroup, index: int = 0
    ) -> aws.ec2.NetworkInterface:
        facts, suffix = self._inputs.facts, gateway_suffix(index)
        # In a VPC the project lays out, the address is fixed (the first host of the
        # public subnet: facts.gateway_private_ips, one per gateway, each in its own
        # public subnet); in an existing one AWS picks it, once, for the interface.
        fixed = None if facts.site.uses_existing_vpc else [str(facts.gateway_private_ips[index])]
        subnet_id = self._inputs.subnet_id if index == 0 else self._inputs.second_subnet_id
        assert subnet_id is not None, "a second gateway needs the second public subnet"
        # Gateway 0's is a one-gateway site's, so that going to two gateways keeps it.
        which = ", second gateway" if index else ""
        return aws.ec2.NetworkInterface(
            f"{self._site}-gateway{suffix}",
            subnet_id=subnet_id,
            private_ips=fixed,
            security_groups=[security_group.id],
            # It forwards packets for other hosts; with the check on, the VPC drops them.
            source_dest_check=False,
            description=f"WireGuard gateway of site {facts.name}{which} (outlives its instances)",
            tags=self._tags(f"gateway{suffix}"),
            opts=self._child,
        )

    def _frag_needed_to_workloads(self, interfaces: list[aws.ec2.NetworkInterface]) -> None:
        for index, interface in enumerate(interfaces):
            self._frag_needed_from(interface, index)

    def _frag_needed_from(self, interface: aws.ec2.NetworkInterface, index: int) -> None:
        # A workload sending DF packets bigger than the tunnel MTU learns the path MTU
        # from this gateway's ICMP "fragmentation needed"; security groups admit it only
        # with an explicit rule ("Path MTU Discovery", EC2 user guide:
        # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/network_mtu.html#path_mtu_discovery).
        source = interface.private_ip.apply(lambda ip: f"{ip}/32")
        for kind, icmp_type, icmp_code, what in (
            ("frag-needed-from-gateway", 3, 4, "path MTU discovery: fragmentation needed"),
            # A trace through the tunnel: the gateway's own hop.
            ("time-exceeded-from-gateway", 11, -1, "time exceeded"),
        ):
            # With two gateways, either may be the active one that sends these.
            role = kind + gateway_suffix(index)
            aws.vpc.SecurityGroupIngressRule(
                f"{self._site}-{role}",
                security_group_id=self._inputs.workload_security_group_id,
                description=f"{what} from the gateway" + (f" {index}" if index else ""),
                ip_protocol="icmp",
                from_port=icmp_type,
                to_port=icmp_code,
                cidr_ipv4=source,
                tags=self._tags(role),
                opts=self._child,
            )

    def _arn(self, service: str, resource: pulumi.Input[str]) -> pulumi.Output[str]:
        """An ARN of this site's region and account (known before the resource exists)."""
        args = self._inputs
        return pulumi.Output.format(
            "arn:{0}:{1}:{2}:{3}:{4}",
            args.partition,
            service,
            args.facts.site.aws_region,
            args.account_id,
            resource,
        )

    def _parameter_arn(self, name: str) -> pulumi.Output[str]:
        return self._arn("ssm", f"parameter{name}")

    def _desired_state_and_keys(
        self, interfaces: list[aws.ec2.NetworkInterface]
    ) -> tuple[list[aws.ssm.Parameter], aws.iam.RolePolicy, aws.iam.InstanceProfile]:
        """What the gateway converges to, in SSM, readable by this gateway's role only.

        With two gateways both read the same parameters with the same role: one identity.
        """
        name, args, facts = self._site, self._inputs, self._inputs.facts
        self._role = role = aws.iam.Role(
            f"{name}-gateway",
            assume_role_policy=EC2_ASSUME_ROLE,
            description=f"wg-site-to-site gateway of site {facts.name}",
            tags=self._tags("gateway"),
            opts=self._child,
        )
        secret_arns = [self._parameter_arn(facts.key_parameter_name)]
        if facts.preshared_key:
            secret_arns += [self._parameter_arn(p.psk_parameter_name) for p in facts.peers]
        key = aws.kms.Key(
            f"{name}-wireguard-key",
            description=f"wg-site-to-site: WireGuard keys of the {facts.name} gateway",
            enable_key_rotation=True,
            deletion_window_in_days=7,
            policy=pulumi.Output.json_dumps(_key_policy(args, role.arn, secret_arns)),
            tags=self._tags("wireguard-key"),
            opts=self._child,
        )
        self.kms_key_arn = key.arn
        secrets: list[tuple[str, str, pulumi.Output[str], str, str, str | None]] = [
            (
                f"{name}-wireguard-key",
                facts.key_parameter_name,
                args.private_key,
                f"WireGuard private key of the {facts.name} gateway",
                "wireguard-key",
                None,
            ),
        ]
        for position, peer in enumerate(facts.peers):
            # One key per pair, each side's copy in its own region under its own KMS key.
            preshared_key = args.peers[peer.name].preshared_key
            if preshared_key is not None:
                secrets.append(
                    (
                        f"{name}-preshared-key-{peer.name}",
                        peer.psk_parameter_name,
                        preshared_key,
                        f"WireGuard pre-shared key of {facts.name} and {peer.name}",
                        f"preshared-key-{peer.name}",
                        f"{name}-preshared-key" if position == 0 else None,
                    )
                )
        parameters = [
            aws.ssm.Parameter(
                resource_name,
                name=parameter_name,
                type="SecureString",
                key_id=key.arn,
                value=value,
                description=description,
                tags=self._tags(role),
                opts=pulumi.ResourceOptions.merge(
                    self._renamed(old_name),
                    pulumi.ResourceOptions(additional_secret_outputs=["value"]),
                ),
            )
            for resource_name, parameter_name, value, description, role, old_name in secrets
        ]
        endpoints = pulumi.Output.all(
            **{
                peer: pulumi.Output.all(inputs.public_key, inputs.public_ip)
                for peer, inputs in args.peers.items()
            }
        ).apply(
            lambda known: {
                peer: PeerEndpoint(public_key=key_ip[0], public_ip=key_ip[1])
                for peer, key_ip in known.items()
            }
        )
        if facts.highly_available:
            failover = self._failover_inputs(interfaces)
            desired = pulumi.Output.all(endpoints, failover).apply(
                lambda parts: render_desired_state(facts, parts[0], failover=parts[1])
            )
        else:
            desired = endpoints.apply(lambda known: render_desired_state(facts, known))
        self.wg_config = desired.apply(lambda state: state.wg_config)
        self.desired_state_digest = desired.apply(lambda state: state.digest)
        # A plain String: it holds no secret, and a reviewer sees the change in the diff.
        # Its size is bounded before anything exists: the free standard tier holds 4 KB,
        # an advanced parameter (priced monthly) 8 KB, for a long firewall.
        parameters.append(
            aws.ssm.Parameter(
                f"{name}-desired-state",
                name=facts.desired_state_parameter_name,
                type="String",
                tier=desired_state_tier(facts),
                # insecure_value: the provider would mark `value` secret and hide it.
                insecure_value=desired.apply(lambda state: state.document),
                description=f"wg-quick config and firewall of the {facts.name} gateway",
                tags=self._tags("desired-state"),
                opts=self._child,
            )
        )
        # Exactly its own parameter ARNs, no wildcard: parameter paths are hierarchical,
        # and a grant on a prefix would reach every parameter below it.
        policy = aws.iam.RolePolicy(
            f"{name}-read-own-parameters",
            role=role.id,
            policy=pulumi.Output.json_dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "ReadOwnParameters",
                            "Effect": "Allow",
                            "Action": "ssm:GetParameter",
                            "Resource": [parameter.arn for parameter in parameters],
                        },
                        SSM_AGENT_STATEMENT,
                    ],
                }
            ),
            opts=self._child,
        )
        # The health probe's metrics, into the project's namespace only.
        aws.iam.RolePolicy(
            f"{name}-put-tunnel-metrics",
            role=role.id,
            policy=gateway_metrics_policy(),
            opts=self._child,
        )
        # The probe and the check read the interface's source/dest check (read-only).
        aws.iam.RolePolicy(
            f"{name}-read-source-dest-check",
            role=role.id,
            policy=json.dumps(health.source_dest_check_policy()),
            opts=self._child,
        )
        profile = aws.iam.InstanceProfile(
            f"{name}-gateway", role=role.name, tags=self._tags("gateway"), opts=self._child
        )
        self._parameters = parameters
        return parameters, policy, profile

    def _apply_in_place(
        self, instance: aws.ec2.Instance, parameters: list[aws.ssm.Parameter], index: int = 0
    ) -> command.local.Command:
        """Sends the apply to the gateway with Run Command whenever its desired state changes.

        The triggers are a digest of the desired state and the key generation, never a
        secret: a change replaces this resource, which runs the apply again. With two
        gateways the instance id is one too: a replaced gateway is applied again, so the
        next step of the rolling replacement (the other gateway's drain) waits until the
        new one is up and applied.
        """
        facts, args = self._inputs.facts, self._inputs
        triggers: list[pulumi.Input[str]] = [
            self.desired_state_digest,
            f"key-generation={facts.key_generation:d}",
            f"preshared-key={'on' if facts.preshared_key else 'off'}",
        ]
        if facts.highly_available:
            triggers.append(instance.id)
        return command.local.Command(
            f"{self._site}-apply{gateway_suffix(index)}",
            create=f"{DEPLOYER} apply",
            environment={
                "WG_S2S_SITE": facts.name,
                "WG_S2S_REGION": facts.site.aws_region,
                "WG_S2S_INSTANCE_ID": instance.id,
                "WG_S2S_DEADLINE_SECONDS": str(args.deadline_seconds),
            },
            # Plain `name=value` text: the generation as a number, the pre-shared key as
            # on|off (never a Python repr such as `True`).
            triggers=triggers,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[instance, *parameters]),
        )

    def _image(self) -> pulumi.Output[str]:
        """The AMI: the pinned build for this architecture, or Canonical's current one."""
        facts, invoke = self._inputs.facts, pulumi.InvokeOutputOptions(parent=self)
        if facts.image_name is not None:
            # Name and owner identify one image per region; the architecture is part of
            # the name, so a t4g <-> t3 change picks the matching build.
            pinned = aws.ec2.get_ami_output(
                owners=[CANONICAL_OWNER],
                filters=[aws.ec2.GetAmiFilterArgs(name="name", values=[facts.image_name])],
                most_recent=True,
                opts=invoke,
            )
            return pinned.id
        current = aws.ssm.get_parameter_output(name=facts.ami_parameter, opts=invoke)

        def announce(ami: str) -> str:
            pulumi.log.warn(
                f"site {facts.name}: image not pinned; using Canonical's current Ubuntu "
                f"{facts.architecture} image {ami} (`make pin STACK=...` pins it)",
                resource=self,
            )
            return ami

        # Canonical publishes the AMI id as a plain (not secret) public parameter.
        return current.insecure_value.apply(announce)

    def _instance(
        self,
        interface: aws.ec2.NetworkInterface,
        profile: aws.iam.InstanceProfile,
        depends_on: list[pulumi.Resource],
        index: int = 0,
        image: pulumi.Output[str] | None = None,
    ) -> aws.ec2.Instance:
        name, facts, suffix = self._site, self._inputs.facts, gateway_suffix(index)
        return aws.ec2.Instance(
            f"{name}-gateway{suffix}",
            ami=self._image() if image is None else image,
            instance_type=facts.site.instance_type,
            # Device 0 is the standalone interface: subnet, address, security group and
            # source/dest check are its, and stay when the instance is replaced.
            #
            # Attached through the deprecated `network_interfaces` block on purpose, NOT
            # `primary_network_interface` (whatever the deprecation warning suggests).
            # hashicorp/terraform-provider-aws internal/service/ec2/ec2_instance.go:
            # - ResourceInstance: "source_dest_check" is {Optional, Default: true}, and
            #   its DiffSuppressFunc is `_, ok := d.GetOk("network_interface"); return ok`;
            # - resourceInstanceRead sets source_dest_check from the device-0 interface
            #   (here: false);
            # - resourceInstanceUpdate calls ModifyInstanceAttribute(SourceDestCheck) only
            #   `if _, ok := d.GetOk("network_interface"); !ok`.
            # Both guards know only this block. With primary_network_interface the second
            # `pulumi up` plans source_dest_check false -> true and ModifyInstanceAttribute
            # writes true to this interface: the VPC then drops every forwarded packet
            # (terraform-provider-aws#44768, fixes #47082 and #49198 still open). Setting
            # source_dest_check=False here is no way out: it is in ConflictsWith of both
            # blocks. plan/provider_model.py models this; tests/test_second_run.py holds it.
            network_interfaces=[
                aws.ec2.InstanceNetworkInterfaceArgs(
                    device_index=0, network_interface_id=interface.id
                )
            ],
            iam_instance_profile=profile.name,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                http_put_response_hop_limit=1,
            ),
            # Set, not assumed: EC2 recovers the instance in place (same id, interface,
            # addresses) on a host failure, where the type supports it (T4g does:
            # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-recover.html).
            maintenance_options=aws.ec2.InstanceMaintenanceOptionsArgs(auto_recovery="default"),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True, volume_type="gp3", volume_size=8
            ),
            # Bootstrap only: nothing of day 2 is in it (see core.render.render_bootstrap).
            user_data_base64=render_bootstrap(facts).user_data_base64,
            # cloud-init runs only on first boot: a changed bootstrap needs a new instance
            # (the interface keeps the address, routes and Elastic IP).
            user_data_replace_on_change=True,
            tags=self._tags(f"gateway{suffix}"),
            volume_tags=self._tags(f"gateway{suffix}"),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=depends_on,
                # The interface can be device 0 of one instance only, and two gateways
                # with one key and one endpoint would only fight: the old one goes first.
                delete_before_replace=True,
            ),
        )

    def _routes_to_peer(
        self, interface: aws.ec2.NetworkInterface, follow_failover: bool = False
    ) -> None:
        # Every other site's CIDR, in every route table of the site: in a hub topology a
        # spoke's gateway sends them all to the hub (its AllowedIPs), so the tables do not
        # depend on the topology.
        destinations = dict(self._inputs.remote_sites)
        opts = self._child
        if follow_failover:
            # Two gateways: the tunnel cidr too (facts.routed_destinations), so that the
            # standby's probes of the peers' tunnel addresses go through the active.
            destinations["tunnel"] = str(self._inputs.facts.tunnel_address.network)
            # Created pointing at gateway 0; from then on the active gateway owns the
            # target (ReplaceRoute at each takeover). Without ignore_changes the next
            # `pulumi up` (or `up --refresh`) would point every route back at gateway 0,
            # possibly the dead one: the "Pulumi drift trap" of
            # ../shared/reference/topologies-and-failover.md. The route's table and
            # destination are still Pulumi's (both ForceNew: plan/replacement.py).
            opts = pulumi.ResourceOptions(parent=self, ignore_changes=["networkInterfaceId"])
        for remote, cidr in destinations.items():
            for index, route_table_id in enumerate(self._inputs.route_table_ids):
                aws.ec2.Route(
                    f"{self._site}-to-{remote}-{index}",
                    route_table_id=route_table_id,
                    destination_cidr_block=cidr,
                    network_interface_id=interface.id,
                    opts=opts,
                )

    # ------------------------------------------------------------- two gateways per site

    def _failover_inputs(
        self, interfaces: list[aws.ec2.NetworkInterface]
    ) -> pulumi.Output[FailoverInputs]:
        """The desired state's failover facts (core.render.failover_section), once every id
        is known: the site's Elastic IP, both interfaces and every route table."""
        args = self._inputs
        assert args.public_ip is not None, "a site with two gateways needs its Elastic IP"
        tables = pulumi.Output.all(*args.route_table_ids)
        return pulumi.Output.all(
            args.allocation_id, args.public_ip, interfaces[0].id, interfaces[1].id, tables
        ).apply(
            lambda known: FailoverInputs(
                allocation_id=known[0],
                elastic_ip=known[1],
                network_interface_ids=(known[2], known[3]),
                route_table_ids=tuple(known[4]),
            )
        )

    def _ec2_arn(self, kind: str, id_: pulumi.Input[str]) -> pulumi.Output[str]:
        return self._arn("ec2", pulumi.Output.concat(kind, "/", id_))

    def _failover_rights(self, interfaces: list[aws.ec2.NetworkInterface]) -> aws.iam.RolePolicy:
        """What the failover agent may do: move THIS site's Elastic IP between its two
        interfaces, and point THIS site's route tables at either; read addresses and routes.

        Resource types from the Service Authorization Reference, Amazon EC2
        (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html):
        AssociateAddress authorizes on elastic-ip (arn:${Partition}:ec2:${Region}:${Account}:
        elastic-ip/${AllocationId}) and network-interface (...:network-interface/
        ${NetworkInterfaceId}); ReplaceRoute on route-table (...:route-table/${RouteTableId}).
        DescribeAddresses and DescribeRouteTables support no resource-level permissions
        (the reference lists no resource type for them): `*` is the only resource they take,
        and they only read. policy/rules.py (failover-rights-scoped) holds the moving
        actions to this site's own ARNs.
        """
        args = self._inputs
        document = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "MoveOwnElasticIp",
                    "Effect": "Allow",
                    "Action": "ec2:AssociateAddress",
                    "Resource": [
                        self._ec2_arn("elastic-ip", args.allocation_id),
                        *(self._ec2_arn("network-interface", each.id) for each in interfaces),
                    ],
                },
                {
                    "Sid": "MoveOwnRoutes",
                    "Effect": "Allow",
                    "Action": "ec2:ReplaceRoute",
                    "Resource": [self._ec2_arn("route-table", t) for t in args.route_table_ids],
                },
                {
                    "Sid": "ReadAddressesAndRoutes",
                    "Effect": "Allow",
                    "Action": ["ec2:DescribeAddresses", "ec2:DescribeRouteTables"],
                    "Resource": "*",
                },
            ],
        }
        return aws.iam.RolePolicy(
            f"{self._site}-move-own-address",
            role=self._role.id,
            policy=pulumi.Output.json_dumps(document),
            opts=self._child,
        )

    def _public_ipv4(
        self, index: int, interface: aws.ec2.NetworkInterface
    ) -> command.local.Command:
        """The interface's own public IPv4 for whenever it does not hold the Elastic IP (the
        standby still needs SSM, the EC2 API and CloudWatch): ENI attribute
        AssociatePublicIpAddress, through ModifyNetworkInterfaceAttribute ("can be enabled
        for any network interface but will only apply to the primary network interface
        (eth0)": https://docs.aws.amazon.com/AWSEC2/latest/APIReference/
        API_ModifyNetworkInterfaceAttribute.html). pulumi-aws 7.51's NetworkInterface has
        no such argument, so `python -m deployer public-ipv4` sets it (idempotent)."""
        facts = self._inputs.facts
        return command.local.Command(
            f"{self._site}-public-ipv4{gateway_suffix(index)}",
            create=f"{DEPLOYER} public-ipv4",
            environment={
                "WG_S2S_SITE": facts.name,
                "WG_S2S_REGION": facts.site.aws_region,
                "WG_S2S_GATEWAY": str(index),
                "WG_S2S_NETWORK_INTERFACE_ID": interface.id,
            },
            # A new interface (a new id) gets it set again.
            triggers=[interface.id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[interface]),
        )

    def _replacement_inputs(self, image: pulumi.Output[str]) -> list[pulumi.Input[str]]:
        """What replaces (or stops) a gateway's instance: the image, the type and the user
        data (a digest: it holds no secret, but is 10 KB). Never a secret."""
        facts = self._inputs.facts
        user_data = render_bootstrap(facts).user_data_base64
        digest = hashlib.sha256(user_data.encode()).hexdigest()
        return [
            image.apply(lambda ami: f"image={ami}"),
            f"instance-type={facts.site.instance_type}",
            f"user-data={digest}",
        ]

    def _drain(
        self,
        index: int,
        interfaces: list[aws.ec2.NetworkInterface],
        image: pulumi.Output[str],
        depends_on: list[pulumi.Resource],
    ) -> command.local.Command:
        """Before gateway `index` is replaced: if it holds the Elastic IP, the other one
        takes over (`python -m deployer drain`), so the active hands over before it goes.
        Its triggers are that gateway's replacement inputs: a change replaces this command,
        which runs it again, before the instance (which depends on it) is replaced."""
        facts, args = self._inputs.facts, self._inputs
        return command.local.Command(
            f"{self._site}-drain-{index}",
            create=f"{DEPLOYER} drain",
            environment={
                "WG_S2S_SITE": facts.name,
                "WG_S2S_REGION": facts.site.aws_region,
                "WG_S2S_GATEWAY": str(index),
                "WG_S2S_NETWORK_INTERFACE_ID": interfaces[index].id,
                "WG_S2S_OTHER_NETWORK_INTERFACE_ID": interfaces[1 - index].id,
                "WG_S2S_ALLOCATION_ID": args.allocation_id,
                "WG_S2S_DEADLINE_SECONDS": str(args.deadline_seconds),
            },
            triggers=self._replacement_inputs(image),
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on),
        )

    def _rolling_pair(
        self,
        interfaces: list[aws.ec2.NetworkInterface],
        profile: aws.iam.InstanceProfile,
        identity: list[pulumi.Resource],
    ) -> tuple[list[aws.ec2.Instance], list[command.local.Command]]:
        """Both gateways, in the order a replacement must take: drain-1, gateway 1, its
        apply, drain-0, gateway 0, its apply. Gateway 1 goes first; if it was the active
        one, drain-1 hands over to gateway 0 first; drain-0 waits until the new gateway 1
        is applied, then hands over to it if gateway 0 is the active one. So the standby
        is always the one replaced, and the site keeps a gateway throughout."""
        args = self._inputs
        image = self._image()
        public_ipv4 = [self._public_ipv4(i, each) for i, each in enumerate(interfaces)]
        # No EipAssociation (see __init__): cloud-init reaches the internet through the
        # interface's own public IPv4 (public_ipv4) until its gateway holds the address.
        boot = [*identity, *args.internet_path]
        drain_1 = self._drain(1, interfaces, image, depends_on=[*interfaces])
        second = self._instance(
            interfaces[1], profile, [*boot, public_ipv4[1], drain_1], index=1, image=image
        )
        second_apply = self._apply_in_place(second, self._parameters, index=1)
        drain_0 = self._drain(0, interfaces, image, depends_on=[*interfaces, second_apply])
        first = self._instance(
            interfaces[0], profile, [*boot, public_ipv4[0], drain_0], image=image
        )
        first_apply = self._apply_in_place(first, self._parameters)
        return [first, second], [first_apply, second_apply]


def _key_policy(
    args: WireGuardGatewayArgs,
    role_arn: pulumi.Output[str],
    parameter_arns: list[pulumi.Output[str]],
) -> dict[str, Any]:
    """Who may use this gateway's key: the gateway, for its own parameter, through SSM.

    SSM encrypts a SecureString with the encryption context PARAMETER_ARN=<its ARN>
    (https://docs.aws.amazon.com/kms/latest/developerguide/services-parameter-store.html),
    so the gateway's grant reaches exactly its own parameters.
    """
    via_ssm = f"ssm.{args.facts.site.aws_region}.amazonaws.com"
    account_root = pulumi.Output.format("arn:{0}:iam::{1}:root", args.partition, args.account_id)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AccountAdministersNotUses",
                "Effect": "Allow",
                "Principal": {"AWS": account_root},
                "Action": KEY_ADMINISTRATION_ACTIONS,
                "Resource": "*",
            },
            {
                "Sid": "DeployerWritesThroughSsm",
                "Effect": "Allow",
                "Principal": {"AWS": args.deployer_arn},
                "Action": DEPLOYER_KEY_ACTIONS,
                "Resource": "*",
                "Condition": {"StringEquals": {"kms:ViaService": via_ssm}},
            },
            {
                "Sid": "GatewayDecryptsOwnParameter",
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {
                        "kms:ViaService": via_ssm,
                        "kms:EncryptionContext:PARAMETER_ARN": parameter_arns,
                    }
                },
            },
        ],
    }
