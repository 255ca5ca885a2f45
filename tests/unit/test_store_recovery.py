"""Recovery: a core driven through a random workload while journaling (and checkpointing), then
"crashed" and recovered into a fresh core, must match the original with its running work
redelivered: same states, levels, attempts, service, fair-share counters, idempotency keys and queue
order."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from raysched.models import DEFAULT_TIERS, TaskState
from raysched.policy.core import SchedulerCore
from raysched.policy.task import Task
from raysched.settings import PolicySettings
from raysched.store.recovery import RecoveredState, recover
from raysched.store.results import outcome_of

S = TaskState
POOL = "default"
TIERS = ("critical", "interactive", "batch", "batch", "best_effort")


def settings(policy: str = "mlfq") -> PolicySettings:
    return PolicySettings(policy=policy, retry_backoff_s=0.2, max_redeliveries=2)


def mk(tid: str, tier: str = "batch", at: float = 1.0, **fields: Any) -> Task:
    return Task.build(tid, DEFAULT_TIERS[tier], at, tier=tier, **fields)


class Workload:
    """Random operations on ``state.core``, committed to the journal as a scheduler would."""

    def __init__(self, state: RecoveredState, seed: int, checkpoints: bool) -> None:
        self.st = state
        self.rnd = random.Random(seed)
        self.checkpoints = checkpoints
        self.n = 0
        self.now = 1.0

    @property
    def core(self) -> SchedulerCore:
        return self.st.core

    def running(self) -> list[Task]:
        return [t for r in self.core.running.values() for t in r.values()]

    def submit(self) -> None:
        rnd, core = self.rnd, self.core
        batch = []
        known = list(core.tasks)
        for _ in range(rnd.randint(1, 4)):
            self.n += 1
            f: dict[str, Any] = {
                "tenant": rnd.choice("abc"),
                "prompt_tokens": rnd.choice([0, 10, 200, 3000]),
                "payload": {"n": self.n, "text": "x" * rnd.randint(0, 20)},
            }
            if rnd.random() < 0.3:
                f["idempotency_key"] = f"k{rnd.randint(0, 15)}"
            if rnd.random() < 0.3:
                f["max_retries"] = rnd.randint(1, 2)
            if rnd.random() < 0.15:
                f["timeout_s"] = rnd.choice([0.3, 2.0])
            if rnd.random() < 0.1:
                f["deadline"] = self.now + 5
            if rnd.random() < 0.1:
                f["size_hint"] = 0.4
            t = mk(f"t{self.n}", rnd.choice(TIERS), self.now, **f)
            if known and rnd.random() < 0.25:
                t.depends_on = tuple(rnd.sample(known, min(len(known), rnd.randint(1, 2))))
            batch.append(t)
        core.submit_many(batch, self.now)

    def encoded_success(self, t: Task) -> None:
        """A success as a journaling scheduler takes it from a worker (``report`` with encoded
        ``done`` events): a first attempt with no steps is journaled as the worker's bytes."""
        svc = self.rnd.choice([0.0, 0.003])
        ev = {"t": "done", "id": t.id, "result": {"out": self.rnd.randint(0, 9)}, "ts0": self.now}
        ev["service"] = svc
        self.core.account(t, svc, 0)
        self.core.finish(t, self.now, ok=True, result=ev["result"])
        w = t.worker
        if w:  # the recorder takes first attempts with no steps and the event's service only
            evs: list[dict[str, Any]] = [{"t": "started", "id": "x"}, ev]
            self.st.recorder.outcomes(w, self.now, orjson.dumps(evs), evs, [None, t])

    def step(self) -> None:
        rnd, core, now = self.rnd, self.core, self.now
        op = rnd.random()
        run = self.running()
        if op < 0.3:
            self.submit()
        elif op < 0.45:
            core.dispatch(POOL, rnd.randint(1, 3), now, rnd.choice([None, "w1", "w2"]))
        elif op < 0.62 and run:
            t = rnd.choice(run)
            core.progress(t, rnd.choice([0.01, 0.04, 0.2]), rnd.randint(1, 6), now)
            self.st.recorder.touch(t)
        elif op < 0.67 and run:
            self.encoded_success(rnd.choice(run))
        elif op < 0.72 and run:
            core.finish(rnd.choice(run), now, ok=True, result={"out": rnd.randint(0, 9)})
        elif op < 0.8 and run:
            core.finish(rnd.choice(run), now, ok=False, error_type="ValueError", error="bad")
        elif op < 0.84:
            live = [t for t in core.tasks.values() if not core.is_final(t)]
            if live:
                core.cancel(rnd.choice(live).id, now)
        elif op < 0.87 and run:
            core.lost(rnd.choice(run), now, "worker died")
        elif op < 0.9:
            plan = core.plan_preemption(POOL, now)
            if plan is not None:
                incoming, victim = plan
                core.preempt(victim, now)
                core.start(incoming, now, "w3")
        elif op < 0.95 and self.checkpoints:
            self.st.checkpoint()
        # Later than the operation: recovery orders tasks enqueued at the very same instant by
        # seq, while the original kept the order of its calls.
        later = now + 0.01
        for t in core.tick(later):
            core.finish(t, later, ok=False, error_type="TimeoutError", error="slow", timed_out=True)
        if rnd.random() < 0.7:
            self.st.recorder.commit_sync()
        self.now = round(self.now + 0.05, 6)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
        self.st.recorder.commit_sync()


def crash(state: RecoveredState) -> None:
    """What survives a process crash: everything written to the journal; not the results buffer."""
    state.journal.close()


def open_state(path: Path, policy: str = "mlfq", now: float = 1.0, **kw: Any) -> RecoveredState:
    return recover(str(path), settings=settings(policy), now=now, **kw)


FIELDS_LIVE = [
    "state",
    "level",
    "depth",
    "attempts",
    "steps",
    "service_s",
    "quantum_used",
    "redeliveries",
    "not_before",
    "enqueued_at",
    "started_at",
    "first_start",
    "finished_at",
    "worker",
    "error",
    "error_type",
    "seq",
    "priority",
    "arrival",
    "tenant",
    "tier",
    "kind",
    "pool",
    "prompt_tokens",
    "size_hint",
    "deadline",
    "depends_on",
    "timeout_s",
    "max_retries",
    "payload",
    "idempotency_key",
]
FIELDS_FINAL = [
    "state",
    "level",
    "attempts",
    "steps",
    "service_s",
    "redeliveries",
    "first_start",
    "finished_at",
    "worker",
    "error",
    "error_type",
    "result",
    "seq",
    "priority",
    "arrival",
    "tenant",
    "tier",
    "kind",
    "pool",
    "idempotency_key",
]


