"""The record format of the journal: which task fields are stored, under which names, and how
records become ``Task`` objects again (snapshots and results use the same field tables).

Records carry *absolute* values (the task's state after the change, the tenant's fair-share
counter after the change), never deltas, so replaying a record twice, or replaying records a
snapshot already covers, changes nothing.

The recorder writes one ``rows`` record per drain: a list of positional rows per kind, each row
read from the task by one compiled lambda per row kind (``_row_getter``), the field names
once per record. Building and encoding it is on the scheduler's submit and report paths, and costs
less than a dict per change did. States travel as a parallel list of their values (orjson
encodes an Enum member about ten times slower than a str)::

    {"k": "rows", "n": rows,
     "sf": ROW_SUBMIT, "s": [[...], ...], "ss": ["queued", ...],
     "qf": ROW_NEW, "q": [[...], ...], "qs": ["queued", ...],
     "tf": ROW_STATE, "t": [[...], ...], "ts": [...],
     "ff": ROW_FINAL, "f": [[...], ...], "fs": ["succeeded", ...],
     "ef": ROW_END, "e": [[...], ...], "es": ["succeeded", ...],
     "pf": ROW_PROGRESS, "p": [[...], ...],
     "rf": ROW_START, "r": [[...], ...],
     "fc": {tenant: counter}, "retrying": [id, ...]}

``s`` is the first record of a task (its spec and state), ``q`` the same for a task that has not
started yet (no attempts, enqueued at its arrival): the six state fields still at their defaults
are left out (15 fields of the 21), ``t`` a transition (the full state),
``f`` (``ff``, ``fs``: as ``s``) a final outcome, spec included but not the payload, so that the
results files can be made from the journal alone (``results.convert_segments``), ``e`` a final
outcome whose task's first (``s`` or ``q``) row is in the same journal segment: only what an
ended task still needs besides its spec (level, attempts, service, steps and the dict: timings,
worker, result, error); the results files take the spec from that row (most tasks end in the
segment they were submitted in, and for a no-op task this row is about 210 bytes against 375 for
an ``f`` row),
``p`` service, steps and level reported by a running task (or the depth of a parent whose new
descendant raised it), ``r`` a start from ``queued`` that is all that changed since the task's
last row (the state is ``running``; a third of a ``t`` row's bytes). The ``s``, ``q``, ``t``,
``f`` and ``e`` rows end with the task's ``__dict__``: the fields that differ from their class
default (rare spec fields, timings, worker, error, result; ``Task`` keeps the payload in a slot
so that state rows do not repeat it). A dict field missing from a state row is back at its
default. ``fc`` holds the fair-share counters of these tasks' tenants after the changes (of all
tenants when there are few: counters are absolute values, so more of them do no harm),
``retrying`` the failed or
timed-out tasks whose retry is still to come.

A worker's successful outcomes arrive encoded (``split_done``: the worker encodes them once) and
go to the journal as those bytes, in a ``done`` record, instead of as ``e`` rows::

    {"k": "done", "w": worker, "at": finished_at, "ev": [done event, ...],
     "use": [index, ...], "lv": [level, ...], "fs": [first_start, ...], "fc": {...}}

Only the events at ``use`` count (the others were refused or journaled as rows), each with its
task's level and first start; it stands for the ``e`` row ``done_as_rows`` makes of it (attempt 1,
``service_s`` the event's, no steps), so the task's first row must be in the same segment.

Journals written before the row format hold one dict per change with a kind ``k`` (``submit``,
``start``, ``progress``, ``requeue``, ``retry``, ``finish``, ``cancel``, ``state``), its
fields by name, ``retrying: true`` and ``fc`` per record; ``task_from_record`` and
``apply_record`` still read them."""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from raysched.models import TaskState
from raysched.policy.task import Task

log = logging.getLogger("raysched.store.records")

__all__ = [
    "HOT_SPEC",
    "PROGRESS_FIELDS",
    "RARE_SPEC",
    "ROW_END",
    "ROW_FINAL",
    "ROW_NEW",
    "ROW_PROGRESS",
    "ROW_START",
    "ROW_STATE",
    "ROW_SUBMIT",
    "SLOT_STATE_FIELDS",
    "STATE_FIELDS",
    "apply_record",
    "done_as_rows",
    "fair_counters",
    "replay_rows",
    "rows_record",
    "split_done",
    "task_from_record",
]

