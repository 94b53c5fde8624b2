"""Every make target the README documents works as the README says (issue 13, "README
targets stay true").

The targets come from the README itself, its "Make targets" table and its "Local lab"
section, so a target added there without a test here fails
`test_every_documented_target_has_a_test`. How each is tested:

- run for real: `plan`, `policy`, `help`; as root, under the lab marker: `lab`, `lab-down`
  and `lab-bench` with one run;
- run up to their refusal, without AWS credentials and without the `pulumi` CLI on PATH:
  `pin`, `test-stack`, `test-stack-destroy`, `test-stack-sweep`, `e2e`, `site-bundle`
  (one line, no traceback, a non-zero exit);
- read with `make -n`, never run: `deps` (installs from the lock files), `clean` (removes
  only the project's own installs and caches: running it would delete the venv the suite
  runs from) and `test` (lint, types and pytest: what CI runs through `.ci/run`; running it
  here would run this suite inside itself).

Targets run with `-o deps`: `make test` installs the dependencies before pytest starts
(CI's fresh clone has fresh stamps), and a test must not reinstall into a virtualenv that
a git worktree may share with others. `test_targets_install_what_they_need` checks
that every target that runs code still depends on `deps`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

# Arguments a documented target needs, as the README's table gives them.
ARGS = {
    "plan": ["STACK=dev"],
    "policy": ["STACK=dev"],
    "pin": ["STACK=dev"],
    "lab": ["STACK=dev"],
    "lab-bench": ["STACK=dev", "RUNS=1"],
    "test-stack": ["NAME=maketargets", "BASE=dev"],
    "test-stack-destroy": ["NAME=maketargets"],
    "test-stack-sweep": [],
    "e2e": ["STACK=dev"],
    # dev has no site outside AWS: the tool refuses its AWS site in one line, before it
    # asks pulumi or AWS anything.
    "site-bundle": ["STACK=dev", "SITE=alpha"],
}
REAL = {"plan", "policy"}
LAB = {"lab", "lab-down", "lab-bench"}
# Target -> what its one line must say.
REFUSED = {
    "pin": re.compile(r"^tools\.pin: .*credentials", re.IGNORECASE),
    "test-stack": re.compile(r"^tools\.ephemeral: the Pulumi CLI is not installed"),
    "test-stack-destroy": re.compile(r"^tools\.ephemeral: the Pulumi CLI is not installed"),
    "test-stack-sweep": re.compile(r"^tools\.ephemeral: the Pulumi CLI is not installed"),
    "e2e": re.compile(r"^tools\.e2e: no AWS credentials"),
    "site-bundle": re.compile(r"^tools\.site_bundle: site 'alpha' is an AWS site"),
}
DRY = {"deps", "clean", "test", "plan-bench", "failover-bench"}
TESTED = REAL | LAB | set(REFUSED) | DRY
# make's own lines ("make: *** [Makefile:70: pin] Error 2"), not the tool's.
MAKE_LINE = re.compile(r"^make(\[\d+\])?: ")


def _section(text: str, title: str) -> str:
    start = re.search(rf"^## {re.escape(title)}.*$", text, re.MULTILINE)
    assert start, f"README has no section {title!r}"
    end = re.search(r"^## ", text[start.end() :], re.MULTILINE)
    return text[start.end() : start.end() + end.start()] if end else text[start.end() :]


def table_targets() -> list[str]:
    table = _section(README.read_text(), "Make targets")
    return re.findall(r"^\| `make ([a-z][a-z0-9-]*)", table, re.MULTILINE)


def documented_targets() -> list[str]:
    """The table's targets, and those the "Local lab" section shows (inline or as a
    command line of its indented block)."""
    lab = _section(README.read_text(), "Local lab")
    shown = re.findall(r"(?:`|^ {4})make ([a-z][a-z0-9-]*)", lab, re.MULTILINE)
    return sorted(set(table_targets()) | set(shown))


def environment(tmp: Path) -> dict[str, str]:
    """This environment without AWS credentials, without instance metadata (no network
    call), without the Pulumi CLI on PATH, and not inside another make."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PULUMI_", "MAKE")) and key != "MFLAGS"
    }
    env |= {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
    }
    path = env.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join(d for d in path if not (Path(d) / "pulumi").exists())
    assert shutil.which("pulumi", path=env["PATH"]) is None
    assert shutil.which("make", path=env["PATH"]), "make is not on PATH"
    return env


