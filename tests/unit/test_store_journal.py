"""The journal: framing round trips, group commit, sync policies, torn and corrupt tails."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from raysched.store.journal import Journal, JournalClosed, JournalLocked


def recs(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"k": "submit", "id": f"t{i}", "payload": {"i": i, "s": "é"}} for i in range(start, n)]


def ids(j: Journal, start: int = 0) -> list[str]:
    return [r["id"] for r in j.replay(start)]


def count_fsyncs() -> tuple[list[int], Any]:
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        os.fsync(fd)

    return calls, fsync


def test_round_trip_across_reopen(tmp_path: Path) -> None:
    with Journal(tmp_path, sync="always") as j:
        j.append_many(recs(3))
        j.append_many(recs(5, 3))
        assert j.stats.records == 5 and j.stats.writes == 2
    with Journal(tmp_path) as j2:
        got = list(j2.replay())
        assert got == recs(5)
        assert j2.replay_stats.frames == 2 and j2.replay_stats.damaged == []
        # a reopened journal appends to a new segment, after the old records
        j2.append_many(recs(6, 5))
        j2.flush()
        assert ids(j2) == [f"t{i}" for i in range(6)]
        assert j2.segments() == [0, 1]


def test_empty_append_is_a_barrier_and_writes_nothing(tmp_path: Path) -> None:
    with Journal(tmp_path, sync="off") as j:
        j.append_many([])
        assert j.stats.writes == 0
        fut = j.append_nowait(recs(2))
        j.append_many([])
        assert fut.done() and j.stats.writes == 1


def test_empty_append_waits_for_the_frame_in_progress(tmp_path: Path) -> None:
    """An empty append resolves at once only when nothing is queued or being written: while
    the writer thread is busy (here: a segment switch whose fsync is held up), it resolves once
    that work is done; on a closed journal it raises."""
    go = threading.Event()
    entered = threading.Event()

    def slow_fsync(fd: int) -> None:
        if threading.current_thread().name == "raysched-journal":
            entered.set()
            assert go.wait(10)

    j = Journal(tmp_path, sync="everysec", fsync=slow_fsync, sync_interval_s=3600)
    assert j.append_nowait([]).done()  # nothing before it
    j.append_many(recs(2))  # written inline: the segment is dirty
    j.rotate()  # the writer switches segments: fsync, held up
    assert entered.wait(10)
    fut = j.append_nowait([])
    assert not fut.done()
    go.set()
    fut.result(timeout=10)
    j.close()
    with pytest.raises(JournalClosed):
        j.append_nowait([])


def test_async_append_round_trip(tmp_path: Path) -> None:
    async def main() -> None:
        with Journal(tmp_path, sync="everysec") as j:
            await j.append(recs(2))
            await asyncio.gather(*(j.append(recs(i + 1, i)) for i in range(2, 10)))
        assert ids(Journal(tmp_path)) == [f"t{i}" for i in range(10)]

    asyncio.run(main())


def test_group_commit_batches_concurrent_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 threads append at once while each fsync takes 20 ms: they share a handful of writes,
    and under ``always`` every write is fsynced before its appenders return."""
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: Any) -> int:
        if threading.current_thread().name == "raysched-journal":
            writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)

    def slow_fsync(fd: int) -> None:
        time.sleep(0.02)
        os.fsync(fd)

    n = 40
    barrier = threading.Barrier(n)
    with Journal(tmp_path, sync="always", fsync=slow_fsync) as j:
        j.append_many(recs(1))  # open the segment first
        writes.clear()

        def worker(i: int) -> None:
            barrier.wait()
            j.append_many([{"k": "submit", "id": f"c{i}"}])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert j.stats.records == n + 1
        assert len(writes) == j.stats.writes - 1
        assert len(writes) <= n // 4, f"{len(writes)} writes for {n} concurrent appends"
        assert j.stats.syncs == j.stats.writes  # always: one fsync per group commit
    assert sorted(ids(Journal(tmp_path))[1:]) == sorted(f"c{i}" for i in range(n))


