"""The AWS APIs a gateway calls (SSM Parameter Store, CloudWatch, EC2), served by moto,
and its instance metadata (IMDSv2), served by a stand-in next to it.

moto's server runs in a namespace of its own on the lab's internet, at a documentation
address, so a gateway reaches it as it reaches AWS: through its security group, its VPC
router and its internet gateway. The gateway's own scripts make the calls (curl
--aws-sigv4); the lab only points their endpoints here and hands them dummy credentials
(the gateway's env, below), as the instance role would on AWS.

`python -m lab.aws put` (run inside the namespace) stores parameters read as JSON from
stdin, so secret values never appear in an argument list.

Each gateway's interface exists in moto's EC2 with the source/dest check the plan gives
it, so the probe and the check read a real answer (ec2:DescribeNetworkInterfaceAttribute).
The instance metadata stand-in answers each gateway by the address its requests arrive
from (its Elastic IP, after the internet gateway's mapping): its instance id (the plan's),
its MAC and that interface's id in moto, as IMDS answers an instance about itself.

A site with two gateways (gateways: 2) exists in moto's EC2 as `pulumi up` makes it: its
VPC, three subnets, both gateways' interfaces at their fixed addresses, one route table per
subnet with the routes to the first gateway's interface, and the Elastic IP (allocated at
the plan's address, associated with nothing: the gateways associate it themselves). moto
makes its own ids (moto 5.2 takes no custom id for interfaces, route tables or addresses),
so the lab translates the plan's ids into moto's where the gateways read them: the
desired state's `failover` section (translate_ids). The Elastic IP moves between the two
gateways, so the metadata stand-in answers each of them on a port of its own instead of
by address (WG_S2S_IMDS_ENDPOINT in the environment of what the lab runs on it).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from lab import PREFIX, REPO, STATE_DIR, LabError, netns
from lab.topology import Gateway, Site

NAMESPACE = f"{PREFIX}aws"
LINK = f"{PREFIX}awsl"  # its link's name on the internet's side
ADDRESS = IPv4Interface("192.0.2.130/30")
ROUTER = IPv4Interface("192.0.2.129/30")
PORT = 80
ENDPOINT = f"http://{ADDRESS.ip}:{PORT}"
IMDS_PORT = 8080
# Whatever the PUT hands out; the gateway scripts send it back as EC2 wants.
IMDS_TOKEN = "lab-imds-token"  # noqa: S105 - a stand-in session token, no secret
IMDS_ENDPOINT = f"http://{ADDRESS.ip}:{IMDS_PORT}"
MOTO_SERVER = Path(sys.executable).parent / "moto_server"
# moto accepts any credentials; these stand in for the instance role's.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIALABGATEWAYROLE01",
    "AWS_SECRET_ACCESS_KEY": "lab-gateway-role-secret-access-key",
    "AWS_SESSION_TOKEN": "lab-gateway-role-session-token",
}
START_TIMEOUT = 30.0


def gateway_env(namespace: str | None = None) -> dict[str, str]:
    """What a gateway's scripts get in the lab instead of IMDS and AWS's endpoints; a
    gateway of a site with two gateways has its own metadata port."""
    port = _imds_ports().get(namespace or "", IMDS_PORT)
    return {
        **CREDENTIALS,
        "WG_S2S_ENDPOINT_SSM": ENDPOINT,
        "WG_S2S_ENDPOINT_MONITORING": ENDPOINT,
        "WG_S2S_ENDPOINT_EC2": ENDPOINT,
        "WG_S2S_IMDS_ENDPOINT": f"http://{ADDRESS.ip}:{port}",
    }


def _saved(path: Path) -> Any:
    """What the lab saved as JSON at `path`; None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _imds_ports() -> dict[str, int]:
    raw = _saved(IMDS_PORTS_FILE)
    return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def imds_port(site: Site, gateway: Gateway) -> int:
    """A gateway of a site with two gateways: its metadata stand-in's port."""
    return IMDS_PORT + 100 + 2 * site.index + gateway.index


