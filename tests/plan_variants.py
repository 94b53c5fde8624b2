"""Changes to the dev stack's config that tests plan and diff: the README's day-2 table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Config = dict[str, Any]


def _firewall_rule_added(config: Config) -> None:
    config["firewall"].append(
        {"description": "no rdp between sites", "protocol": "tcp", "port": 3389, "action": "drop"}
    )


def _firewall_rule_changed(config: Config) -> None:
    config["firewall"][0]["port"] = 2222


def _firewall_rule_removed(config: Config) -> None:
    config["firewall"] = []


def _keepalive(config: Config) -> None:
    config["tunnel"]["persistentKeepalive"] = 15


def _key_rotation(config: Config) -> None:
    config["tunnel"]["keyGeneration"] = config["tunnel"].get("keyGeneration", 1) + 1


def _mtu(config: Config) -> None:
    config["tunnel"]["mtu"] = 1380


def _preshared_key_off(config: Config) -> None:
    config["tunnel"]["presharedKey"] = False


def _tunnel_cidr(config: Config) -> None:
    config["tunnel"]["cidr"] = "10.255.254.0/31"


def _port(config: Config) -> None:
    config["tunnel"]["port"] = 51820


def _image(config: Config) -> None:
    site = config["sites"][0]
    site["image"] = "20990101" if site.get("image") != "20990101" else "20990102"


def _instance_type(config: Config) -> None:
    # arm64 -> x86: another image too.
    config["sites"][1]["instanceType"] = "t3.micro"


def _interface_name(config: Config) -> None:
    config["sites"][1]["interface"] = "wgC"


def _site_cidr(config: Config) -> None:
    config["sites"][1]["cidr"] = "10.3.0.0/16"


# Every change of the README's "Day 2" table (and the pre-shared key switched off), by a
# short name.
DAY2: dict[str, Callable[[Config], None]] = {
    "firewall-rule-added": _firewall_rule_added,
    "firewall-rule-changed": _firewall_rule_changed,
    "firewall-rule-removed": _firewall_rule_removed,
    "keepalive": _keepalive,
    "key-rotation": _key_rotation,
    "preshared-key-off": _preshared_key_off,
    "mtu": _mtu,
    "tunnel-cidr": _tunnel_cidr,
    "port": _port,
    "image": _image,
    "instance-type": _instance_type,
    "interface-name": _interface_name,
    "site-cidr": _site_cidr,
}