#: Spec fields passed to ``Task.__init__`` (in its positional order after id, priority, arrival,
#: seq): in every submit record unless None.
HOT_SPEC: tuple[str, ...] = (
    "prompt_tokens",
    "tenant",
    "tier",
    "kind",
    "pool",
    "size_hint",
    "deadline",
)
#: Rarely set spec fields, with their defaults (stored only when they differ).
RARE_SPEC: tuple[tuple[str, Any], ...] = (
    ("depends_on", ()),
    ("timeout_s", None),
    ("max_retries", 0),
    ("payload", None),
    ("idempotency_key", None),
    ("preemptible", True),
    ("trace_id", None),
    ("gpu_memory_mb", None),
)
#: Fields that change after submission, with their defaults. ``state`` is always written;
#: ``enqueued_at`` defaults to the task's ``arrival``.
STATE_FIELDS: tuple[tuple[str, Any], ...] = (
    ("state", None),
    ("enqueued_at", 0.0),
    ("level", 0),
    ("depth", 0),
    ("attempts", 0),
    ("service_s", 0.0),
    ("quantum_used", 0.0),
    ("steps", 0),
    ("started_at", 0.0),
    ("first_start", None),
    ("finished_at", None),
    ("worker", None),
    ("error", None),
    ("error_type", None),
    ("redeliveries", 0),
    ("not_before", 0.0),
    ("boosted_from", None),
)
PROGRESS_FIELDS: tuple[str, ...] = ("steps", "service_s", "quantum_used", "level", "depth")

_STATES = {s.value: s for s in TaskState}
_VALUE = {s: s.value for s in TaskState}
_SLOTS = frozenset(Task.__slots__)
#: The ``STATE_FIELDS`` that are slots of ``Task`` (all default to zero).
SLOT_STATE_FIELDS = (
    "level",
    "depth",
    "attempts",
    "service_s",
    "quantum_used",
    "steps",
    "started_at",
)
assert {n for n, _ in STATE_FIELDS[2:] if n in _SLOTS} == set(SLOT_STATE_FIELDS)
#: The state fields kept in ``__dict__`` (name -> default), and ``result``: a state row's dict
#: lacks those back at their default.
_DICT_STATE = {**{n: d for n, d in STATE_FIELDS[2:] if n not in _SLOTS}, "result": None}
#: Every field a row's dict may set, with its default (other keys are ignored on replay).
_DICT_FIELDS = {**{n: d for n, d in RARE_SPEC if n not in _SLOTS}, **_DICT_STATE}


def apply_record(t: Task, rec: dict[str, Any]) -> None:
    """Set ``t``'s fields from a per-task record (the format before rows) of any kind but
    ``submit`` (or from a submit record again: its state part)."""
    if rec["k"] == "progress":
        for name in PROGRESS_FIELDS:
            if name in rec:
                setattr(t, name, rec[name])
        return
    get = rec.get
    t.state = _STATES[rec["state"]]
    t.enqueued_at = get("enqueued_at", t.arrival)
    for name, default in STATE_FIELDS[2:]:
        setattr(t, name, get(name, default))
    if "result" in rec:
        t.result = rec["result"]
    elif t.result is not None:
        del t.result  # set on this instance (a retried task's earlier result): back to the default


_ON_FRESH = frozenset(
    [name for name, _ in RARE_SPEC] + [name for name, _ in STATE_FIELDS[1:]] + ["result"]
)


def task_from_record(rec: dict[str, Any]) -> Task:
    """A ``Task`` rebuilt from its per-task submit record (the format before rows). A fresh
    task already has every default, so only the keys the record holds are set."""
    t = Task(
        rec["id"],
        rec["priority"],
        rec["arrival"],
        rec["seq"],
        rec["prompt_tokens"],
        rec["tenant"],
        rec["tier"],
        rec["kind"],
        rec["pool"],
        rec.get("size_hint"),
        rec.get("deadline"),
    )
    t.state = _STATES[rec["state"]]
    fresh = _ON_FRESH
    for k, v in rec.items():
        if k in fresh:
            setattr(t, k, v)
    if t.depends_on:
        t.depends_on = tuple(t.depends_on)
    return t


