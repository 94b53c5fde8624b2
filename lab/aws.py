"""The AWS APIs a gateway calls (SSM Parameter Store, CloudWatch), served by moto.

moto's server runs in a namespace of its own on the lab's internet, at a documentation
address, so a gateway reaches it as it reaches AWS: through its security group, its VPC
router and its internet gateway. The gateway's own scripts make the calls (curl
--aws-sigv4); the lab only points their endpoints here and hands them dummy credentials
(the gateway's env, below), as the instance role would on AWS.

`python -m lab.aws put` (run inside the namespace) stores parameters read as JSON from
stdin, so secret values never appear in an argument list.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from lab import PREFIX, REPO, LabError, netns

NAMESPACE = f"{PREFIX}aws"
LINK = f"{PREFIX}awsl"  # its link's name on the internet's side
ADDRESS = IPv4Interface("192.0.2.130/30")
ROUTER = IPv4Interface("192.0.2.129/30")
PORT = 80
ENDPOINT = f"http://{ADDRESS.ip}:{PORT}"
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
    }


def start() -> subprocess.Popen[bytes]:
    """moto's server in NAMESPACE; returns once it answers."""
    if not MOTO_SERVER.exists():
        raise LabError(f"{MOTO_SERVER} is missing (pip install 'moto[server]')")
    process = subprocess.Popen(
        netns.in_ns(NAMESPACE, [str(MOTO_SERVER), "-H", str(ADDRESS.ip), "-p", str(PORT)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=netns.clean_env(),
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        probe = netns.ns_run(
            NAMESPACE,
            [
                sys.executable,
                "-c",
                f"import socket; socket.create_connection(('{ADDRESS.ip}', {PORT}), 1)",
            ],
            check=False,
        )
        if probe.returncode == 0:
            return process
        if process.poll() is not None:
            raise LabError("moto's server (the lab's SSM and CloudWatch) exited at start")
        time.sleep(0.3)
    netns.stop(process)
    raise LabError(f"moto's server did not answer within {START_TIMEOUT:g} s")


def put_parameters(parameters: list[dict[str, str]]) -> None:
    """Stores {region, name, type, value} parameters, as `pulumi up` does in SSM."""
    netns.ns_run(
        NAMESPACE,
        [sys.executable, "-m", "lab.aws", "put"],
        input_text=json.dumps(parameters),
        env={"PYTHONPATH": str(REPO)},
    )


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

    for item in json.load(sys.stdin):
        client: Any = boto3.client(  # type: ignore[call-overload]
            "ssm", region_name=item["region"], endpoint_url=ENDPOINT, **_lower(CREDENTIALS)
        )
        client.put_parameter(
            Name=item["name"], Type=item["type"], Value=item["value"], Overwrite=True
        )


def _lower(credentials: dict[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in credentials.items()}


if __name__ == "__main__":
    commands = {"put": _put_from_stdin, "samples": _samples_from_stdin}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit("usage: python -m lab.aws put|samples < request.json")
    commands[sys.argv[1]]()
