"""Checkpoints: periodic Parquet snapshots of every task that has not ended (and the fair-share
counters, idempotency keys, sequence counter), written through ``pyarrow.fs`` so the state
directory can be a local folder (default ``./.raysched``) or ``s3://…`` / ``gs://…``.

Layout under the state directory::

    snapshots/snapshot-<segment>.parquet   one table, a row per live task; the rest in its metadata
    snapshots/MANIFEST.json                the retained snapshots, newest last, and the journal
                                           segment each one covers up to

``<segment>`` is the first journal segment the snapshot does *not* cover: recovery loads the
snapshot and replays the journal from that segment on. A snapshot is written under a temporary name
and moved (``StateDir.write_atomic``), then the manifest is rewritten the same way. The last
``keep`` snapshots (default 2) are retained and the journal keeps every segment the oldest of them
needs, so when the newest snapshot turns out unreadable recovery falls back to the previous one
with a log line and loses nothing. Leftover temporary files (a crash mid-write) are logged and
removed."""

from __future__ import annotations

import json
import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysched.models import TaskState
from raysched.policy.task import Task
from raysched.store.journal import dumps, loads
from raysched.store.location import TMP_PREFIX, StateDir
from raysched.store.records import SLOT_STATE_FIELDS, STATE_FIELDS

if TYPE_CHECKING:
    from raysched.policy.core import SchedulerCore

__all__ = [
    "BUILT_SLOTS",
    "TASK_SCHEMA",
    "Checkpoints",
    "LoadedSnapshot",
    "Snapshot",
    "SnapshotInfo",
    "column_values",
    "sparse_items",
    "tasks_from_table",
]

log = logging.getLogger("raysched.store.checkpoint")

FOLDER = "snapshots"
MANIFEST = "MANIFEST.json"
META_KEY = b"raysched.snapshot"
VERSION = 1

_STR, _F64, _I64, _I32 = pa.string(), pa.float64(), pa.int64(), pa.int32()
#: Column, Arrow type. The first eleven are ``Task.__init__``'s arguments, in order.
_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("id", _STR),
    ("priority", _I32),
    ("arrival", _F64),
    ("seq", _I64),
    ("prompt_tokens", _I64),
    ("tenant", _STR),
    ("tier", _STR),
    ("kind", _STR),
    ("pool", _STR),
    ("size_hint", _F64),
    ("deadline", _F64),
    # state
    ("state", _STR),
    ("enqueued_at", _F64),
    ("level", _I32),
    ("depth", _I32),
    ("attempts", _I32),
    ("service_s", _F64),
    ("quantum_used", _F64),
    ("steps", _I64),
    ("started_at", _F64),
    ("first_start", _F64),
    ("finished_at", _F64),
    ("worker", _STR),
    ("error", _STR),
    ("error_type", _STR),
    ("redeliveries", _I32),
    ("not_before", _F64),
    ("boosted_from", _I32),
    # rare spec fields
    ("depends_on", pa.list_(_STR)),
    ("timeout_s", _F64),
    ("max_retries", _I32),
    ("payload", _STR),  # JSON text
    ("idempotency_key", _STR),
    ("preemptible", pa.bool_()),
    ("trace_id", _STR),
    ("gpu_memory_mb", _I64),
)
TASK_SCHEMA = pa.schema([*_COLUMNS, ("retrying", pa.bool_())])
#: The columns that change after submission (``capture`` copies them at once; the others are
#: read when the snapshot is written).
_MUTABLE = tuple(name for name, _ in STATE_FIELDS)
_INIT = [n for n, _ in _COLUMNS[:11]]
#: The columns ``tasks_from_table`` copies straight into slots, in its loop's order. Together with
#: ``qkey`` and ``payload`` (set below) they are every slot of ``Task`` (a unit test checks that).
_BUILD = (*_INIT, "state", "enqueued_at", *SLOT_STATE_FIELDS)
#: Fields stored in an instance ``__dict__`` only when they differ from the class default: only
#: the rows that differ are copied.
_SPARSE: tuple[tuple[str, Any], ...] = (
    ("first_start", None),
    ("finished_at", None),
    ("worker", None),
    ("error", None),
    ("error_type", None),
    ("timeout_s", None),
    ("idempotency_key", None),
    ("trace_id", None),
    ("gpu_memory_mb", None),
    ("redeliveries", 0),
    ("not_before", 0.0),
    ("boosted_from", None),
    ("max_retries", 0),
    ("preemptible", True),
)
BUILT_SLOTS = frozenset((*_BUILD, "qkey", "payload"))
_STATES = {s.value: s for s in TaskState}


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    #: The first journal segment this snapshot does not cover.
    journal_segment: int
    tasks: int
    created_at: float
    #: After a save: the lowest journal segment any retained snapshot still needs.
    journal_floor: int = 0


@dataclass
class Snapshot:
    """State captured from the core at one instant, on the thread that owns the core: the
    fields that change after submission are copied; the spec fields, which never change once a
    task is accepted, are read from ``tasks`` later by ``save`` (on any thread)."""

    tasks: list[Task]
    columns: dict[str, list[Any]]
    meta: dict[str, Any]


