"""`make site-bundle STACK=x SITE=office`: everything a site outside AWS needs, in
out/<stack>/<site>/ (see README, "Connect an office").

The office's gateway runs the same apply and check scripts as an AWS gateway, reading its
desired state from the bundle instead of SSM. What only exists once the stack is deployed
comes from there, with the operator's own access:
- each AWS peer's public key and Elastic IP: the stack's plain outputs
  (`pulumi stack output sites --json`, never `--show-secrets`);
- each pair's pre-shared key: the AWS peer's own copy in SSM Parameter Store
  (/wg-site-to-site/<stack>/<aws site>/<office>/wireguard-preshared-key, in the AWS site's
  region), read with boto3. It goes only into a 0600 file of the bundle; it is never
  printed.
The office's private key is not in the bundle: install.sh makes it on the office.

Refused in one line, exit 2, with nothing written: an unknown stack or site, an AWS site,
no `pulumi` CLI, no AWS credentials (when the pairs use pre-shared keys), a missing output
or parameter.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
from botocore.exceptions import BotoCoreError, ClientError

from core import stack_file
from core.config import (
    ConfigError,
    StackConfig,
    load_stack_config,
    project_config_from_stack_file,
)
from core.facts import GatewayFacts, gateway_facts
from core.keys import is_key
from core.render import PeerEndpoint, SiteBundle, configured_endpoint, render_site_bundle

REPO = Path(__file__).resolve().parent.parent
STACKS = REPO / "stacks"
OUT = REPO / "out"
ME = "tools.site_bundle"
PULUMI_TIMEOUT_SECONDS = 120

ClientFactory = Callable[[str, str], Any]  # (service, region) -> a boto3 client


class BundleError(Exception):
    """One line saying what is wrong; nothing was written."""


def _boto3_client(service: str, region: str) -> Any:
    import boto3

    return boto3.session.Session().client(service, region_name=region)  # type: ignore[call-overload]


def have_credentials() -> bool:
    """Whatever botocore would sign with: environment, shared files, SSO, instance role."""
    try:
        return botocore.session.Session().get_credentials() is not None
    except BotoCoreError:
        return False


def read_config(stack: str, stacks: Path) -> StackConfig:
    path = stacks / f"Pulumi.{stack}.yaml"
    shown = f"{stacks.name}/{path.name}"
    if not path.is_file():
        raise BundleError(f"no config file for stack {stack!r}: {shown} does not exist")
    try:
        document = stack_file.parse(path.read_text())
        return load_stack_config(project_config_from_stack_file(document))
    except stack_file.StackFileError as error:
        raise BundleError(f"{shown}: {error.problems[0]}") from None
    except ConfigError as error:
        raise BundleError(f"{shown}: {error.problems[0]}") from None


def office_facts(
    config: StackConfig, stack: str, site: str
) -> tuple[GatewayFacts, dict[str, GatewayFacts]]:
    """The office's facts, and every site's by name; BundleError for a site that is not
    in the stack or is in AWS."""
    every = {facts.name: facts for facts in gateway_facts(config, stack)}
    if site not in every:
        raise BundleError(f"site {site!r} is not in stack {stack} (sites: {', '.join(every)})")
    facts = every[site]
    if facts.is_aws:
        outside = [name for name, f in every.items() if not f.is_aws]
        raise BundleError(
            f"site {site!r} is an AWS site: pulumi up configures its gateway; a bundle is for "
            f"a site outside AWS (external: {', '.join(outside) or 'none in this stack'})"
        )
    return facts, every


def find_pulumi() -> str:
    executable = shutil.which("pulumi")
    if executable is None:
        raise BundleError(
            "the Pulumi CLI is not installed (https://www.pulumi.com/docs/install/); the AWS "
            "peers' public keys and addresses come from the stack's outputs; nothing was written"
        )
    return executable


def stack_outputs(pulumi: str, stack: str) -> dict[str, Any]:
    """`sites` of the stack's plain outputs (no secret is asked for)."""
    try:
        result = subprocess.run(
            [pulumi, "stack", "output", "sites", "--json", "--stack", stack, "--non-interactive"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=PULUMI_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise BundleError(
            f"`pulumi stack output sites` gave no answer in {PULUMI_TIMEOUT_SECONDS} s"
        ) from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise BundleError(
            f"`pulumi stack output sites --stack {stack}` failed: "
            + (lines[-1].strip() if lines else f"exit {result.returncode}")
        )
    try:
        sites = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise BundleError(
            f"`pulumi stack output sites --stack {stack}` did not print JSON"
        ) from None
    if not isinstance(sites, dict):
        raise BundleError(f"stack {stack}'s output `sites` is not a mapping of site names")
    return sites


def aws_endpoint(outputs: dict[str, Any], stack: str, peer: str) -> PeerEndpoint:
    """An AWS peer's public key and Elastic IP from the stack's output `sites.<peer>`."""
    site = outputs.get(peer)
    if not isinstance(site, dict):
        raise BundleError(
            f"stack {stack}'s output sites has no {peer!r}: run pulumi up for the stack first"
        )
    key, address = site.get("publicKey"), site.get("publicIp")
    if not isinstance(key, str) or not is_key(key):
        raise BundleError(f"stack {stack}'s output sites.{peer}.publicKey is not a WireGuard key")
    try:
        ipaddress.IPv4Address(address if isinstance(address, str) else "")
    except ValueError:
        raise BundleError(
            f"stack {stack}'s output sites.{peer}.publicIp is not an IPv4 address"
        ) from None
    return PeerEndpoint(public_key=key, public_ip=address)


def endpoints(
    facts: GatewayFacts, every: dict[str, GatewayFacts], outputs: dict[str, Any], stack: str
) -> dict[str, PeerEndpoint]:
    found = {}
    for peer in facts.peers:
        if every[peer.name].is_aws:
            found[peer.name] = aws_endpoint(outputs, stack, peer.name)
        else:
            found[peer.name] = configured_endpoint(peer)
    return found


def preshared_keys(
    facts: GatewayFacts, every: dict[str, GatewayFacts], client: ClientFactory
) -> dict[str, str]:
    """peer -> the pair's pre-shared key, from the AWS peer's copy in its region."""
    keys: dict[str, str] = {}
    if not facts.preshared_key:
        return keys
    for peer in facts.peers:
        if not every[peer.name].is_aws:
            raise BundleError(
                f"site {facts.name}'s peer {peer.name} is outside AWS too: the pair has no "
                "pre-shared key in SSM; connect offices through an AWS hub "
                "(topology.hub) or turn tunnel.presharedKey off"
            )
    clients: dict[str, Any] = {}
    for peer in facts.peers:
        aws_peer = every[peer.name]
        region = aws_peer.site.aws_region
        name = aws_peer.peer(facts.name).psk_parameter_name
        if region not in clients:
            clients[region] = client("ssm", region)
        try:
            answer = clients[region].get_parameter(Name=name, WithDecryption=True)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "error")
            raise BundleError(
                f"cannot read SSM parameter {name} in {region}: {code} (the pair's pre-shared "
                "key: run pulumi up first, and read it as the deployer)"
            ) from None
        except BotoCoreError as error:
            raise BundleError(f"cannot read SSM parameter {name} in {region}: {error}") from None
        value = str(answer.get("Parameter", {}).get("Value", "")).strip()
        if not is_key(value):
            # Never the value itself: it is a secret, right or wrong.
            raise BundleError(f"SSM parameter {name} in {region} does not hold a WireGuard key")
        keys[peer.name] = value
    return keys


def _write(root: Path, relative: str, text: str, mode: int) -> None:
    path = root / relative
    # Every directory of the bundle is 0700: it holds the pairs' pre-shared keys.
    for parent in reversed(path.relative_to(root).parents[:-1]):
        directory = root / parent
        if not directory.is_dir():
            directory.mkdir()
            directory.chmod(0o700)
    # Created with its final mode: a key file is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def write_bundle(target: Path, bundle: SiteBundle, keys: dict[str, str]) -> list[str]:
    """Writes the bundle into a fresh directory, then puts it in place of `target` in one
    rename (an older bundle is replaced whole). Returns the relative paths written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for relative, (text, mode) in bundle.files.items():
            _write(staging, relative, text, mode)
        for peer, relative in bundle.psk_paths.items():
            _write(staging, relative, keys[peer] + "\n", 0o600)
        old = target.parent / f".{target.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted([*bundle.files, *bundle.psk_paths.values()])


def make_bundle(
    stack: str,
    site: str,
    *,
    stacks: Path = STACKS,
    out: Path = OUT,
    client: ClientFactory | None = None,
) -> tuple[Path, list[str]]:
    """Checks everything, fetches the deploy-time values, then writes. BundleError on any
    problem, before anything is written."""
    config = read_config(stack, stacks)
    facts, every = office_facts(config, stack, site)
    pulumi = find_pulumi()
    if facts.preshared_key and client is None and not have_credentials():
        raise BundleError(
            "no AWS credentials (botocore found none in the environment, the shared files or "
            "an instance role); the pairs' pre-shared keys are in SSM; nothing was written"
        )
    peers = endpoints(facts, every, stack_outputs(pulumi, stack), stack)
    keys = preshared_keys(facts, every, client or _boto3_client)
    bundle = render_site_bundle(facts, peers)
    target = out / stack / site
    return target, write_bundle(target, bundle, keys)


def main(argv: list[str] | None = None, client: ClientFactory | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {ME}", description=__doc__.split("\n")[0])
    parser.add_argument("stack", help="a stack with a config file stacks/Pulumi.<stack>.yaml")
    parser.add_argument("site", help="a site of the stack outside AWS (with external)")
    parser.add_argument("--out", type=Path, default=OUT, help="where <stack>/<site>/ goes (out/)")
    args = parser.parse_args(argv)
    try:
        target, written = make_bundle(
            args.stack, args.site, stacks=STACKS, out=args.out, client=client
        )
    except BundleError as error:
        print(f"{ME}: {error}", file=sys.stderr)
        return 2
    print(f"site {args.site} of stack {args.stack}: {len(written)} files in {target}/")
    for relative in written:
        print(f"  {relative}")
    print(
        "copy it to the site's gateway (it holds the pairs' pre-shared keys: keep it private) "
        "and run its install.sh there as root"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
