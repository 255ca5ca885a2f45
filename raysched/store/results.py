"""The results store: finished tasks' outcomes (state, result or error, attempts, timings) as
Parquet under ``<state_dir>/results/``, readable after a restart.

Where the rows come from. The journal has every final outcome whole (``records``: ``f`` rows),
so ``convert_segments`` makes a results file from sealed journal segments. The scheduler runs it
every ``store.results_flush_s`` and before each checkpoint drops segments, on a converter actor
on its node: reading, decoding and converting outcomes is work the scheduler's own process would
otherwise do for every task (about 5 µs each). ``add``/``add_tasks`` + ``flush`` write outcomes
held in memory (recovery, tools) one file per flush.

Exactly-once recorded results: a task may run more than once (at-least-once execution), and its
outcome may be added more than once (a redelivery, a journal replay), but reads keep only the
*first* recorded outcome of each task id, in file order then row order. Files are named
``part-<n>-<random>.parquet`` with ``n`` increasing (read in that order), written under a
temporary name and moved. The random part keeps two writers that got the same ``n`` apart (a
conversion still running for a scheduler that died while its successor recovers): both hold the
same outcomes, read from the same journal records."""

from __future__ import annotations

import logging
import operator
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raysched.models import TaskState
from raysched.pause import paused_gc
from raysched.policy.task import Task
from raysched.store.journal import Journal, dumps, loads
from raysched.store.location import TMP_PREFIX, StateDir
from raysched.store.records import done_as_rows

__all__ = [
    "RESULT_SCHEMA",
    "ConvertJob",
    "ConvertReport",
    "ResultsStore",
    "convert_segments",
    "decode_results",
    "outcome_of",
]

log = logging.getLogger("raysched.store.results")

FOLDER = "results"
RESULT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("state", pa.string()),
        ("tenant", pa.string()),
        ("kind", pa.string()),
        ("tier", pa.string()),
        ("priority", pa.int32()),
        ("pool", pa.string()),
        ("seq", pa.int64()),
        ("level", pa.int32()),
        ("attempts", pa.int32()),
        ("redeliveries", pa.int32()),
        ("steps", pa.int64()),
        ("service_s", pa.float64()),
        ("arrival", pa.float64()),
        ("first_start", pa.float64()),
        ("finished_at", pa.float64()),
        ("worker", pa.string()),
        ("idempotency_key", pa.string()),
        ("result", pa.string()),  # JSON of the handler's return value (succeeded only)
        ("error_type", pa.string()),
        ("error", pa.string()),
        ("recorded_at", pa.float64()),
    ]
)
_NAMES = RESULT_SCHEMA.names


def outcome_of(t: Task, recorded_at: float) -> dict[str, Any]:
    """The results row of a finished task (``result`` decoded, as the handler returned it)."""
    return {
        "id": t.id,
        "state": t.state.value,
        "tenant": t.tenant,
        "kind": t.kind,
        "tier": t.tier,
        "priority": t.priority,
        "pool": t.pool,
        "seq": t.seq,
        "level": t.level,
        "attempts": t.attempts,
        "redeliveries": t.redeliveries,
        "steps": t.steps,
        "service_s": t.service_s,
        "arrival": t.arrival,
        "first_start": t.first_start,
        "finished_at": t.finished_at,
        "worker": t.worker,
        "idempotency_key": t.idempotency_key,
        "result": t.result,
        "error_type": t.error_type,
        "error": t.error,
        "recorded_at": recorded_at,
    }


_TASK_COLUMNS = [n for n in _NAMES if n not in ("state", "result", "recorded_at")]
_STATE_VALUE = {s: s.value for s in TaskState}


_task_row = operator.attrgetter(*_TASK_COLUMNS, "state", "result")


def _tasks_table(pairs: list[tuple[Task, float]]) -> pa.Table:
    """``outcome_of`` for many final tasks at once, straight into columns. One pass over the
    tasks (an attrgetter row each, then transposed): a pass per column visits every task again,
    which costs cache misses once there are many (about 2x slower at 20,000 in memory order)."""
    if not pairs:
        return RESULT_SCHEMA.empty_table()
    with paused_gc():  # see ``pause``
        return _build_table(pairs)


def _build_table(pairs: list[tuple[Task, float]]) -> pa.Table:
    rows = list(map(_task_row, [t for t, _ in pairs]))
    cols = list(zip(*rows, strict=True))
    table: dict[str, Any] = dict(zip(_TASK_COLUMNS, cols, strict=False))
    states, results = cols[-2], cols[-1]
    value = _STATE_VALUE
    table["state"] = [value[s] for s in states]
    ok = TaskState.SUCCEEDED
    table["result"] = [
        dumps(r).decode() if s is ok else None for s, r in zip(states, results, strict=True)
    ]
    table["recorded_at"] = [at for _, at in pairs]
    return pa.Table.from_pydict(table, schema=RESULT_SCHEMA)