def assert_equivalent(a: SchedulerCore, b: SchedulerCore, now: float) -> None:
    assert set(a.tasks) == set(b.tasks)
    for tid, ta in a.tasks.items():
        tb = b.tasks[tid]
        fields = FIELDS_FINAL if a.is_final(ta) else FIELDS_LIVE
        for name in fields:
            va, vb = getattr(ta, name), getattr(tb, name)
            if isinstance(va, float) and isinstance(vb, float):
                assert va == pytest.approx(vb), (tid, name)
            else:
                assert va == vb, (tid, name, ta, tb)
        assert a.is_final(ta) == b.is_final(tb)
    assert a.live == b.live and a.completed == b.completed and a.last_seq == b.last_seq
    assert a.idempotency == b.idempotency
    assert a.deps.waiting == b.deps.waiting
    assert {r: set(x) for r, x in a.running.items()} == {r: set(x) for r, x in b.running.items()}
    assert set(a._paused) == set(b._paused)
    assert a._retrying == b._retrying
    assert a.next_wakeup() == pytest.approx(b.next_wakeup())
    assert a.fair.active == b.fair.active
    assert a.fair.counters == pytest.approx(b.fair.counters)
    # queue order, by popping (both re-banded at the same instant)
    for pool in a.queues:
        qa, qb = a.queues[pool], b.queues[pool]
        qa.rescore(now)
        qb.rescore(now)
        assert len(qa) == len(qb)
        assert [t.id for t in qa.pop_batch(len(qa))] == [t.id for t in qb.pop_batch(len(qb))]


@pytest.mark.parametrize(
    ("policy", "seed", "checkpoints"),
    [("mlfq", s, False) for s in range(3)]
    + [("mlfq", s, True) for s in range(3, 7)]
    + [("priority", 11, True), ("fcfs", 12, False)],
)
def test_recovery_is_equivalent(tmp_path: Path, policy: str, seed: int, checkpoints: bool) -> None:
    st = open_state(tmp_path, policy)
    w = Workload(st, seed, checkpoints)
    w.run(150)
    a = st.core
    a.dispatch(POOL, 2, w.now)  # whatever the random walk did last, leave work running
    st.recorder.commit_sync()
    crash(st)
    assert a.running[POOL], "the workload should leave work running"
    now = w.now + 1.0
    st2 = open_state(tmp_path, policy, now)
    b = st2.core
    # the original, as recovery sees it: its running work lost with the scheduler (recovery
    # redelivers it in submission order)
    for t in sorted((t for r in a.running.values() for t in r.values()), key=lambda t: t.seq):
        a.lost(t, now, "scheduler restarted")
    assert_equivalent(a, b, now)
    assert st2.report.damaged == [] and st2.report.skipped_records == 0
    assert st2.report.requeued > 0
    st2.close()


@pytest.mark.parametrize("seed", [21, 22, 23, 24])
def test_recovery_is_equivalent_with_held_starts(tmp_path: Path, seed: int) -> None:
    """``hold_starts_s``: the same random walk with starts held back (taken by the drains in
    batches; most tasks end, fail, are preempted or cancelled before their batch is released,
    some report progress meanwhile). Once a drain has taken everything (``everything``, as a
    clean close does), recovery matches the original as above."""
    st = open_state(tmp_path, "mlfq")
    w = Workload(st, seed, seed % 2 == 0)
    st.recorder.hold_starts_s = 0.12  # about two steps of the walk
    st.recorder.clock = lambda: w.now
    w.run(200)
    a = st.core
    a.dispatch(POOL, 2, w.now)
    st.recorder.flush(everything=True).result()
    crash(st)
    assert a.running[POOL], "the workload should leave work running"
    now = w.now + 1.0
    st2 = open_state(tmp_path, "mlfq", now)
    for t in sorted((t for r in a.running.values() for t in r.values()), key=lambda t: t.seq):
        a.lost(t, now, "scheduler restarted")
    assert_equivalent(a, st2.core, now)
    assert st2.report.damaged == [] and st2.report.skipped_records == 0
    st2.close()


@pytest.mark.parametrize("seed", [3, 5])
def test_recovered_core_keeps_journaling(tmp_path: Path, seed: int) -> None:
    """Run, crash, recover, run on past the starvation horizon, crash, recover: the second
    recovery matches the recovered core. Aging boosts a starving task's level without a
    transition (not journaled): the first tick after recovery boosts it again, so compare
    after one tick on both sides."""
    st = open_state(tmp_path)
    w = Workload(st, seed, True)
    w.run(150)
    crash(st)
    st2 = open_state(tmp_path, now=w.now + 1)
    w2 = Workload(st2, seed + 1000, True)
    w2.now, w2.n = w.now + 1.05, w.n
    w2.run(150)
    b = st2.core
    crash(st2)
    now = w2.now + 1
    st3 = open_state(tmp_path, now=now)
    c = st3.core
    assert now > 15.0  # past MLFQ's starvation_s: aging happened
    for t in sorted((t for r in b.running.values() for t in r.values()), key=lambda t: t.seq):
        b.lost(t, now, "scheduler restarted")
    b.tick(now)
    c.tick(now)
    assert_equivalent(b, c, now)
    st3.close()


def test_commits_of_one_loop_turn_share_one_write(tmp_path: Path) -> None:
    """Group commit at the scheduler's level: 200 submissions acknowledged concurrently cost a
    handful of journal writes, and each acknowledgement comes after its record is written."""
    import asyncio

    st = open_state(tmp_path, "priority")
    writes0 = st.journal.stats.writes

    async def submit(i: int) -> None:
        st.core.submit(mk(f"c{i}"), 2.0)
        await st.recorder.commit()
        assert st.journal.stats.records >= i  # written before the acknowledgement

    async def main() -> None:
        await asyncio.gather(*(submit(i) for i in range(200)))

    asyncio.run(main())
    assert st.journal.stats.writes - writes0 <= 3
    crash(st)
    assert len(open_state(tmp_path, "priority").core.tasks) == 200


def test_many_result_files_are_merged_at_a_checkpoint(tmp_path: Path) -> None:
    st = open_state(tmp_path, "priority")
    st.compact_results_after = 3
    for i in range(5):
        t = st.core.submit(mk(f"r{i}"), 1.0)
        st.core.dispatch(POOL, 1, 2.0)
        st.core.finish(t, 3.0, ok=True, result=i)
        st.recorder.commit_sync()
        st.convert_results(st.seal())  # what the scheduler does every store.results_flush_s
    assert st.results.part_count() == 5
    st.checkpoint()
    assert st.results.part_count() == 1
    assert {k: v["result"] for k, v in st.results.load_all().items()} == {
        f"r{i}": i for i in range(5)
    }
    st.close()


def test_recovering_twice_redelivers_once(tmp_path: Path) -> None:
    st = open_state(tmp_path)
    w = Workload(st, 21, True)
    w.run(120)
    crash(st)
    now = w.now + 1
    st2 = open_state(tmp_path, now=now)
    crash(st2)  # the requeues were journaled: a second crash right away changes nothing
    st3 = open_state(tmp_path, now=now)
    assert st3.report.requeued == 0
    assert_equivalent(st2.core, st3.core, now)
    st3.close()


