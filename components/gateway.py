"""A site's WireGuard gateway: the instance, who may reach it, and how it gets its key."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from core.facts import GatewayFacts
from core.render import PeerEndpoint, render_gateway

_EC2_ASSUME_ROLE = json.dumps(
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


@dataclass
class WireGuardGatewayArgs:
    facts: GatewayFacts
    """This gateway's addresses, peer, rules and paths, computed by the core."""
    vpc_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    """The public subnet the gateway sits in."""
    route_table_ids: list[pulumi.Output[str]]
    """Every route table of the site: each gets a route to the peer site via the gateway."""
    private_key: pulumi.Output[str]
    """This gateway's private key (a secret); it goes to SSM, never into user data."""
    allocation_id: pulumi.Input[str]
    """This gateway's Elastic IP, allocated beforehand."""
    peer_public_key: pulumi.Input[str]
    peer_public_ip: pulumi.Input[str]
    """The peer's Elastic IP: the endpoint in the config and the only source allowed in."""
    internet_gateway: list[pulumi.Resource]
    """Must exist before the Elastic IP can be associated."""
    tags: dict[str, str]
    """Tags for every resource."""


class WireGuardGateway(pulumi.ComponentResource):
    """The gateway instance with everything it needs to route between the sites."""

    instance_id: pulumi.Output[str]
    network_interface_id: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    wg_config: pulumi.Output[str]
    user_data: pulumi.Output[str]

    def __init__(
        self, name: str, args: WireGuardGatewayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("wg-site-to-site:gateway:WireGuardGateway", name, None, opts)
        self._site = name
        self._inputs = args
        self._child = pulumi.ResourceOptions(parent=self)

        security_group = self._security_group()
        key_parameter, key_policy, profile = self._key_access()
        self._render()
        instance = self._instance(security_group, profile, depends_on=[key_parameter, key_policy])
        aws.ec2.EipAssociation(
            f"{name}-address",
            allocation_id=args.allocation_id,
            instance_id=instance.id,
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.internet_gateway),
        )
        self._routes_to_peer(instance)

        self.instance_id = instance.id
        self.network_interface_id = instance.primary_network_interface_id
        self.security_group_id = security_group.id
        self.register_outputs(
            {
                "instanceId": self.instance_id,
                "networkInterfaceId": self.network_interface_id,
                "securityGroupId": self.security_group_id,
                "wgConfig": self.wg_config,
            }
        )

    def _tags(self, role: str) -> dict[str, str]:
        return {**self._inputs.tags, "Name": f"{self._site}-{role}"}

    def _security_group(self) -> aws.ec2.SecurityGroup:
        name, args, facts = self._site, self._inputs, self._inputs.facts
        group = aws.ec2.SecurityGroup(
            f"{name}-gateway",
            vpc_id=args.vpc_id,
            description=f"WireGuard gateway of site {facts.name}: tunnel from its peer only",
            tags=self._tags("gateway"),
            opts=self._child,
        )
        # Only the peer's Elastic IP may reach the tunnel port; the rest of the
        # internet sees a closed port (WireGuard would not answer it anyway).
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-tunnel-from-peer",
            security_group_id=group.id,
            description=f"WireGuard from the {facts.peer.name} gateway",
            ip_protocol="udp",
            from_port=facts.listen_port,
            to_port=facts.listen_port,
            cidr_ipv4=pulumi.Output.from_input(args.peer_public_ip).apply(lambda ip: f"{ip}/32"),
            tags=self._tags("tunnel-from-peer"),
            opts=self._child,
        )
        # Forwarded packets keep the site hosts' own addresses, so the gateway must
        # accept anything from its own site to route it into the tunnel.
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-from-site",
            security_group_id=group.id,
            description=f"traffic from site {facts.name} to be routed to {facts.peer.name}",
            ip_protocol="-1",
            cidr_ipv4=str(facts.site.cidr),
            tags=self._tags("from-site"),
            opts=self._child,
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-egress",
            security_group_id=group.id,
            description="tunnel packets to the peer, packages, SSM",
            ip_protocol="-1",
            cidr_ipv4="0.0.0.0/0",
            tags=self._tags("egress"),
            opts=self._child,
        )
        return group

    def _key_access(
        self,
    ) -> tuple[aws.ssm.Parameter, aws.iam.RolePolicy, aws.iam.InstanceProfile]:
        """The private key in an SSM SecureString that only this gateway's role can read."""
        name, args, facts = self._site, self._inputs, self._inputs.facts
        parameter = aws.ssm.Parameter(
            f"{name}-wireguard-key",
            name=facts.key_parameter_name,
            type="SecureString",
            value=args.private_key,
            description=f"WireGuard private key of the {facts.name} gateway ({facts.interface})",
            tags=self._tags("wireguard-key"),
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["value"]),
        )
        role = aws.iam.Role(
            f"{name}-gateway",
            assume_role_policy=_EC2_ASSUME_ROLE,
            description=f"wg-site-to-site gateway of site {facts.name}",
            tags=self._tags("gateway"),
            opts=self._child,
        )
        # Exactly one parameter ARN, no wildcard: parameter paths are hierarchical, and
        # a grant on a prefix would reach every key below it.
        policy = aws.iam.RolePolicy(
            f"{name}-read-own-key",
            role=role.id,
            policy=pulumi.Output.json_dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "ReadOwnWireGuardKey",
                            "Effect": "Allow",
                            "Action": "ssm:GetParameter",
                            "Resource": parameter.arn,
                        }
                    ],
                }
            ),
            opts=self._child,
        )
        profile = aws.iam.InstanceProfile(
            f"{name}-gateway", role=role.name, tags=self._tags("gateway"), opts=self._child
        )
        return parameter, policy, profile

    def _render(self) -> None:
        facts = self._inputs.facts
        rendered = pulumi.Output.all(
            self._inputs.peer_public_key, self._inputs.peer_public_ip
        ).apply(
            lambda peer: render_gateway(facts, PeerEndpoint(public_key=peer[0], public_ip=peer[1]))
        )
        self.wg_config = rendered.apply(lambda r: r.wg_config)
        self.user_data = rendered.apply(lambda r: r.user_data)

    def _instance(
        self,
        security_group: aws.ec2.SecurityGroup,
        profile: aws.iam.InstanceProfile,
        depends_on: list[pulumi.Resource],
    ) -> aws.ec2.Instance:
        name, args, facts = self._site, self._inputs, self._inputs.facts
        provider_opts = pulumi.InvokeOutputOptions(parent=self)
        ami = aws.ssm.get_parameter_output(name=facts.ami_parameter, opts=provider_opts)
        return aws.ec2.Instance(
            f"{name}-gateway",
            # Canonical publishes the AMI id as a plain (not secret) public parameter.
            ami=ami.insecure_value,
            instance_type=facts.site.instance_type,
            subnet_id=args.subnet_id,
            private_ip=None
            if facts.site.uses_existing_vpc
            else str(facts.layout.gateway_private_ip),
            # A launch-time public address lets cloud-init install packages and fetch the
            # key even if it runs before the Elastic IP is associated (which replaces it).
            associate_public_ip_address=True,
            vpc_security_group_ids=[security_group.id],
            iam_instance_profile=profile.name,
            # It forwards packets for other hosts; with the check on, the VPC drops them.
            source_dest_check=False,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                http_put_response_hop_limit=1,
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True, volume_type="gp3", volume_size=8
            ),
            user_data=self.user_data,
            # cloud-init runs only on first boot: a changed config needs a new instance
            # (the Elastic IP keeps the endpoint the same).
            user_data_replace_on_change=True,
            tags=self._tags("gateway"),
            volume_tags=self._tags("gateway"),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=depends_on,
                # A newer Ubuntu image must not replace a working gateway on every `up`;
                # roll it deliberately with `pulumi up --replace <urn>`.
                ignore_changes=["ami"],
                # The replacement needs the same private address, and two gateways with
                # one key and one endpoint would only fight: the old one goes first.
                delete_before_replace=True,
            ),
        )

    def _routes_to_peer(self, instance: aws.ec2.Instance) -> None:
        facts = self._inputs.facts
        for index, route_table_id in enumerate(self._inputs.route_table_ids):
            aws.ec2.Route(
                f"{self._site}-to-{facts.peer.name}-{index}",
                route_table_id=route_table_id,
                destination_cidr_block=str(facts.peer.cidr),
                network_interface_id=instance.primary_network_interface_id,
                opts=self._child,
            )