# -- the row format ------------------------------------------------------------------------------
_INIT_NAMES = ("id", "priority", "arrival", "seq", *HOT_SPEC)
ROW_SUBMIT: tuple[str, ...] = (
    *_INIT_NAMES,
    "payload",
    "enqueued_at",
    *SLOT_STATE_FIELDS,
    "__dict__",
)
#: A first row of a task that has not started: the state fields that may differ from the
#: defaults then (``Task.__init__``: ``enqueued_at`` is the arrival, the rest zero).
ROW_NEW: tuple[str, ...] = (*_INIT_NAMES, "payload", "level", "depth", "__dict__")
#: A final row: a submit row without the payload (a final task needs it no more).
ROW_FINAL: tuple[str, ...] = tuple(n for n in ROW_SUBMIT if n != "payload")
ROW_STATE: tuple[str, ...] = ("id", "enqueued_at", *SLOT_STATE_FIELDS, "__dict__")
#: An outcome whose first row is in the same segment: what a final task still uses.
ROW_END: tuple[str, ...] = ("id", "level", "attempts", "service_s", "steps", "__dict__")
ROW_PROGRESS: tuple[str, ...] = ("id", *PROGRESS_FIELDS)
#: What ``SchedulerCore.start`` sets on a queued task (and ``level``, which a boost may have
#: changed without a transition).
ROW_START: tuple[str, ...] = (
    "id",
    "level",
    "attempts",
    "quantum_used",
    "started_at",
    "first_start",
    "worker",
)
assert all(n in _SLOTS for n in ROW_SUBMIT + ROW_PROGRESS), "a row reads slots and __dict__"


def _row_getter(names: tuple[str, ...]) -> Callable[[Task], tuple[Any, ...]]:
    """``operator.attrgetter(*names)`` as a compiled lambda: the interpreter's specialised slot
    reads cost about half of attrgetter's generic lookup per field (a 15-field row: 165 against
    410 ns). ``names`` are this module's field tables, never input."""
    assert all(n.isidentifier() for n in names)
    fields = ", ".join(f"t.{n}" for n in names)
    row: Callable[[Task], tuple[Any, ...]] = eval(f"lambda t: ({fields},)")
    return row


_submit_row = _row_getter(ROW_SUBMIT)
_new_row = _row_getter(ROW_NEW)
_final_row = _row_getter(ROW_FINAL)
_state_row = _row_getter(ROW_STATE)
_end_row = _row_getter(ROW_END)
_progress_row = _row_getter(ROW_PROGRESS)
_start_row = _row_getter(ROW_START)
_get_state = operator.attrgetter("state")
_get_tenant = operator.attrgetter("tenant")
#: Up to this many tenants, a record carries every counter (no pass over its tasks' tenants).
_ALL_COUNTERS = 16


def rows_record(
    new: Sequence[Task],
    changed: Sequence[Task],
    touched: Sequence[Task],
    counters: dict[str, float],
    retrying: list[str],
    ended: Sequence[Task] = (),
    ended_here: Sequence[Task] = (),
    starts: Sequence[Task] = (),
    fresh: Sequence[Task] = (),
) -> dict[str, Any]:
    """One drain's changes as a ``rows`` record: ``new`` tasks (first record), ``changed`` (a
    transition), ``touched`` (progress only), ``ended`` (a final outcome, new or not: written
    whole, so the results files can be made from the journal alone), ``ended_here`` (a final
    outcome of a task whose first row is in the segment this record goes to: a state row),
    ``starts`` (started from ``queued``, nothing else changed), ``fresh`` (new tasks that have
    not started: ``ROW_NEW``); ``counters``: the fair-share counters by tenant; ``retrying``:
    ids of the failed or timed-out tasks among them that will be retried."""
    state_of = _VALUE.__getitem__
    groups = (new, changed, touched, ended, ended_here, starts, fresh)
    rec: dict[str, Any] = {"k": "rows", "n": sum(map(len, groups))}
    if new:
        rec["sf"] = ROW_SUBMIT
        rec["s"] = list(map(_submit_row, new))
        rec["ss"] = list(map(state_of, map(_get_state, new)))
    if fresh:
        rec["qf"] = ROW_NEW
        rec["q"] = list(map(_new_row, fresh))
        rec["qs"] = list(map(state_of, map(_get_state, fresh)))
    if changed:
        rec["tf"] = ROW_STATE
        rec["t"] = list(map(_state_row, changed))
        rec["ts"] = list(map(state_of, map(_get_state, changed)))
    if touched:
        rec["pf"] = ROW_PROGRESS
        rec["p"] = list(map(_progress_row, touched))
    if ended:
        rec["ff"] = ROW_FINAL
        rec["f"] = list(map(_final_row, ended))
        rec["fs"] = list(map(state_of, map(_get_state, ended)))
    if ended_here:
        rec["ef"] = ROW_END
        rec["e"] = list(map(_end_row, ended_here))
        rec["es"] = list(map(state_of, map(_get_state, ended_here)))
    if starts:
        rec["rf"] = ROW_START
        rec["r"] = list(map(_start_row, starts))
    fc = fair_counters(counters, groups)
    if fc:
        rec["fc"] = fc
    if retrying:
        rec["retrying"] = retrying
    return rec


