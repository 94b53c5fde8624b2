"""Tiny network tools the lab runs inside its namespaces (`python -m lab.agent ...`).

`serve` answers on TCP and UDP ports and tells each client what it saw: the peer's
address and the sha256 of the bytes received. `send` connects, sends a number of bytes,
and prints one JSON line with its own sha256 and the server's report, so a check can
compare both ends without reading the server's output.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import hashlib
import json
import random
import select
import socket
import socketserver
import struct
import sys
import threading
import time
from typing import Any

CHUNK = 1 << 16


class _Tcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        connection: socket.socket = self.request
        digest, count = hashlib.sha256(), 0
        buffer = bytearray(CHUNK)
        while True:
            size = connection.recv_into(buffer)
            if not size:
                break
            digest.update(memoryview(buffer)[:size])
            count += size
        report = {"peer": self.client_address[0], "bytes": count, "sha256": digest.hexdigest()}
        connection.sendall(json.dumps(report).encode() + b"\n")


class _Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        report = {"peer": self.client_address[0], "bytes": len(data)}
        sock.sendto(json.dumps(report).encode(), self.client_address)


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(tcp_ports: list[int], udp_ports: list[int]) -> None:
    servers: list[socketserver.BaseServer] = [_TcpServer(("0.0.0.0", p), _Tcp) for p in tcp_ports]  # noqa: S104
    servers += [socketserver.UDPServer(("0.0.0.0", p), _Udp) for p in udp_ports]  # noqa: S104
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    # Runs until the lab stops it.
    threading.Event().wait()


def _status(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    # ENOTCONN is a refusal too: when the ICMP or RST lands while connect() is still
    # being resolved, CPython can read SO_ERROR as 0 and report success on a socket the
    # kernel has already closed; the next call (shutdown) then fails with ENOTCONN.
    if error.errno in (errno.ECONNREFUSED, errno.ENOTCONN):
        return "refused"
    if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return f"error {error.errno}"


def send(host: str, port: int, size: int, rate: float, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + timeout
    result: dict[str, Any] = {"sent_bytes": 0}
    digest = hashlib.sha256()
    # Not secret, only varied: random enough that compression or caching cannot help.
    source = random.Random(port)  # noqa: S311
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)) as connection:
            result["status"] = "connected"
            sent = 0
            while sent < size:
                chunk = source.randbytes(min(CHUNK, size - sent))
                connection.settimeout(max(deadline - time.monotonic(), 0.001))
                connection.sendall(chunk)
                digest.update(chunk)
                sent += len(chunk)
                result["sent_bytes"] = sent
                if rate > 0:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            connection.shutdown(socket.SHUT_WR)
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            reply = b""
            while not reply.endswith(b"\n"):
                part = connection.recv(4096)
                if not part:
                    break
                reply += part
            result["server"] = json.loads(reply) if reply else None
            result["status"] = "done"
    except OSError as error:
        result["status"] = _status(error)
    result["sha256"] = digest.hexdigest()
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def udp_probe(host: str, port: int, timeout: float) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            sock.send(b"lab probe")
            reply = sock.recv(4096)
        except OSError as error:
            return {"status": _status(error)}
    return {"status": "done", "server": json.loads(reply)}


# linux/in.h and linux/errqueue.h: the socket module does not name these.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2  # set DF, never fragment locally
IP_RECVERR = 11
IP_MTU = 14
SO_EE_ORIGIN_ICMP = 2
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err


def udp_df(host: str, port: int, size: int, timeout: float) -> dict[str, Any]:
    """One UDP datagram of `size` bytes with DF set; reports the ICMP error that came
    back for it (IP_RECVERR puts it on the socket's error queue), and the path MTU the
    kernel learnt, which only an admitted "fragmentation needed" can have lowered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.connect((host, port))
        result: dict[str, Any] = {"sent_bytes": 0, "icmp": None}
        try:
            result["sent_bytes"] = sock.send(b"\0" * size)
        except OSError as error:
            # E.g. EPERM: the host's own security group let nothing out.
            result["status"] = _status(error)
            return result
        # poll, not select: an error queue shows as POLLERR, which select's sets omit.
        poller = select.poll()
        poller.register(sock, select.POLLERR)
        if poller.poll(int(timeout * 1000)):
            _, ancillary, _, _ = sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
            for level, kind, data in ancillary:
                if level != socket.IPPROTO_IP or kind != IP_RECVERR:
                    continue
                errno_, origin, type_, code, _, info, _ = _EXTENDED_ERR.unpack_from(data)
                offender = socket.inet_ntoa(data[_EXTENDED_ERR.size + 4 : _EXTENDED_ERR.size + 8])
                if origin == SO_EE_ORIGIN_ICMP:
                    result["icmp"] = {
                        "type": type_,
                        "code": code,
                        "mtu": info,
                        "errno": errno_,
                        "from": offender,
                    }
        result["path_mtu"] = sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
        try:
            sock.send(b"\0" * size)
            result["resend"] = "sent"
        except OSError as error:
            result["resend"] = "EMSGSIZE" if error.errno == errno.EMSGSIZE else _status(error)
        result["status"] = "frag-needed" if result["icmp"] else "no-error"
    return result


# Legacy ethtool ioctls (linux/ethtool.h); the lab machine has no ethtool binary.
SIOCETHTOOL = 0x8946
ETHTOOL_STSO = 0x1F
ETHTOOL_SGSO = 0x24
ETHTOOL_SGRO = 0x2C


def offloads_off(devices: list[str]) -> None:
    """Turns off segmentation offloads, so that what a device sends is what a wire would
    carry: one packet per MTU-sized segment, which the internet's length limit can judge.
    A 64 KB TSO super-packet would otherwise reach it whole and be dropped whole."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for device in devices:
            for command in (ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SGRO):
                value = ctypes.create_string_buffer(struct.pack("II", command, 0))
                request = struct.pack("16sP", device.encode(), ctypes.addressof(value))
                fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.agent")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve")
    serve_cmd.add_argument("--tcp", type=int, action="append", default=[])
    serve_cmd.add_argument("--udp", type=int, action="append", default=[])
    send_cmd = commands.add_parser("send")
    send_cmd.add_argument("host")
    send_cmd.add_argument("port", type=int)
    send_cmd.add_argument("--bytes", type=int, default=0)
    send_cmd.add_argument("--rate", type=float, default=0.0, help="bytes per second")
    send_cmd.add_argument("--timeout", type=float, default=10.0)
    udp_cmd = commands.add_parser("udp")
    udp_cmd.add_argument("host")
    udp_cmd.add_argument("port", type=int)
    udp_cmd.add_argument("--timeout", type=float, default=2.0)
    df_cmd = commands.add_parser("udp-df")
    df_cmd.add_argument("host")
    df_cmd.add_argument("port", type=int)
    df_cmd.add_argument("--bytes", type=int, default=2000)
    df_cmd.add_argument("--timeout", type=float, default=2.0)
    offload_cmd = commands.add_parser("offloads-off")
    offload_cmd.add_argument("devices", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "offloads-off":
        offloads_off(args.devices)
    elif args.command == "serve":
        serve(args.tcp, args.udp)
    elif args.command == "udp-df":
        print(json.dumps(udp_df(args.host, args.port, args.bytes, args.timeout)))
    elif args.command == "send":
        print(json.dumps(send(args.host, args.port, args.bytes, args.rate, args.timeout)))
    else:
        print(json.dumps(udp_probe(args.host, args.port, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
