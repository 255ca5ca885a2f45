"""Recovery: latest snapshot + journal tail + results store -> a ``SchedulerCore`` ready to run.

``recover`` loads the newest readable snapshot, replays the journal from the segment it covers up
to, settles tasks whose outcome the results store already holds, restores everything into a fresh
core (``SchedulerCore.restore``: seq order, levels, attained service, attempts, idempotency keys,
fair-share counters), redelivers work that was running (attempt counted; ``steps`` kept, so a
resumable stepwise handler restarts from its last reported step), journals what it changed,
counts the attempts that the surviving workers of the previous instance were given but whose start
the journal had not got yet (``started``),
records outcomes the results store lacked, and only then returns: mark the scheduler ready after
that. The returned ``RecoveredState`` holds the open journal, checkpoints, results store and the
recorder, and takes checkpoints (``checkpoint_async``)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from raysched.models import TaskState
from raysched.policy.core import SchedulerCore
from raysched.policy.lifecycle import AuditHook
from raysched.policy.task import Task
from raysched.settings import PolicySettings
from raysched.store.checkpoint import (
    Checkpoints,
    Snapshot,
    SnapshotInfo,
    column_values,
    sparse_items,
    tasks_from_table,
)
from raysched.store.journal import Journal, SyncPolicy
from raysched.store.location import StateDir
from raysched.store.recorder import Recorder
from raysched.store.records import apply_record, done_as_rows, replay_rows, task_from_record
from raysched.store.results import (
    ConvertJob,
    ConvertReport,
    ResultsStore,
    convert_segments,
    decode_results,
    outcome_of,
)

__all__ = ["RecoveredState", "RecoveryReport", "recover"]

log = logging.getLogger("raysched.store.recovery")

_STATES = {s.value: s for s in TaskState}


@dataclass
class RecoveryReport:
    snapshot: str | None = None
    snapshot_tasks: int = 0
    journal_from: int = 0
    journal_segments: int = 0
    journal_records: int = 0
    #: One line per journal segment whose tail was torn or corrupt.
    damaged: list[str] = field(default_factory=list)
    #: Records that named a task no snapshot or submit record had, or could not be applied.
    skipped_records: int = 0
    #: Live tasks in the snapshot/journal whose outcome the results store already had.
    settled: int = 0
    finished: int = 0
    live: int = 0
    requeued: int = 0
    #: Of those, tasks the journal had as waiting that a surviving worker said it was given
    #: (``started``: a start not journaled yet, e.g. held back by ``hold_starts_s``).
    started_by_workers: int = 0
    #: Outcomes found only in the journal, now written to the results store.
    results_recorded: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class RecoveredState:
    core: SchedulerCore
    journal: Journal
    checkpoints: Checkpoints
    results: ResultsStore
    recorder: Recorder
    report: RecoveryReport
    #: ``finish_checkpoint`` merges the result files once there are more than this many.
    compact_results_after: int = 64
    #: Runs a ``ConvertJob`` (results files from journal segments). In-process by default; the
    #: scheduler actor passes one that runs it on a converter actor on its node.
    convert: Callable[[ConvertJob], ConvertReport] = convert_segments
    #: The first journal segment whose outcomes are not in the results files yet.
    converted_upto: int = 0
    #: What the conversions did: files, outcome rows, the process of the last one.
    conversions: dict[str, int] = field(default_factory=lambda: {"files": 0, "rows": 0, "pid": 0})
    _convert_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- results --------------------------------------------------------------------------------
    def seal(self) -> int:
        """Start a new journal segment (on the thread that owns the core); the outcomes in the
        ones before it can then go to the results files (``convert_results``). What the
        recorder holds goes first: every outcome counted in ``Recorder.ended`` is then in a
        sealed segment."""
        self.recorder.flush()
        return self.journal.rotate()

    def convert_results(self, upto: int) -> ConvertReport | None:
        """Write the outcomes of the journal segments below ``upto`` (sealed) that are not in
        the results files yet as one results file (any thread; blocking). On failure nothing is
        marked done: the next call takes the same segments again."""
        with self._convert_lock:
            if upto <= self.converted_upto:
                return None
            self.journal.append_many(())  # the rotation is done: the sealed segments are whole
            segs = tuple(n for n in self.journal.segments() if self.converted_upto <= n < upto)
            rep = None
            if segs:
                job = ConvertJob(
                    str(self.journal.directory),
                    segs,
                    self.results.dir.root,
                    self.results.dir.fs,
                    self.results.reserve_part(),
                    self.results.clock(),
                )
                rep = self.convert(job)
                if rep.name is not None:
                    self.conversions["files"] += 1
                    self.conversions["rows"] += rep.rows
                self.conversions["pid"] = rep.pid
            self.converted_upto = upto
            return rep

    # -- checkpoints ----------------------------------------------------------------------------
    def begin_checkpoint(self) -> Snapshot:
        """The synchronous part of a checkpoint (on the thread that owns the core): drain the
        recorder, start a journal segment, capture the state. Nothing may change the core between
        these steps, so call it in one go."""
        self.recorder.flush()
        seg = self.journal.rotate()
        return self.checkpoints.capture(self.core, seg)

    def finish_checkpoint(self, snap: Snapshot) -> SnapshotInfo:
        """The I/O part (any thread; one checkpoint at a time): the outcomes in the segments the
        snapshot covers go to the results files, the snapshot is written durably, then the
        journal segments no retained snapshot needs are dropped, and the result files merged
        when there are many."""
        self.journal.append_many(())  # the rotation is done: the new segment exists
        self.results.flush()
        self.convert_results(int(snap.meta["journal_segment"]))
        info = self.checkpoints.save(snap)
        self.journal.drop_before(info.journal_floor)
        if self.results.part_count() > self.compact_results_after:
            self.results.compact()
        return info

    def checkpoint(self) -> SnapshotInfo:
        """A whole checkpoint, blocking (tests, tools)."""
        return self.finish_checkpoint(self.begin_checkpoint())

    async def checkpoint_async(self) -> SnapshotInfo:
        """A whole checkpoint from the event loop that owns the core: capture on the loop, I/O
        on a worker thread."""
        snap = self.begin_checkpoint()
        return await asyncio.to_thread(self.finish_checkpoint, snap)

    def close(self) -> None:
        """Journal what is pending, close the journal, flush the results held in memory (the
        outcomes in the journal go to the results files at the next start's recovery or
        checkpoint)."""
        self.recorder.flush(everything=True)
        self.journal.close()
        self.results.flush()


_FINISHED_SPARSE: tuple[tuple[str, Any], ...] = (
    ("first_start", None),
    ("finished_at", None),
    ("worker", None),
    ("idempotency_key", None),
    ("error", None),
    ("error_type", None),
    ("redeliveries", 0),
)


def _finished_tasks(table: pa.Table) -> list[Task]:
    """Final tasks rebuilt from results rows: enough for status, results, duplicate ids and
    idempotency keys, and finished parents. Built like ``tasks_from_table``: slots set directly."""
    if table.num_rows == 0:
        return []
    cols = [
        column_values(table.column(n))
        for n in [
            "id",
            "priority",
            "arrival",
            "seq",
            "tenant",
            "tier",
            "kind",
            "pool",
            "state",
            "level",
            "attempts",
            "steps",
            "service_s",
        ]
    ]
    states = _STATES
    new = Task.__new__
    tasks: list[Task] = []
    append = tasks.append
    for i, p, a, sq, te, ti, k, po, st, lv, at, sp, sv in zip(*cols, strict=True):
        t = new(Task)
        t.id = i
        t.priority = p
        t.arrival = a
        t.seq = sq
        t.prompt_tokens = 0
        t.tenant = te
        t.tier = ti
        t.kind = k
        t.pool = po
        t.size_hint = None
        t.deadline = None
        t.state = states[st]
        t.enqueued_at = a
        t.level = lv
        t.depth = 0
        t.attempts = at
        t.service_s = sv
        t.quantum_used = 0.0
        t.steps = sp
        t.started_at = 0.0
        t.qkey = None
        t.payload = None  # not kept for finished tasks
        append(t)
    for name, default in _FINISHED_SPARSE:
        idx, vals = sparse_items(table.column(name), default)
        for n, v in zip(idx, vals, strict=True):
            setattr(tasks[n], name, v)
    idx, texts = sparse_items(table.column("result"), None)
    if idx:
        for n, v in zip(idx, decode_results(texts), strict=True):
            if v is not None:
                tasks[n].result = v
    return tasks


def _settle(t: Task, row: dict[str, Any], result: Any) -> None:
    """A live task whose outcome was recorded (its finish record was lost): take the outcome."""
    t.state = _STATES[row["state"]]
    for name in ("attempts", "steps", "service_s", "level"):
        setattr(t, name, row[name])
    for name in ("first_start", "finished_at", "worker", "error", "error_type"):
        setattr(t, name, row[name])
    t.result = result


def recover(
    state_dir: str | os.PathLike[str],
    journal_dir: str | os.PathLike[str] | None = None,
    settings: PolicySettings | None = None,
    *,
    pools: Iterable[str] = ("default",),
    now: float | None = None,
    clock: Callable[[], float] = time.time,
    sync: SyncPolicy = "everysec",
    audit: Sequence[AuditHook] = (),
    on_refused: Callable[[str], None] | None = None,
    restore_finished: bool = True,
    keep_snapshots: int = 2,
    filesystem: Any = None,
    started: Mapping[str, int] | Callable[[], Mapping[str, int]] | None = None,
) -> RecoveredState:
    """Rebuild the scheduler's state (see the module docstring). ``state_dir``: local folder or
    ``s3://``/``gs://`` URI for snapshots and results; ``journal_dir``: a local folder, by default
    ``<state_dir>/journal`` when ``state_dir`` is local (required otherwise). An empty state
    directory gives an empty core. ``restore_finished=False`` skips loading finished tasks into
    the core (faster with millions of results, but then resubmitting a finished task's id or
    idempotency key runs it again, and children of finished parents are refused). ``started``:
    task id -> attempt number, what the workers a previous instance left were given
    (``WorkerCore.given``), or a callable returning them (called once the journal is loaded): a
    live task the journal has at fewer attempts is redelivered with that attempt counted, as if
    its start had been journaled."""
    # Recovery allocates hundreds of thousands of long-lived objects at once: the cyclic garbage
    # collector would rescan them over and over (more than half the time at 100k tasks).
    paused = gc.isenabled()
    gc.disable()
    try:
        return _recover(
            state_dir,
            journal_dir,
            settings,
            pools=pools,
            now=now,
            clock=clock,
            sync=sync,
            audit=audit,
            on_refused=on_refused,
            restore_finished=restore_finished,
            keep_snapshots=keep_snapshots,
            filesystem=filesystem,
            started=started,
        )
    finally:
        if paused:
            gc.enable()


def _recover(
    state_dir: str | os.PathLike[str],
    journal_dir: str | os.PathLike[str] | None,
    settings: PolicySettings | None,
    *,
    pools: Iterable[str],
    now: float | None,
    clock: Callable[[], float],
    sync: SyncPolicy,
    audit: Sequence[AuditHook],
    on_refused: Callable[[str], None] | None,
    restore_finished: bool,
    keep_snapshots: int,
    filesystem: Any,
    started: Mapping[str, int] | Callable[[], Mapping[str, int]] | None,
) -> RecoveredState:
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    mark = t_start

    def lap(name: str) -> None:
        nonlocal mark
        t = time.perf_counter()
        phases[name] = t - mark
        mark = t

    text = os.fspath(state_dir)
    remote = "://" in text and not text.startswith("file://")
    if journal_dir is None and filesystem is None and remote:
        raise ValueError(
            "journal_dir is required when state_dir is not a local folder: the journal "
            "needs a local disk (object stores cannot append or fsync)"
        )
    sd = StateDir(text, filesystem)
    if journal_dir is None:
        if not sd.local:
            raise ValueError(
                "journal_dir is required when state_dir is not a local folder: the journal "
                "needs a local disk (object stores cannot append or fsync)"
            )
        journal_dir = os.path.join(sd.root, "journal")
    if now is None:
        now = clock()
    rep = RecoveryReport()
    checkpoints = Checkpoints(sd, keep=keep_snapshots, clock=clock)
    results = ResultsStore(sd, clock=clock)

    # 1. the snapshot
    tasks: dict[str, Task] = {}
    retrying: set[str] = set()
    fair: dict[str, float] = {}
    idem: list[list[str]] = []
    seq = preemptions = start = 0
    snap = checkpoints.load_latest()
    if snap is not None:
        loaded, retrying = tasks_from_table(snap.table)
        tasks = {t.id: t for t in loaded}
        m = snap.meta
        fair = {str(k): float(v) for k, v in m.get("fair", {}).items()}
        idem = list(m.get("idempotency", []))
        seq = int(m.get("seq", 0))
        preemptions = int(m.get("preemptions", 0))
        start = snap.info.journal_segment
        rep.snapshot, rep.snapshot_tasks = snap.info.name, len(loaded)
    lap("snapshot")

    # 2. the journal tail
    journal = Journal(journal_dir, sync=sync, first_segment=start)
    segs = journal.segments()
    if snap is not None and start not in segs:
        log.warning(
            "recovery: journal %s has no segment %d, the one that follows snapshot %s: the "
            "changes made after that snapshot are lost (a journal on another node's disk?)",
            journal.directory,
            start,
            rep.snapshot,
        )
    elif segs and segs[0] > start:
        log.error(
            "recovery: the journal starts at segment %d but the %s covers only segments below "
            "%d: the changes in between are lost",
            segs[0],
            f"snapshot {rep.snapshot}" if rep.snapshot else "missing snapshot",
            start,
        )
    rep.journal_from = start
    for batch in journal.replay_batches(start):
        for rec in batch:
            try:
                kind = rec["k"]
                if kind in ("rows", "done"):
                    rows = done_as_rows(rec) if kind == "done" else rec
                    rep.skipped_records += replay_rows(rows, tasks, retrying, fair)[1]
                    continue
                tid = rec["id"]
                t = tasks.get(tid)
                if kind == "submit" and t is None:
                    t = tasks[tid] = task_from_record(rec)
                elif t is None:
                    rep.skipped_records += 1
                    continue
                else:
                    apply_record(t, rec)
                if kind != "progress":
                    if rec.get("retrying"):
                        retrying.add(tid)
                    else:
                        retrying.discard(tid)
                fc = rec.get("fc")
                if fc is not None:
                    fair[t.tenant] = fc
            except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
                rep.skipped_records += 1
                log.warning("recovery: skipping a malformed journal record (%r): %.300s", exc, rec)
    st = journal.replay_stats
    rep.journal_segments, rep.journal_records = st.segments, st.records
    rep.damaged = list(st.damaged)
    if rep.skipped_records:
        log.warning("recovery: %d journal records skipped", rep.skipped_records)
    lap("journal")

    # 3. the results store: settle live tasks it already has, add what only the journal had
    table = results.load_table()
    ids = table.column("id").to_pylist()
    recorded = set(ids)
    hits = [i for i, tid in enumerate(ids) if tid in tasks]
    if hits:
        sub = table.take(pa.array(hits))
        vals = decode_results(sub.column("result").to_pylist())
        for row, val in zip(sub.to_pylist(), vals, strict=True):
            t = tasks[row["id"]]
            if not t.state.terminal or t.id in retrying:
                _settle(t, row, val)
                retrying.discard(t.id)
                rep.settled += 1
    if rep.settled:
        log.warning(
            "recovery: %d tasks the journal had as unfinished were already recorded as "
            "finished; their recorded outcome stands",
            rep.settled,
        )
    missing = [
        t
        for t in tasks.values()
        if t.state.terminal and t.id not in retrying and t.id not in recorded
    ]
    if missing:
        rep.results_recorded = results.add(outcome_of(t, now) for t in missing)
    finished: list[Task] = []
    if restore_finished and len(recorded) > len(hits):
        keep = pa.array([tid not in tasks for tid in ids])
        finished = _finished_tasks(table.filter(keep))
    lap("results")

    # 3b. starts the journal had not got yet but a surviving worker had (held back or not
    # flushed yet): as if journaled, so the attempt counts and the task is redelivered
    given = started() if callable(started) else started
    for tid, attempt in (given or {}).items():
        t = tasks.get(tid)
        if t is None or attempt <= t.attempts:
            continue
        if t.state.terminal and tid not in retrying:
            continue  # its outcome is recorded: that attempt ended
        retrying.discard(tid)
        t.attempts = attempt
        t.state = TaskState.RUNNING
        rep.started_by_workers += 1
    if rep.started_by_workers:
        log.warning(
            "recovery: %d tasks the journal had as waiting were running on a surviving worker; "
            "their attempt is counted",
            rep.started_by_workers,
        )

    lap("workers")  # with ``started`` a callable: the wait for the workers' answers

    # 4. a fresh core, then the changes recovery made go to the journal and results
    core = SchedulerCore(settings, pools=pools, audit=audit, on_refused=on_refused)
    recorder = Recorder(core, journal)
    everything = finished + list(tasks.values()) if finished else list(tasks.values())
    was_running = [t for t in tasks.values() if t.state is TaskState.RUNNING]
    core.restore(everything, now, retrying=retrying, fair_counters=fair, seq=seq)
    for tenant, key, tid in idem:
        core.idempotency.setdefault((tenant, key), tid)
    core.preemptions = preemptions
    rep.requeued = sum(1 for t in was_running if t.state is TaskState.QUEUED)
    rep.live = core.live
    rep.finished = core.completed
    lap("restore")
    recorder.commit_sync()
    results.flush()
    lap("persist")
    rep.seconds = time.perf_counter() - t_start
    rep.phases = phases
    log.info(
        "recovered %d live and %d finished tasks in %.3f s (snapshot %s with %d tasks, %d "
        "journal records from segment %d, %d redelivered, %d damaged segment tails)",
        rep.live,
        rep.finished,
        rep.seconds,
        rep.snapshot or "none",
        rep.snapshot_tasks,
        rep.journal_records,
        rep.journal_from,
        rep.requeued,
        len(rep.damaged),
    )
    # everything up to here is in the results files (``missing`` above): new outcomes go to the
    # segment appends open next
    state = RecoveredState(core, journal, checkpoints, results, recorder, rep)
    state.converted_upto = journal.segment
    return state
