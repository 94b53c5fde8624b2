"""A local lab: the stack's two sites, their gateways and the internet between them, in
network namespaces, built from the offline plan and checked with real traffic.

Everything the lab creates carries PREFIX in its name, so that `python -m lab down`
can find and remove it even after a crashed run without its state file.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "wgs2s-"
STATE_DIR = Path("/run/wg-site-to-site-lab")
STATE_FILE = STATE_DIR / "state.json"
NETNS_ETC = Path("/etc/netns")
WIREGUARD_RUN = Path("/var/run/wireguard")
# core.facts.PROBE_STATE_DIR: a gateway's role file and probe markers. Each gateway of a
# site with two gateways gets its own, bind-mounted over it (lab.build.run_dir).
GATEWAY_RUN = Path("/run/wg-site-to-site")
REPO = Path(__file__).resolve().parent.parent
LINK_NOTE = (
    "links: 9001-byte MTU everywhere; the internet drops packets over 1500 bytes;"
    " VPC routers do not decrement TTL (as AWS's), so traces show no router hops"
)


class LabError(Exception):
    """A problem the user can fix; the message is one line (or one line per problem)."""
