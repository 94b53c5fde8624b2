"""The gateway's AWS call helper, run with sh against moto's server and a recorder."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pytest

from core.config import load_stack_config
from core.facts import gateway_facts
from core.render import render_aws_call
from tests.aws_stand_in import (
    CREDENTIALS,
    REGION,
    Recorder,
    boto_client,
    imds_routes,
    moto_endpoint,
    recorder,
    script_env,
)
from tests.conftest import stack_config

__all__ = ["moto_endpoint", "recorder"]  # fixtures

SECRET_VALUE = "not-a-real-key-but-secret-all-the-same="


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    alpha = gateway_facts(load_stack_config(stack_config("dev")), "dev")[0]
    assert alpha.site.region == REGION
    path = tmp_path_factory.mktemp("sbin") / "wg-site-to-site-aws"
    path.write_text(render_aws_call(alpha))
    return path


def call(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(script), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_get_parameter_with_decryption_returns_the_value(script, moto_endpoint):
    boto_client(moto_endpoint, "ssm").put_parameter(
        Name="/wg-site-to-site/test/alpha/wireguard-private-key",
        Value=SECRET_VALUE,
        Type="SecureString",
        Overwrite=True,
    )
    body = json.dumps(
        {"Name": "/wg-site-to-site/test/alpha/wireguard-private-key", "WithDecryption": True}
    )

    result = call(script, script_env(moto_endpoint), "ssm", "GetParameter", body)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Parameter"]["Value"] == SECRET_VALUE
    assert result.stderr == ""


def test_put_metric_data_is_seen_by_cloudwatch(script, moto_endpoint):
    form = (
        "Namespace=WgSiteToSiteCallTest&MetricData.member.1.MetricName=TunnelUp"
        "&MetricData.member.1.Value=1&MetricData.member.1.Unit=Count"
        "&MetricData.member.1.Dimensions.member.1.Name=Site"
        "&MetricData.member.1.Dimensions.member.1.Value=alpha"
    )

    result = call(script, script_env(moto_endpoint), "monitoring", "PutMetricData", form)

    assert result.returncode == 0, result.stderr
    cloudwatch = boto_client(moto_endpoint, "cloudwatch")
    listed = cloudwatch.list_metrics(Namespace="WgSiteToSiteCallTest")["Metrics"]
    assert [(m["MetricName"], m["Dimensions"]) for m in listed] == [
        ("TunnelUp", [{"Name": "Site", "Value": "alpha"}])
    ]
    now = datetime.datetime.now(datetime.UTC)
    data = cloudwatch.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "up",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "WgSiteToSiteCallTest",
                        "MetricName": "TunnelUp",
                        "Dimensions": [{"Name": "Site", "Value": "alpha"}],
                    },
                    "Period": 60,
                    "Stat": "Minimum",
                },
            }
        ],
        StartTime=now - datetime.timedelta(minutes=5),
        EndTime=now + datetime.timedelta(minutes=1),
    )
    assert data["MetricDataResults"][0]["Values"] == [1.0]


def test_missing_parameter_is_one_line_and_non_zero(script, moto_endpoint):
    body = json.dumps({"Name": "/wg-site-to-site/test/nope", "WithDecryption": True})

    result = call(script, script_env(moto_endpoint), "ssm", "GetParameter", body)

    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("wg-site-to-site-aws: ssm GetParameter failed: HTTP 400 ")
    assert "ParameterNotFound" in lines[0]


def test_query_protocol_error_is_one_line(script, moto_endpoint):
    # No Namespace: CloudWatch's Query protocol answers with an XML error.
    result = call(
        script, script_env(moto_endpoint), "monitoring", "PutMetricDataNope", "MetricData="
    )

    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("wg-site-to-site-aws: monitoring PutMetricDataNope failed: HTTP ")


def test_requests_are_signed_with_sigv4_and_the_session_token(script, recorder: Recorder):
    env = script_env(recorder.url)

    result = call(script, env, "ssm", "GetParameter", '{"Name":"/x"}')

    assert result.returncode == 0, result.stderr
    (request,) = recorder.requests
    today = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    assert request.method == "POST"
    assert request.headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={CREDENTIALS['AWS_ACCESS_KEY_ID']}/{today}/{REGION}/ssm/"
        "aws4_request, SignedHeaders="
    )
    assert request.headers["X-Amz-Target"] == "AmazonSSM.GetParameter"
    assert request.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert request.headers["X-Amz-Security-Token"] == CREDENTIALS["AWS_SESSION_TOKEN"]
    assert request.body == b'{"Name":"/x"}'


def test_query_requests_carry_action_and_version(script, recorder: Recorder):
    result = call(script, script_env(recorder.url), "monitoring", "PutMetricData", "Namespace=N")

    assert result.returncode == 0, result.stderr
    (request,) = recorder.requests
    assert "/monitoring/aws4_request" in request.headers["Authorization"]
    assert request.body == b"Action=PutMetricData&Version=2010-08-01&Namespace=N"


def test_credentials_come_from_imdsv2_without_env(script, recorder: Recorder):
    role_credentials = {
        "AccessKeyId": "ASIAFROMINSTANCEROLE",
        "SecretAccessKey": "instance-role-secret-do-not-print",
        "Token": "instance-role-session-token",
    }
    recorder.routes.update(imds_routes("alpha-gateway-role", role_credentials))
    env = script_env(recorder.url, WG_S2S_IMDS_ENDPOINT=recorder.url)
    for name in CREDENTIALS:
        del env[name]

    result = call(script, env, "ssm", "GetParameter", '{"Name":"/x"}')

    assert result.returncode == 0, result.stderr
    token_put, role_get, credentials_get, api = recorder.requests
    assert (token_put.method, token_put.path) == ("PUT", "/latest/api/token")
    assert "X-aws-ec2-metadata-token-ttl-seconds" in token_put.headers
    assert role_get.headers["X-aws-ec2-metadata-token"] == "imds-token-1"
    assert credentials_get.path.endswith("/alpha-gateway-role")
    assert api.headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=ASIAFROMINSTANCEROLE/"
    )
    assert api.headers["X-Amz-Security-Token"] == "instance-role-session-token"


def test_endpoint_comes_from_the_env_file_and_the_environment_wins(
    script, recorder: Recorder, moto_endpoint, tmp_path
):
    # The env file's path is fixed on the gateway; render a copy that reads ours.
    env_file = tmp_path / "aws.env"
    env_file.write_text(f"WG_S2S_ENDPOINT_SSM={recorder.url}\nPATH=/nowhere\n")
    copy = tmp_path / "wg-site-to-site-aws"
    copy.write_text(script.read_text().replace("/etc/wg-site-to-site/aws.env", str(env_file)))
    env = script_env(moto_endpoint)
    del env["WG_S2S_ENDPOINT_SSM"]

    assert call(copy, env, "ssm", "GetParameter", '{"Name":"/x"}').returncode == 0
    assert len(recorder.requests) == 1

    env["WG_S2S_ENDPOINT_SSM"] = moto_endpoint
    result = call(copy, env, "ssm", "GetParameter", '{"Name":"/x"}')
    assert "ParameterNotFound" in result.stderr  # moto answered, not the recorder
    assert len(recorder.requests) == 1


def test_http_error_never_shows_credentials(script, recorder: Recorder):
    recorder.routes[("POST", "/")] = (403, '{"__type":"AccessDenied","message":"nope"}')

    result = call(script, script_env(recorder.url), "ssm", "GetParameter", "{}")

    assert result.returncode == 1
    assert (
        result.stderr
        == "wg-site-to-site-aws: ssm GetParameter failed: HTTP 403 AccessDenied: nope\n"
    )
    for value in CREDENTIALS.values():
        assert value not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "args", [(), ("ssm", "GetParameter"), ("s3", "GetObject", "{}"), ("ssm", "Get;rm", "{}")]
)
def test_bad_usage_is_one_line_exit_2(script, args):
    result = call(script, script_env("http://127.0.0.1:9"), *args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("service", "action", "body", "sent"),
    [
        ("ssm", "GetParameter", '{"Name":"/x"}', b'{"Name":"/x"}'),
        (
            "monitoring",
            "PutMetricData",
            "Namespace=N",
            b"Action=PutMetricData&Version=2010-08-01&Namespace=N",
        ),
    ],
)
def test_signature_is_what_botocore_computes(
    script, recorder: Recorder, service, action, body, sent
):
    # moto checks no signature; botocore's own SigV4 over the same request does.
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    assert call(script, script_env(recorder.url), service, action, body).returncode == 0
    (request,) = recorder.requests
    headers = {k.lower(): v for k, v in request.headers.items()}
    authorization = headers["authorization"]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "x-amz-security-token" in signed
    expected = AWSRequest(
        method="POST",
        url=f"{recorder.url}/",
        data=sent,
        headers={name: headers[name] for name in signed},
    )
    expected.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(
        Credentials(
            CREDENTIALS["AWS_ACCESS_KEY_ID"],
            CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            CREDENTIALS["AWS_SESSION_TOKEN"],
        ),
        service,
        REGION,
    )
    string_to_sign = auth.string_to_sign(expected, auth.canonical_request(expected))
    assert request.body == sent
    assert authorization.endswith(f"Signature={auth.signature(string_to_sign, expected)}")
