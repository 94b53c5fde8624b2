"""`python -m plan.bench [--sites 10] [--runs 5] [--output FILE]`: how long the offline plan
of an N-site AWS mesh takes (issue 15: 10 sites in at most 5 s, the median).

Each run is a fresh Python process doing what `make plan` does for a stack: validate the
config, run the program under the mock engine, and make the public document (the tree,
the cost). The figure is the wall time of that process, start to exit; the median of the
runs is printed and, with --output, written as JSON beside the lab's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LIMIT_SECONDS = 5.0
# Regions plan/cost.py prices, so the benchmark's plan has no unpriced line.
REGIONS = ("us-east-1", "eu-west-1", "eu-central-1")


def mesh_config(sites: int) -> dict[str, Any]:
    """A full mesh of `sites` AWS sites (the project's keys, as a stack file holds them)."""
    if not 2 <= sites <= 200:
        raise ValueError(f"--sites {sites}: between 2 and 200")
    return {
        # One address per site: a /24 holds 254.
        "tunnel": {"cidr": "10.255.255.0/24", "port": 51000, "persistentKeepalive": 25},
        "sites": [
            {
                "name": f"site{index:02d}",
                "region": REGIONS[index % len(REGIONS)],
                "cidr": f"10.{index + 1}.0.0/16",
                "interface": "wg0",
                "instanceType": "t4g.nano",
                "image": "20251212",
                "availabilityZone": f"{REGIONS[index % len(REGIONS)]}a",
            }
            for index in range(sites)
        ],
        "firewall": [
            {
                "description": "no ssh between sites",
                "protocol": "tcp",
                "port": 22,
                "action": "reject",
            }
        ],
        "deployer": "arn:aws:iam::123456789012:role/wg-site-to-site-deploy",
    }


def plan_once(sites: int) -> int:
    """One plan, as `make plan` makes it; returns the number of resources."""
    from plan import cost, document
    from plan.engine import run_program

    plan = run_program(f"bench-{sites}", mesh_config(sites))
    public = document.public_document(plan)
    cost.monthly_cost(public)
    return len(plan.resources)


def measure(sites: int, runs: int) -> dict[str, Any]:
    seconds = []
    resources = 0
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "plan.bench", "--once", "--sites", str(sites)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds.append(round(time.perf_counter() - start, 3))
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
        resources = int(done.stdout.strip() or 0)
    return {
        "sites": sites,
        "runs": runs,
        "resources": resources,
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "limit_seconds": LIMIT_SECONDS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plan.bench", description=__doc__)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.once:
            print(plan_once(args.sites))
            return 0
        if args.runs < 1:
            raise ValueError(f"--runs {args.runs}: at least 1")
        figures = measure(args.sites, args.runs)
    except (ValueError, RuntimeError) as error:
        print(f"python -m plan.bench: {error}", file=sys.stderr)
        return 2
    print(
        f"offline plan of a {figures['sites']}-site mesh ({figures['resources']} resources): "
        f"median {figures['median_seconds']:.2f} s of {figures['runs']} runs "
        f"({', '.join(f'{s:.2f}' for s in figures['seconds'])}), limit {LIMIT_SECONDS:.0f} s"
    )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["median_seconds"] <= LIMIT_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
