"""Blob files for large payloads and results, and a worker that holds an assignment back until
its large payload is fetched (no Ray: the fetch is a plain coroutine here)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from raysched.runtime.worker import WorkerCore
from raysched.store.blobs import BLOB_KEY, RESULT, BlobStore, is_blob, tag
from tests.unit.test_worker_channel import Reports, registry_with, until


def test_small_values_stay_inline_and_large_ones_round_trip(tmp_path: Path) -> None:
    b = BlobStore(tmp_path, max_inline=1000)
    assert b.encode_if_large({"x": "a" * 10}) is None
    assert b.encode_if_large(12345) is None and b.encode_if_large(None) is None
    big = {"text": "é" * 2000, "n": [1, 2, 3]}
    data = b.encode_if_large(big)
    assert data is not None and len(data) > 1000
    desc = b.write(data, "task/../1")
    assert is_blob(desc) and desc["bytes"] == len(data)
    # an id that is not plain appears hashed: no path separators, no collisions with plain ids
    assert "/" not in desc[BLOB_KEY] and desc[BLOB_KEY].startswith("p.=")
    assert b.write(data, "task-1", RESULT)[BLOB_KEY].startswith("r.task-1.")
    assert b.read(desc) == big
    # a second write of the same task gets its own file: a redone task never overwrites
    desc2 = b.write(data, "task/../1")
    assert desc2[BLOB_KEY] != desc[BLOB_KEY]
    assert len(b.names()) == 3 and {desc[BLOB_KEY], desc2[BLOB_KEY]} <= set(b.names())
    b.delete(desc)
    with pytest.raises(FileNotFoundError):
        b.read(desc)
    assert desc2[BLOB_KEY] in b.names() and desc[BLOB_KEY] not in b.names()


def test_descriptor_shape_and_bad_names(tmp_path: Path) -> None:
    assert not is_blob({BLOB_KEY: "x"})
    assert not is_blob({BLOB_KEY: "x", "bytes": 1, "more": 2})
    assert not is_blob([BLOB_KEY, "bytes"])
    b = BlobStore(tmp_path, max_inline=256)
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    for name in ("../victim.json", "..", ".hidden.json", "a\\b.json", "notjson"):
        with pytest.raises(ValueError, match="not a blob name"):
            b.read({BLOB_KEY: name, "bytes": 1})
        with pytest.raises(ValueError, match="not a blob name"):
            b.delete({BLOB_KEY: name, "bytes": 1})
    assert victim.exists()
    assert BlobStore(tmp_path, max_inline=None).encode_if_large("x" * 10_000) is None


def test_the_descriptor_key_is_reserved_in_payloads() -> None:
    from pydantic import ValidationError

    from raysched.models import TaskSpec

    with pytest.raises(ValidationError, match="reserved"):
        TaskSpec.model_validate({"kind": "echo", "payload": {BLOB_KEY: "x.json", "bytes": 1}})


def _blob_task(tid: str) -> tuple[str, str, Any, int]:
    return (tid, "echo", {BLOB_KEY: f"{tid}.json", "bytes": 99_999}, 0)


def test_worker_runs_a_large_payload_task_once_fetched_and_in_order() -> None:
    async def main() -> Reports:
        gate = asyncio.Event()
        asked: list[str] = []

        async def fetch(tid: str, desc: dict[str, Any]) -> Any:
            asked.append(tid)
            await gate.wait()
            return {"big": tid}

        rep = Reports()
        w = WorkerCore("w1", registry_with(), rep, slots=1, fetch=fetch)
        w.assign_now([_blob_task("a"), ("b", "echo", {"small": 1}, 0)])
        await until(lambda: "b" in rep.final())
        assert "a" not in rep.final() and asked == ["a"]  # held back, the rest goes on
        gate.set()
        await until(lambda: "a" in rep.final())
        return rep

    rep = asyncio.run(main())
    assert rep.final()["a"]["t"] == "done" and rep.final()["a"]["result"] == {"big": "a"}
    assert rep.final()["b"]["result"] == {"small": 1}


def test_stop_while_fetching_and_fetch_failure() -> None:
    async def main() -> Reports:
        gate = asyncio.Event()

        async def fetch(tid: str, desc: dict[str, Any]) -> Any:
            await gate.wait()
            if tid == "gone":
                raise FileNotFoundError("blob gone.json")
            return {"x": 1}

        rep = Reports()
        w = WorkerCore("w1", registry_with(), rep, slots=2, fetch=fetch)
        w.assign_now([_blob_task("cancelled"), _blob_task("gone")])
        assert w.stop_now("cancelled", "cancel")
        await until(lambda: "cancelled" in rep.final())
        gate.set()
        await until(lambda: "gone" in rep.final())
        await asyncio.sleep(0.05)  # the cancelled one's fetch finished too: it must not run
        return rep

    rep = asyncio.run(main())
    assert rep.final()["cancelled"]["t"] == "stopped"
    assert [e["t"] for e in rep.events if e["id"] == "cancelled"] == ["stopped"]
    gone = rep.final()["gone"]
    assert gone["t"] == "fail" and gone["etype"] == "PayloadUnavailable"
    assert "blob gone.json" in gone["msg"]


def test_a_late_fetch_of_an_earlier_attempt_does_not_run() -> None:
    """Attempt 1 is stopped while its payload is fetched, attempt 2 comes to the same worker
    (resume point 7); attempt 1's fetch ends first and must not take attempt 2's place."""

    async def main() -> Reports:
        gates = [asyncio.Event(), asyncio.Event()]
        calls = 0

        async def fetch(tid: str, desc: dict[str, Any]) -> Any:
            nonlocal calls
            gate = gates[calls]
            calls += 1
            await gate.wait()
            return {"attempt": calls}

        rep = Reports()
        w = WorkerCore("w1", registry_with(), rep, slots=1, fetch=fetch)
        w.assign_now([_blob_task("a")])
        assert w.stop_now("a", "cancel")
        w.assign_now([("a", "echo", {BLOB_KEY: "a.json", "bytes": 9}, 7)])
        gates[0].set()
        await asyncio.sleep(0.05)
        assert [e["t"] for e in rep.events if e["id"] == "a"] == ["stopped"]
        assert w._fetching["a"].steps_done == 7
        gates[1].set()
        await until(lambda: len([e for e in rep.events if e["id"] == "a"]) == 2)
        return rep

    rep = asyncio.run(main())
    assert [e["t"] for e in rep.events if e["id"] == "a"] == ["stopped", "done"]


def test_without_a_fetch_hook_descriptors_pass_through() -> None:
    async def main() -> Reports:
        rep = Reports()
        w = WorkerCore("w1", registry_with(), rep, slots=1)
        w.assign_now([_blob_task("a")])
        await until(lambda: "a" in rep.final())
        return rep

    assert is_blob(asyncio.run(main()).final()["a"]["result"])


# -- the scheduler's side, in one process (the in-process spawner of the HTTP unit tests) -------
def _in_process_service(tmp_path: Path) -> tuple[Any, BlobStore, str]:
    """A SchedulerService on a store in ``tmp_path`` whose in-process workers write result blobs
    and fetch payloads as the worker actor does; returns a factory, the blobs, the store root."""
    from raysched.handlers import default_registry
    from raysched.runtime.scheduler import SchedulerService
    from raysched.settings import PoolSettings, Settings
    from raysched.store.recovery import recover
    from tests.unit.http_fakes import InProcessSpawner, _Worker

    settings = Settings(
        state_dir=str(tmp_path),
        pools=[PoolSettings(min_workers=1, max_workers=1, slots=2)],
        store={"inline_max_bytes": 1024},
    )
    root = settings.store_root()
    blobs = BlobStore(root, 1024)

    class Spawner(InProcessSpawner):
        def spawn(self, pool: PoolSettings, worker_id: str) -> _Worker:
            async def report(wid: str, events: list[dict[str, Any]]) -> None:
                for ev in events:  # what the worker actor does with a large result
                    data = blobs.encode_if_large(ev.get("result"))
                    if ev["t"] == "done" and data is not None:
                        ev["result"] = blobs.write(data, ev["id"], RESULT)
                assert self.svc is not None
                await self.svc.report(wid, events)

            async def fetch(tid: str, desc: dict[str, Any]) -> Any:
                return blobs.read(desc)

            return _Worker(worker_id, default_registry(), report, slots=2, fetch=fetch)

    def make() -> SchedulerService:
        state = recover(root, pools=["default"], settings=settings.policy)
        spawner = Spawner(settings)
        svc = SchedulerService(settings, spawner, store=state)
        spawner.svc = svc
        return svc

    return make, blobs, root


def test_scheduler_keeps_large_payloads_and_results_out_of_its_records(tmp_path: Path) -> None:
    make, blobs, root = _in_process_service(tmp_path)

    async def main() -> None:
        svc = make()
        await svc.start()
        big = {"text": "x" * 5000}
        r = await svc.submit([{"kind": "echo", "payload": big, "idempotency_key": "k1"}])
        tid = r["ids"][0]
        # the same key again: the first task is the answer, the copy's blob is dropped
        again = await svc.submit([{"kind": "echo", "payload": big, "idempotency_key": "k1"}])
        assert again["ids"] == [tid]
        out = await svc.result(tid, 30)
        assert out["result"] == big  # read back from the worker's blob (no object store here)
        assert svc.blob_counts == {"payloads": 2, "payload_refs": 0, "results_read": 1, "swept": 0}
        # wait() does not read results
        await svc.wait([tid], 5)
        assert svc.blob_counts["results_read"] == 1
        small = await svc.submit([{"kind": "echo", "payload": {"x": 1}}])
        assert (await svc.result(small["ids"][0], 30))["result"] == {"x": 1}
        # a child of a failed parent fails at once: its payload blob is garbage from the start
        bad = await svc.submit([{"kind": "no.such.module:fn", "payload": {}}])
        await svc.result(bad["ids"][0], 30)
        child = await svc.submit([{"kind": "echo", "payload": big, "depends_on": bad["ids"]}])
        assert svc.status(child["ids"][0])["state"] == "failed"
        assert svc._payload_refs == {}
        # the payload blobs of final tasks stay until a checkpoint has made the outcome durable
        assert len(blobs.names()) == 3  # the kept task's payload, its result, the child's payload
        svc.recorder.commit_sync()  # type: ignore[union-attr]
        journal = b"".join(p.read_bytes() for p in (Path(root) / "journal").glob("0*"))
        assert b"x" * 2000 not in journal and BLOB_KEY.encode() in journal
        await svc._checkpoint()
        for _ in range(100):
            if len(blobs.names()) == 1:
                break
            await asyncio.sleep(0.02)
        assert [n.startswith(f"r.{tid}.") for n in blobs.names()] == [True]  # the result's blob
        await svc.shutdown()

    asyncio.run(main())
    import pyarrow.parquet as pq

    parts = sorted((Path(root) / "results").glob("part-*.parquet"))
    results = [r for f in parts for r in pq.read_table(f, columns=["result"]).column(0).to_pylist()]
    assert results and all(r is None or len(r) < 200 for r in results), results
    assert any(r is not None and BLOB_KEY in r for r in results)


def test_many_blobs_in_one_go(tmp_path: Path) -> None:
    b = BlobStore(tmp_path, max_inline=256)
    vals = [{"i": i, "pad": "p" * 300} for i in range(5)]
    descs = b.write_many([(b.encode_if_large(v) or b"", f"t{i}") for i, v in enumerate(vals)])
    assert [b.read(d) for d in descs] == vals
    assert sorted(b.names()) == sorted(d[BLOB_KEY] for d in descs)
    assert not [p for p in (tmp_path / "blobs").iterdir() if p.name.startswith("tmp-")]


def test_deferred_sync_rides_the_journal(tmp_path: Path) -> None:
    """Under ``everysec`` payload blobs skip their own fsyncs; the journal's syncer (and a
    segment switch, and close) makes them durable with the journal."""
    import time

    from raysched.store.journal import Journal

    b = BlobStore(tmp_path, max_inline=256, sync="everysec")
    j = Journal(tmp_path / "journal", sync="everysec", sync_interval_s=0.05)
    j.sync_hooks.append(b.sync_pending)
    descs = b.write_many([(b'{"a":1}', "t1"), (b'{"b":2}', "t2")])
    assert sorted(b._unsynced) == sorted(d[BLOB_KEY] for d in descs)
    b.delete(descs[0])  # deleted before its fsync: skipped, not an error
    j.append_many([{"k": "x", "id": "1"}])  # starts the syncer
    deadline = time.monotonic() + 5
    while b._unsynced and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b._unsynced == [] and b.read(descs[1]) == {"b": 2}
    b.write_many([(b'{"c":3}', "t3")])
    j.close()  # close runs the hooks too
    assert b._unsynced == []
    for policy in ("always", "off"):  # fsynced at once / left to the kernel: nothing tracked
        other = BlobStore(tmp_path, max_inline=256, sync=policy)
        other.write_many([(b'{"d":4}', "t4")])
        assert other._unsynced == []


def test_old_files_lists_only_old_blob_names(tmp_path: Path) -> None:
    import os
    import time

    b = BlobStore(tmp_path, max_inline=256)
    assert not b.exists()
    old_p = b.write(b"1", "t1")
    old_r = b.write(b"2", "t1", RESULT)
    young = b.write(b"3", "t2")
    folder = tmp_path / "blobs"
    (folder / "notes.txt").write_text("not a blob")
    # the first version's names ("<id>-<hex>.json"), even for ids like "p-7": never candidates
    first = f"p-7-{'a' * 32}.json"
    (folder / first).write_text("{}")
    then = time.time() - 7200
    for n in (old_p[BLOB_KEY], old_r[BLOB_KEY], "notes.txt", first):
        os.utime(folder / n, (then, then))
    got = sorted(b.old_files(3600, time.time()))
    assert got == sorted([(old_p[BLOB_KEY], "p", "t1"), (old_r[BLOB_KEY], "r", "t1")])
    assert b.exists() and young[BLOB_KEY] not in {g[0] for g in got}
    assert b.delete_names([old_p[BLOB_KEY]]) == 1 and not (folder / old_p[BLOB_KEY]).exists()
    assert tag("a.b") != tag("ab") and tag("ab") == "ab" and tag("x" * 100).startswith("=")


def test_payload_blobs_of_tasks_final_before_a_crash_go_after_the_restart(tmp_path: Path) -> None:
    make, blobs, _ = _in_process_service(tmp_path)
    big = {"text": "y" * 5000}

    async def before_crash() -> str:
        svc = make()
        await svc.start()
        tid = (await svc.submit([{"kind": "echo", "payload": big}]))["ids"][0]
        assert (await svc.result(tid, 30))["result"] == big
        assert svc._blob_garbage  # deleted at the next checkpoint, which never comes:
        assert svc.store is not None
        svc.recorder.commit_sync()  # type: ignore[union-attr]
        svc.store.journal.close()  # the process dies here (no shutdown, no checkpoint)
        for w in list(svc.workers.values()):
            await w.handle.shutdown()
        return str(tid)

    async def after_restart(tid: str) -> None:
        svc = make()
        assert [d[BLOB_KEY].startswith("p.") for d in svc._blob_garbage] == [True]
        await svc.start()
        assert (await svc.result(tid, 30))["result"] == big
        await svc._checkpoint()
        for _ in range(100):
            if all(n.startswith("r.") for n in blobs.names()):
                break
            await asyncio.sleep(0.02)
        assert [n.startswith(f"r.{tid}.") for n in blobs.names()] == [True]
        await svc.shutdown()

    tid = asyncio.run(before_crash())
    assert any(n.startswith("p.") for n in blobs.names())
    asyncio.run(after_restart(tid))


def test_orphans_are_what_no_task_needs(tmp_path: Path) -> None:
    """The scheduler's decision over old blob files: kept when a task's payload or its recorded
    result names them or when they wait in the garbage list; swept otherwise; result files of
    unknown tasks are kept."""
    make, _, _ = _in_process_service(tmp_path)

    async def main() -> None:
        svc = make()
        await svc.start()
        big = {"text": "z" * 5000}
        done = (await svc.submit([{"id": "odd.id/1", "kind": "echo", "payload": big}]))["ids"][0]
        assert (await svc.result(done, 30))["result"] == big
        t_done = svc.core.tasks[done]
        assert is_blob(t_done.result)
        garbage = [d[BLOB_KEY] for d in svc._blob_garbage]  # final, not yet durable
        cands = [
            (garbage[0], "p", tag(done)),  # waiting for a checkpoint: kept
            (f"p.never-acked.{'b' * 32}.json", "p", "never-acked"),  # swept
            (t_done.result[BLOB_KEY], "r", tag(done)),  # the recorded result: kept
            (f"r.{tag(done)}.{'c' * 32}.json", "r", tag(done)),  # stale attempt: swept
            (f"r.elsewhere.{'d' * 32}.json", "r", "elsewhere"),  # unknown task: kept
        ]
        assert svc._orphans(cands) == [cands[1][0], cands[3][0]]
        svc.settings.store.restore_finished = False  # results files may name any result file
        assert svc._orphans(cands) == [cands[1][0]]
        await svc.shutdown()

    asyncio.run(main())


def test_orphans_keep_a_queued_tasks_payload(tmp_path: Path) -> None:
    make, _, _ = _in_process_service(tmp_path)

    async def main() -> None:
        svc = make()
        # not started: no workers, so the task stays queued with its payload in a blob
        r = await svc.submit([{"kind": "echo", "payload": {"text": "q" * 5000}}])
        t = svc.core.tasks[r["ids"][0]]
        assert is_blob(t.payload) and t.state.value == "queued"
        name = t.payload[BLOB_KEY]
        assert svc._orphans([(name, "p", tag(t.id))]) == []
        other = f"p.{tag(t.id)}.{'e' * 32}.json"  # same task, not its payload file
        assert svc._orphans([(other, "p", tag(t.id))]) == [other]
        assert svc.store is not None
        svc.store.close()

    asyncio.run(main())
