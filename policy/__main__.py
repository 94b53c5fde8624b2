"""The Pulumi policy pack: `pulumi preview --policy-pack policy`.

The CLI runs this file from policy/, where the repository's packages are not on the
path; the rules are shared with `make policy`, so the root goes on it first.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi_policy

from policy.pack import PACK_NAME, policies

pulumi_policy.PolicyPack(
    name=PACK_NAME,
    enforcement_level=pulumi_policy.EnforcementLevel.MANDATORY,
    policies=policies(),
)
