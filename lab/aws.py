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
from lab.topology import Site

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


def gateway_env() -> dict[str, str]:
    """What a gateway's scripts get in the lab instead of IMDS and AWS's endpoints."""
    return {
        **CREDENTIALS,
        "WG_S2S_ENDPOINT_SSM": ENDPOINT,
        "WG_S2S_ENDPOINT_MONITORING": ENDPOINT,
        "WG_S2S_ENDPOINT_EC2": ENDPOINT,
        "WG_S2S_IMDS_ENDPOINT": IMDS_ENDPOINT,
    }


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


def mac(site: Site) -> str:
    """The gateway's device-0 MAC, as its IMDS names it (locally administered)."""
    return f"0e:00:00:00:00:{site.index + 1:02x}"


# The gateways' interface ids in moto (site -> ENI) and the metadata stand-in's pid, so
# that a site added on day 2 gets its own and the stand-in answers for every gateway.
ENIS_FILE = STATE_DIR / "enis.json"
IMDS_PID_FILE = STATE_DIR / "imds.pid"


def _create_interfaces(sites: Sequence[Site]) -> dict[str, str]:
    request = [
        {
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
    enis: list[str] = json.loads(created.stdout)
    return {site.name: eni for site, eni in zip(sites, enis, strict=True)}


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
    metadata = {
        str(site.gateway.elastic_ip): {
            "instance-id": site.gateway.instance_id,
            "mac": mac(site),
            f"network/interfaces/macs/{mac(site)}/interface-id": enis[site.name],
        }
        for site in sites
    }
    process = subprocess.Popen(
        netns.in_ns(NAMESPACE, [sys.executable, "-m", "lab.aws", "imds", json.dumps(metadata)]),
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
    enis = []
    for item in json.load(sys.stdin):
        client = _ec2(item["region"])
        vpc = client.create_vpc(CidrBlock=item["cidr"])["Vpc"]["VpcId"]
        subnet = client.create_subnet(VpcId=vpc, CidrBlock=item["subnet"])["Subnet"]
        eni = client.create_network_interface(SubnetId=subnet["SubnetId"])["NetworkInterface"]
        client.modify_network_interface_attribute(
            NetworkInterfaceId=eni["NetworkInterfaceId"],
            SourceDestCheck={"Value": bool(item["sourceDestCheck"])},
        )
        enis.append(eni["NetworkInterfaceId"])
    json.dump(enis, sys.stdout)


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


def _imds(metadata: dict[str, dict[str, str]]) -> None:
    """IMDSv2 for the gateways: each asks from its Elastic IP and gets its own metadata."""
    from lab import imds

    imds.server(
        (str(ADDRESS.ip), IMDS_PORT), IMDS_TOKEN, lambda client: metadata.get(client, {})
    ).serve_forever()


def _lower(credentials: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in credentials.items()}


if __name__ == "__main__":
    commands = {
        "put": _put_from_stdin,
        "samples": _samples_from_stdin,
        "interfaces": _interfaces_from_stdin,
        "source-dest-check": _source_dest_check_from_stdin,
    }
    if len(sys.argv) == 3 and sys.argv[1] == "imds":
        _imds(json.loads(sys.argv[2]))
    elif len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit("usage: python -m lab.aws put|samples|interfaces|source-dest-check < request.json")
    else:
        commands[sys.argv[1]]()