def write_part(sd: StateDir, number: int, table: pa.Table) -> str:
    """Write ``table`` as results part ``number`` (atomically); returns its name."""
    name = f"part-{number:010d}-{uuid.uuid4().hex[:8]}.parquet"
    sd.makedirs(FOLDER)
    sd.write_atomic(FOLDER, name, lambda out: pq.write_table(table, out))
    return name


@dataclass(frozen=True)
class ConvertJob:
    """Make results part ``part`` from the final outcomes in journal segments ``segments``
    (sealed: nothing is appended to them any more), in their order. ``root``/``filesystem``:
    the state directory (``StateDir.root``, ``StateDir.fs``); picklable, for the converter actor."""

    journal_dir: str
    segments: tuple[int, ...]
    root: str
    filesystem: Any
    part: int
    now: float


@dataclass(frozen=True)
class ConvertReport:
    name: str | None  # the part written, None when the segments held no outcome
    rows: int
    pid: int  # the process that did the work


def convert_segments(job: ConvertJob) -> ConvertReport:
    """Run ``job`` (any process that can read the journal directory). An outcome recorded twice (a
    task redone after a crash) gets two rows; reads keep the first. The columns are taken from
    the journal's rows as they are, without task objects (about 13 µs per outcome in all,
    decoding and writing included, against 26 when it rebuilt tasks). A state-row outcome
    (``e``) takes its task's spec from the task's first (``s`` or ``q``) row, earlier in the
    same segment."""
    with paused_gc():
        journal = Journal(job.journal_dir, sync="off")  # read only: never locked or written
        parts: list[pa.Table] = []
        for seg in job.segments:
            firsts: dict[str, tuple[list[str], list[Any]]] = {}  # id -> first row, this segment
            for batch in journal.replay_batches(seg, seg + 1):
                for rec in batch:
                    if not isinstance(rec, dict) or rec.get("k") not in ("rows", "done"):
                        continue
                    try:
                        parts.extend(_outcome_tables(rec, firsts, job.now))
                    except (KeyError, TypeError, ValueError, IndexError, pa.ArrowException) as exc:
                        log.error("results: skipping an unreadable journal record: %s", exc)
            if journal.replay_stats.damaged:  # recovery records these from the journal it reads
                log.error(
                    "results: journal segment %d is damaged (%s): its outcomes after the damage "
                    "are not in the results files",
                    seg,
                    "; ".join(journal.replay_stats.damaged),
                )
        rows = sum(t.num_rows for t in parts)
        if not rows:
            return ConvertReport(None, 0, os.getpid())
        table = pa.concat_tables(parts)
    name = write_part(StateDir(job.root, job.filesystem), job.part, table)
    return ConvertReport(name, rows, os.getpid())


#: Results columns kept in a task's ``__dict__`` (so in a row's last element), with their class
#: defaults; the others are slots, each a field of the row.
_DICT_COLUMNS = tuple((n, getattr(Task, n)) for n in _TASK_COLUMNS if n not in Task.__slots__)
_SLOT_COLUMNS = tuple(n for n in _TASK_COLUMNS if n in Task.__slots__)
_FINAL_STATES = frozenset(s.value for s in TaskState if s.terminal)


def _outcome_tables(
    rec: dict[str, Any], firsts: dict[str, tuple[list[str], list[Any]]], now: float
) -> list[pa.Table]:
    """The final outcomes in one ``rows`` record as results tables; remembers the record's
    first rows (``s``, ``q``) in ``firsts`` for the state-row outcomes (``e``) of later
    records. Rows of the wrong length or with an unknown state are skipped with a log line."""
    for key, names_key in (("s", "sf"), ("q", "qf")):
        if key in rec:
            names = rec[names_key]
            at = names.index("id")
            for row in rec[key]:
                if len(row) == len(names):
                    firsts[row[at]] = (names, row)
    out = []
    if rec["k"] == "done":  # e rows whose dict lacks the spec's rare fields: the first row's
        e = done_as_rows(rec)
        return _state_outcomes(e["ef"], e["e"], e["es"], firsts, now, True)
    if "f" in rec:
        rows, states = _readable(rec["ff"], rec["f"], rec["fs"])
        if rows:
            out.append(_columns(rec["ff"], rows, states, None, now))
    if "e" in rec:
        rows, states = _readable(rec["ef"], rec["e"], rec["es"])
        out.extend(_state_outcomes(rec["ef"], rows, states, firsts, now, False))
    return out


