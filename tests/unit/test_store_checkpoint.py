"""Checkpoints: snapshot round trip, manifest and retention, half-written and corrupt snapshots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raysched.models import DEFAULT_TIERS, TaskState
from raysched.policy.core import SchedulerCore
from raysched.policy.task import Task
from raysched.settings import PolicySettings
from raysched.store.checkpoint import BUILT_SLOTS, Checkpoints, tasks_from_table

S = TaskState


def mk(tid: str, tier: str = "batch", **fields: object) -> Task:
    return Task.build(tid, DEFAULT_TIERS[tier], 1.0, tier=tier, prompt_tokens=100, **fields)


def busy_core() -> SchedulerCore:
    core = SchedulerCore(PolicySettings(retry_backoff_s=5.0))
    a = mk("a", tenant="x", payload={"p": [1, "two"]}, idempotency_key="ka")
    b = mk("b", "interactive", tenant="y", timeout_s=9.0, max_retries=2, trace_id="tr")
    c = mk("c", tenant="x", depends_on=("a",), size_hint=0.5, deadline=99.0)
    d = mk("d", tenant="y", max_retries=1, gpu_memory_mb=512, preemptible=False)
    e = mk("e", tenant="x")
    core.submit_many([a, b, c, d, e], 1.0)
    assert len(core.dispatch("default", 4, 2.0, "w1")) == 4  # a, b, d, e
    core.progress(core.tasks["a"], 0.2, 7, 2.5)
    core.finish(core.tasks["d"], 3.0, ok=False, error_type="E", error="x")  # retry in 5 s
    core.cancel("e", 3.5)
    core.submit(mk("f", tenant="z"), 4.0)  # queued
    return core


def test_snapshot_round_trip(tmp_path: Path) -> None:
    core = busy_core()
    cp = Checkpoints(str(tmp_path), clock=lambda: 123.0)
    info = cp.write(core, journal_segment=4)
    assert info.name == "snapshot-0000000004.parquet" and info.journal_floor == 4
    loaded = cp.load_latest()
    assert loaded is not None and loaded.info.journal_segment == 4
    tasks, retrying = tasks_from_table(loaded.table)
    live = {tid for tid, t in core.tasks.items() if not core.is_final(t)}
    assert {t.id for t in tasks} == live and "e" not in live
    for t in tasks:
        o = core.tasks[t.id]
        for name in [
            "priority",
            "arrival",
            "seq",
            "prompt_tokens",
            "tenant",
            "tier",
            "kind",
            "pool",
            "size_hint",
            "deadline",
            "state",
            "enqueued_at",
            "level",
            "depth",
            "attempts",
            "service_s",
            "quantum_used",
            "steps",
            "started_at",
            "first_start",
            "finished_at",
            "worker",
            "error",
            "error_type",
            "redeliveries",
            "not_before",
            "depends_on",
            "timeout_s",
            "max_retries",
            "payload",
            "idempotency_key",
            "preemptible",
            "trace_id",
            "gpu_memory_mb",
        ]:
            assert getattr(t, name) == getattr(o, name), (t.id, name)
        assert t.qkey is None
    assert retrying == {"d"} and core.tasks["d"].state is S.FAILED
    assert {t.state for t in tasks} == {S.RUNNING, S.PENDING, S.FAILED, S.QUEUED}
    m = loaded.meta
    assert m["seq"] == core.last_seq and m["fair"] == core.fair.counters
    assert m["idempotency"] == [["x", "ka", "a"]] and m["created_at"] == 123.0
    manifest = json.loads((tmp_path / "snapshots" / "MANIFEST.json").read_text())
    assert manifest["latest"] == info.name and manifest["journal_segment"] == 4


def test_keeps_two_snapshots_and_reports_the_journal_floor(tmp_path: Path) -> None:
    core = busy_core()
    cp = Checkpoints(str(tmp_path))
    assert cp.write(core, 1).journal_floor == 1
    assert cp.write(core, 3).journal_floor == 1
    assert cp.write(core, 6).journal_floor == 3
    names = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert names == ["MANIFEST.json", "snapshot-0000000003.parquet", "snapshot-0000000006.parquet"]
    assert [e.journal_segment for e in cp.manifest()] == [3, 6]


def test_half_written_snapshot_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cp = Checkpoints(str(tmp_path))
    cp.write(busy_core(), 2)
    tmp = tmp_path / "snapshots" / "tmp-0123456789ab-snapshot-0000000005.parquet"
    tmp.write_bytes(b"PAR1\x00\x00 half of a row group")
    caplog.set_level(logging.WARNING)
    loaded = cp.load_latest()
    assert loaded is not None and loaded.info.journal_segment == 2
    assert "half-written snapshot" in caplog.text and not tmp.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_newest_snapshot_falls_back_to_the_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    cp = Checkpoints(str(tmp_path))
    core = busy_core()
    cp.write(core, 2)
    cp.write(core, 5)
    newest = tmp_path / "snapshots" / "snapshot-0000000005.parquet"
    data = newest.read_bytes()
    newest.write_bytes(
        {"garbage": b"x" * 100, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    caplog.set_level(logging.WARNING)
    loaded = cp.load_latest()
    assert loaded is not None and loaded.info.journal_segment == 2
    assert "snapshot-0000000005.parquet is unreadable" in caplog.text
    assert "falling back" in caplog.text


def test_unreadable_manifest_lists_the_snapshots(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cp = Checkpoints(str(tmp_path))
    cp.write(busy_core(), 3)
    (tmp_path / "snapshots" / "MANIFEST.json").write_text("{not json")
    caplog.set_level(logging.WARNING)
    loaded = cp.load_latest()
    assert loaded is not None and loaded.info.journal_segment == 3
    assert "manifest" in caplog.text


def test_no_snapshot_yet(tmp_path: Path) -> None:
    assert Checkpoints(str(tmp_path / "fresh")).load_latest() is None


def test_through_a_non_local_filesystem() -> None:
    fs = pafs._MockFileSystem()
    cp = Checkpoints("bucket/state", filesystem=fs)
    cp.write(busy_core(), 7)
    loaded = Checkpoints("bucket/state", filesystem=fs).load_latest()
    assert loaded is not None and loaded.info.tasks == 5


def test_uri_state_dir_is_resolved_by_pyarrow(tmp_path: Path) -> None:
    cp = Checkpoints(f"file://{tmp_path}/uri")
    cp.write(busy_core(), 1)
    assert (tmp_path / "uri" / "snapshots" / "snapshot-0000000001.parquet").exists()


def test_the_fast_builder_sets_every_slot_of_task() -> None:
    """tasks_from_table fills slots directly instead of calling Task.__init__: a slot added to
    Task must be added there too, or recovered tasks would lack it."""
    assert set(Task.__slots__) - {"__dict__"} == BUILT_SLOTS


def test_snapshot_holds_the_state_at_capture_time(tmp_path: Path) -> None:
    """capture copies what changes; what happens before the (threaded) save does not leak in."""
    core = busy_core()
    cp = Checkpoints(str(tmp_path))
    snap = cp.capture(core, 3)
    a = core.tasks["a"]
    before = (a.steps, a.service_s, a.state)
    core.account(a, 1.0, 50)
    core.finish(a, 6.0, ok=True, result="late")
    cp.save(snap)
    loaded = cp.load_latest()
    assert loaded is not None
    got = {t.id: t for t in tasks_from_table(loaded.table)[0]}
    assert (got["a"].steps, got["a"].service_s, got["a"].state) == before


def test_store_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = (
        "import sys, raysched.store\n"
        "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
