"""The README's advice on who may read the keys must not break `pulumi preview`.

Every preview decrypts the state's secrets (the engine reads the RandomBytes keys from
state to diff the SSM parameters), so advice that denies the preview role the secrets
provider would fail `preview.yml` on every pull request.
"""

from __future__ import annotations

import re

import yaml

from plan.engine import REPO

SECTION = "### Who can read the private keys"


def _section() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index(SECTION)
    end = readme.index("\n#", start + len(SECTION))
    return " ".join(readme[start:end].split())


def test_the_advice_lets_the_preview_role_decrypt_the_state_secrets():
    advice = _section()
    # What d82e7db's README told readers to do, in any wording close to it.
    denial = re.compile(r"preview role (no|not|never) (decrypt|kms:Decrypt)", re.IGNORECASE)
    assert not denial.search(advice), denial.search(advice)
    assert "the preview role must be able to decrypt the state's secrets" in advice
    # It still keeps the preview role away from the gateways' own keys in SSM.
    assert "The preview role can decrypt no gateway key" in advice


def test_the_preview_workflow_has_what_decrypting_the_state_needs():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "preview.yml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job.get("steps", [])]
    # pulumi/actions with `command: preview` runs `pulumi preview` for the stack.
    previews = [
        s
        for s in steps
        if str(s.get("uses", "")).startswith("pulumi/actions@")
        and s.get("with", {}).get("command") == "preview"
    ]
    assert previews
    for step in previews:
        env = step.get("env", {})
        # Pulumi Cloud's secrets provider (the access token) or the passphrase one.
        assert {"PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE"} <= env.keys(), env
