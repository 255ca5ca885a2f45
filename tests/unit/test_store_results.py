"""The results store: Parquet parts, first recorded outcome wins, readable after a restart."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from raysched.models import TaskState
from raysched.policy.task import Task
from raysched.store.results import ResultsStore, outcome_of


def done(tid: str, result: Any = None, *, state: TaskState = TaskState.SUCCEEDED) -> Task:
    t = Task.build(tid, 5, 1.0, tenant="a", tier="batch", kind="echo")
    t.state = state
    t.attempts = 1
    t.first_start, t.finished_at = 2.0, 3.0
    if state is TaskState.SUCCEEDED:
        t.result = result
    else:
        t.error_type, t.error = "ValueError", "bad input"
    return t


def test_round_trip_and_readable_after_restart(tmp_path: Path) -> None:
    rs = ResultsStore(str(tmp_path), clock=lambda: 42.0)
    rs.add_tasks([done("a", {"text": "hi", "n": [1, 2]}), done("b", state=TaskState.FAILED)])
    assert rs.pending == 2
    assert rs.get("a") is not None  # buffered rows are visible before a flush
    assert (rs.flush() or "").startswith("part-0000000000-")
    assert rs.flush() is None  # nothing buffered
    again = ResultsStore(str(tmp_path))
    a = again.get("a")
    assert a is not None
    assert a["result"] == {"text": "hi", "n": [1, 2]} and a["state"] == "succeeded"
    assert a["attempts"] == 1 and a["first_start"] == 2.0 and a["finished_at"] == 3.0
    assert a["recorded_at"] == 42.0
    b = again.get("b")
    assert b is not None
    assert b["result"] is None and b["error_type"] == "ValueError" and b["state"] == "failed"
    assert again.get("nope") is None
    assert set(again.load_all()) == {"a", "b"}


def test_first_recorded_outcome_wins(tmp_path: Path) -> None:
    rs = ResultsStore(str(tmp_path))
    rs.add_tasks([done("x", "first")])
    rs.flush()
    rs.add_tasks([done("x", "second"), done("y", 1), done("y", 2)])  # a rerun, a duplicate
    rs.flush()
    rs.add_tasks([done("x", "third")])  # still buffered
    for store in (rs, ResultsStore(str(tmp_path))):
        got = store.load_all()
        assert got["x"]["result"] == "first" and got["y"]["result"] == 1
    assert ResultsStore(str(tmp_path)).load_table().num_rows == 2


def test_compact_merges_parts_and_keeps_first_outcomes(tmp_path: Path) -> None:
    rs = ResultsStore(str(tmp_path))
    for i in range(4):
        rs.add_tasks([done(f"t{i}", i), done("same", i)])
        rs.flush()
    assert rs.compact() == 5
    files = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert len(files) == 1 and files[0].startswith("part-0000000004-")
    got = ResultsStore(str(tmp_path)).load_all()
    assert got["same"]["result"] == 0 and len(got) == 5


def test_half_written_and_unreadable_parts_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rs = ResultsStore(str(tmp_path))
    rs.add_tasks([done("ok", 1)])
    rs.flush()
    (tmp_path / "results" / "tmp-abc-part-0000000001.parquet").write_bytes(b"PAR1 half")
    (tmp_path / "results" / "part-0000000001.parquet").write_bytes(b"not parquet")
    caplog.set_level(logging.WARNING)
    fresh = ResultsStore(str(tmp_path))
    assert set(fresh.load_all()) == {"ok"}
    assert "half-written" in caplog.text and "unreadable" in caplog.text
    fresh.add_tasks([done("later", 2)])
    assert (fresh.flush() or "").startswith("part-0000000002-")  # after the older name's 1


def test_failed_flush_keeps_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rs = ResultsStore(str(tmp_path))
    rs.add_tasks([done("a", 1)])

    def boom(*a: Any, **k: Any) -> None:
        raise OSError("bucket unreachable")

    monkeypatch.setattr(rs.dir, "write_atomic", boom)
    with pytest.raises(OSError):
        rs.flush()
    assert rs.pending == 1
    monkeypatch.undo()
    rs.flush()
    assert ResultsStore(str(tmp_path)).get("a") is not None


def test_through_a_non_local_filesystem() -> None:
    """The store goes through pyarrow.fs only: an in-memory mock filesystem stands in for s3."""
    fs = pafs._MockFileSystem()
    rs = ResultsStore("bucket/state", filesystem=fs)
    assert not rs.dir.local
    rs.add([outcome_of(done("m", {"v": 1}), 1.0)])
    rs.flush()
    assert ResultsStore("bucket/state", filesystem=fs).get("m") is not None


def test_two_writers_of_one_part_number_do_not_overwrite_each_other(tmp_path: Path) -> None:
    """A conversion still running for a scheduler that died may write the part number its
    successor also takes: both files stay, read in number order."""
    from raysched.store.results import write_part

    a, b = ResultsStore(str(tmp_path)), ResultsStore(str(tmp_path))
    n = a.reserve_part()  # the dying scheduler's conversion took part 0 ...
    b.add_tasks([done("y", "b")])
    nb = b.flush()  # ... its successor recovered before that file existed
    na = write_part(a.dir, n, ResultsStore._to_table([(done("x", "a"), 1.0)]))
    assert na != nb and na[:15] == (nb or "")[:15] == "part-0000000000"
    later = ResultsStore(str(tmp_path))
    later.add_tasks([done("x", "later")])
    assert (later.flush() or "").startswith("part-0000000001-")
    got = ResultsStore(str(tmp_path)).load_all()
    assert got["x"]["result"] == "a" and got["y"]["result"] == "b"
