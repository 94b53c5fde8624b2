"""A canary: a workload host in a site's private subnet that the other site must reach.

It proves "site to site works" where the gateways alone prove only "the tunnel answers":
the peer gateway's probe pings it through the tunnel and this site's forwarding path
(source/dest check, routes, security groups), and `make e2e` runs the lab's checks on it
through SSM Run Command.

It is the cheapest suitable host (t4g.nano, arm64), managed by SSM only (no SSH key, no
public address: the private subnet has no route to the internet, so the SSM agent reaches
SSM through interface endpoints in that subnet), IMDSv2 only, on an encrypted disk, in the
site's workload security group, at the fixed address the core computes for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.gateway import EC2_ASSUME_ROLE, SSM_AGENT_STATEMENT
from core.facts import CANONICAL_OWNER, GatewayFacts, ubuntu_ami_parameter, ubuntu_image_name

CANARY_INSTANCE_TYPE = "t4g.nano"
CANARY_ARCHITECTURE = "arm64"  # Graviton (t4g)
# What the SSM agent talks to. Without these interface endpoints an instance with no
# internet route never registers: https://docs.aws.amazon.com/systems-manager/latest/
# userguide/setup-create-vpc.html ("ssm", "ssmmessages", "ec2messages").
SSM_ENDPOINT_SERVICES = ("ssm", "ssmmessages", "ec2messages")
HTTPS = 443


@dataclass
class CanaryArgs:
    facts: GatewayFacts
    """The site's facts: its region, private subnet and the canary's address."""
    vpc_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    """The site's private (workload) subnet."""
    workload_security_group_id: pulumi.Input[str]
    """The site's workload group (components/site_network.py): admits the peer site."""
    tags: dict[str, str]


class Canary(pulumi.ComponentResource):
    """One workload host at the site's canary address, reachable by SSM Run Command."""

    instance_id: pulumi.Output[str]
    private_ip: pulumi.Output[str]

    def __init__(
        self, name: str, args: CanaryArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("wg-site-to-site:canary:Canary", name, None, opts)
        self._site = name
        self._inputs = args
        self._child = pulumi.ResourceOptions(parent=self)
        facts = args.facts
        if facts.canary is None:
            raise ValueError(f"site {facts.name} has no canary (sites[].canary is false)")
        subnet = str(facts.layout.private_subnet)

        # The endpoints admit HTTPS from the private subnet; the canary's own group lets
        # it out to them (the workload group lets it out only to the peer site).
        endpoints_group = aws.ec2.SecurityGroup(
            f"{name}-ssm-endpoints",
            vpc_id=args.vpc_id,
            description=f"SSM endpoints of site {facts.name}: HTTPS from its private subnet",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=HTTPS, to_port=HTTPS, cidr_blocks=[subnet]
                )
            ],
            tags=self._tags("ssm-endpoints"),
            opts=self._child,
        )
        canary_group = aws.ec2.SecurityGroup(
            f"{name}-canary",
            vpc_id=args.vpc_id,
            description=f"canary of site {facts.name}: HTTPS to the SSM endpoints",
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="tcp", from_port=HTTPS, to_port=HTTPS, cidr_blocks=[subnet]
                )
            ],
            tags=self._tags("canary"),
            opts=self._child,
        )
        endpoints = [
            aws.ec2.VpcEndpoint(
                f"{name}-{service}",
                vpc_id=args.vpc_id,
                service_name=f"com.amazonaws.{facts.site.aws_region}.{service}",
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=[args.subnet_id],
                security_group_ids=[endpoints_group.id],
                tags=self._tags(service),
                opts=self._child,
            )
            for service in SSM_ENDPOINT_SERVICES
        ]
        role = aws.iam.Role(
            f"{name}-canary",
            assume_role_policy=EC2_ASSUME_ROLE,
            description=f"wg-site-to-site canary of site {facts.name}: SSM agent only",
            tags=self._tags("canary"),
            opts=self._child,
        )
        # The gateway's SSM agent actions and nothing else: no parameter, no key, no
        # managed policy (AmazonSSMManagedInstanceCore would add ssm:GetParameter on *).
        policy = aws.iam.RolePolicy(
            f"{name}-canary-ssm-agent",
            role=role.id,
            policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [SSM_AGENT_STATEMENT],
                }
            ),
            opts=self._child,
        )
        profile = aws.iam.InstanceProfile(
            f"{name}-canary", role=role.name, tags=self._tags("canary"), opts=self._child
        )
        instance = aws.ec2.Instance(
            f"{name}-canary",
            ami=self._image(),
            instance_type=CANARY_INSTANCE_TYPE,
            subnet_id=args.subnet_id,
            # The core's address: the peer's probe and the e2e checks aim at it.
            private_ip=str(facts.canary),
            associate_public_ip_address=False,
            vpc_security_group_ids=[args.workload_security_group_id, canary_group.id],
            iam_instance_profile=profile.name,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                encrypted=True, volume_type="gp3", volume_size=8
            ),
            # No user data: Canonical's Ubuntu images ship the SSM agent (snap), and
            # ping, ip and python3 are all the checks need (https://docs.aws.amazon.com/
            # systems-manager/latest/userguide/ami-preinstalled-agent.html).
            tags=self._tags("canary"),
            volume_tags=self._tags("canary"),
            # Registers with SSM through the endpoints, with the role's policy in place.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*endpoints, policy]),
        )
        self.instance_id = instance.id
        self.private_ip = instance.private_ip
        self.register_outputs({"instanceId": self.instance_id, "privateIp": self.private_ip})

    def _tags(self, role: str) -> dict[str, str]:
        return {**self._inputs.tags, "Name": f"{self._site}-{role}"}

    def _image(self) -> pulumi.Output[str]:
        """The site's pinned Ubuntu build for arm64, or Canonical's current one."""
        site, invoke = self._inputs.facts.site, pulumi.InvokeOutputOptions(parent=self)
        if site.image is not None:
            pinned = aws.ec2.get_ami_output(
                owners=[CANONICAL_OWNER],
                filters=[
                    aws.ec2.GetAmiFilterArgs(
                        name="name", values=[ubuntu_image_name(CANARY_ARCHITECTURE, site.image)]
                    )
                ],
                most_recent=True,
                opts=invoke,
            )
            return pinned.id
        current = aws.ssm.get_parameter_output(
            name=ubuntu_ami_parameter(CANARY_ARCHITECTURE), opts=invoke
        )
        return current.insecure_value
