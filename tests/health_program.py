"""A Pulumi program for the health tests: both sites' providers, a stand-in gateway per
site (instance, role and the metrics policy) and TunnelHealth, as the lead will wire it.

`alerts` comes from the environment (WG_S2S_TEST_ALERTS, JSON) because the stack config
model does not take that key yet.
"""

from __future__ import annotations

import json
import os

import pulumi
import pulumi_aws as aws

from components import read_stack_config
from components.tunnel_health import (
    HealthSite,
    TunnelHealth,
    TunnelHealthArgs,
    gateway_metrics_policy,
)
from core.alerts import AlertsConfig
from core.facts import gateway_facts

config = read_stack_config()
stack = pulumi.get_stack()
raw_alerts = os.environ.get("WG_S2S_TEST_ALERTS")
alerts = AlertsConfig.model_validate(json.loads(raw_alerts)) if raw_alerts else None

sites = []
for facts in gateway_facts(config, stack):
    provider = aws.Provider(f"{facts.name}-{facts.site.region}", region=facts.site.region)
    opts = pulumi.ResourceOptions(provider=provider)
    role = aws.iam.Role(
        f"{facts.name}-gateway",
        assume_role_policy=json.dumps(
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
        ),
        opts=opts,
    )
    aws.iam.RolePolicy(
        f"{facts.name}-put-metrics", role=role.id, policy=gateway_metrics_policy(), opts=opts
    )
    profile = aws.iam.InstanceProfile(f"{facts.name}-gateway", role=role.name, opts=opts)
    # A site with two gateways (gateways: 2) has a second instance, "<site>-gateway-1".
    instances = [
        aws.ec2.Instance(
            f"{facts.name}-gateway" + (f"-{index}" if index else ""),
            ami="ami-0123456789abcdef0",
            instance_type=facts.site.instance_type,
            iam_instance_profile=profile.name,
            source_dest_check=False,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(http_tokens="required"),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(encrypted=True),
            user_data=(
                "#cloud-config\nwrite_files:\n"
                f"  - path: {facts.config_path}\n    content: |\n      [Interface]\n"
            ),
            opts=opts,
        )
        for index in range(facts.gateway_count)
    ]
    sites.append(
        HealthSite(
            facts=facts,
            provider=provider,
            instance_id=instances[0].id,
            second_instance_id=instances[1].id if facts.highly_available else None,
        )
    )

health = TunnelHealth(
    "tunnel-health",
    TunnelHealthArgs(stack=stack, sites=sites, alerts=alerts, tags={"stack": stack}),
)
pulumi.export("alarmNames", health.alarm_names)
pulumi.export("peerAlarmNames", health.peer_alarm_names)
pulumi.export("dashboardUrl", health.dashboard_url)
