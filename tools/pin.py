"""`make pin STACK=dev`: writes each site's current image and a zone into its stack file.

Rolling the gateway image becomes a one-line, reviewable diff (`image: '20251201'`) that
replaces the gateway with exactly that build; the zone, once written, never moves. Needs
AWS credentials that may read Canonical's public SSM parameters and describe images and
instance-type offerings in each site's region.

Only the `image` and `availabilityZone` lines of each site change (and a two-gateway
site's `secondAvailabilityZone`): the rest of the file, comments included, stays byte for
byte (the result is re-parsed and compared to prove it).

`python -m tools.pin --check STACK` needs nothing but the file: it exits 1 with one line
naming `make pin` if a site has no `image` (or, for a site whose subnets the program
makes, no `availabilityZone`; with `gateways: 2`, no `secondAvailabilityZone`).
deploy.yml runs it before `pulumi up`, since an unpinned site boots Canonical's newest
build, and every new build would replace the gateway.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import yaml

from core import stack_file
from core.config import (
    PROJECT,
    ConfigError,
    StackConfig,
    load_stack_config,
    project_config_from_stack_file,
)
from core.facts import CANONICAL_OWNER, architecture, image_serial, ubuntu_ami_parameter

STACKS = Path(__file__).resolve().parent.parent / "stacks"
SITES_KEY = f"{PROJECT}:sites"
KEYS = ("image", "availabilityZone", "secondAvailabilityZone")

ClientFactory = Callable[[str, str], Any]  # (service, region) -> a boto3 client


class PinError(Exception):
    """One line saying what is wrong."""


class Unpinned(PinError):
    """`--check`: a site has no image or zone (exit 1)."""


@dataclass(frozen=True)
class Pin:
    site: str
    image: str
    availability_zone: str | None  # None: the site uses an existing VPC (no subnets made)
    second_availability_zone: str | None = None  # the second gateway's (gateways: 2)


def _boto3_client(service: str, region: str) -> Any:
    return boto3.client(service, region_name=region)  # type: ignore[call-overload]


def resolve(site: dict[str, Any], client: ClientFactory) -> Pin:
    """Canonical's current build for the site's architecture, and a zone offering its type."""
    name, region = str(site["name"]), str(site["region"])
    instance_type = str(site.get("instanceType", "t4g.nano"))
    arch = architecture(instance_type)
    ssm, ec2 = client("ssm", region), client("ec2", region)
    try:
        ami = ssm.get_parameter(Name=ubuntu_ami_parameter(arch))["Parameter"]["Value"]
        images = ec2.describe_images(ImageIds=[ami], Owners=[CANONICAL_OWNER])["Images"]
        zone = second = None
        if not site.get("vpcId"):
            offerings = ec2.describe_instance_type_offerings(
                LocationType="availability-zone",
                Filters=[{"Name": "instance-type", "Values": [instance_type]}],
            )["InstanceTypeOfferings"]
            zones = sorted(o["Location"] for o in offerings)
            if not zones:
                raise PinError(f"site {name}: {instance_type} is not offered in {region}")
            zone = site.get("availabilityZone") or zones[0]  # a pinned zone never moves
            if site.get("gateways") == 2:
                # Another zone offering the type, as the program would choose it.
                others = [z for z in zones if z != zone]
                second = site.get("secondAvailabilityZone") or (others[0] if others else None)
                if second is None:
                    raise PinError(
                        f"site {name}: gateways 2 needs a second zone offering "
                        f"{instance_type}, and {region} offers it only in {zone}"
                    )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise PinError(f"site {name} ({region}): {error}") from None
    if len(images) != 1:
        raise PinError(f"site {name}: Canonical's current image {ami} is not visible in {region}")
    return Pin(
        site=name,
        image=image_serial(images[0]["Name"]),
        availability_zone=zone,
        second_availability_zone=second,
    )


def _site_blocks(lines: list[str]) -> dict[str, tuple[int, int, str]]:
    """site name -> (first line, end line, key indentation) within the sites list."""
    start = next(
        (i for i, line in enumerate(lines) if line.strip().startswith(f"{SITES_KEY}:")), None
    )
    if start is None:
        raise PinError(f"no `{SITES_KEY}:` list in the stack file")
    base = len(lines[start]) - len(lines[start].lstrip())
    blocks: dict[str, tuple[int, int, str]] = {}
    current: tuple[str, int, str] | None = None
    end = len(lines)
    for i in range(start + 1, len(lines)):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if line.strip() and not line.lstrip().startswith("#") and indent <= base:
            end = i
            break
        item = re.match(r"^(\s*)- name:\s*(\S+)\s*$", line)
        if item:
            if current:
                blocks[current[0]] = (current[1], i, current[2])
            current = (item[2].strip("'\""), i, item[1] + "  ")
    if current:
        blocks[current[0]] = (current[1], end, current[2])
    return blocks


def write_pins(text: str, pins: list[Pin]) -> str:
    """The stack file with each site's `image` and `availabilityZone` set, nothing else."""
    lines = text.splitlines(keepends=True)
    for pin in pins:
        blocks = _site_blocks(lines)
        if pin.site not in blocks:
            raise PinError(f"site {pin.site} is not a `- name: {pin.site}` entry")
        first, end, indent = blocks[pin.site]
        values = {
            "image": f"'{pin.image}'",
            "availabilityZone": pin.availability_zone,
            "secondAvailabilityZone": pin.second_availability_zone,
        }
        for key, value in values.items():
            found = [i for i in range(first, end) if re.match(rf"^{indent}{key}:", lines[i])]
            if value is None:
                continue
            new = f"{indent}{key}: {value}\n"
            if found:
                lines[found[0]] = new
            else:
                insert = first + 1
                while insert < end and lines[insert].startswith(indent) and lines[insert].strip():
                    insert += 1
                lines.insert(insert, new)
                first, end, indent = _site_blocks(lines)[pin.site]
    result = "".join(lines)
    _check_only_pins_changed(text, result, pins)
    return result


