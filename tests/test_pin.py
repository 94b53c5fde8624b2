"""`make pin`: the image and zone become reviewed values in the stack file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from plan.engine import STACKS, plan_stack
from tools import pin

SERIAL = {"arm64": "20251201", "amd64": "20251130.1"}


class FakeAws:
    """Real boto3 clients, answered by Stubber: Canonical's current image per arch."""

    def __init__(self) -> None:
        self.stubbers: list[Stubber] = []

    def __call__(self, service: str, region: str) -> Any:
        client = boto3.client(  # type: ignore[call-overload]
            service, region_name=region, aws_access_key_id="x", aws_secret_access_key="x"
        )
        stubber = Stubber(client)
        self.stubbers.append(stubber)
        if service == "ssm":
            original = client.get_parameter

            def get_parameter(**kwargs: Any) -> Any:
                arch = "arm64" if "/arm64/" in kwargs["Name"] else "amd64"
                stubber.add_response(
                    "get_parameter",
                    {"Parameter": {"Name": kwargs["Name"], "Value": f"ami-{arch}0123456789a"}},
                    {"Name": kwargs["Name"]},
                )
                return original(**kwargs)

            client.get_parameter = get_parameter
        else:
            original_images = client.describe_images

            def describe_images(**kwargs: Any) -> Any:
                arch = "arm64" if "arm64" in kwargs["ImageIds"][0] else "amd64"
                name = f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-{SERIAL[arch]}"
                stubber.add_response(
                    "describe_images",
                    {"Images": [{"ImageId": kwargs["ImageIds"][0], "Name": name}]},
                    kwargs,
                )
                return original_images(**kwargs)

            original_offerings = client.describe_instance_type_offerings

            def describe_instance_type_offerings(**kwargs: Any) -> Any:
                zones = [f"{region}c", f"{region}b"]
                stubber.add_response(
                    "describe_instance_type_offerings",
                    {"InstanceTypeOfferings": [{"Location": z} for z in zones]},
                    kwargs,
                )
                return original_offerings(**kwargs)

            client.describe_images = describe_images
            client.describe_instance_type_offerings = describe_instance_type_offerings
        stubber.activate()
        return client


@pytest.fixture
def stacks(tmp_path: Path) -> Path:
    shutil.copytree(STACKS, tmp_path / "stacks")
    return tmp_path / "stacks"


def _unpin(path: Path, site: str | None = None, keys: tuple[str, ...] = pin.KEYS) -> None:
    """Removes the pins (of one site, or all) from a copied stack file, as before make pin."""
    lines, current = [], None
    for line in path.read_text().splitlines(keepends=True):
        if line.strip().startswith("- name:"):
            current = line.split(":", 1)[1].strip()
        if line.strip().split(":", 1)[0] in keys and site in (None, current):
            continue
        lines.append(line)
    path.write_text("".join(lines))


def test_pin_writes_image_and_zone_per_site_and_nothing_else(stacks: Path) -> None:
    _unpin(stacks / "Pulumi.dev.yaml")
    before = (stacks / "Pulumi.dev.yaml").read_text()

    report = pin.pin_stack("dev", FakeAws(), stacks)

    after = (stacks / "Pulumi.dev.yaml").read_text()
    assert report.splitlines() == [
        "site alpha: image 20251201, zone us-east-1b",
        "site beta: image 20251201, zone eu-west-1b",
    ]
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert added == [
        "      image: '20251201'",
        "      availabilityZone: us-east-1b",
        "      image: '20251201'",
        "      availabilityZone: eu-west-1b",
    ]
    # Comments survive; every old line is still there.
    assert all(line in after.splitlines() for line in before.splitlines())
    sites = yaml.safe_load(after)["config"]["wg-site-to-site:sites"]
    assert [s["image"] for s in sites] == ["20251201", "20251201"]


def test_a_pinned_stack_plans_with_exactly_the_pinned_build(stacks: Path) -> None:
    pin.pin_stack("single-region", FakeAws(), stacks)

    plan = plan_stack("single-region", stacks_dir=stacks)

    # x86 gateways get the amd64 build of that serial; nothing says "not pinned".
    assert plan.notes == []
    text = (stacks / "Pulumi.single-region.yaml").read_text()
    assert "image: '20251130.1'" in text


def test_pin_twice_changes_nothing_the_second_time(stacks: Path) -> None:
    _unpin(stacks / "Pulumi.dev.yaml")
    pin.pin_stack("dev", FakeAws(), stacks)
    once = (stacks / "Pulumi.dev.yaml").read_text()
    pin.pin_stack("dev", FakeAws(), stacks)
    assert (stacks / "Pulumi.dev.yaml").read_text() == once


