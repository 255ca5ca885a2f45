"""``raysched replay`` as a user runs it: a subprocess, exit codes and the JSON summary. The
virtual clock needs no Ray."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "raysched" / "data" / "example_trace.jsonl"
SUMMARY_KEYS = {
    "policy",
    "clock",
    "workers",
    "tasks",
    "completed",
    "mean_jct_s",
    "p50_jct_s",
    "p99_jct_s",
    "max_wait_s",
    "preemptions",
    "by_tier",
    "by_tenant",
}


def raysched(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("raysched")
    cmd = [exe] if exe else [sys.executable, "-c", "from raysched.cli import main; main()"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


def test_example_trace_exists() -> None:
    assert EXAMPLE.is_file()
    assert sum(1 for line in EXAMPLE.read_text().splitlines() if line.strip()) == 400


@pytest.mark.parametrize("policy", ["mlfq", "srpt"])
def test_replay_json_summary(policy: str) -> None:
    proc = raysched("replay", str(EXAMPLE), "--policy", policy, "--json")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    s = json.loads(last)
    assert set(s) == SUMMARY_KEYS
    assert s["policy"] == policy and s["clock"] == "virtual" and s["workers"] == 4
    assert s["tasks"] == s["completed"] == 400
    assert set(s["by_tier"]) == {"interactive", "batch"}
    for d in s["by_tier"].values():
        assert set(d) == {"tasks", "mean_jct_s", "p99_jct_s", "p99_wait_s"}
    for d in s["by_tenant"].values():
        assert set(d) == {"tasks", "service_s"}
    assert all(
        isinstance(s[k], float) for k in ("mean_jct_s", "p50_jct_s", "p99_jct_s", "max_wait_s")
    )
    assert isinstance(s["preemptions"], int)


def test_replay_default_is_relative_path_and_workers_option() -> None:
    proc = raysched("replay", "raysched/data/example_trace.jsonl", "--workers", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["workers"] == 2 and s["policy"] == "mlfq" and s["completed"] == 400


def test_bad_line_exits_2_and_shows_it(tmp_path: Path) -> None:
    bad = '{"id": "b", "arrival_s": 1.5, "tier": "gold"}'
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "arrival_s": 1.0, "tier": "batch"}\n' + bad + "\n")
    proc = raysched("replay", str(path), "--json")
    assert proc.returncode == 2
    assert bad in proc.stderr
    assert ":2:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == ""


def test_broken_json_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": "a", "arrival_s": 1.0}\n{"id": "b",\n')
    proc = raysched("replay", str(path), "--json")
    assert proc.returncode == 2
    assert '{"id": "b",' in proc.stderr


def test_child_arriving_before_parent_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "dep.jsonl"
    child = '{"id": "c", "arrival_s": 1.0, "depends_on": ["p"]}'
    path.write_text('{"id": "p", "arrival_s": 5.0}\n' + child + "\n")
    proc = raysched("replay", str(path), "--json")
    assert proc.returncode == 2, proc.stderr
    assert ":2:" in proc.stderr


def test_unknown_policy_exits_2() -> None:
    proc = raysched("replay", str(EXAMPLE), "--policy", "lottery", "--json")
    assert proc.returncode == 2
    assert "lottery" in proc.stderr
    assert proc.stdout.strip() == ""


def test_missing_trace_exits_2(tmp_path: Path) -> None:
    proc = raysched("replay", str(tmp_path / "nope.jsonl"), "--json")
    assert proc.returncode == 2
