"""Loopback stand-ins for AWS for the gateway scripts' tests: moto's server and a recorder."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

REGION = "us-east-1"
# Dummy credentials: moto accepts any; the recorder checks they are used to sign.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAPROBETESTKEY0001",
    "AWS_SECRET_ACCESS_KEY": "probe-test-secret-access-key-do-not-print",
    "AWS_SESSION_TOKEN": "probe-test-session-token",
}
MOTO_SERVER = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "moto_server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on loopback for the session; its URL."""
    port = free_port()
    process = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def boto_client(endpoint: str, service: Literal["ssm", "cloudwatch"]) -> Any:
    import boto3

    session = boto3.Session(
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    return session.client(service, endpoint_url=endpoint)


def script_env(endpoint: str, **extra: str) -> dict[str, str]:
    """An environment for the gateway scripts: endpoints at `endpoint`, dummy credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WG_S2S_"))}
    env.update(CREDENTIALS)
    env["WG_S2S_ENDPOINT_SSM"] = endpoint
    env["WG_S2S_ENDPOINT_MONITORING"] = endpoint
    env.update(extra)
    return env


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """A loopback HTTP server that keeps every request and answers from `routes`."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    # (method, path) -> (status, body); anything else gets 200 and "{}".
    routes: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server_box: list[Recorder] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            rec = server_box[0]
            rec.requests.append(
                Recorded(self.command, self.path, {k: v for k, v in self.headers.items()}, body)
            )
            status, text = rec.routes.get((self.command, self.path), (200, "{}"))
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_box.append(Recorder(url=f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server_box[0]
    finally:
        server.shutdown()
        server.server_close()


def imds_routes(role: str, credentials: dict[str, str]) -> dict[tuple[str, str], tuple[int, str]]:
    """IMDSv2 answers for an instance with `role`."""
    return {
        ("PUT", "/latest/api/token"): (200, "imds-token-1"),
        ("GET", "/latest/meta-data/iam/security-credentials/"): (200, role),
        ("GET", f"/latest/meta-data/iam/security-credentials/{role}"): (
            200,
            json.dumps({"Code": "Success", "Type": "AWS-HMAC", **credentials}),
        ),
    }
