"""A stand-in `pulumi` CLI for the tools that drive it (tools.ephemeral, tools.e2e): it
keeps its stacks in a JSON file ($FAKE_PULUMI_STATE), logs every call ($FAKE_PULUMI_LOG),
fails a command on request ($FAKE_PULUMI_FAIL, a prefix of the arguments) and answers
`stack output sites` from $FAKE_PULUMI_OUTPUTS."""

from __future__ import annotations

import json
from pathlib import Path

FAKE_PULUMI = """\
#!{python}
import json, os, sys
from pathlib import Path

args = [a for a in sys.argv[1:] if a != "--non-interactive"]
with open(os.environ["FAKE_PULUMI_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
state_file = Path(os.environ["FAKE_PULUMI_STATE"])
state = json.loads(state_file.read_text()) if state_file.exists() else {{"stacks": {{}}}}
stacks = state["stacks"]

def option(name):
    return args[args.index(name) + 1] if name in args else None

def fail(message, status=255):
    print("error: " + message, file=sys.stderr)
    sys.exit(status)

if os.environ.get("FAKE_PULUMI_FAIL") and " ".join(args).startswith(os.environ["FAKE_PULUMI_FAIL"]):
    if args[0] == "up":
        stacks[option("--stack")]["resources"] = 3  # partly created, then failed
        state_file.write_text(json.dumps(state))
    fail("failing as told", 1)
stack = option("--stack")
if args[:2] == ["stack", "ls"]:
    listed = [{{"name": "org/wg-site-to-site/" + n, "updateInProgress": s.get("busy", False)}}
              for n, s in stacks.items()]
    print(json.dumps(listed))
elif args[:2] == ["stack", "init"]:
    if args[2] in stacks:
        fail("stack '%s' already exists" % args[2])
    stacks[args[2]] = {{"tags": {{}}, "resources": 0}}
elif args[:3] == ["stack", "tag", "set"]:
    stacks[stack]["tags"][args[3]] = args[4]
elif args[:3] == ["stack", "tag", "ls"]:
    print(json.dumps(stacks[stack]["tags"]))
elif args[:2] == ["stack", "rm"]:
    if stack not in stacks:
        fail("no stack named '%s' found" % stack)
    if stacks[stack]["resources"]:
        fail("'%s' still has resources; removal rejected" % stack)
    del stacks[stack]
    if "--preserve-config" not in args:
        Path("stacks", "Pulumi.%s.yaml" % stack).unlink(missing_ok=True)
elif args[:3] == ["stack", "output", "sites"]:
    print(Path(os.environ["FAKE_PULUMI_OUTPUTS"]).read_text())
elif args[0] == "up":
    stacks[stack]["resources"] = 5
elif args[0] == "preview":
    pass  # --expect-no-changes: nothing changed
elif args[0] == "destroy":
    if stack not in stacks:
        fail("no stack named '%s' found" % stack)
    stacks[stack]["resources"] = 0
state_file.write_text(json.dumps(state))
"""


def logged_calls(log: Path) -> list[list[str]]:
    """Every call the stand-in took, as its argument lists, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]