def test_running_task_is_requeued_with_attempt_counted_and_steps_kept(tmp_path: Path) -> None:
    st = open_state(tmp_path, "priority")
    core = st.core
    core.submit_many([mk("gen", payload={"prompt": "hi"}), mk("other", "best_effort")], 1.0)
    (t,) = core.dispatch(POOL, 1, 2.0, "w1")
    assert t.id == "gen"
    core.progress(t, 0.5, 17, 3.0)
    st.recorder.touch(t)
    st.recorder.commit_sync()
    crash(st)
    st2 = open_state(tmp_path, "priority", 10.0)
    g = st2.core.tasks["gen"]
    assert g.state is S.QUEUED and g.attempts == 1 and g.redeliveries == 1
    assert g.steps == 17 and g.service_s == 0.5 and g.payload == {"prompt": "hi"}
    assert st2.report.requeued == 1
    (again,) = st2.core.dispatch(POOL, 1, 11.0, "w9")
    assert again is g and g.attempts == 2 and g.steps == 17  # resumes from step 17
    st2.close()


def test_redelivery_limit_applies_across_restarts(tmp_path: Path) -> None:
    """A task running at every crash is a poison pill: after max_redeliveries it fails."""
    st = open_state(tmp_path, "priority")
    st.core.submit(mk("poison"), 1.0)
    now = 2.0
    for _ in range(3):  # max_redeliveries=2
        st.core.dispatch(POOL, 1, now, "w")
        st.recorder.commit_sync()
        crash(st)
        now += 1
        st = open_state(tmp_path, "priority", now)
    t = st.core.tasks["poison"]
    assert t.state is S.FAILED and st.core.is_final(t) and t.error_type == "WorkerLost"
    st.convert_results(st.seal())  # recovery journaled the outcome; it reaches the results files
    assert st.results.get("poison") is not None
    st.close()


def test_idempotency_keys_and_ids_survive(tmp_path: Path) -> None:
    st = open_state(tmp_path, "priority")
    core = st.core
    core.submit_many(
        [mk("q", idempotency_key="K1", tenant="a"), mk("f", idempotency_key="K2", tenant="a")], 1.0
    )
    t = core.dispatch(POOL, 2, 2.0)
    core.finish(next(x for x in t if x.id == "f"), 3.0, ok=True, result=7)
    st.recorder.commit_sync()
    st.checkpoint()  # "f" now lives only in the results store
    crash(st)
    st2 = open_state(tmp_path, "priority", 5.0)
    core2 = st2.core
    dup_live = core2.submit(mk("other-id", idempotency_key="K1", tenant="a"), 6.0)
    dup_done = core2.submit(mk("again", idempotency_key="K2", tenant="a"), 6.0)
    same_id = core2.submit(mk("f"), 6.0)
    assert dup_live.id == "q" and dup_done.id == "f" and same_id.id == "f"
    assert dup_done.state is S.SUCCEEDED and dup_done.result == 7
    assert dup_done.payload is None  # every slot of a task rebuilt from results rows is set
    other_tenant = core2.submit(mk("new", idempotency_key="K1", tenant="b"), 6.0)
    assert other_tenant.id == "new"
    child = core2.submit(mk("child", depends_on=("f",)), 6.0)  # a finished parent is known
    assert child.state is S.QUEUED
    st2.close()


def test_pending_children_and_retry_backoff_survive(tmp_path: Path) -> None:
    st = recover(str(tmp_path), settings=PolicySettings(policy="priority", retry_backoff_s=4.0))
    core = st.core
    core.submit_many([mk("p", max_retries=1), mk("c", depends_on=("p",))], 1.0)
    core.dispatch(POOL, 1, 2.0)
    core.finish(core.tasks["p"], 3.0, ok=False, error_type="E", error="flaky")
    st.recorder.commit_sync()
    crash(st)
    st2 = recover(
        str(tmp_path), settings=PolicySettings(policy="priority", retry_backoff_s=4.0), now=3.5
    )
    core2 = st2.core
    p, c = core2.tasks["p"], core2.tasks["c"]
    assert p.state is S.FAILED and not core2.is_final(p) and core2.next_wakeup() == 7.0
    assert c.state is S.PENDING and core2.deps.waiting == {"c": {"p"}}
    assert core2.tick(7.0) == [] and p.state is S.QUEUED
    core2.dispatch(POOL, 1, 7.5)
    core2.finish(p, 8.0, ok=True)
    assert c.state is S.QUEUED
    st2.close()


