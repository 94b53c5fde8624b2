"""The lab's VPC routers and internet gateways follow moto's EC2, as AWS's follow its API.

For every site with two gateways, `python -m lab.controller` (started by `lab up` in the
AWS stand-in's namespace, recorded in the lab's state, stopped by `lab down`) polls moto's
DescribeRouteTables and DescribeAddresses every POLL_SECONDS and makes the lab follow:
- each route of each route table whose target is a gateway's interface becomes
  `ip route replace DEST via <that gateway's private address>` in the routing table that
  stands for it in the site's VPC router (a route moto no longer has: a blackhole);
- the internet gateway's 1:1 NAT maps the Elastic IP to the private address of the
  interface moto associates it with, and every other gateway's traffic to its
  auto-assigned public address (nat_ruleset).
So a failover agent's AssociateAddress and ReplaceRoute move the traffic as they would on
AWS; nothing in the lab guesses which gateway is active. Each change is logged with its
time to CONTROLLER_LOG.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

POLL_SECONDS = 0.1
IGW_NAT_TABLE = "internet_gateway"
LINK_IGW = "wgs2s-igw"  # lab.topology.LINK_IGW (not imported: this process stays small)


def nat_ruleset(elastic_ip: str, gateways: list[tuple[str, str, str]], holder: str | None) -> str:
    """The internet gateway's 1:1 NAT for a site's gateways [(interface id, private
    address, auto-assigned public address)], the one whose id is `holder` holding the
    Elastic IP (None: neither, and what is sent to the Elastic IP goes nowhere).

    Stateless (each packet rewritten, nothing tracked), so a move of the Elastic IP takes
    effect on the next packet, as AWS's mapping does; replaced whole in one transaction."""
    pre, post = [], []
    for eni, private, auto in gateways:
        public = elastic_ip if eni == holder else auto
        pre.append(f'    iifname "{LINK_IGW}" ip daddr {public} ip daddr set {private}')
        post.append(f'    oifname "{LINK_IGW}" ip saddr {private} ip saddr set {public}')
    if holder is None:
        pre.append(f'    iifname "{LINK_IGW}" ip daddr {elastic_ip} drop')
    body = "\n".join(
        [
            "  chain prerouting {",
            "    type filter hook prerouting priority -300; policy accept;",
            *pre,
            "  }",
            "  chain postrouting {",
            "    type filter hook postrouting priority 100; policy accept;",
            *post,
            "  }",
        ]
    )
    return (
        f"table ip {IGW_NAT_TABLE}\n"
        f"delete table ip {IGW_NAT_TABLE}\n"
        f"table ip {IGW_NAT_TABLE} {{\n{body}\n}}\n"
    )


class _Site:
    """One site's view: what moto says, and what was last applied to its VPC router."""

    def __init__(self, spec: dict[str, Any], client: Any) -> None:
        self.spec = spec
        self.client = client
        self.routes: dict[tuple[int, str], str] = {}  # (table, destination) -> private ip
        self.holder: str | bool | None = False  # False: never applied

    def poll(self, log: Any) -> None:
        from lab import netns

        spec = self.spec
        gateways: dict[str, dict[str, str]] = spec["gateways"]
        tables = self.client.describe_route_tables(RouteTableIds=list(spec["tables"]))
        wanted: dict[tuple[int, str], str] = {}
        for table in tables["RouteTables"]:
            number = int(spec["tables"][table["RouteTableId"]])
            for route in table.get("Routes", []):
                eni = route.get("NetworkInterfaceId")
                if eni in gateways and route.get("DestinationCidrBlock"):
                    wanted[(number, route["DestinationCidrBlock"])] = eni
        lines = []
        for (number, destination), eni in sorted(wanted.items()):
            if self.routes.get((number, destination)) != eni:
                gateway = gateways[eni]
                lines.append(
                    f"route replace {destination} via {gateway['ip']} dev {gateway['link']}"
                    f" table {number}"
                )
        for number, destination in sorted(set(self.routes) - set(wanted)):
            lines.append(f"route replace blackhole {destination} table {number}")
        if lines:
            netns.ip_batch(spec["namespace"], lines)
            targets = sorted({gateways[eni]["ip"] for eni in wanted.values()})
            _log(log, f"{spec['site']}: {len(lines)} routes changed; targets {targets}")
        self.routes = wanted

        found = self.client.describe_addresses(AllocationIds=[spec["allocation"]])
        holder = next((a.get("NetworkInterfaceId") or None for a in found["Addresses"]), None)
        if holder not in gateways:
            holder = None
        if holder != self.holder:
            members = [(eni, g["ip"], g["auto"]) for eni, g in gateways.items()]
            netns.nft_apply(spec["namespace"], nat_ruleset(spec["elasticIp"], members, holder))
            where = gateways[holder]["ip"] if holder else "nobody"
            _log(log, f"{spec['site']}: Elastic IP {spec['elasticIp']} -> {where}")
            self.holder = holder


def _log(log: Any, line: str) -> None:
    log.write(f"{time.time():.3f} {line}\n")
    log.flush()


def main() -> None:
    import boto3

    from lab import aws

    specs = aws.ha_sites()
    clients: dict[str, Any] = {}
    sites = []
    for spec in specs:
        if spec["region"] not in clients:
            clients[spec["region"]] = boto3.client(  # type: ignore[call-overload]
                "ec2",
                region_name=spec["region"],
                endpoint_url=aws.ENDPOINT,
                **{k.lower(): v for k, v in aws.CREDENTIALS.items()},
            )
        sites.append(_Site(spec, clients[spec["region"]]))
    with aws.CONTROLLER_LOG.open("a") as log:
        _log(log, f"following {', '.join(s['site'] for s in specs)}")
        while True:
            started = time.monotonic()
            for site in sites:
                try:
                    site.poll(log)
                except Exception as error:
                    _log(log, f"{site.spec['site']}: {type(error).__name__}: {error}")
            if not aws.CONTROLLER_READY.exists():
                aws.CONTROLLER_READY.write_text(json.dumps({"pid": _pid()}) + "\n")
            time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - started)))


def start(state: Any, timeout: float = 30.0) -> int:
    """Starts the controller in the AWS stand-in's namespace (a `lab.state.State` records
    it); returns its pid once it has applied moto's view once."""
    import subprocess

    from lab import REPO, LabError, aws, netns

    aws.CONTROLLER_READY.unlink(missing_ok=True)
    with aws.CONTROLLER_LOG.open("a") as log:
        process = subprocess.Popen(
            netns.in_ns(aws.NAMESPACE, [sys.executable, "-m", "lab.controller"]),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**netns.clean_env(), "PYTHONPATH": str(REPO)},
            start_new_session=True,
        )
    state.add("daemons", f"controller {process.pid}")
    deadline = time.monotonic() + timeout
    while not aws.CONTROLLER_READY.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = aws.CONTROLLER_LOG.read_text().strip().splitlines()[-1:]
            raise LabError(f"the lab's controller did not start: {' '.join(tail)}")
        time.sleep(0.05)
    return process.pid


def _pid() -> int:
    import os

    return os.getpid()


if __name__ == "__main__":
    main()