@dataclass
class LoadedSnapshot:
    info: SnapshotInfo
    table: pa.Table
    meta: dict[str, Any] = field(default_factory=dict)


def column_values(col: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column as Python values (nulls as None). Fast with the cyclic garbage collector paused,
    as ``recover`` does: otherwise building 100,000s of objects keeps triggering it."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return list(arr.to_pylist())


def sparse_items(col: pa.ChunkedArray, default: Any) -> tuple[list[int], list[Any]]:
    """Row numbers and values of the non-null entries that differ from ``default`` (lists come
    back as tuples)."""
    arr = col.combine_chunks()
    if arr.null_count == len(arr):
        return [], []
    if default is None:
        mask = pc.is_valid(arr)
    else:
        mask = pc.fill_null(pc.not_equal(arr, pa.scalar(default, arr.type)), False)
    idx = pc.indices_nonzero(mask)
    if len(idx) == 0:
        return [], []
    vals = (arr if len(idx) == len(arr) else arr.take(idx)).to_pylist()
    if pa.types.is_list(arr.type):
        vals = [tuple(v) for v in vals]
    return list(idx.to_pylist()), vals


def tasks_from_table(table: pa.Table) -> tuple[list[Task], set[str]]:
    """Rebuild the tasks of a snapshot table (row order kept) and the ids waiting for a retry.
    The hot path of recovery: one pass over the hot columns setting every slot directly (a
    ``Task.__init__`` call and then overwriting half its fields costs a third more), then one
    pass per rarely set column over its non-null values only."""
    hot = [column_values(table.column(n)) for n in _BUILD]
    states = _STATES
    new = Task.__new__
    tasks: list[Task] = []
    append = tasks.append
    for i, p, a, sq, pt, te, ti, k, po, sh, dl, st, eq, lv, dp, at, sv, qu, sp, sa in zip(
        *hot, strict=True
    ):
        t = new(Task)
        t.id = i
        t.priority = p
        t.arrival = a
        t.seq = sq
        t.prompt_tokens = pt
        t.tenant = te
        t.tier = ti
        t.kind = k
        t.pool = po
        t.size_hint = sh
        t.deadline = dl
        t.state = states[st]
        t.enqueued_at = eq
        t.level = lv
        t.depth = dp
        t.attempts = at
        t.service_s = sv
        t.quantum_used = qu
        t.steps = sp
        t.started_at = sa
        t.qkey = None
        t.payload = None
        append(t)
    for name, default in _SPARSE:
        idx, vals = sparse_items(table.column(name), default)
        for k, v in zip(idx, vals, strict=True):
            setattr(tasks[k], name, v)
    idx, vals = sparse_items(table.column("depends_on"), None)
    for k, v in zip(idx, vals, strict=True):
        if v:
            tasks[k].depends_on = v
    idx, texts = sparse_items(table.column("payload"), None)
    if idx:
        decoded = loads("[" + ",".join(texts) + "]")
        for k, v in zip(idx, decoded, strict=True):
            if v is not None:
                tasks[k].payload = v
    idx, _ = sparse_items(table.column("retrying"), False)
    retrying = {tasks[k].id for k in idx}
    return tasks, retrying


def _snapshot_name(segment: int) -> str:
    return f"snapshot-{segment:010d}.parquet"


def _segment_of(name: str) -> int | None:
    if name.startswith("snapshot-") and name.endswith(".parquet") and name[9:-8].isdigit():
        return int(name[9:-8])
    return None


class Checkpoints:
    """Snapshots under ``<state_dir>/snapshots`` (see the module docstring)."""

    def __init__(
        self,
        state_dir: str | StateDir,
        *,
        keep: int = 2,
        clock: Callable[[], float] = time.time,
        filesystem: Any = None,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.dir = state_dir if isinstance(state_dir, StateDir) else StateDir(state_dir, filesystem)
        self.keep = keep
        self.clock = clock

    # -- writing --------------------------------------------------------------------------------
    def capture(self, core: SchedulerCore, journal_segment: int) -> Snapshot:
        """Copy what a snapshot needs out of ``core`` (every task whose outcome is not final).
        Call it right after ``Journal.rotate`` returned ``journal_segment``, with no core change
        in between, so that the snapshot covers exactly the segments below it."""
        is_final = core.is_final
        live = [t for t in core.tasks.values() if not (t.state.terminal and is_final(t))]
        columns: dict[str, list[Any]] = {}
        for name in _MUTABLE:
            columns[name] = list(map(operator.attrgetter(name), live))
        columns["state"] = [t.state.value for t in live]
        columns["retrying"] = [t.state.terminal for t in live]  # terminal and live: retrying
        meta = {
            "version": VERSION,
            "journal_segment": journal_segment,
            "tasks": len(live),
            "seq": core.last_seq,
            "fair": core.fair.snapshot(),
            "idempotency": [[te, k, tid] for (te, k), tid in core.idempotency.items()],
            "preemptions": core.preemptions,
            "completed": core.completed,
            "created_at": self.clock(),
        }
        return Snapshot(live, columns, meta)

    @staticmethod
    def to_table(snap: Snapshot) -> pa.Table:
        cols = dict(snap.columns)
        for name, _ in _COLUMNS:
            if name not in cols:
                cols[name] = list(map(operator.attrgetter(name), snap.tasks))
        cols["payload"] = [None if p is None else dumps(p).decode() for p in cols["payload"]]
        table = pa.Table.from_pydict(cols, schema=TASK_SCHEMA)
        return table.replace_schema_metadata({META_KEY: json.dumps(snap.meta).encode()})

    def save(self, snap: Snapshot) -> SnapshotInfo:
        """Write the snapshot (temporary name, then move), record it in the manifest and delete
        the snapshots no longer retained. Returns its info; ``journal_floor`` says which journal
        segments may now be dropped."""
        table = self.to_table(snap)
        seg = int(snap.meta["journal_segment"])
        name = _snapshot_name(seg)
        self.dir.makedirs(FOLDER)
        self.dir.write_atomic(FOLDER, name, lambda out: pq.write_table(table, out))
        info = SnapshotInfo(name, seg, int(snap.meta["tasks"]), float(snap.meta["created_at"]))
        entries = [e for e in self.manifest() if e.name != name and e.journal_segment < seg]
        kept = [*entries, info][-self.keep :]
        floor = min(e.journal_segment for e in kept)
        body = {
            "version": VERSION,
            "latest": name,
            "journal_segment": seg,
            "journal_floor": floor,
            "snapshots": [
                {
                    "name": e.name,
                    "journal_segment": e.journal_segment,
                    "tasks": e.tasks,
                    "created_at": e.created_at,
                }
                for e in kept
            ],
        }
        data = json.dumps(body, indent=1).encode()
        self.dir.write_atomic(FOLDER, MANIFEST, lambda out: out.write(data))
        names = {e.name for e in kept}
        for other in self.dir.listdir(FOLDER):
            if _segment_of(other) is not None and other not in names:
                self.dir.delete(FOLDER, other)
        return SnapshotInfo(info.name, seg, info.tasks, info.created_at, floor)

    def write(self, core: SchedulerCore, journal_segment: int) -> SnapshotInfo:
        """``capture`` and ``save`` in one call (blocking I/O)."""
        return self.save(self.capture(core, journal_segment))

    # -- reading --------------------------------------------------------------------------------
    def manifest(self) -> list[SnapshotInfo]:
        """The retained snapshots named by the manifest, oldest first ([] if there is none or it
        cannot be read, with a warning in the latter case)."""
        if not self.dir.exists(FOLDER, MANIFEST):
            return []
        try:
            body = json.loads(self.dir.read_bytes(FOLDER, MANIFEST))
            return [
                SnapshotInfo(
                    str(e["name"]),
                    int(e["journal_segment"]),
                    int(e["tasks"]),
                    float(e["created_at"]),
                )
                for e in body["snapshots"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning(
                "checkpoint manifest %s is unreadable (%s); listing snapshots instead",
                self.dir.path(FOLDER, MANIFEST),
                exc,
            )
            return []

    def load_latest(self) -> LoadedSnapshot | None:
        """The newest readable snapshot, or None. A half-written one (a temporary file left by a
        crash) is removed with a log line; an unreadable or inconsistent one is skipped with a
        log line and the previous one is used."""
        names = self.dir.listdir(FOLDER)
        for n in names:
            if n.startswith(TMP_PREFIX):
                log.warning(
                    "checkpoint: ignoring and removing %s, a half-written snapshot from a crash",
                    self.dir.path(FOLDER, n),
                )
                self.dir.delete(FOLDER, n)
        listed = {s: n for n in names if (s := _segment_of(n)) is not None}
        for e in self.manifest():
            if e.name not in names:
                log.warning("checkpoint manifest names %s, which is missing", e.name)
        for seg in sorted(listed, reverse=True):
            name = listed[seg]
            try:
                return self._read(name, seg)
            except Exception as exc:
                log.warning(
                    "checkpoint: snapshot %s is unreadable (%s: %s); falling back to the "
                    "previous snapshot",
                    self.dir.path(FOLDER, name),
                    type(exc).__name__,
                    exc,
                )
        return None

    def _read(self, name: str, seg: int) -> LoadedSnapshot:
        table = pq.read_table(self.dir.path(FOLDER, name), filesystem=self.dir.fs)
        raw = (table.schema.metadata or {}).get(META_KEY)
        if raw is None:
            raise ValueError("no raysched metadata")
        meta = json.loads(raw)
        if meta.get("version") != VERSION:
            raise ValueError(f"unknown snapshot version {meta.get('version')!r}")
        if int(meta["journal_segment"]) != seg:
            raise ValueError(f"names segment {meta['journal_segment']}, file says {seg}")
        if int(meta["tasks"]) != table.num_rows:
            raise ValueError(f"{table.num_rows} rows, metadata says {meta['tasks']}")
        missing = set(TASK_SCHEMA.names) - set(table.schema.names)
        if missing:
            raise ValueError(f"missing columns {sorted(missing)}")
        info = SnapshotInfo(name, seg, table.num_rows, float(meta["created_at"]))
        return LoadedSnapshot(info, table, meta)