def start() -> subprocess.Popen[bytes]:
    """moto's server in NAMESPACE; returns once it answers."""
    process = launch()
    wait_for(process)
    return process


def wait_for(process: subprocess.Popen[bytes]) -> None:
    """Returns once moto's server, launched with `launch`, answers."""
    _wait_until_it_answers(process, PORT, "moto's server (the lab's SSM and CloudWatch)")


def launch() -> subprocess.Popen[bytes]:
    """Starts moto's server in NAMESPACE and returns at once (it takes a second or two to
    answer: wait_for)."""
    if not MOTO_SERVER.exists():
        raise LabError(f"{MOTO_SERVER} is missing (pip install 'moto[server]')")
    process = subprocess.Popen(
        netns.in_ns(NAMESPACE, [str(MOTO_SERVER), "-H", str(ADDRESS.ip), "-p", str(PORT)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=netns.clean_env(),
    )
    return process


def _wait_until_it_answers(process: subprocess.Popen[bytes], port: int, what: str) -> None:
    """Returns once `what`, started as `process` in NAMESPACE, takes connections on `port`."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        probe = netns.ns_run(
            NAMESPACE,
            [
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(('{ADDRESS.ip}', {port}), 1)",
            ],
            check=False,
        )
        if probe.returncode == 0:
            return
        if process.poll() is not None:
            raise LabError(f"{what} exited at start")
        time.sleep(0.2)
    netns.stop(process)
    raise LabError(f"{what} did not answer within {START_TIMEOUT:g} s")


def put_parameters(parameters: list[dict[str, str]]) -> None:
    """Stores {region, name, type, value} parameters, as `pulumi up` does in SSM."""
    netns.ns_run(
        NAMESPACE,
        [sys.executable, "-m", "lab.aws", "put"],
        input_text=json.dumps(parameters),
        env={"PYTHONPATH": str(REPO)},
    )


def mac(site: Site, gateway: Gateway | None = None) -> str:
    """The gateway's device-0 MAC, as its IMDS names it (locally administered)."""
    index = gateway.index if gateway is not None else 0
    return f"0e:00:00:00:{index:02x}:{site.index + 1:02x}"


# The gateways' interface ids in moto (site -> ENI) and the metadata stand-in's pid, so
# that a site added on day 2 gets its own and the stand-in answers for every gateway.
ENIS_FILE = STATE_DIR / "enis.json"
IMDS_PID_FILE = STATE_DIR / "imds.pid"
IMDS_PORTS_FILE = STATE_DIR / "imds-ports.json"  # namespace -> port (two gateways a site)
# A site with two gateways: the plan's ids -> moto's (interfaces, route tables, the
# allocation), and per site what lab.controller follows.
IDS_FILE = STATE_DIR / "moto-ids.json"
SITES_FILE = STATE_DIR / "ha-sites.json"
CONTROLLER_LOG = STATE_DIR / "controller.log"  # each change lab.controller made, timed
CONTROLLER_READY = STATE_DIR / "controller.ready"  # written after its first poll


def _ha_request(site: Site) -> dict[str, Any]:
    """What moto gets for a site with two gateways: its subnets (first public, private,
    second public, each with its route table, in the plan's table order), both interfaces,
    the Elastic IP, and each table's routes to a gateway (by the gateway's index)."""
    assert site.second is not None and site.second_public_table is not None
    layout = site.facts.layout
    index_of = {g.private_address.ip: g.index for g in site.gateways}
    tables = [site.public_table, site.private_table, site.second_public_table]
    return {
        "ha": True,
        "region": site.facts.site.aws_region,
        "cidr": str(site.facts.site.cidr),
        "subnets": [
            str(layout.public_subnet),
            str(layout.private_subnet),
            str(site.second.private_address.network),
        ],
        "gateways": [
            {
                "subnet": 0 if g.index == 0 else 2,
                "privateIp": str(g.private_address.ip),
                "sourceDestCheck": g.source_dest_check,
            }
            for g in site.gateways
        ],
        "elasticIp": str(site.gateway.elastic_ip),
        "routes": [
            [
                [str(route.destination), index_of[route.via]]
                for route in table.routes
                if route.kind == "gateway" and route.via in index_of
            ]
            for table in tables
        ],
    }


def _record_ha(sites: Sequence[Site], created: Sequence[dict[str, Any]]) -> None:
    """The plan -> moto id map, and what the controller follows per site."""
    ids = moto_ids()  # a site added on day 2 joins those already made
    followed = ha_sites()
    for site, made in zip(sites, created, strict=True):
        assert site.second_public_table is not None
        plan_tables = [site.public_table.id, site.private_table.id, site.second_public_table.id]
        ids.update(zip(plan_tables, made["tables"], strict=True))
        ids.update(zip([g.eni for g in site.gateways], made["enis"], strict=True))
        ids[site.allocation_id] = made["allocation"]
        tables = [site.public_table, site.private_table, site.second_public_table]
        followed.append(
            {
                "site": site.name,
                "region": site.facts.site.aws_region,
                "namespace": site.vpc_namespace,
                "allocation": made["allocation"],
                "tables": {moto: t.table for moto, t in zip(made["tables"], tables, strict=True)},
                "elasticIp": str(site.gateway.elastic_ip),
                "gateways": {
                    moto: {
                        "ip": str(g.private_address.ip),
                        "link": g.link,
                        "auto": str(g.auto_public_ip),
                    }
                    for moto, g in zip(made["enis"], site.gateways, strict=True)
                },
            }
        )
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    IDS_FILE.write_text(json.dumps(ids, indent=1) + "\n")
    SITES_FILE.write_text(json.dumps(followed, indent=1) + "\n")


def ha_sites() -> list[dict[str, Any]]:
    """What lab.controller follows: per site with two gateways, its moto ids."""
    raw = _saved(SITES_FILE)
    return list(raw) if isinstance(raw, list) else []


def moto_ids() -> dict[str, str]:
    """The plan's ids -> moto's, for the sites with two gateways (empty without)."""
    raw = _saved(IDS_FILE)
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def translate_ids(value: str, ids: dict[str, str]) -> str:
    """A desired state with its `failover` section naming moto's ids instead of the
    plan's (the gateways call moto with them); any other value as it is."""
    if not ids or '"failover"' not in value:
        return value
    state = json.loads(value)
    failover = state["failover"]
    failover["allocationId"] = ids.get(failover["allocationId"], failover["allocationId"])
    for gateway in failover["gateways"]:
        eni = gateway["networkInterfaceId"]
        gateway["networkInterfaceId"] = ids.get(eni, eni)
    for route in failover["routes"]:
        route["routeTableId"] = ids.get(route["routeTableId"], route["routeTableId"])
    return json.dumps(state, sort_keys=True)


def _create_interfaces(sites: Sequence[Site]) -> dict[str, str]:
    """Gateway namespace -> its interface's id in moto (for a site with two gateways, the
    whole site is made there: _ha_request)."""
    request = [
        _ha_request(site)
        if site.highly_available
        else {
            "region": site.facts.site.aws_region,
            "cidr": str(site.facts.site.cidr),
            "subnet": str(site.facts.layout.public_subnet),
            "sourceDestCheck": site.gateway.source_dest_check,
        }
        for site in sites
    ]
    created = netns.ns_run(
        NAMESPACE,
        [sys.executable, "-m", "lab.aws", "interfaces"],
        input_text=json.dumps(request),
        env={"PYTHONPATH": str(REPO)},
    )
    made: list[dict[str, Any]] = json.loads(created.stdout)
    ha = [(site, one) for site, one in zip(sites, made, strict=True) if site.highly_available]
    if ha:
        _record_ha([site for site, _ in ha], [one for _, one in ha])
    return {
        gateway.namespace: eni
        for site, one in zip(sites, made, strict=True)
        for gateway, eni in zip(site.gateways, one["enis"], strict=True)
    }


def serve_gateways(sites: Sequence[Site]) -> dict[str, str]:
    """Each gateway's interface in moto's EC2, and its instance metadata; site -> ENI id."""
    enis = _create_interfaces(sites)
    _serve_metadata(sites, enis)
    return enis


def add_gateways(sites: Sequence[Site], added: Sequence[Site]) -> dict[str, str]:
    """Day 2: interfaces for the `added` sites, and the metadata stand-in restarted to
    answer every gateway of `sites`."""
    enis = {**json.loads(ENIS_FILE.read_text()), **_create_interfaces(added)}
    try:
        pid = int(IMDS_PID_FILE.read_text())
    except (OSError, ValueError):
        pid = 0
    if pid in netns.namespace_pids(NAMESPACE):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while pid in netns.namespace_pids(NAMESPACE) and time.monotonic() < deadline:
            time.sleep(0.05)
    _serve_metadata(sites, enis)
    return enis


def _serve_metadata(sites: Sequence[Site], enis: dict[str, str]) -> None:
    def about(site: Site, gateway: Gateway) -> dict[str, str]:
        return {
            "instance-id": gateway.instance_id,
            "mac": mac(site, gateway),
            f"network/interfaces/macs/{mac(site, gateway)}/interface-id": enis[gateway.namespace],
        }

    metadata = {
        str(site.gateway.elastic_ip): about(site, site.gateway)
        for site in sites
        if not site.highly_available
    }
    ports = {
        gateway.namespace: imds_port(site, gateway)
        for site in sites
        if site.highly_available
        for gateway in site.gateways
    }
    by_port = {
        str(imds_port(site, gateway)): about(site, gateway)
        for site in sites
        if site.highly_available
        for gateway in site.gateways
    }
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    IMDS_PORTS_FILE.write_text(json.dumps(ports) + "\n")
    request = json.dumps({"byAddress": metadata, "byPort": by_port})
    process = subprocess.Popen(
        netns.in_ns(NAMESPACE, [sys.executable, "-m", "lab.aws", "imds", request]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**netns.clean_env(), "PYTHONPATH": str(REPO)},
    )
    _wait_until_it_answers(process, IMDS_PORT, "the lab's instance metadata stand-in")
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    ENIS_FILE.write_text(json.dumps(enis) + "\n")
    IMDS_PID_FILE.write_text(f"{process.pid}\n")


def set_source_dest_check(site: Site, on: bool) -> str:
    """What ModifyNetworkInterfaceAttribute (or the provider bug, terraform-provider-aws
    #44768) does to the gateway's interface in moto; returns the interface's id."""
    request = {
        "region": site.facts.site.aws_region,
        "subnet": str(site.facts.layout.public_subnet),
        "on": on,
    }
    result = netns.ns_run(
        NAMESPACE,
        [sys.executable, "-m", "lab.aws", "source-dest-check"],
        input_text=json.dumps(request),
        env={"PYTHONPATH": str(REPO)},
    )
    return result.stdout.strip()


def metric_samples(
    region: str, namespace: str, metric: str, dimensions: dict[str, str], since: float
) -> list[tuple[float, float]]:
    """(unix time, value) of every datapoint a gateway published since `since`."""
    query = {
        "region": region,
        "namespace": namespace,
        "metric": metric,
        "dimensions": dimensions,
        "since": since,
    }
    result = netns.ns_run(
        NAMESPACE,
        [sys.executable, "-m", "lab.aws", "samples"],
        input_text=json.dumps(query),
        env={"PYTHONPATH": str(REPO)},
    )
    return [(float(t), float(v)) for t, v in json.loads(result.stdout)]


def _samples_from_stdin() -> None:
    import datetime

    import boto3

    query = json.load(sys.stdin)
    client: Any = boto3.client(  # type: ignore[call-overload]
        "cloudwatch", region_name=query["region"], endpoint_url=ENDPOINT, **_lower(CREDENTIALS)
    )
    # One-second periods: each of the probe's datapoints on its own.
    reply = client.get_metric_statistics(
        Namespace=query["namespace"],
        MetricName=query["metric"],
        Dimensions=[{"Name": k, "Value": v} for k, v in query["dimensions"].items()],
        StartTime=datetime.datetime.fromtimestamp(query["since"], datetime.UTC),
        EndTime=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5),
        Period=1,
        Statistics=["Minimum"],
    )
    points = sorted((p["Timestamp"].timestamp(), p["Minimum"]) for p in reply["Datapoints"])
    json.dump(points, sys.stdout)


def _put_from_stdin() -> None:
    import boto3

    clients: dict[str, Any] = {}  # one per region: making a client takes ~0.1 s
    for item in json.load(sys.stdin):
        if item["region"] not in clients:
            clients[item["region"]] = boto3.client(  # type: ignore[call-overload]
                "ssm", region_name=item["region"], endpoint_url=ENDPOINT, **_lower(CREDENTIALS)
            )
        client = clients[item["region"]]
        client.put_parameter(
            Name=item["name"], Type=item["type"], Value=item["value"], Overwrite=True
        )


@functools.cache
def _ec2(region: str) -> Any:
    import boto3

    return boto3.client(  # type: ignore[call-overload]
        "ec2", region_name=region, endpoint_url=ENDPOINT, **_lower(CREDENTIALS)
    )


def _interfaces_from_stdin() -> None:
    made: list[dict[str, Any]] = []
    for item in json.load(sys.stdin):
        if item.get("ha"):
            made.append(_ha_site(item))
            continue
        client = _ec2(item["region"])
        vpc = client.create_vpc(CidrBlock=item["cidr"])["Vpc"]["VpcId"]
        subnet = client.create_subnet(VpcId=vpc, CidrBlock=item["subnet"])["Subnet"]
        eni = client.create_network_interface(SubnetId=subnet["SubnetId"])["NetworkInterface"]
        client.modify_network_interface_attribute(
            NetworkInterfaceId=eni["NetworkInterfaceId"],
            SourceDestCheck={"Value": bool(item["sourceDestCheck"])},
        )
        made.append({"enis": [eni["NetworkInterfaceId"]]})
    json.dump(made, sys.stdout)


def _ha_site(item: dict[str, Any]) -> dict[str, Any]:
    """A site with two gateways in moto's EC2, as `pulumi up` makes it (_ha_request)."""
    client = _ec2(item["region"])
    vpc = client.create_vpc(CidrBlock=item["cidr"])["Vpc"]["VpcId"]
    subnets = [
        client.create_subnet(VpcId=vpc, CidrBlock=cidr)["Subnet"]["SubnetId"]
        for cidr in item["subnets"]
    ]
    enis = []
    for gateway in item["gateways"]:
        eni = client.create_network_interface(
            SubnetId=subnets[gateway["subnet"]], PrivateIpAddress=gateway["privateIp"]
        )["NetworkInterface"]["NetworkInterfaceId"]
        client.modify_network_interface_attribute(
            NetworkInterfaceId=eni, SourceDestCheck={"Value": bool(gateway["sourceDestCheck"])}
        )
        enis.append(eni)
    tables = []
    for subnet, routes in zip(subnets, item["routes"], strict=True):
        table = client.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        client.associate_route_table(RouteTableId=table, SubnetId=subnet)
        for destination, gateway_index in routes:
            client.create_route(
                RouteTableId=table,
                DestinationCidrBlock=destination,
                NetworkInterfaceId=enis[gateway_index],
            )
        tables.append(table)
    # At the plan's address (AllocateAddress's Address, which moto honours), associated
    # with nothing: the gateways associate it (issue 16's design: no EipAssociation).
    allocation = client.allocate_address(Domain="vpc", Address=item["elasticIp"])
    return {"enis": enis, "tables": tables, "allocation": allocation["AllocationId"]}


def ec2_view() -> dict[str, dict[str, Any]]:
    """What moto's EC2 says of each site with two gateways, by private address: site ->
    {"holder": the private address of the interface holding the Elastic IP (None: none),
    "routes": ["<table> <destination> -> <private address>", ...]}."""
    result = netns.ns_run(
        NAMESPACE, [sys.executable, "-m", "lab.aws", "ec2-view"], env={"PYTHONPATH": str(REPO)}
    )
    view: dict[str, dict[str, Any]] = json.loads(result.stdout)
    return view


def _ec2_view() -> None:
    view = {}
    for spec in ha_sites():
        client = _ec2(spec["region"])
        gateways = spec["gateways"]
        found = client.describe_addresses(AllocationIds=[spec["allocation"]])["Addresses"]
        holder = next((a.get("NetworkInterfaceId") or None for a in found), None)
        routes = []
        tables = client.describe_route_tables(RouteTableIds=list(spec["tables"]))
        for table in tables["RouteTables"]:
            for route in table.get("Routes", []):
                eni = route.get("NetworkInterfaceId")
                if eni:
                    target = gateways[eni]["ip"] if eni in gateways else eni
                    routes.append(
                        f"{spec['tables'][table['RouteTableId']]}"
                        f" {route['DestinationCidrBlock']} -> {target}"
                    )
        view[spec["site"]] = {
            "holder": gateways[holder]["ip"] if holder in gateways else holder,
            "routes": sorted(routes),
        }
    json.dump(view, sys.stdout)


def _source_dest_check_from_stdin() -> None:
    item = json.load(sys.stdin)
    client = _ec2(item["region"])
    subnets = client.describe_subnets(Filters=[{"Name": "cidr-block", "Values": [item["subnet"]]}])
    ids = [subnet["SubnetId"] for subnet in subnets["Subnets"]]
    found = client.describe_network_interfaces(Filters=[{"Name": "subnet-id", "Values": ids}])
    (eni,) = [i["NetworkInterfaceId"] for i in found["NetworkInterfaces"]]
    client.modify_network_interface_attribute(
        NetworkInterfaceId=eni, SourceDestCheck={"Value": bool(item["on"])}
    )
    print(eni)


def _imds(request: dict[str, dict[str, Any]]) -> None:
    """IMDSv2 for the gateways: each asks from its Elastic IP and gets its own metadata,
    or (a gateway of a site with two gateways) asks on its own port."""
    import threading

    from lab import imds

    by_address: dict[str, dict[str, str]] = request["byAddress"]
    for port, metadata in request["byPort"].items():

        def mine(_: str, answer: dict[str, str] = metadata) -> dict[str, str]:
            return answer

        server = imds.server((str(ADDRESS.ip), int(port)), IMDS_TOKEN, mine)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    imds.server(
        (str(ADDRESS.ip), IMDS_PORT), IMDS_TOKEN, lambda client: by_address.get(client, {})
    ).serve_forever()


def _lower(credentials: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in credentials.items()}


if __name__ == "__main__":
    commands = {
        "put": _put_from_stdin,
        "samples": _samples_from_stdin,
        "interfaces": _interfaces_from_stdin,
        "source-dest-check": _source_dest_check_from_stdin,
        "ec2-view": _ec2_view,
    }
    if len(sys.argv) == 3 and sys.argv[1] == "imds":
        _imds(json.loads(sys.argv[2]))
    elif len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit("usage: python -m lab.aws put|samples|interfaces|source-dest-check < request.json")
    else:
        commands[sys.argv[1]]()