def test_group_commit_batches_concurrent_coroutines(tmp_path: Path) -> None:
    def slow_fsync(fd: int) -> None:
        time.sleep(0.02)
        os.fsync(fd)

    async def main() -> Journal:
        j = Journal(tmp_path, sync="always", fsync=slow_fsync)
        await asyncio.gather(*(j.append([{"k": "submit", "id": f"a{i}"}]) for i in range(50)))
        j.close()
        return j

    j = asyncio.run(main())
    assert j.stats.records == 50
    assert j.stats.writes <= 10
    assert len(ids(Journal(tmp_path))) == 50


def test_everysec_acknowledges_before_fsync(tmp_path: Path) -> None:
    """Under everysec an append waits for write() only: a stuck fsync does not hold it up, and a
    background fsync runs at most once per interval."""
    gate = threading.Event()
    gate.set()
    entered = threading.Event()

    def fsync(fd: int) -> None:
        entered.set()
        gate.wait()
        os.fsync(fd)

    j = Journal(tmp_path, sync="everysec", fsync=fsync, sync_interval_s=0.05)
    j.append_many(recs(1))  # creates the segment (directory fsync passes the open gate)
    gate.clear()
    entered.clear()
    assert entered.wait(2.0), "the background fsync never ran"
    t0 = time.perf_counter()
    j.append_many(recs(3, 1))  # the syncer is blocked inside fsync
    assert time.perf_counter() - t0 < 0.5
    gate.set()
    j.close()
    assert j.stats.syncs >= 1
    assert ids(Journal(tmp_path)) == ["t0", "t1", "t2"]


def test_off_never_fsyncs(tmp_path: Path) -> None:
    calls, fsync = count_fsyncs()
    with Journal(tmp_path, sync="off", fsync=fsync, sync_interval_s=0.01) as j:
        for i in range(5):
            j.append_many(recs(i + 1, i))
        j.rotate()
        j.append_many(recs(6, 5))
        time.sleep(0.05)
    assert calls == [] and j.stats.syncs == 0
    assert len(ids(Journal(tmp_path))) == 6


def test_always_fsyncs_every_write(tmp_path: Path) -> None:
    calls, fsync = count_fsyncs()
    with Journal(tmp_path, sync="always", fsync=fsync) as j:
        for i in range(4):
            j.append_many(recs(i + 1, i))
        assert j.stats.syncs == j.stats.writes == 4
    assert len(calls) >= 4


def test_bad_sync_policy_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync must be"):
        Journal(tmp_path, sync="sometimes")  # type: ignore[arg-type]


def _three_frames(tmp_path: Path) -> Path:
    with Journal(tmp_path, sync="always") as j:
        j.append_many(recs(2))
        j.append_many(recs(4, 2))
        j.append_many(recs(6, 4))
        return j.path_of(0)


def test_torn_last_frame_is_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seg = _three_frames(tmp_path)
    size = seg.stat().st_size
    with seg.open("r+b") as f:
        f.truncate(size - 7)  # the crash cut the last frame mid-payload
    caplog.set_level(logging.WARNING, "raysched.store.journal")
    j = Journal(tmp_path)
    assert ids(j) == ["t0", "t1", "t2", "t3"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "torn frame" in warnings[0].getMessage()
    assert len(j.replay_stats.damaged) == 1
    # new appends go to a new segment and are replayed after the damaged one
    j.append_many(recs(7, 6))
    j.close()
    assert ids(Journal(tmp_path)) == ["t0", "t1", "t2", "t3", "t6"]


def test_torn_header_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seg = _three_frames(tmp_path)
    with seg.open("ab") as f:
        f.write(b"RJ\x05")  # a crash after three bytes of the next header
    caplog.set_level(logging.WARNING)
    assert ids(Journal(tmp_path)) == [f"t{i}" for i in range(6)]
    assert "torn frame header" in caplog.text


@pytest.mark.parametrize("where", ["last", "middle"])
def test_flipped_byte_stops_the_segment_at_the_bad_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    seg = _three_frames(tmp_path)
    data = bytearray(seg.read_bytes())
    pos = len(data) - 5 if where == "last" else len(data) // 2
    data[pos] ^= 0x20
    seg.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING)
    got = ids(Journal(tmp_path))
    if where == "last":
        assert got == ["t0", "t1", "t2", "t3"]
    else:
        assert got[:2] == ["t0", "t1"] and len(got) < 6
    assert "CRC mismatch" in caplog.text or "corrupt frame header" in caplog.text