def test_torn_journal_tail_is_survived(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    st = open_state(tmp_path, "priority")
    st.core.submit(mk("kept"), 1.0)
    st.recorder.commit_sync()
    st.core.submit(mk("torn"), 2.0)
    st.recorder.commit_sync()
    crash(st)
    seg = st.journal.path_of(st.journal.segments()[-1])
    seg.write_bytes(seg.read_bytes()[:-9])
    caplog.set_level(logging.WARNING)
    st2 = open_state(tmp_path, "priority", 3.0)
    assert set(st2.core.tasks) == {"kept"}
    assert len(st2.report.damaged) == 1 and "torn frame" in caplog.text
    st2.close()


def test_half_written_snapshot_is_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st = open_state(tmp_path, "priority")
    st.core.submit_many([mk("a"), mk("b")], 1.0)
    st.recorder.commit_sync()
    st.checkpoint()
    st.core.submit(mk("c"), 2.0)
    st.recorder.commit_sync()
    st.checkpoint()
    st.core.submit(mk("d"), 3.0)
    st.recorder.commit_sync()
    crash(st)
    snaps = tmp_path / "snapshots"
    newest = max(p for p in snaps.iterdir() if p.name.startswith("snapshot-"))
    newest.write_bytes(newest.read_bytes()[:100])  # e.g. a disk that lied about the fsync
    (snaps / "tmp-000000000000-snapshot-0000000099.parquet").write_bytes(b"PAR1")
    caplog.set_level(logging.WARNING)
    st2 = open_state(tmp_path, "priority", 4.0)
    assert set(st2.core.tasks) == {"a", "b", "c", "d"}  # previous snapshot + a longer journal
    assert "is unreadable" in caplog.text and "half-written snapshot" in caplog.text
    st2.close()


def test_journal_outcomes_reach_the_results_store(tmp_path: Path) -> None:
    st = open_state(tmp_path, "priority")
    st.core.submit(mk("r"), 1.0)
    (t,) = st.core.dispatch(POOL, 1, 2.0)
    st.core.finish(t, 3.0, ok=True, result={"answer": 42})
    st.recorder.commit_sync()
    crash(st)  # the results buffer is lost, the journal has the outcome
    st2 = open_state(tmp_path, "priority", 4.0)
    assert st2.report.results_recorded == 1
    st2.close()
    row = st2.results.get("r")
    assert row is not None and row["result"] == {"answer": 42}
    fresh = open_state(tmp_path, "priority", 5.0)
    assert fresh.results.get("r") == row and fresh.core.tasks["r"].result == {"answer": 42}
    fresh.close()


def test_recorded_outcome_settles_a_task_the_journal_lost(tmp_path: Path) -> None:
    st = open_state(tmp_path, "priority")
    st.core.submit(mk("s"), 1.0)
    (t,) = st.core.dispatch(POOL, 1, 2.0)
    st.recorder.commit_sync()
    st.core.finish(t, 3.0, ok=True, result="done")
    st.recorder.drain()  # the outcome is recorded in the results files ...
    st.results.add([outcome_of(t, 3.0)])
    st.results.flush()
    crash(st)  # ... but its journal record was never written
    st2 = open_state(tmp_path, "priority", 4.0)
    s = st2.core.tasks["s"]
    assert s.state is S.SUCCEEDED and s.result == "done" and st2.report.settled == 1
    assert st2.core.live == 0
    st2.close()


def test_checkpoint_truncates_the_journal_only_after_the_snapshot(tmp_path: Path) -> None:
    st = open_state(tmp_path, "priority")
    for i in range(4):
        st.core.submit(mk(f"t{i}"), float(i + 1))
        st.recorder.commit_sync()
        info = st.checkpoint()
        # the retained snapshots (2) still have every journal segment they need
        assert st.journal.segments()[0] == info.journal_floor
    crash(st)
    manifest = json.loads((tmp_path / "snapshots" / "MANIFEST.json").read_text())
    assert [s["journal_segment"] for s in manifest["snapshots"]] == [
        manifest["journal_floor"],
        manifest["journal_segment"],
    ]
    st2 = open_state(tmp_path, "priority", 9.0)
    assert set(st2.core.tasks) == {"t0", "t1", "t2", "t3"} and st2.report.journal_records == 0
    st2.close()


def test_async_checkpoint(tmp_path: Path) -> None:
    import asyncio

    st = open_state(tmp_path, "priority")

    async def main() -> None:
        st.core.submit(mk("x"), 1.0)
        await st.recorder.commit()
        info = await st.checkpoint_async()
        assert info.tasks == 1

    asyncio.run(main())
    st.close()
    assert set(open_state(tmp_path, "priority").core.tasks) == {"x"}


def test_lost_journal_is_reported_and_finished_tasks_may_be_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    st = open_state(tmp_path, "priority")
    st.core.submit_many([mk("done"), mk("live")], 1.0)
    (t,) = st.core.dispatch(POOL, 1, 2.0)
    st.core.finish(t, 3.0, ok=True, result=1)
    st.recorder.commit_sync()
    st.checkpoint()
    st.core.submit(mk("after"), 4.0)
    st.recorder.commit_sync()
    crash(st)
    shutil.rmtree(tmp_path / "journal")  # e.g. restarted on a node without the old disk
    caplog.set_level(logging.WARNING)
    st2 = open_state(tmp_path, "priority", 5.0, restore_finished=False)
    assert "changes made after that snapshot are lost" in caplog.text
    assert set(st2.core.tasks) == {"live"}  # "done" is only in the results store
    assert st2.results.get("done") is not None
    st2.close()


def test_empty_state_dir_gives_an_empty_core(tmp_path: Path) -> None:
    st = recover(str(tmp_path / "new"), settings=PolicySettings())
    assert st.core.tasks == {} and st.report.snapshot is None
    assert (tmp_path / "new" / "journal").is_dir()
    st.close()


def test_object_store_state_dir_needs_a_local_journal(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="journal_dir is required"):
        recover("s3://bucket/raysched", settings=PolicySettings())


@pytest.mark.parametrize("checkpoint", [False, True])
def test_boost_loan_survives_recovery(tmp_path: Path, checkpoint: bool) -> None:
    """A task running on a boost's loan comes back from the journal (or a snapshot) still owing
    its return to the level it was lifted from."""
    st = open_state(tmp_path)
    core = st.core
    deep = mk("deep", prompt_tokens=10)
    core.submit_many([deep], 1.0)
    q = core.queues[POOL]
    core.dispatch(POOL, 1, 1.0)
    for _ in range(5):  # used up five quanta: level 5, back in the queue
        core.progress(deep, q.quantum(deep), 5, 1.0)
    core.preempt(deep, 1.0)
    assert deep.level == 5
    core.tick(1.0 + core.settings.mlfq.starvation_s)
    assert deep.level == 0 and deep.boosted_from == 5
    core.dispatch(POOL, 1, 20.0)
    st.recorder.commit_sync()
    if checkpoint:
        st.checkpoint()
    crash(st)
    st2 = open_state(tmp_path, now=21.0)
    again = st2.core.tasks["deep"]
    assert again.boosted_from == 5 and again.level == 0
    assert st2.core.queues[POOL].next_level(again, 0) == 5
    st2.close()


def test_flush_leaves_the_garbage_collector_as_it_found_it(tmp_path: Path) -> None:
    """``Recorder.flush`` pauses the cyclic collector while it builds and encodes records."""
    import gc

    st = open_state(tmp_path, "priority")
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            st.core.submit(mk(f"g{enabled}"), 2.0)
            st.recorder.flush().result(timeout=10)
            assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
    crash(st)
    assert len(open_state(tmp_path, "priority").core.tasks) == 2


def test_flush_frees_its_rows_before_the_collector_runs_again(tmp_path: Path) -> None:
    """The rows of a big flush are built and freed while the collector is paused: re-enabling it
    must not find them alive (a collection that scans thousands of dead-soon rows and moves them
    to an older generation, which in turn brings on full collections of every task)."""
    import gc

    st = open_state(tmp_path, "priority")
    st.core.submit_many([mk(f"r{i}") for i in range(3000)], 2.0)
    for t in st.core.tasks.values():
        assert isinstance(t.__dict__, dict)  # made on first use: the row would make it, and keep it
    was, threshold = gc.isenabled(), gc.get_threshold()
    try:
        gc.enable()
        gc.set_threshold(700, 10, 10)
        gc.collect()
        before = gc.get_stats()[0]["collections"]
        st.recorder.flush().result(timeout=10)
        assert gc.get_stats()[0]["collections"] == before
        assert gc.get_count()[0] < 700
    finally:
        gc.set_threshold(*threshold)
        gc.enable() if was else gc.disable()
    st.close()


@pytest.mark.parametrize("seed", [21, 22])
def test_results_files_made_from_the_journal_hold_every_outcome_once(
    tmp_path: Path, seed: int
) -> None:
    """``convert_results`` (the scheduler's periodic job and every checkpoint) writes each final
    outcome, read from the journal, as the scheduler holds it: same rows as a results file made
    from the tasks in memory. Segments not yet sealed are left for the next round."""
    from raysched.store.results import ResultsStore

    st = open_state(tmp_path, "mlfq")
    w = Workload(st, seed, False)
    w.run(100)
    st.convert_results(st.seal())
    w.run(100)
    st.recorder.commit_sync()  # in the open segment: not converted yet
    final = [t for t in st.core.tasks.values() if st.core.is_final(t)]
    got = st.results.load_table()
    assert got.num_rows < len(final)
    st.convert_results(st.seal())
    assert st.convert_results(st.journal.segment) is None  # nothing new below it
    got = st.results.load_table()
    assert got.num_rows == len(final) == st.conversions["rows"]
    want = ResultsStore._to_table([(t, t.finished_at) for t in final])
    cols = [n for n in got.column_names if n != "recorded_at"]
    key = [("id", "ascending")]
    assert got.select(cols).sort_by(key).equals(want.select(cols).sort_by(key))
    # every kind of outcome occurred: whole (first row in an earlier segment), state rows and
    # outcomes a worker encoded (``done`` records)
    recs = [r for b in st.journal.replay_batches() for r in b]
    kinds = {k for r in recs for k in ("e", "f") if k in r} | {r["k"] for r in recs}
    assert {"e", "f", "done"} <= kinds
    st.close()


def test_a_failed_conversion_is_retried_with_the_same_segments(tmp_path: Path) -> None:
    st = open_state(tmp_path, "priority")
    st.core.submit(mk("a"), 1.0)
    (t,) = st.core.dispatch(POOL, 1, 2.0)
    st.core.finish(t, 3.0, ok=True, result=1)
    st.recorder.commit_sync()

    def broken(job: Any) -> Any:
        raise OSError("disk full")

    st.convert = broken
    upto = st.seal()
    with pytest.raises(OSError):
        st.convert_results(upto)
    assert st.results.part_count() == 0
    from raysched.store.results import convert_segments

    st.convert = convert_segments
    st.core.submit(mk("b"), 4.0)
    st.recorder.commit_sync()
    st.checkpoint()  # converts before the segments it covers are dropped
    assert set(st.results.load_all()) == {"a"} and st.conversions["rows"] == 1
    crash(st)
    st2 = open_state(tmp_path, "priority", 5.0)
    assert st2.core.tasks["a"].result == 1 and st2.report.results_recorded == 0
    st2.close()


def test_odd_values_in_one_drain_keep_the_journal_readable(tmp_path: Path) -> None:
    """A result orjson refuses (an int over 64 bits) sends the drain's record through the
    standard library encoder; a NaN elsewhere in it must still come out as strict JSON, or the
    frame, and every acknowledged change after it in the segment, would be unreadable."""
    st = open_state(tmp_path, "priority")
    a, b = st.core.submit(mk("a"), 1.0), st.core.submit(mk("b"), 1.0)
    st.core.dispatch(POOL, 2, 2.0)
    st.recorder.commit_sync()
    st.core.finish(a, 3.0, ok=True, result={"big": 2**70})
    st.core.finish(b, 3.0, ok=True, result={"x": float("nan")})
    st.recorder.commit_sync()  # one rows record for both outcomes
    st.core.submit(mk("later"), 4.0)
    st.recorder.commit_sync()
    crash(st)
    st2 = open_state(tmp_path, "priority", 5.0)
    assert st2.report.damaged == [] and "later" in st2.core.tasks
    assert st2.core.tasks["b"].state is S.SUCCEEDED and st2.core.tasks["b"].result == {"x": None}
    assert st2.core.tasks["a"].state is S.SUCCEEDED
    st2.close()


def test_young_starts_are_held_back_from_the_journal(tmp_path: Path) -> None:
    """``hold_starts_s``: a start is journaled only once the task has run that long, so a task
    that ends sooner costs no start row; a crash before then redelivers it uncounted."""
    clock = [2.0]
    st = open_state(tmp_path, "priority")
    st.recorder.hold_starts_s = 1.0
    st.recorder.clock = lambda: clock[0]
    core = st.core
    core.submit_many([mk("short"), mk("long"), mk("late")], 1.0)
    st.recorder.commit_sync()
    rows = st.journal.stats.records
    short, long_ = core.dispatch(POOL, 2, 2.0, "w1")
    assert (short.id, long_.id) == ("short", "long")
    st.recorder.commit_sync()
    assert st.journal.stats.records == rows  # both starts held
    clock[0] = 2.5
    core.finish(short, 2.5, ok=True, result=1)
    st.recorder.commit_sync()
    assert st.journal.stats.records == rows + 1  # one row for the short task's start and end
    crash(st)

    st2 = open_state(tmp_path, "priority", 3.0)
    assert st2.core.tasks["short"].state is S.SUCCEEDED
    lg = st2.core.tasks["long"]
    assert lg.state is S.QUEUED and lg.attempts == 0 and lg.redeliveries == 0
    assert st2.report.requeued == 0  # the journal never saw it start
    st2.recorder.hold_starts_s = 1.0
    st2.recorder.clock = lambda: clock[0]
    clock[0] = 3.0
    (lg,) = st2.core.dispatch(POOL, 1, 3.0, "w2")
    st2.recorder.commit_sync()
    clock[0] = 4.5  # it has now run longer than the hold: the next drain journals its start
    st2.recorder.commit_sync()
    crash(st2)

    st3 = open_state(tmp_path, "priority", 5.0)
    lg = st3.core.tasks["long"]
    assert lg.state is S.QUEUED and lg.attempts == 1 and lg.redeliveries == 1
    assert st3.report.requeued == 1
    st3.recorder.hold_starts_s = 1.0
    st3.recorder.clock = lambda: clock[0]
    late = st3.core.dispatch(POOL, 2, 5.0, "w3")
    assert {t.id for t in late} == {"long", "late"}
    st3.close()  # a clean close journals held starts too

    st4 = open_state(tmp_path, "priority", 6.0)
    assert st4.report.requeued == 2
    assert st4.core.tasks["late"].attempts == 1 and st4.core.tasks["long"].attempts == 2
    st4.close()


def test_outcome_after_a_lost_first_row_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outcome row relies on the task's first row in the same segment only while the journal
    has written every frame: after a failed write, outcomes are written whole again."""
    st = open_state(tmp_path, "priority")
    _fail_next_write(monkeypatch)
    st.core.submit(mk("a"), 1.0)
    with pytest.raises(OSError, match="No space"):
        st.recorder.commit_sync()  # the frame with a's first row is lost
    (t,) = st.core.dispatch(POOL, 1, 2.0)
    st.core.finish(t, 3.0, ok=True, result=7)
    st.recorder.commit_sync()
    st.convert_results(st.seal())
    row = st.results.get("a")
    assert row is not None and row["state"] == "succeeded"
    st.close()


def _fail_next_write(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """The next ``os.write`` fails as on a full disk (the journal cuts the file back to its last
    frame and goes on); set ``armed["on"]`` again for another."""
    import os

    real_write = os.write
    armed = {"on": True}

    def flaky(fd: int, data: Any) -> int:
        if armed["on"]:
            armed["on"] = False
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky)
    return armed


def test_a_lost_frame_is_written_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A submission whose journal frame failed is not acknowledged; its task stays in memory
    (a resubmission with the same id finds it and changes nothing), so the next drain must write
    it again, or a crash would lose a task the retry had acknowledged."""
    st = open_state(tmp_path)
    _fail_next_write(monkeypatch)
    st.core.submit(mk("a"), 1.0)
    with pytest.raises(OSError, match="No space"):
        st.recorder.commit_sync()
    assert st.core.submit(mk("a"), 1.5) is not None  # the client's retry: a duplicate
    st.core.submit(mk("b", at=2.0), 2.0)
    st.recorder.commit_sync()  # the retry's acknowledgement
    crash(st)
    st2 = open_state(tmp_path, now=3.0)
    assert {"a", "b"} <= set(st2.core.tasks), sorted(st2.core.tasks)
    assert st2.core.tasks["a"].state is S.QUEUED
    st2.close()


def test_a_commit_waits_for_an_earlier_failed_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timed flush (nobody awaits it) drained a start and an outcome, and the writer thread is
    still writing its frame when a commit with no change of its own queues its barrier. The
    frame then fails and the barrier succeeds: the commit must not return before the lost rows
    are written again."""
    import os
    import threading

    st = open_state(tmp_path, sync="always")  # every frame goes through the writer thread
    core = st.core
    core.submit_many([mk("a"), mk("b")], 1.0)
    st.recorder.commit_sync()
    started = {t.id: t for t in core.dispatch(POOL, 2, 2.0, "w0")}
    core.finish(started["b"], 2.5, ok=True, result={"b": 1})
    real_write = os.write
    writing, release = threading.Event(), threading.Event()
    armed = {"on": True}

    def slow_then_full(fd: int, data: Any) -> int:
        if armed["on"]:
            armed["on"] = False
            writing.set()
            release.wait(10)
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", slow_then_full)

    async def scenario() -> None:
        st.recorder.flush()  # the scheduler's timed flush
        assert await asyncio.to_thread(writing.wait, 10)
        commit = asyncio.ensure_future(st.recorder.commit())
        for _ in range(3):
            await asyncio.sleep(0)  # the commit's tick: an empty drain, a barrier queued
        assert not st.recorder.pending and not commit.done()
        release.set()
        await commit

    asyncio.run(scenario())
    assert not st.recorder.pending, "the commit returned before the lost rows were written"
    crash(st)
    st2 = open_state(tmp_path, now=3.0)
    a2, b2 = st2.core.tasks["a"], st2.core.tasks["b"]
    assert a2.attempts == 1, "the start in the lost frame was not counted"
    assert b2.state is S.SUCCEEDED and b2.result == {"b": 1}
    st2.close()


def test_a_start_is_a_short_row_unless_more_changed(tmp_path: Path) -> None:
    """A start from ``queued`` with nothing else changed since the last drain is journaled as a
    short ``r`` row; a start followed by progress, an outcome, or a start on a boost's loan
    (level and ``boosted_from`` changed without a transition) get their whole rows. Recovery
    brings each back as it was."""
    st = open_state(tmp_path)
    core = st.core
    q = core.queues[POOL]
    core.submit_many([mk("deep", max_retries=1)], 1.0)
    (deep,) = core.dispatch(POOL, 1, 1.0, "w0")
    for _ in range(4):  # used up four quanta: level 4
        core.progress(deep, q.quantum(deep), 5, 1.0, requeue=False)
    core.finish(deep, 1.0, ok=False, error_type="ValueError", error="bad")  # a retry is due
    core.tick(2.0)
    assert deep.state is S.QUEUED and deep.level == 4
    core.submit_many([mk("a", at=2.0), mk("b", at=2.0), mk("c", at=2.0)], 2.0)
    st.recorder.commit_sync()
    at = 3.0 + core.settings.mlfq.starvation_s
    core.tick(at)  # deep waited long enough: boosted, without a transition
    assert deep.boosted_from == 4 and deep.level == 0
    started = {t.id: t for t in core.dispatch(POOL, 4, at, "w1")}
    assert set(started) == {"a", "b", "c", "deep"}
    core.progress(started["b"], 0.01, 2, at)
    st.recorder.touch(started["b"])
    core.finish(started["c"], at, ok=True, result={"ok": 1})
    st.recorder.commit_sync()
    last = list(st.journal.replay())[-1]
    assert [r[0] for r in last["r"]] == ["a"]
    assert sorted(r[0] for r in last["t"]) == ["b", "deep"]
    assert [r[0] for r in last["e"]] == ["c"]
    crash(st)
    st2 = open_state(tmp_path, now=at + 1)
    got = st2.core.tasks
    for tid in ("a", "b"):  # running when the scheduler died: redelivered, the start counted
        assert (got[tid].state, got[tid].attempts, got[tid].redeliveries) == (S.QUEUED, 1, 1)
        assert (got[tid].first_start, got[tid].worker) == (at, "w1")
    assert got["b"].steps == 2
    assert (got["deep"].attempts, got["deep"].boosted_from) == (2, 4)
    assert got["c"].state is S.SUCCEEDED and got["c"].result == {"ok": 1}
    st2.close()


def test_new_tasks_that_have_not_started_get_short_first_rows(tmp_path: Path) -> None:
    """A new task with no attempts, enqueued at its arrival, is journaled as a ``q`` row (its
    state fields at their defaults are left out); one enqueued later than its arrival, or
    started before the drain, gets a whole ``s`` row. Recovery brings each back as it was."""
    st = open_state(tmp_path, "priority")
    core = st.core
    core.submit_many([mk("plain", at=2.0), mk("early", at=1.0)], 2.0)  # early: enqueued at 2.0
    core.submit_many([mk("run", at=2.0)], 2.0)
    core.dispatch(POOL, 1, 2.0, "w1")  # the first in the queue (plain) starts before the drain
    st.recorder.commit_sync()
    (rec,) = list(st.journal.replay())
    assert [r[0] for r in rec["q"]] == ["run"]
    assert sorted(r[0] for r in rec["s"]) == ["early", "plain"]
    crash(st)
    got = open_state(tmp_path, "priority", 3.0).core.tasks
    assert (got["early"].arrival, got["early"].enqueued_at) == (1.0, 2.0)
    assert (got["run"].state, got["run"].enqueued_at, got["run"].attempts) == (S.QUEUED, 2.0, 0)
    assert (got["plain"].attempts, got["plain"].redeliveries) == (1, 1)


@pytest.mark.parametrize("change", ["progress", "depth"])
def test_progress_while_a_start_is_held_reaches_the_journal(tmp_path: Path, change: str) -> None:
    """``hold_starts_s``: progress reported (or a depth raised by a new child) while a start is
    held back is not dropped; the start, once released, is written whole."""
    clock = [1.0]
    st = open_state(tmp_path, "priority")
    st.recorder.hold_starts_s = 0.5
    st.recorder.clock = lambda: clock[0]
    core = st.core
    core.submit_many([mk("par")], 1.0)
    st.recorder.commit_sync()
    (t,) = core.dispatch(POOL, 1, 1.0, "w1")
    st.recorder.commit_sync()  # the start is held
    clock[0] = 1.2
    rows = st.journal.stats.records
    if change == "progress":
        core.progress(t, 0.3, 7, 1.2)
        st.recorder.touch(t)
    else:
        core.submit(mk("kid", at=1.2, depends_on=("par",)), 1.2)
        core.cancel("kid", 1.2)
    st.recorder.commit_sync()  # still held: no row for the parent yet (the kid's one row)
    assert st.journal.stats.records == rows + (change == "depth")
    clock[0] = 2.0
    st.recorder.commit_sync()  # released
    want = (t.steps, t.service_s, t.depth)
    assert want != (0, 0.0, 0)
    crash(st)
    got = open_state(tmp_path, "priority", 3.0).core.tasks["par"]
    assert (got.steps, got.service_s, got.depth) == want
    assert (got.attempts, got.redeliveries) == (1, 1)


def test_a_depth_raised_through_a_parent_that_ended_reaches_the_journal(tmp_path: Path) -> None:
    """A new grandchild raises its grandparent's depth through its parent; the parent is
    cancelled before the next drain. The journal still gets the grandparent's depth."""
    st = open_state(tmp_path, "priority")
    core = st.core
    core.submit_many([mk("root"), mk("mid", depends_on=("root",))], 1.0)
    st.recorder.commit_sync()
    core.submit_many([mk("leaf", at=1.1, depends_on=("mid",))], 1.1)
    core.cancel("mid", 1.1)  # mid ends, and leaf with it, before the drain
    assert core.tasks["root"].depth == 2 and core.is_final(core.tasks["mid"])
    st.recorder.commit_sync()
    crash(st)
    got = open_state(tmp_path, "priority", 2.0).core.tasks
    assert got["root"].depth == 2 and got["root"].state is S.QUEUED


def test_a_child_raises_the_depth_of_a_parent_waiting_out_a_retry(tmp_path: Path) -> None:
    """A parent in its retry backoff is live: a new child raises its depth (a scoring factor),
    the journal has it, and recovery brings back the same depth."""
    st = open_state(tmp_path)
    core = st.core
    core.submit_many([mk("par", max_retries=1)], 1.0)
    (par,) = core.dispatch(POOL, 1, 1.0, "w1")
    core.finish(par, 1.1, ok=False, error_type="ValueError", error="bad")
    st.recorder.commit_sync()
    assert par.state is S.FAILED and not core.is_final(par)
    core.submit_many([mk("kid", at=1.2, depends_on=("par",))], 1.2)
    assert par.depth == 1
    st.recorder.commit_sync()
    crash(st)
    got = open_state(tmp_path, now=1.3).core.tasks
    assert (got["par"].depth, got["kid"].state) == (1, S.PENDING)


def test_starts_only_a_surviving_worker_knew_are_counted(tmp_path: Path) -> None:
    """``recover(started=...)``: the attempts the workers of the crashed instance were given.
    A live task the journal has at fewer attempts (its start was held back, or not flushed) is
    redelivered with that attempt counted; finished tasks, unknown ids and attempts the journal
    already has change nothing, so asking again after a second crash counts nothing twice."""
    pol = PolicySettings(policy="priority", retry_backoff_s=1.0, max_redeliveries=2)
    st = recover(str(tmp_path), settings=pol, now=1.0)
    st.recorder.hold_starts_s = 60.0  # no start reaches the journal
    st.recorder.clock = lambda: 5.0
    core = st.core
    core.submit_many([mk("fin"), mk("x"), mk("y"), mk("r", max_retries=1), mk("z")], 1.0)
    st.recorder.commit_sync()
    fin, x, y, r = core.dispatch(POOL, 4, 2.0, "w1")
    assert [t.id for t in (fin, x, y, r)] == ["fin", "x", "y", "r"]
    core.finish(fin, 2.5, ok=True, result=1)
    core.finish(r, 2.5, ok=False, error_type="E", error="flaky")  # a retry after 1 s
    st.recorder.commit_sync()
    assert core.tick(3.6) == [] and r.state is S.QUEUED
    # r's second attempt and z's first: not journaled either
    assert {t.id for t in core.dispatch(POOL, 2, 3.7, "w2")} == {"r", "z"}
    assert r.attempts == 2
    crash(st)

    # y's and z's workers died with the scheduler ("z": 0 is no attempt)
    given = {"fin": 1, "x": 1, "r": 2, "z": 0, "gone": 1}
    st2 = recover(str(tmp_path), settings=pol, now=10.0, started=given)
    tasks = st2.core.tasks
    assert st2.report.started_by_workers == 2 and st2.report.requeued == 2
    assert (tasks["x"].state, tasks["x"].attempts, tasks["x"].redeliveries) == (S.QUEUED, 1, 1)
    assert (tasks["r"].state, tasks["r"].attempts, tasks["r"].redeliveries) == (S.QUEUED, 2, 1)
    assert st2.core.is_final(tasks["fin"]) and tasks["fin"].attempts == 1
    assert (tasks["y"].state, tasks["y"].attempts) == (S.QUEUED, 0)  # uncounted: nobody knew
    assert (tasks["z"].state, tasks["z"].attempts) == (S.QUEUED, 0)
    assert "gone" not in tasks
    crash(st2)

    st3 = recover(str(tmp_path), settings=pol, now=11.0, started=lambda: given)
    assert st3.report.started_by_workers == 0 and st3.report.requeued == 0
    assert (st3.core.tasks["x"].attempts, st3.core.tasks["x"].redeliveries) == (1, 1)
    assert (st3.core.tasks["r"].attempts, st3.core.tasks["r"].redeliveries) == (2, 1)
    st3.close()


def test_a_submission_commit_writes_only_the_new_tasks(tmp_path: Path) -> None:
    """``commit(new_only=True)`` (what acknowledging a submission needs) writes the new tasks,
    in their current state; starts and outcomes of older tasks wait for the next flush, where a
    task that started and ended in between costs one row. A full commit in the same turn of the
    loop writes everything."""
    st = open_state(tmp_path, "priority")
    core, rec = st.core, st.recorder
    core.submit_many([mk("a"), mk("b")], 1.0)
    rec.commit_sync()
    rows = st.journal.stats.records
    a, _ = core.dispatch(POOL, 2, 2.0, "w1")
    core.submit_many([mk("c"), mk("d")], 2.0)
    (c,) = core.dispatch(POOL, 1, 2.0, "w1")
    assert c.id == "c"

    async def new_only() -> None:
        await rec.commit(new_only=True)

    asyncio.run(new_only())
    assert st.journal.stats.records == rows + 2  # c (running) and d, not a's and b's starts
    core.finish(a, 2.5, ok=True, result=1)
    asyncio.run(new_only())  # nothing new: a barrier, no rows
    assert st.journal.stats.records == rows + 2

    async def both() -> None:
        await asyncio.gather(rec.commit(new_only=True), rec.commit())

    asyncio.run(both())
    assert st.journal.stats.records == rows + 4  # a: one row for start and end; b's start
    crash(st)

    st2 = open_state(tmp_path, "priority", 3.0)
    t = st2.core.tasks
    assert st2.core.is_final(t["a"]) and t["a"].result == 1 and t["a"].attempts == 1
    assert (t["b"].attempts, t["b"].redeliveries, t["c"].attempts) == (1, 1, 1)
    assert t["d"].state is S.QUEUED and st2.report.requeued == 2
    st2.close()


def test_a_success_the_worker_encoded_is_journaled_as_its_bytes(tmp_path: Path) -> None:
    """``Recorder.outcomes``: a success the worker encoded goes to the journal as the worker's
    bytes (a ``done`` record), not as a row built here; an outcome not taken that way, and one
    whose first row went to a segment sealed since, get rows as usual. Recovery and the results
    files read all three as the scheduler holds them."""
    from raysched.store.results import ResultsStore

    st = open_state(tmp_path, "priority")
    core, rec = st.core, st.recorder
    core.submit_many([mk("a", idempotency_key="ka"), mk("b"), mk("c")], 1.0)
    rec.commit_sync()
    got = {t.id: t for t in core.dispatch(POOL, 3, 2.0, "w1")}
    evs = [{"t": "done", "id": t, "result": {"v": t}, "ts0": 2.1, "service": 0.5} for t in "abc"]
    data = orjson.dumps(evs)

    def finish(tid: str) -> None:
        core.account(got[tid], 0.5, 0)
        core.finish(got[tid], 2.5, ok=True, result={"v": tid})

    finish("a")
    finish("b")
    got["b"].steps = 2  # b had steps: not taken this way
    rec.outcomes("w1", 2.5, data, evs, [got["a"], got["b"], None])
    rec.commit_sync()
    frame = list(st.journal.replay_batches(st.journal.segment))[-1]
    (done,) = [r for r in frame if r["k"] == "done"]
    assert done["use"] == [0] and done["ev"] == evs and done["w"] == "w1"
    rows = [r for r in frame if r["k"] == "rows"]
    assert [row[0] for r in rows for row in r.get("e", [])] == ["b"]
    assert not any(row[0] == "a" for r in rows for k in "sqtfepr" for row in r.get(k, []))

    finish("c")
    rec.outcomes("w1", 2.5, data, evs, [None, None, got["c"]])
    st.journal.rotate()  # not through seal(), which drains first: c's first row is sealed
    rec.commit_sync()
    frame = list(st.journal.replay_batches(st.journal.segment))[-1]
    assert [r["k"] for r in frame] == ["rows"] and [row[0] for row in frame[0]["f"]] == ["c"]
    # seal() drains first: an outcome pending then goes to the segment it seals, and counts
    core.submit_many([mk("d")], 2.6)
    rec.commit_sync()
    (d,) = core.dispatch(POOL, 1, 2.6, "w1")
    got["d"] = d
    finish("d")
    evs_d = [evs[0] | {"id": "d", "result": {"v": "d"}}]
    rec.outcomes("w1", 2.5, orjson.dumps(evs_d), evs_d, [d])
    ended = rec.ended
    sealed = st.seal()
    assert rec.ended == ended and rec.pending == 0
    (done,) = [r for b in st.journal.replay_batches(sealed - 1) for r in b if r["k"] == "done"]
    assert done["ev"][0]["id"] == "d"

    st.convert_results(st.seal())
    table = st.results.load_table()
    want = ResultsStore._to_table([(got[t], got[t].finished_at) for t in "abcd"])
    cols = [n for n in table.column_names if n != "recorded_at"]
    key = [("id", "ascending")]
    assert table.select(cols).sort_by(key).equals(want.select(cols).sort_by(key))
    assert table.sort_by(key).column("idempotency_key").to_pylist() == ["ka", None, None, None]
    crash(st)

    st2 = open_state(tmp_path, "priority", 3.0)
    for tid in "abcd":
        a, b = got[tid], st2.core.tasks[tid]
        for name in FIELDS_FINAL:
            assert getattr(a, name) == getattr(b, name), (tid, name)
    st2.close()


def test_a_burst_after_a_quiet_spell_is_journaled_as_its_workers_encoded_it(
    tmp_path: Path,
) -> None:
    """The scheduler (in one process, workers reporting as the worker actor does with a
    journal): the successes of a burst go to the journal as the bytes their worker encoded, and
    the segment is sealed for the results files about ``results_flush_s`` after the first
    outcome, not at once after a quiet spell, so the burst's outcomes are in its submissions'
    segment. The results files, and a restart, have every outcome."""
    import copy

    from raysched.handlers import default_registry
    from raysched.runtime.scheduler import SchedulerService
    from raysched.settings import PoolSettings, Settings
    from raysched.store.journal import Journal
    from raysched.store.records import split_done
    from tests.unit.http_fakes import InProcessSpawner, _Worker

    settings = Settings(
        state_dir=str(tmp_path),
        pools=[PoolSettings(min_workers=1, max_workers=1, slots=4)],
        store={"results_flush_s": 0.3},
    )
    root = settings.store_root()

    class Spawner(InProcessSpawner):
        def spawn(self, pool: PoolSettings, worker_id: str) -> _Worker:
            async def report(wid: str, events: list[dict[str, Any]]) -> None:
                assert self.svc is not None
                rest, done = split_done(copy.deepcopy(events))
                await self.svc.report(wid, rest, done)

            return _Worker(worker_id, default_registry(), report, slots=4)

    specs = [{"kind": "echo", "payload": {"i": i}} for i in range(30)]

    async def main() -> tuple[list[str], int]:
        state = recover(root, pools=["default"], settings=settings.policy)
        spawner = Spawner(settings)
        svc = SchedulerService(settings, spawner, store=state)
        spawner.svc = svc
        await svc.start()
        await asyncio.sleep(0.5)  # quiet, longer than results_flush_s
        seg = state.journal.segment
        ids = (await svc.submit(specs))["ids"]
        got = [(await svc.result(t, 10))["result"] for t in ids]
        assert got == [s["payload"] for s in specs]
        assert state.journal.segment == seg  # no seal at the first outcome
        for _ in range(100):  # then one, and a results file
            await asyncio.sleep(0.05)
            if state.results.load_table().num_rows == len(ids):
                break
        assert state.journal.segment > seg
        await svc.shutdown()
        return ids, seg

    ids, seg = asyncio.run(main())
    recs = [r for b in Journal(Path(root) / "journal").replay_batches(seg, seg + 1) for r in b]
    done = [r["ev"][i]["id"] for r in recs if r["k"] == "done" for i in r["use"]]
    assert sorted(done) == sorted(ids)  # every outcome as its worker encoded it, no row
    assert not [row for r in recs for k in "ef" for row in r.get(k, [])]
    st = recover(root, pools=["default"], settings=settings.policy)
    assert [st.core.tasks[t].result for t in ids] == [s["payload"] for s in specs]
    assert all(st.core.is_final(st.core.tasks[t]) for t in ids)
    st.close()