def _check_only_pins_changed(before: str, after: str, pins: list[Pin]) -> None:
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    for site in new["config"][SITES_KEY]:
        pin = next((p for p in pins if p.site == site["name"]), None)
        if pin is not None:
            assert site["image"] == pin.image
            if pin.availability_zone:
                assert site["availabilityZone"] == pin.availability_zone
            if pin.second_availability_zone:
                assert site["secondAvailabilityZone"] == pin.second_availability_zone
        for key in KEYS:
            site.pop(key, None)
    for site in old["config"][SITES_KEY]:
        for key in KEYS:
            site.pop(key, None)
    if old != new:
        raise PinError("the stack file's layout is not one this tool can edit safely")


def _read(path: Path) -> tuple[str, StackConfig]:
    """The file's text and document, its config validated; PinError on any problem."""
    text = path.read_text()
    try:
        document = stack_file.parse(text)
        config = load_stack_config(project_config_from_stack_file(document))
    except stack_file.StackFileError as error:
        raise PinError(f"{path}: {error.problems[0]}") from None
    except ConfigError as error:
        raise PinError(f"{path}: {error.problems[0]}") from None
    return text, config


def check_pinned(stack: str, stacks: Path = STACKS) -> str:
    """One line if every site of `stack` is pinned; PinError (Unpinned) naming those not."""
    path = stacks / f"Pulumi.{stack}.yaml"
    shown = f"{stacks.name}/{path.name}"
    if not path.is_file():
        raise PinError(f"no config file for stack {stack!r}: {shown} does not exist")
    _, config = _read(path)
    missing = []
    for index, site in enumerate(config.sites):
        keys = ["image"] * (site.image is None)
        if site.availability_zone is None and not site.uses_existing_vpc:
            keys.append("availabilityZone")
        if site.gateways == 2 and site.second_availability_zone is None:
            keys.append("secondAvailabilityZone")
        if keys:
            missing.append(f"sites[{index}] ({site.name}) has no {' and no '.join(keys)}")
    if missing:
        raise Unpinned(f"{shown}: {'; '.join(missing)}: run make pin STACK={stack}")
    pins = ", ".join(
        f"{site.name} {site.image}"
        + f" {site.availability_zone}" * bool(site.availability_zone)
        + f" {site.second_availability_zone}" * bool(site.second_availability_zone)
        for site in config.sites
    )
    return f"{shown}: every site pinned ({pins})"


def pin_stack(stack: str, client: ClientFactory = _boto3_client, stacks: Path = STACKS) -> str:
    """Resolves and writes the pins of `stack`; returns one line per site."""
    path = stacks / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise PinError(f"no config file for stack {stack!r}: {path} does not exist")
    text, _ = _read(path)
    sites = yaml.safe_load(text)["config"][SITES_KEY]
    pins = [resolve(site, client) for site in sites]
    path.write_text(write_pins(text, pins))
    return "\n".join(
        f"site {p.site}: image {p.image}"
        + (f", zone {p.availability_zone}" * bool(p.availability_zone))
        + (f", second zone {p.second_availability_zone}" * bool(p.second_availability_zone))
        for p in pins
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pin", description=__doc__)
    parser.add_argument("stack", help="a stack with a config file stacks/Pulumi.<stack>.yaml")
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing, exit 1 if a site has no image or zone (no AWS needed)",
    )
    args = parser.parse_args(argv)
    try:
        # The module's STACKS at call time (tests point it at a copy).
        if args.check:
            print(check_pinned(args.stack, STACKS))
        else:
            print(pin_stack(args.stack, stacks=STACKS))
    except Unpinned as error:
        print(f"tools.pin: {error}", file=sys.stderr)
        return 1
    except PinError as error:
        print(f"tools.pin: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