def _state_outcomes(
    names: Sequence[str],
    rows: list[Any],
    states: list[str],
    firsts: dict[str, tuple[list[str], list[Any]]],
    now: float,
    spec_dict: bool,
) -> list[pa.Table]:
    """Results tables of state-row outcomes (``e``), joined with their tasks' first rows;
    ``spec_dict``: the rows' dicts lack the spec fields kept in a task's dict (a ``done``
    record's), which the first row's dict has."""
    at = names.index("id")
    groups: dict[int, tuple[list[str], list[Any], list[Any], list[str]]] = {}
    for row, st in zip(rows, states, strict=True):
        first = firsts.pop(row[at], None)
        if first is None:
            log.error("results: outcome of %r without its first row: skipped", row[at])
            continue
        g = groups.get(id(first[0]))  # by the first rows' field list (s or q)
        if g is None:
            g = groups[id(first[0])] = (first[0], [], [], [])
        if spec_dict:
            row = [*row[:-1], {**first[1][first[0].index("__dict__")], **row[-1]}]
        g[1].append(first[1])
        g[2].append(row)
        g[3].append(st)
    return [
        _columns(list(names), erows, est, (snames, srows), now)
        for snames, srows, erows, est in groups.values()
    ]


def _readable(names: list[str], rows: list[Any], states: list[str]) -> tuple[list[Any], list[str]]:
    n = len(names)
    if all(len(r) == n for r in rows) and all(s in _FINAL_STATES for s in states):
        return rows, states
    keep = [(r, s) for r, s in zip(rows, states, strict=True) if len(r) == n and s in _FINAL_STATES]
    log.error("results: skipping %d unreadable outcome rows", len(rows) - len(keep))
    return [r for r, _ in keep], [s for _, s in keep]


def _columns(
    names: list[str],
    rows: list[Any],
    states: list[str],
    spec: tuple[list[str], list[Any]] | None,
    now: float,
) -> pa.Table:
    """A results table from positional rows (``names``), their states, and for state rows the
    matching first rows (``spec``) that hold what the state rows lack."""
    cols = list(zip(*rows, strict=True))
    where = {n: cols[i] for i, n in enumerate(names)}
    if spec is not None:
        snames, srows = spec
        scols = list(zip(*srows, strict=True))
        for i, n in enumerate(snames):
            where.setdefault(n, scols[i])
    dicts = where["__dict__"]
    table: dict[str, Any] = {n: where[n] for n in _SLOT_COLUMNS}
    for n, default in _DICT_COLUMNS:
        table[n] = [d.get(n, default) for d in dicts]
    table["state"] = states
    ok = TaskState.SUCCEEDED.value
    table["result"] = [
        dumps(d.get("result")).decode() if s == ok else None
        for s, d in zip(states, dicts, strict=True)
    ]
    table["recorded_at"] = [now if f is None else f for f in table["finished_at"]]
    return pa.Table.from_pydict(table, schema=RESULT_SCHEMA)


def _part_no(name: str) -> int | None:
    """``n`` of ``part-<n>-<random>.parquet`` (or ``part-<n>.parquet``, the older names)."""
    if name.startswith("part-") and name.endswith(".parquet"):
        n = name[5:-8].split("-", 1)[0]
        if n.isdigit():
            return int(n)
    return None


def _part_key(name: str) -> tuple[int, str]:
    return (_part_no(name) or 0, name)


def decode_results(strings: list[str | None]) -> list[Any]:
    """JSON-decode a column of results in one parser call (``None`` stays ``None``)."""
    return list(loads("[" + ",".join("null" if s is None else s for s in strings) + "]"))


