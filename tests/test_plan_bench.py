"""`make plan-bench` (plan/bench.py): its ten-site mesh, its figures and exit codes, and
the dashboard of that mesh (readable at ten sites). The timing itself is the README's
figure; here the runs are stood in for, so the suite stays fast."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from components.tunnel_health import dashboard_body
from core.config import load_stack_config
from core.facts import aws_gateway_facts
from plan import bench


def test_the_bench_mesh_is_ten_aws_sites_each_peering_with_every_other():
    config = load_stack_config(bench.mesh_config(10))
    facts = aws_gateway_facts(config, "bench")
    assert len(facts) == 10
    assert config.topology.hub is None
    assert all(len(gateway.peers) == 9 for gateway in facts)


def test_one_run_plans_the_mesh_as_make_plan_does(capsys):
    # Two sites keep this quick; the ten-site figure is the benchmark's.
    assert bench.main(["--once", "--sites", "2"]) == 0
    assert int(capsys.readouterr().out) > 50


def _stand_in(seconds: list[float], monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Runs that take `seconds` each (a fake clock) and answer like --once."""
    calls: list[list[str]] = []
    clock = iter(t for s in seconds for t in (0.0, s))

    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "1142\n", "")

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    return calls


def test_the_median_of_the_runs_is_reported_and_written(monkeypatch, tmp_path: Path, capsys):
    calls = _stand_in([3.0, 9.0, 4.0, 2.0, 4.5], monkeypatch)
    output = tmp_path / "plan-bench.json"

    status = bench.main(["--runs", "5", "--output", str(output)])

    assert status == 0
    assert len(calls) == 5 and all(c[-3:] == ["--once", "--sites", "10"] for c in calls)
    figures = json.loads(output.read_text())
    assert figures["median_seconds"] == 4.0
    assert figures["seconds"] == [3.0, 9.0, 4.0, 2.0, 4.5]
    assert figures["resources"] == 1142
    assert "median 4.00 s of 5 runs" in capsys.readouterr().out


def test_a_median_over_the_limit_fails(monkeypatch):
    _stand_in([5.5, 5.2, 4.0], monkeypatch)
    assert bench.main(["--runs", "3"]) == 1


@pytest.mark.parametrize(
    ("argv", "message"), [(["--runs", "0"], "at least 1"), (["--sites", "1"], "between 2")]
)
def test_bad_arguments_are_one_line_and_exit_2(argv, message, capsys):
    assert bench.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("python -m plan.bench: ") and message in line


def test_the_dashboard_of_ten_sites_is_a_row_each_with_a_line_per_peer():
    facts = list(aws_gateway_facts(load_stack_config(bench.mesh_config(10)), "bench"))
    widgets = dashboard_body("bench", facts)["widgets"]
    assert len(widgets) == 10 * 4
    rows = sorted({w["y"] for w in widgets})
    assert len(rows) == 10
    for widget in widgets:
        # Four widgets side by side fill the 24 grid columns; no widget narrower.
        assert widget["width"] == 6 and widget["x"] in (0, 6, 12, 18)
        site = widget["properties"]["title"].split(":")[0]
        peers = [line[7] for line in widget["properties"]["metrics"]]
        assert site not in peers
        assert len(set(peers)) == 9
        assert len(widget["properties"]["metrics"]) <= 18  # bytes: received and sent