def fair_counters(counters: dict[str, float], groups: Iterable[Sequence[Task]]) -> dict[str, float]:
    """The fair-share counters a record carries: of every tenant when there are few, else of
    the tenants of its tasks (``groups``)."""
    if len(counters) <= _ALL_COUNTERS:
        return {n: v for n, v in counters.items() if v}
    tenants: set[str] = set()
    for g in groups:
        tenants.update(map(_get_tenant, g))
    return {n: v for n in tenants if (v := counters.get(n))}


def split_done(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bytes | None]:
    """A worker's report for a scheduler that journals: its ``done`` events encoded once, here
    (the scheduler decodes them and journals these very bytes, see ``done_as_rows``), and the
    other events as they are. An event not made of plain JSON values (``_plain``: a tuple, a
    NaN, bytes, an enum, a subclass of dict, an int over 64 bits) stays with the others, so the
    scheduler sees every result as the handler returned it."""
    done: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for ev in events:
        (done if ev.get("t") == "done" and _plain(ev) else rest).append(ev)
    if not done:
        return events, None
    try:
        return rest, orjson.dumps(done)  # one call for the whole list
    except TypeError:  # orjson.JSONEncodeError: an int over 64 bits, deep nesting: each alone
        pass
    parts: list[bytes] = []
    rest = []
    for ev in events:  # (in order again: rare)
        if ev.get("t") == "done" and _plain(ev):
            try:
                parts.append(orjson.dumps(ev))
                continue
            except TypeError:
                pass
        rest.append(ev)
    return rest, (b"[" + b",".join(parts) + b"]") if parts else None


_SCALARS = frozenset({str, int, bool, type(None)})


def _plain(v: Any, depth: int = 0) -> bool:
    """Whether ``v`` reads back from JSON as itself, type for type: dicts with str keys,
    lists, str, int, finite floats, bool and None, and nothing else (not even a subclass).
    Scalars inside a container are checked in its loop (an event is a dict of them)."""
    t = type(v)
    if t is dict:
        if depth > 100:
            return False
        for k, x in v.items():
            if type(k) is not str:
                return False
            tx = type(x)
            if tx in _SCALARS:
                continue
            if tx is float:
                if not math.isfinite(x):
                    return False
            elif not _plain(x, depth + 1):
                return False
        return True
    if t in _SCALARS:
        return True
    if t is float:
        return math.isfinite(v)
    if t is list:
        return depth <= 100 and all(_plain(x, depth + 1) for x in v)
    return False


_SUCCEEDED = TaskState.SUCCEEDED.value


def done_as_rows(rec: dict[str, Any]) -> dict[str, Any]:
    """The ``rows`` record a ``done`` record stands for: its ``e`` rows (``ROW_END``, all
    ``succeeded``) and its fair-share counters (for ``replay_rows`` and the results files)."""
    evs = rec["ev"]
    worker = rec["w"]
    at = rec["at"]
    rows: list[list[Any]] = []
    for i, level, first_start in zip(rec["use"], rec["lv"], rec["fs"], strict=True):
        ev = evs[i]
        d: dict[str, Any] = {"first_start": first_start, "worker": worker, "finished_at": at}
        result = ev.get("result")
        if result is not None:
            d["result"] = result
        rows.append([ev["id"], level, 1, float(ev.get("service", 0.0)), 0, d])
    out = {"k": "rows", "n": len(rows), "ef": ROW_END, "e": rows, "es": [_SUCCEEDED] * len(rows)}
    if "fc" in rec:
        out["fc"] = rec["fc"]
    return out


