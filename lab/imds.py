"""An instance metadata service (IMDSv2) stand-in, for the gateway scripts' own calls.

As EC2 answers it: a PUT to /latest/api/token gives a session token, and a GET under
/latest/meta-data/ needs that token in X-aws-ec2-metadata-token, else 401
(https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-IMDS-new-instances.html).
Each asker gets its own instance's metadata, picked by its address.
"""

from __future__ import annotations

import http.server
import socketserver
from collections.abc import Callable, Mapping
from typing import Any

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path
METADATA_PREFIX = "/latest/meta-data/"


class _Server(http.server.ThreadingHTTPServer):
    def server_bind(self) -> None:
        # HTTPServer.server_bind names itself with socket.getfqdn(host), a reverse DNS
        # lookup: in a lab namespace it waits seconds for a resolver that is not there.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def server(
    address: tuple[str, int], token: str, metadata_for: Callable[[str], Mapping[str, str]]
) -> http.server.ThreadingHTTPServer:
    """A server on `address` answering each client address with `metadata_for(address)`
    (a path under /latest/meta-data/ -> value); not started."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            ok = self.path == TOKEN_PATH
            self._send(200 if ok else 404, token if ok else "")

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") != token:
                self._send(401, "")
                return
            mine = metadata_for(self.client_address[0])
            value = mine.get(self.path.removeprefix(METADATA_PREFIX))
            self._send(404, "") if value is None else self._send(200, value)

        def log_message(self, *_: Any) -> None:
            pass

    return _Server(address, Handler)