def test_garbage_segment_is_survived(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "0000000000.journal").write_bytes(b"\x00" * 64)
    caplog.set_level(logging.WARNING)
    j = Journal(tmp_path)
    assert ids(j) == []
    assert "corrupt frame header" in caplog.text
    j.close()


def test_failed_write_is_cut_back_and_later_appends_survive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    state = {"armed": True}

    def flaky(fd: int, data: Any) -> int:
        if threading.current_thread().name == "raysched-journal" and state["armed"]:
            state["armed"] = False
            real_write(fd, bytes(data[:7]))  # part of a frame reached the file
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    j = Journal(tmp_path, sync="always")
    j.append_many(recs(1))
    monkeypatch.setattr(os, "write", flaky)
    with pytest.raises(OSError, match="No space"):
        j.append_many(recs(2, 1))
    j.append_many(recs(3, 2))
    j.close()
    j2 = Journal(tmp_path)
    assert ids(j2) == ["t0", "t2"]
    assert j2.replay_stats.damaged == []


def test_rotate_and_drop_before(tmp_path: Path) -> None:
    j = Journal(tmp_path, sync="everysec")
    j.append_many(recs(2))
    seg = j.rotate()
    assert seg == 1 and j.segment == 1
    j.append_many(recs(4, 2))
    j.append_many([])
    assert j.segments() == [0, 1]
    assert ids(j, seg) == ["t2", "t3"]
    assert j.drop_before(seg) == [0]
    assert ids(j) == ["t2", "t3"]
    # never drops the segment being written
    assert j.drop_before(99) == []
    j.close()


def test_rotate_creates_the_new_segment_even_without_appends(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append_many(recs(1))
    seg = j.rotate()
    j.append_many([])
    assert j.path_of(seg).exists()
    j.close()
    # and numbering never goes back below a floor (a snapshot covering up to segment 7)
    j2 = Journal(tmp_path, first_segment=7)
    j2.append_many(recs(2, 1))
    j2.close()
    assert j2.segments()[-1] == 7


def test_odd_values_are_stored_not_refused_and_closed_journal_refuses(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    loop: dict[str, Any] = {"id": "cyc"}
    loop["self"] = loop
    j.append_many(
        [
            {"id": "odd", "set": {1, 2}, "b": b"raw", "o": object},  # list, text, repr
            {"id": "keys", "r": {(1, 2): "tuple key", 3: "int key"}},  # keys become strings
            loop,  # a cycle: stored as repr below some depth
        ]
    )
    j.close()
    with pytest.raises(JournalClosed):
        j.append_many(recs(1))
    odd, keys, cyc = list(Journal(tmp_path).replay())
    assert sorted(odd["set"]) == [1, 2] and odd["b"] == "raw" and "class" in odd["o"]
    assert keys["r"] == {"(1, 2)": "tuple key", "3": "int key"}
    assert cyc["id"] == "cyc" and isinstance(cyc["self"], dict)


def test_one_writer_per_directory(tmp_path: Path) -> None:
    a = Journal(tmp_path)
    a.append_many(recs(1))
    reader = Journal(tmp_path)  # reading needs no lock
    assert ids(reader) == ["t0"]
    with pytest.raises(JournalLocked):
        reader.append_many(recs(2, 1))
    a.close()
    b = Journal(tmp_path)
    b.append_many(recs(2, 1))  # the lock went with the first writer's close
    b.close()
    assert ids(Journal(tmp_path)) == ["t0", "t1"]