class ResultsStore:
    """``add`` buffers outcomes (thread-safe); ``flush`` writes the buffer as one Parquet file
    (call it from a worker thread: it does I/O). ``get`` and ``load_all`` see flushed and
    buffered outcomes, first recorded outcome per id winning."""

    def __init__(
        self,
        state_dir: str | StateDir,
        *,
        clock: Callable[[], float] = time.time,
        filesystem: Any = None,
    ) -> None:
        self.dir = state_dir if isinstance(state_dir, StateDir) else StateDir(state_dir, filesystem)
        self.clock = clock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        # outcome rows, or (task, recorded_at) for final tasks whose row is built at flush time
        self._buffer: list[dict[str, Any] | tuple[Task, float]] = []
        self._index: dict[str, dict[str, Any]] | None = None
        self._next_part: int | None = None
        self.files_written = 0

    # -- writing --------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._buffer)

    def add(self, outcomes: Iterable[dict[str, Any]]) -> int:
        """Buffer outcome rows (see ``outcome_of``); returns how many were buffered."""
        rows = list(outcomes)
        with self._lock:
            self._buffer.extend(rows)
            if self._index is not None:
                for r in rows:
                    self._index.setdefault(r["id"], r)
        return len(rows)

    def add_tasks(self, tasks: Iterable[Task], now: float | None = None) -> int:
        """Buffer the outcomes of final tasks (they no longer change): their rows are built at
        flush time, column by column, which is several times cheaper than ``outcome_of``."""
        if now is None:
            now = self.clock()
        pairs = [(t, now) for t in tasks]
        with self._lock:
            self._buffer.extend(pairs)
            if self._index is not None:
                for t, _ in pairs:
                    self._index.setdefault(t.id, outcome_of(t, now))
        return len(pairs)

    def flush(self) -> str | None:
        """Write the buffered outcomes as one file; returns its name (None if nothing to do).
        On failure the rows go back to the front of the buffer and the error propagates."""
        with self._flush_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
            if not rows:
                return None
            try:
                name = write_part(self.dir, self._take_part(), self._to_table(rows))
            except BaseException:
                with self._lock:
                    self._buffer[:0] = rows
                raise
            self.files_written += 1
            return name

    def reserve_part(self) -> int:
        """A part number for a file written elsewhere (``convert_segments``): later than every
        part written so far, never handed out twice."""
        with self._flush_lock:
            return self._take_part()

    def _take_part(self) -> int:  # holds self._flush_lock
        """The next part number (a failed write leaves a gap, which readers do not mind)."""
        if self._next_part is None:
            self._next_part = self._scan_next_part()
        n = self._next_part
        self._next_part += 1
        return n

    def _scan_next_part(self) -> int:
        nums = [n for n in map(_part_no, self.dir.listdir(FOLDER)) if n is not None]
        return max(nums) + 1 if nums else 0

    @staticmethod
    def _to_table(entries: list[dict[str, Any] | tuple[Task, float]]) -> pa.Table:
        if all(type(e) is tuple for e in entries):
            return _tasks_table(entries)  # type: ignore[arg-type]
        rows = [e if isinstance(e, dict) else outcome_of(*e) for e in entries]
        cols: dict[str, list[Any]] = {n: [r.get(n) for r in rows] for n in _NAMES}
        cols["result"] = [
            None if r["state"] != "succeeded" else dumps(r["result"]).decode() for r in rows
        ]
        return pa.Table.from_pydict(cols, schema=RESULT_SCHEMA)

    def compact(self) -> int:
        """Rewrite every part as one deduplicated part; returns the rows kept. Safe to crash
        in: the new part is complete before the old ones go, and dedup on read hides the rest."""
        self.flush()
        table = self.load_table()
        parts = self._parts()
        if len(parts) <= 1:
            return int(table.num_rows)
        with self._flush_lock:
            # The merged part takes a fresh, highest number: until the old parts are deleted they
            # read first and hold the same first outcomes, so a crash in between changes nothing.
            write_part(self.dir, self._take_part(), table)
            for p in parts:
                self.dir.delete(FOLDER, p)
        return int(table.num_rows)

    # -- reading --------------------------------------------------------------------------------
    def part_count(self) -> int:
        """Result files on storage (``compact`` merges them)."""
        return sum(1 for n in self.dir.listdir(FOLDER) if _part_no(n) is not None)

    def _parts(self) -> list[str]:
        names = self.dir.listdir(FOLDER)
        for n in names:
            if n.startswith(TMP_PREFIX):
                log.warning("results: ignoring %s, a half-written results file from a crash", n)
        return sorted((n for n in names if _part_no(n) is not None), key=_part_key)

    def load_table(self) -> pa.Table:
        """Every recorded outcome as one table (``result`` still JSON text), deduplicated by id
        (first recorded wins), in recording order. Buffered rows come last. Unreadable files are
        skipped with a warning."""
        tables = []
        for name in self._parts():
            try:
                tables.append(
                    pq.read_table(
                        self.dir.path(FOLDER, name), filesystem=self.dir.fs, schema=RESULT_SCHEMA
                    )
                )
            except Exception as exc:
                log.warning("results: skipping unreadable file %s (%s)", name, exc)
        with self._lock:
            rows = list(self._buffer)
        if rows:
            tables.append(self._to_table(rows))
        if not tables:
            return RESULT_SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        ids = table.column("id").to_pylist()
        seen: set[str] = set()
        keep = []
        for i in ids:
            if i in seen:
                keep.append(False)
            else:
                seen.add(i)
                keep.append(True)
        if len(seen) != len(ids):
            table = table.filter(pa.array(keep))
        return table

    def load_all(self) -> dict[str, dict[str, Any]]:
        """Task id -> outcome row (``result`` decoded) for every recorded outcome."""
        table = self.load_table()
        rows = table.to_pylist()
        for r, v in zip(rows, decode_results(table.column("result").to_pylist()), strict=True):
            r["result"] = v
        index = {r["id"]: r for r in rows}
        with self._lock:
            self._index = index
        return dict(index)

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The recorded outcome of one task (loads the index on first use)."""
        if self._index is None:
            self.load_all()
        assert self._index is not None
        return self._index.get(task_id)