def _setter(
    names: list[str] | tuple[str, ...], fields: frozenset[str], reset: bool
) -> Callable[[Task, list[Any]], None]:
    """Sets the ``fields`` among a row's ``names`` on a task, and the known keys of its dict
    (``reset``: dict state fields missing from it go back to their default). Names this version
    does not know (a newer writer) are ignored."""
    slots = [(i, n) for i, n in enumerate(names) if n in fields and n in _SLOTS and n != "__dict__"]
    di = list(names).index("__dict__") if "__dict__" in names else -1
    known = _DICT_FIELDS
    resettable = tuple(_DICT_STATE) if reset else ()

    def apply(t: Task, row: list[Any]) -> None:
        for i, n in slots:
            setattr(t, n, row[i])
        if di < 0:
            return
        extra = row[di]
        for n, v in extra.items():
            if n in known:
                setattr(t, n, tuple(v) if n == "depends_on" else v)
        if resettable:
            d = t.__dict__
            for n in resettable:
                if n in d and n not in extra:
                    del d[n]

    return apply


_SPEC_AND_STATE = frozenset(ROW_SUBMIT) - frozenset(_INIT_NAMES)
_STATE_ONLY = frozenset(ROW_STATE) - {"id"}
_PROGRESS_ONLY = frozenset(PROGRESS_FIELDS)
_START_ONLY = frozenset(ROW_START) - {"id"}


def replay_rows(
    rec: dict[str, Any],
    tasks: dict[str, Task],
    retrying: set[str],
    fair: dict[str, float],
) -> tuple[int, int]:
    """Apply a ``rows`` record to ``tasks`` (new tasks are added); returns (rows applied, rows
    skipped: changes to unknown tasks, and rows this version cannot read, each with a log
    line; the other rows of the record still apply)."""
    applied = skipped = 0
    states = _STATES
    marked: list[str] = []  # transitions: their retrying mark is this record's

    def bad(row: Any, exc: object) -> None:
        nonlocal skipped
        skipped += 1
        log.warning("recovery: skipping an unreadable journal row (%s): %.200r", exc, row)

    # s, q and f rows make a task they do not find (the first record of it); t and e rows need one
    for rows_key, names_key, states_key, make in (
        ("s", "sf", "ss", True),
        ("q", "qf", "qs", True),
        ("f", "ff", "fs", True),
        ("t", "tf", "ts", False),
        ("e", "ef", "es", False),
    ):
        if rows_key not in rec:
            continue
        names = rec[names_key]
        init = [names.index(n) for n in _INIT_NAMES] if make else [names.index("id")]
        fresh = _setter(names, _SPEC_AND_STATE, False)
        again = _setter(names, _STATE_ONLY, True)
        for row, st in zip(rec[rows_key], rec[states_key], strict=True):
            state = states.get(st)
            if state is None or len(row) != len(names):
                bad(row, f"state {st!r}" if state is None else "length")
                continue
            tid = row[init[0]]
            t = tasks.get(tid)
            if t is None and not make:
                skipped += 1
                continue
            try:
                if t is None:
                    t = Task(*[row[i] for i in init])
                    fresh(t, row)
                    tasks[tid] = t
                else:  # a transition, a replayed submission, an outcome: the state part
                    again(t, row)
            except (TypeError, ValueError, AttributeError) as exc:
                bad(row, exc)
                continue
            t.state = state
            marked.append(tid)
            applied += 1
    if "r" in rec:
        names = rec["rf"]
        fields = [(i, n) for i, n in enumerate(names) if n in _START_ONLY]
        running = TaskState.RUNNING
        for row in rec["r"]:
            if len(row) != len(names):
                bad(row, "length")
                continue
            t = tasks.get(row[0])
            if t is None:
                skipped += 1
                continue
            for i, n in fields:
                setattr(t, n, row[i])
            t.state = running
            marked.append(t.id)
            applied += 1
    if "p" in rec:
        names = rec["pf"]
        apply = _setter(names, _PROGRESS_ONLY, False)
        for row in rec["p"]:
            t = tasks.get(row[0]) if len(row) == len(names) else None
            if t is None:
                skipped += 1
                continue
            apply(t, row)
            applied += 1
    retrying.difference_update(marked)
    retrying.update(rec.get("retrying", ()))
    fair.update(rec.get("fc", {}))
    return applied, skipped
