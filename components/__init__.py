"""Pulumi components: thin wrappers that declare AWS resources from the core's facts."""

from components.gateway import WireGuardGateway, WireGuardGatewayArgs
from components.site_network import SiteNetwork, SiteNetworkArgs
from components.site_to_site import SiteToSite, SiteToSiteArgs
from components.stack_config import read_stack_config
from components.wireguard_identity import WireGuardIdentity, WireGuardIdentityArgs

__all__ = [
    "SiteNetwork",
    "SiteNetworkArgs",
    "SiteToSite",
    "SiteToSiteArgs",
    "WireGuardGateway",
    "WireGuardGatewayArgs",
    "WireGuardIdentity",
    "WireGuardIdentityArgs",
    "read_stack_config",
]
