"""The record format shared by the journal, snapshots and results: which task fields are stored,
under which names, and how a record becomes a ``Task`` again.

Records carry *absolute* values (the task's state after the change, the tenant's fair-share
counter after the change), never deltas, so replaying a record twice, or replaying records a
snapshot already covers, changes nothing. Keys are the ``Task`` attribute names.

Kinds: ``submit`` (the first record of a task: its spec and state), ``start`` (it runs),
``progress`` (steps, attained service, quantum and level of a running task; the depth of a
parent whose new descendant raised it), ``requeue`` (queued
again: preempted, redelivered, retry released), ``retry`` (failed or timed out, waiting out a retry
backoff), ``finish`` (a final outcome, with the result), ``cancel``, and ``state`` (any other
change). Every kind but ``submit`` and ``progress`` is a full state record: a state field that is
absent has its default value. ``retrying: true`` marks a failed or timed-out task that will be
retried (its outcome is not final); ``fc`` is the tenant's fair-share counter."""

from __future__ import annotations

from typing import Any

from raysched.models import TaskState
from raysched.policy.task import Task

__all__ = [
    "HOT_SPEC",
    "KINDS",
    "PROGRESS_FIELDS",
    "RARE_SPEC",
    "SLOT_STATE_FIELDS",
    "STATE_FIELDS",
    "apply_record",
    "progress_record",
    "state_record",
    "submit_record",
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
KINDS = frozenset({"submit", "start", "progress", "requeue", "retry", "finish", "cancel", "state"})

S = TaskState
_STATES = {s.value: s for s in TaskState}
_KIND_OF = {
    S.RUNNING: "start",
    S.QUEUED: "requeue",
    S.PREEMPTED: "requeue",
    S.SUCCEEDED: "finish",
    S.FAILED: "finish",
    S.TIMED_OUT: "finish",
    S.CANCELLED: "cancel",
    S.PENDING: "state",
}


# Records are built on the submit path, so the builders read fields directly (no per-field
# ``getattr`` loop); the rarely set fields (kept in the task's ``__dict__`` only once set, see
# ``Task``) are found by walking that dict, usually 0-2 entries. tests/unit/test_store_records.py
# checks the output against the field tables above.
_SLOTS = frozenset(Task.__slots__)
#: ``__dict__`` fields a state record holds (name -> default), and those a submit record holds.
_DICT_STATE = {n: d for n, d in STATE_FIELDS[2:] if n not in _SLOTS}
_DICT_SUBMIT = {**{n: d for n, d in RARE_SPEC if n not in _SLOTS}, **_DICT_STATE}
#: The ``STATE_FIELDS`` that are slots of ``Task`` (all default to zero); ``_put_state`` names
#: them one by one, so a change here must change it too.
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
assert all(n not in _SLOTS for n, _ in RARE_SPEC), "update submit_record"
_MISSING = object()
_VALUE = {s: s.value for s in TaskState}


def _put_state(rec: dict[str, Any], t: Task, fields: dict[str, Any]) -> None:
    st = t.state
    rec["state"] = _VALUE[st]
    if t.enqueued_at != t.arrival:
        rec["enqueued_at"] = t.enqueued_at
    # the slot fields of STATE_FIELDS, whose defaults are all zero
    if t.level:
        rec["level"] = t.level
    if t.depth:
        rec["depth"] = t.depth
    if t.attempts:
        rec["attempts"] = t.attempts
    if t.service_s:
        rec["service_s"] = t.service_s
    if t.quantum_used:
        rec["quantum_used"] = t.quantum_used
    if t.steps:
        rec["steps"] = t.steps
    if t.started_at:
        rec["started_at"] = t.started_at
    extra = t.__dict__
    if extra:
        for name, v in extra.items():
            default = fields.get(name, _MISSING)
            if default is not _MISSING and v != default:
                rec[name] = v
        if st is S.SUCCEEDED:
            result = extra.get("result")
            if result is not None:
                rec["result"] = result


def submit_record(t: Task, fc: float | None = None, *, retrying: bool = False) -> dict[str, Any]:
    """The first record of a task: everything needed to rebuild it, and its state."""
    rec: dict[str, Any] = {
        "k": "submit",
        "id": t.id,
        "priority": t.priority,
        "arrival": t.arrival,
        "seq": t.seq,
        "prompt_tokens": t.prompt_tokens,
        "tenant": t.tenant,
        "tier": t.tier,
        "kind": t.kind,
        "pool": t.pool,
    }
    if t.size_hint is not None:
        rec["size_hint"] = t.size_hint
    if t.deadline is not None:
        rec["deadline"] = t.deadline
    _put_state(rec, t, _DICT_SUBMIT)
    if retrying:
        rec["retrying"] = True
    if fc:
        rec["fc"] = fc
    return rec


def state_record(t: Task, *, retrying: bool = False, fc: float | None = None) -> dict[str, Any]:
    """A full state record after a transition. ``retrying``: failed or timed out with a retry
    still to come (``SchedulerCore.is_final`` is false)."""
    rec: dict[str, Any] = {"k": "retry" if retrying else _KIND_OF[t.state], "id": t.id}
    _put_state(rec, t, _DICT_STATE)
    if retrying:
        rec["retrying"] = True
    if fc:
        rec["fc"] = fc
    return rec


def progress_record(t: Task, fc: float | None = None) -> dict[str, Any]:
    """Service reported by a running task (no transition)."""
    rec: dict[str, Any] = {
        "k": "progress",
        "id": t.id,
        "steps": t.steps,
        "service_s": t.service_s,
        "quantum_used": t.quantum_used,
        "level": t.level,
    }
    if t.depth:
        rec["depth"] = t.depth
    if fc:
        rec["fc"] = fc
    return rec


def apply_record(t: Task, rec: dict[str, Any]) -> None:
    """Set ``t``'s fields from a record of any kind but ``submit`` (or from a submit record
    again: its state part)."""
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
    """A ``Task`` rebuilt from its submit record. A fresh task already has every default, so
    only the keys the record holds are set."""
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
