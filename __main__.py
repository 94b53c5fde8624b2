"""wg-site-to-site: two networks joined by a WireGuard site-to-site tunnel (see README.md)."""

import pulumi

from components import SiteToSite, SiteToSiteArgs, read_stack_config

config = read_stack_config()

tunnel = SiteToSite(
    "site-to-site",
    SiteToSiteArgs(config=config, project=pulumi.get_project(), stack=pulumi.get_stack()),
)

# Per site: publicIp, tunnelAddress, publicKey, vpcId, region, cidr, the rendered
# wg-quick config (which holds no secret) and the names of its alarms.
pulumi.export("sites", tunnel.sites)
# The picture an operator opens first: both sites' tunnel health side by side.
pulumi.export("dashboardUrl", tunnel.dashboard_url)
