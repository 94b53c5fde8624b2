"""The lab's offices: a site outside AWS is configured only by running its bundle's
install.sh in its gateway's namespace, as an office runs it on its Ubuntu router.

The bundle is what `make site-bundle` writes (core.render.render_site_bundle, written by
tools.site_bundle.write_bundle), with the AWS values the lab already holds in place of
the stack's outputs and SSM: each AWS peer's public key (from its planned private key)
and Elastic IP, and each pair's pre-shared key (the AWS peer's planned parameter).

The office makes its own key (`wg genkey`) and only its public half enters the stack. The
lab plays the office: `with_lab_keys` makes a key per office and puts its public half in
the config the lab plans, and the private half goes into the office gateway's
/etc/wireguard (0600) before install.sh runs, which then finds the key it expects.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.keys import public_key
from core.render import BUNDLE_INSTALL, PeerEndpoint, configured_endpoint, render_site_bundle
from lab import STATE_DIR, LabError, netns
from lab.state import State
from lab.topology import Office, Topology

INSTALL_TIMEOUT = 90.0


def with_lab_keys(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """`config` (project keys) with a key the lab makes for each office: the config to
    plan, and site -> private key (never printed; kept in memory and the office's 0600
    key file only)."""
    planned = copy.deepcopy(dict(config))
    keys: dict[str, str] = {}
    for site in planned.get("sites") or []:
        if isinstance(site, dict) and isinstance(site.get("external"), dict):
            private = netns.run(["wg", "genkey"]).stdout.strip()
            site["external"]["publicKey"] = public_key(private)
            keys[str(site["name"])] = private
    return planned, keys


def bundle_dir(office: Office) -> Path:
    return STATE_DIR / office.gateway.namespace / "bundle"


def write_office_bundle(topology: Topology, office: Office) -> Path:
    """The office's bundle as `make site-bundle` writes it, from the lab's AWS values."""
    from tools.site_bundle import write_bundle

    endpoints: dict[str, PeerEndpoint] = {}
    keys: dict[str, str] = {}
    for peer in office.facts.peers:
        member = topology.member(peer.name)
        if isinstance(member, Office):
            endpoints[peer.name] = configured_endpoint(peer)
            continue
        gateway = member.gateway
        endpoints[peer.name] = PeerEndpoint(
            public_key=public_key(gateway.private_key), public_ip=str(gateway.elastic_ip)
        )
        if office.facts.preshared_key:
            # The AWS peer's own copy of the pair's key, as the bundle tool reads it.
            name = member.facts.peer(office.name).psk_parameter_name
            if name not in gateway.parameters:
                raise LabError(f"plan: no SSM parameter {name} for site {office.name}'s bundle")
            keys[peer.name] = gateway.parameters[name][1]
    target = bundle_dir(office)
    write_bundle(target, render_site_bundle(office.facts, endpoints), keys)
    return target


def install(topology: Topology, office: Office, state: State, private_key: str) -> str:
    """Writes the office's own key, then runs its bundle's install.sh in the office
    gateway's namespace: nothing else configures it. Returns install.sh's last line."""
    from lab.build import etc_dir, host_run, in_etc, sbin_dir

    ns = office.gateway.namespace
    # A fresh Ubuntu router with wireguard-tools installed: /etc/wireguard (root only) and
    # /etc/sysctl.d exist, nothing in them. ip netns exec mounts these over /etc's.
    (etc_dir(ns) / "wireguard").mkdir(mode=0o700, parents=True, exist_ok=True)
    (etc_dir(ns) / "sysctl.d").mkdir(mode=0o755, parents=True, exist_ok=True)
    sbin_dir(ns).mkdir(mode=0o755, parents=True, exist_ok=True)
    key_file = in_etc(ns, office.facts.key_path)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(private_key + "\n")
    bundle = write_office_bundle(topology, office)
    result = host_run(
        ns,
        state,
        ["bash", str(bundle / BUNDLE_INSTALL)],
        timeout=INSTALL_TIMEOUT,
        check=False,
        aws_env=False,
    )
    said = result.stdout.strip().splitlines()
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        last = output[-1] if output else f"exit status {result.returncode}"
        raise LabError(f"site {office.name}: install.sh failed: {last}")
    return said[-1] if said else "install.sh said nothing"