def test_unknown_stack_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert pin.main(["no-such-stack"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config file for stack 'no-such-stack'" in err


# --- --check: the deploy workflow refuses an unpinned stack ------------------------------


def test_check_passes_the_committed_stacks(capsys: pytest.CaptureFixture[str]) -> None:
    for stack in ("dev", "single-region"):
        assert pin.main(["--check", stack]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"stacks/Pulumi.{stack}.yaml: every site pinned (")


def test_committed_stacks_pin_a_real_ubuntu_build_and_zone() -> None:
    for stack in ("dev", "single-region"):
        text = (STACKS / f"Pulumi.{stack}.yaml").read_text()
        sites = yaml.safe_load(text)["config"]["wg-site-to-site:sites"]
        for site in sites:
            # Quoted, as make pin writes it (YAML would read 20251212.1 as a float).
            assert f"      image: '{site['image']}'" in text
            assert site["availabilityZone"].startswith(site["region"])
            # The published list the serial was taken from is cited in the file.
            url = f"https://cloud-images.ubuntu.com/releases/noble/release-{site['image']}/"
            assert url in text


def test_check_refuses_an_unpinned_site_in_one_line_naming_make_pin(
    stacks: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _unpin(stacks / "Pulumi.dev.yaml", site="beta", keys=("image",))
    monkeypatch.setattr(pin, "STACKS", stacks)

    assert pin.main(["--check", "dev"]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "tools.pin: stacks/Pulumi.dev.yaml: sites[1] (beta) has no image: run make pin STACK=dev\n"
    )


def test_check_names_a_missing_zone_too(stacks: Path) -> None:
    _unpin(stacks / "Pulumi.single-region.yaml", site="prod", keys=("availabilityZone",))
    with pytest.raises(pin.Unpinned) as caught:
        pin.check_pinned("single-region", stacks)
    assert str(caught.value) == (
        "stacks/Pulumi.single-region.yaml: sites[0] (prod) has no availabilityZone: "
        "run make pin STACK=single-region"
    )


def test_check_of_a_bad_stack_file_is_one_line_and_exit_2(
    stacks: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = stacks / "Pulumi.dev.yaml"
    path.write_text(path.read_text() + "  wg-site-to-site:firewall: []\n")
    monkeypatch.setattr(pin, "STACKS", stacks)
    assert pin.main(["--check", "dev"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wg-site-to-site:firewall is given twice" in err


def _with_ha_stack(stacks: Path) -> Path:
    """The example stack with two gateways per site, copied beside the shipped ones."""
    path = stacks / "Pulumi.ha.yaml"
    shutil.copy(Path(__file__).resolve().parent / "stacks" / "Pulumi.ha.yaml", path)
    return path


def test_pin_writes_the_second_zone_of_a_site_with_two_gateways(stacks: Path) -> None:
    path = _with_ha_stack(stacks)
    _unpin(path)
    before = path.read_text()

    report = pin.pin_stack("ha", FakeAws(), stacks)

    # The stand-in offers zones c and b: the first zone b, the second another one, c.
    assert report.splitlines() == [
        "site alpha: image 20251201, zone us-east-1b, second zone us-east-1c",
        "site beta: image 20251201, zone eu-west-1b, second zone eu-west-1c",
    ]
    added = [line for line in path.read_text().splitlines() if line not in before.splitlines()]
    assert added == [
        "      image: '20251201'",
        "      availabilityZone: us-east-1b",
        "      secondAvailabilityZone: us-east-1c",
        "      image: '20251201'",
        "      availabilityZone: eu-west-1b",
        "      secondAvailabilityZone: eu-west-1c",
    ]
    # Pinned once, never moved: a second run keeps the file as it is.
    pinned = path.read_text()
    pin.pin_stack("ha", FakeAws(), stacks)
    assert path.read_text() == pinned


def test_check_names_a_missing_second_zone(stacks: Path) -> None:
    path = _with_ha_stack(stacks)
    assert pin.check_pinned("ha", stacks) == (
        "stacks/Pulumi.ha.yaml: every site pinned (alpha 20251212 us-east-1a us-east-1b, "
        "beta 20251212 eu-west-1a eu-west-1b)"
    )
    _unpin(path, site="beta", keys=("secondAvailabilityZone",))
    with pytest.raises(pin.Unpinned) as caught:
        pin.check_pinned("ha", stacks)
    assert str(caught.value) == (
        "stacks/Pulumi.ha.yaml: sites[1] (beta) has no secondAvailabilityZone: "
        "run make pin STACK=ha"
    )
