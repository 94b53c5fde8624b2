"""The whole deployment: two sites, each with its network, identity and gateway."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.gateway import WireGuardGateway, WireGuardGatewayArgs
from components.site_network import SiteNetwork, SiteNetworkArgs
from components.wireguard_identity import WireGuardIdentity, WireGuardIdentityArgs
from core.config import StackConfig
from core.facts import GatewayFacts, gateway_facts


@dataclass
class SiteToSiteArgs:
    config: StackConfig
    """The validated stack config."""
    project: str
    stack: str
    """Go into every resource's tags and into the key parameter's path."""


class SiteToSite(pulumi.ComponentResource):
    """Two sites joined by a WireGuard tunnel between their gateways.

    Each site gets its own AWS provider for its region, so one stack spans two regions.
    Identities (key pair and Elastic IP) are made for both sites before either gateway,
    because each gateway's security group and config name the other's.
    """

    sites: dict[str, pulumi.Output[dict[str, Any]]]
    """Per site: publicIp, tunnelAddress, publicKey, vpcId, region, cidr, wgConfig and
    workloadSecurityGroupId."""

    def __init__(
        self, name: str, args: SiteToSiteArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("wg-site-to-site:index:SiteToSite", name, None, opts)
        tags = {**args.config.tags, "project": args.project, "stack": args.stack}
        both = gateway_facts(args.config, args.stack)

        providers = {facts.name: self._regional_provider(facts) for facts in both}
        networks = {
            facts.name: self._site_network(facts, providers[facts.name], tags) for facts in both
        }
        identities = {
            facts.name: WireGuardIdentity(
                facts.name,
                WireGuardIdentityArgs(tags=tags),
                opts=pulumi.ResourceOptions(parent=self, providers=[providers[facts.name]]),
            )
            for facts in both
        }

        self.sites = {}
        for facts in both:
            own, peer, network = (
                identities[facts.name],
                identities[facts.peer.name],
                networks[facts.name],
            )
            gateway = WireGuardGateway(
                facts.name,
                WireGuardGatewayArgs(
                    facts=facts,
                    vpc_id=network.vpc_id,
                    subnet_id=network.gateway_subnet_id,
                    route_table_ids=network.route_table_ids,
                    private_key=own.private_key,
                    allocation_id=own.allocation_id,
                    peer_public_key=peer.public_key,
                    peer_public_ip=peer.public_ip,
                    internet_gateway=network.internet_gateway,
                    tags=tags,
                ),
                opts=pulumi.ResourceOptions(parent=self, providers=[providers[facts.name]]),
            )
            self.sites[facts.name] = pulumi.Output.all(
                publicIp=own.public_ip,
                publicKey=own.public_key,
                vpcId=network.vpc_id,
                workloadSecurityGroupId=network.workload_security_group_id,
                wgConfig=gateway.wg_config,
                tunnelAddress=str(facts.tunnel_address.ip),
                region=facts.site.region,
                cidr=str(facts.site.cidr),
            )
        self.register_outputs({"sites": self.sites})

    def _regional_provider(self, facts: GatewayFacts) -> aws.Provider:
        return aws.Provider(
            f"{facts.name}-{facts.site.region}",
            region=facts.site.region,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _site_network(
        self, facts: GatewayFacts, provider: aws.Provider, tags: dict[str, str]
    ) -> SiteNetwork:
        zone: pulumi.Input[str] = ""
        if not facts.site.uses_existing_vpc:
            # Not every zone offers every instance type (us-east-1e has no t4g), so
            # both subnets go to the first zone that offers the gateway's type.
            offerings = aws.ec2.get_instance_type_offerings_output(
                location_type="availability-zone",
                filters=[
                    aws.ec2.GetInstanceTypeOfferingsFilterArgs(
                        name="instance-type", values=[facts.site.instance_type]
                    )
                ],
                opts=pulumi.InvokeOutputOptions(provider=provider, parent=self),
            )
            zone = offerings.locations.apply(lambda zones: _first_zone(zones, facts))
        return SiteNetwork(
            facts.name,
            SiteNetworkArgs(
                site=facts.site,
                layout=facts.layout,
                availability_zone=zone,
                peer_cidr=str(facts.peer.cidr),
                peer_tunnel_address=str(facts.peer_tunnel_address),
                tags=tags,
            ),
            opts=pulumi.ResourceOptions(parent=self, providers=[provider]),
        )


def _first_zone(zones: list[str], facts: GatewayFacts) -> str:
    if not zones:
        raise pulumi.RunError(
            f"wg-site-to-site:sites: {facts.site.instance_type} is not offered in any zone of "
            f"{facts.site.region} (site {facts.name}); choose another instanceType"
        )
    return sorted(zones)[0]