def make(env: dict[str, str], *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def run_target(env: dict[str, str], target: str, *extra: str, timeout: float = 300):
    return make(env, "-s", "-o", "deps", target, *ARGS.get(target, []), *extra, timeout=timeout)


def tool_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.strip() and not MAKE_LINE.match(line)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return environment(tmp_path_factory.mktemp("make-env"))


@pytest.fixture(scope="module")
def ran(env: dict[str, str]) -> dict[str, subprocess.CompletedProcess[str]]:
    """The non-lab targets, run side by side (each is its own process; on two cores this
    halves the wait)."""
    targets = sorted(REAL | set(REFUSED))
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        results = pool.map(lambda target: run_target(env, target), targets)
        return dict(zip(targets, results, strict=True))


def test_the_readme_table_is_read() -> None:
    # A parse that finds nothing would make every test below pass over nothing.
    assert len(table_targets()) >= 10, table_targets()
    assert {"plan", "lab", "lab-bench", "test"} <= set(documented_targets())


def test_every_documented_target_has_a_test() -> None:
    missing = sorted(set(documented_targets()) - TESTED)
    assert not missing, f"documented in README.md but not tested here: {missing}"
    stale = sorted(TESTED - set(documented_targets()))
    assert not stale, f"tested here but no longer documented in README.md: {stale}"


def test_help_lists_every_documented_target(env: dict[str, str]) -> None:
    result = make(env, "-s", "help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert set(documented_targets()) <= listed, result.stdout
    # `make` alone shows the same list.
    assert make(env, "-s").stdout == result.stdout


def test_targets_install_what_they_need(env: dict[str, str]) -> None:
    # `make -n -B` prints every recipe the target would run, its prerequisites' included.
    for target in sorted(REAL | LAB | set(REFUSED) | {"test"}):
        dry = make(env, "-n", "-B", target, *ARGS.get(target, []))
        assert dry.returncode == 0, dry.stderr
        assert "pip install" in dry.stdout and "-r requirements.lock" in dry.stdout, target
        assert "npm ci" in dry.stdout, target


def test_make_plan(ran: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = ran["plan"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Plan of stack dev"), result.stdout[:200]
    assert re.search(r"^\d+ resources: \d+ cloud resources", result.stdout, re.MULTILINE)
    assert "Traceback" not in result.stderr


def test_make_policy(ran: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = ran["policy"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^stack dev: all \d+ mandatory policies pass", result.stdout, re.MULTILINE)


@pytest.mark.parametrize("target", sorted(REFUSED))
def test_make_refuses_in_one_line(
    target: str, ran: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = ran[target]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = tool_lines(result)
    assert len(lines) == 1, output
    assert REFUSED[target].match(lines[0]), lines[0]
    # Nothing was written for the refused ephemeral stack.
    assert not (REPO / "stacks" / "Pulumi.test-maketargets.yaml").exists()


def test_make_deps_installs_from_the_lock_files(env: dict[str, str]) -> None:
    dry = make(env, "-n", "-B", "deps")
    assert dry.returncode == 0, dry.stderr
    assert "apt-get install" in dry.stdout
    assert re.search(r"pip install .*-r requirements\.lock", dry.stdout), dry.stdout
    # pip leaves byte-compiling to compileall, which uses every core.
    assert "--no-compile" in dry.stdout and "-m compileall -q -j0" in dry.stdout
    assert "npm ci" in dry.stdout


def test_make_clean_removes_only_the_projects_installs_and_caches(env: dict[str, str]) -> None:
    dry = make(env, "-n", "clean")
    assert dry.returncode == 0, dry.stderr
    (command,) = dry.stdout.splitlines()
    assert command.startswith("rm -rf ")
    removed = set(command.removeprefix("rm -rf ").split())
    assert {".venv", "node_modules", ".pytest_cache", ".mypy_cache", ".ruff_cache"} <= removed
    for path in removed:
        # Relative, inside the checkout, no glob: nothing else can go.
        assert not os.path.isabs(path) and ".." not in Path(path).parts, path
        assert not set("*?[$") & set(path), path


def test_make_plan_bench_runs_the_benchmark_with_its_defaults(env: dict[str, str]) -> None:
    # Its own figures come from tests/test_plan_bench.py and the README; here, the recipe.
    dry = make(env, "-n", "-o", "deps", "plan-bench")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == (
        ".venv/bin/python -m plan.bench --sites 10 --runs 5 --output build/plan-bench.json"
    )
    dry = make(env, "-n", "-o", "deps", "plan-bench", "SITES=4", "RUNS=1")
    assert "--sites 4 --runs 1" in dry.stdout, dry.stdout


def test_make_failover_bench_runs_the_failover_command_then_takes_the_lab_down(
    env: dict[str, str],
) -> None:
    # The command itself runs in tests/lab/test_failover.py (its lines, on both sites); here,
    # the recipe: the HA example stack, five runs, and the lab down whatever the result.
    dry = make(env, "-n", "-o", "deps", "failover-bench")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == (
        ".venv/bin/python -m lab failover tests/stacks/Pulumi.ha.yaml --runs 5; status=$?;"
        " .venv/bin/python -m lab down > /dev/null; exit $status"
    )
    dry = make(env, "-n", "-o", "deps", "failover-bench", "FAILOVER_STACK=x.yaml", "RUNS=1")
    assert "-m lab failover x.yaml --runs 1;" in dry.stdout, dry.stdout


def test_make_test_is_what_ci_runs(env: dict[str, str]) -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^exec make test$", ci, re.MULTILINE), ci
    # `make -n` still runs a recipe line that calls $(MAKE): the test recipe must have none,
    # or this dry run would run the whole suite (and its lab) inside this test.
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe, "no test target in the Makefile"
    assert "MAKE" not in recipe[1], recipe[1]
    dry = make(env, "-n", "-o", "deps", "test")
    assert dry.returncode == 0, dry.stderr
    script = dry.stdout
    for command in (
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy .",
        '.venv/bin/python -m pytest -m "not lab"',
        ".venv/bin/python -m pytest -m lab",
    ):
        assert command in script, (command, script)
    # The two pytest runs split the suite by the marker, so together they run every test,
    # and the target fails when either does.
    assert "test $lab -eq 0 && test $rest -eq 0" in script, script


# --- the lab's targets: root, the lab marker, and the lab left down -------------------


@pytest.fixture
def no_lab() -> Iterator[None]:
    from lab.build import leftovers
    from lab.lifecycle import down
    from tests.lab.support import require_root

    require_root()
    assert not leftovers(), f"leftovers from an earlier lab: {leftovers()}"
    try:
        yield
    finally:
        if leftovers():
            down()


@pytest.mark.lab
def test_make_lab_then_lab_down(no_lab: None, env: dict[str, str]) -> None:
    from lab.build import leftovers

    try:
        up = run_target(env, "lab")
        assert up.returncode == 0, up.stdout + up.stderr
        assert re.search(r"^first reply through the tunnel [\d.]+ s after start$", up.stdout, re.M)
        assert re.search(r"^\d+ checks passed$", up.stdout, re.MULTILINE), up.stdout
        assert leftovers(), "make lab left no lab up"
    finally:
        down = run_target(env, "lab-down")
    assert down.returncode == 0, down.stderr
    assert re.fullmatch(r"lab removed \(\d+ items\)\n", down.stdout), down.stdout
    assert not leftovers()
    again = run_target(env, "lab-down")
    assert (again.returncode, again.stdout) == (0, "no lab was up\n")


@pytest.mark.lab
def test_make_lab_bench_one_run(no_lab: None, env: dict[str, str], tmp_path: Path) -> None:
    from lab.build import leftovers

    output = tmp_path / "bench.json"
    result = run_target(env, "lab-bench", f"BENCH_JSON={output}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "median of 1 runs" in result.stdout, result.stdout
    document = json.loads(output.read_text())
    (run,) = document["runs"]
    assert run["tunnel_mbit_s"] > 0 and run["plain_mbit_s"] > 0, run
    assert run["first_reply_s"] > 0 and run["teardown_s"] > 0, run
    # And as many runs of a 4-site mesh: the first reply on each of its 12 directed pairs.
    assert document["four_sites"]["sites"] == ["alpha", "beta", "gamma", "delta"]
    (four,) = document["four_sites"]["runs"]
    assert four["pairs"] == 12 and four["first_reply_every_pair_s"] > 0, four
    assert "4 sites: start of up -> first reply on all 12 pairs" in result.stdout
    assert not leftovers()
