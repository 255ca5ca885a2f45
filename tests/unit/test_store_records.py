"""The journal's row format (``records.rows_record`` / ``replay_rows``): a task written as rows
and read back, through JSON as the journal stores it, has every field it had; rows for changes
after the first bring a copy to the same state, defaults included. The per-task records of
journals written before rows still load."""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from raysched.models import TaskState
from raysched.policy.task import Task
from raysched.store.journal import dumps, loads
from raysched.store.records import (
    HOT_SPEC,
    PROGRESS_FIELDS,
    RARE_SPEC,
    STATE_FIELDS,
    apply_record,
    replay_rows,
    rows_record,
    split_done,
    task_from_record,
)

_FIELDS = ("priority", "arrival", "seq", *HOT_SPEC, *(n for n, _ in RARE_SPEC))
_STATE = (*(n for n, _ in STATE_FIELDS), "result")


def _through_json(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = loads(dumps(rec))
    return out


def _same(a: Task, b: Task, names: tuple[str, ...]) -> None:
    for name in names:
        assert getattr(a, name) == getattr(b, name), name


_maybe_float = st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False))
_SPEC: dict[str, st.SearchStrategy[Any]] = {
    "depends_on": st.lists(st.text(min_size=1, max_size=4), max_size=2).map(tuple),
    "timeout_s": _maybe_float,
    "max_retries": st.integers(0, 3),
    "payload": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    "idempotency_key": st.one_of(st.none(), st.text(max_size=5)),
}
_changes = st.fixed_dictionaries(
    {},
    optional={
        **_SPEC,
        "preemptible": st.booleans(),
        "gpu_memory_mb": st.one_of(st.none(), st.integers(0, 80_000)),
        "level": st.integers(0, 7),
        "depth": st.integers(0, 3),
        "attempts": st.integers(0, 4),
        "service_s": st.floats(0, 100, allow_nan=False),
        "quantum_used": st.floats(0, 10, allow_nan=False),
        "steps": st.integers(0, 500),
        "started_at": st.floats(0, 1e9, allow_nan=False),
        "first_start": _maybe_float,
        "finished_at": _maybe_float,
        "worker": st.one_of(st.none(), st.text(max_size=6)),
        "error": st.one_of(st.none(), st.text(max_size=6)),
        "error_type": st.one_of(st.none(), st.text(max_size=6)),
        "redeliveries": st.integers(0, 3),
        "not_before": st.floats(0, 1e9, allow_nan=False),
        "result": st.one_of(st.none(), st.integers(), st.text(max_size=4)),
        "enqueued_at": st.floats(0, 1e9, allow_nan=False),
        "home": st.one_of(st.none(), st.text(max_size=4)),
    },
)


@given(
    first=_changes,
    later=_changes,
    state=st.sampled_from(list(TaskState)),
    state2=st.sampled_from(list(TaskState)),
    size_hint=_maybe_float,
    deadline=_maybe_float,
    fc=st.one_of(st.none(), st.floats(0.001, 10, allow_nan=False)),
    retry=st.booleans(),
)
def test_rows_bring_back_every_field(
    first: dict[str, Any],
    later: dict[str, Any],
    state: TaskState,
    state2: TaskState,
    size_hint: float | None,
    deadline: float | None,
    fc: float | None,
    retry: bool,
) -> None:
    t = Task("t1", 5, 100.0, 3, 12, "acme", "batch", "echo", "default", size_hint, deadline)
    t.state = state
    for k, v in first.items():
        setattr(t, k, v)
    counters = {"acme": fc} if fc else {}
    tasks: dict[str, Task] = {}
    retrying: set[str] = set()
    fair: dict[str, float] = {}
    rec = _through_json(rows_record([t], [], [], counters, ["t1"] if retry else []))
    assert replay_rows(rec, tasks, retrying, fair) == (1, 0)
    back = tasks["t1"]
    _same(back, t, ("id", *_FIELDS, *_STATE))
    assert back.home is None  # runtime-only fields are not restored
    assert retrying == ({"t1"} if retry else set()) and fair == counters
    # a transition: state fields change, some go back to their default
    t.state = state2
    for name, _ in [*STATE_FIELDS[2:], ("result", None)]:
        if name in t.__dict__ and name not in later:
            del t.__dict__[name]  # back to the class default
    for k, v in later.items():
        if k in dict(STATE_FIELDS) or k == "result":
            setattr(t, k, v)
    rec = _through_json(rows_record([], [t], [], counters, []))
    assert replay_rows(rec, tasks, retrying, fair) == (1, 0)
    _same(back, t, ("id", *_FIELDS, *_STATE))
    assert retrying == set()
    # a final row (as for an outcome) makes the whole task but its payload, on its own too
    alone: dict[str, Task] = {}
    rec = _through_json(rows_record([], [], [], counters, [], [t]))
    assert replay_rows(rec, alone, set(), {}) == (1, 0)
    _same(alone["t1"], t, ("id", *(n for n in _FIELDS if n != "payload"), *_STATE))
    assert alone["t1"].payload is None
    # an outcome as a state row (its spec is in an earlier s row): the state part, as a t row
    rec = _through_json(rows_record([], [], [], counters, [], (), [t]))
    assert rec["n"] == 1 and "e" in rec and "f" not in rec
    assert replay_rows(rec, tasks, retrying, fair) == (1, 0)
    ended = ("enqueued_at", "depth", "quantum_used", "started_at")  # not in it: unused once ended
    _same(back, t, ("id", *_FIELDS, *(n for n in _STATE if n not in ended)))
    assert replay_rows(rec, {}, set(), {}) == (0, 1)  # no task to apply it to
    # progress: service and level only
    t.steps, t.service_s, t.level = t.steps + 1, t.service_s + 0.5, t.level + 1
    rec = _through_json(rows_record([], [], [t], counters, []))
    assert replay_rows(rec, tasks, retrying, fair) == (1, 0)
    _same(back, t, PROGRESS_FIELDS)


def test_rows_for_unknown_tasks_are_skipped_and_a_resubmission_keeps_the_spec() -> None:
    t = Task("a", 5, 1.0, 0, 0, "x", "batch", "echo", "default")
    t.payload = {"p": 1}
    t.state = TaskState.QUEUED
    tasks: dict[str, Task] = {}
    fair: dict[str, float] = {}
    assert replay_rows(_through_json(rows_record([], [t], [t], {}, [])), tasks, set(), fair) == (
        0,
        2,
    )
    replay_rows(_through_json(rows_record([t], [], [], {}, [])), tasks, set(), fair)
    t.state, t.attempts = TaskState.RUNNING, 1
    again = Task("a", 1, 9.0, 0, 0, "other", "batch", "echo", "default")  # same id
    again.state, again.attempts = TaskState.RUNNING, 1
    replay_rows(_through_json(rows_record([again], [], [], {}, [])), tasks, set(), fair)
    got = tasks["a"]
    assert (got.priority, got.tenant, got.payload) == (5, "x", {"p": 1})
    assert (got.state, got.attempts) == (TaskState.RUNNING, 1)
    assert not got.__dict__  # sparse: defaults are not stored


def test_per_task_records_of_older_journals_still_load() -> None:
    t = task_from_record(
        {
            "k": "submit",
            "id": "old",
            "priority": 5,
            "arrival": 1.0,
            "seq": 2,
            "prompt_tokens": 3,
            "tenant": "acme",
            "tier": "batch",
            "kind": "echo",
            "pool": "default",
            "payload": {"x": 1},
            "depends_on": ["p"],
            "state": "queued",
        }
    )
    assert (t.payload, t.depends_on, t.state) == ({"x": 1}, ("p",), TaskState.QUEUED)
    apply_record(
        t,
        {
            "k": "finish",
            "id": "old",
            "state": "succeeded",
            "attempts": 1,
            "worker": "w1",
            "finished_at": 4.0,
            "result": [1],
        },
    )
    assert (t.state, t.attempts, t.worker, t.finished_at, t.result) == (
        TaskState.SUCCEEDED,
        1,
        "w1",
        4.0,
        [1],
    )
    apply_record(t, {"k": "progress", "id": "old", "steps": 7, "service_s": 1.5, "level": 2})
    assert (t.steps, t.service_s, t.level) == (7, 1.5, 2)


@given(
    changes=st.lists(_changes, min_size=1, max_size=5),
    states=st.lists(st.sampled_from([s for s in TaskState if s.terminal]), min_size=5, max_size=5),
)
def test_results_rows_from_tasks_match_outcome_of(
    changes: list[dict[str, Any]], states: list[TaskState]
) -> None:
    from raysched.store.results import ResultsStore, outcome_of

    tasks = []
    for i, (ch, state) in enumerate(zip(changes, states, strict=False)):
        t = Task(f"t{i}", 5, 100.0, i, 0, "acme", "batch", "echo", "default", None, None)
        for k, v in ch.items():
            setattr(t, k, v)
        t.state = state
        tasks.append(t)
    fast = ResultsStore._to_table([(t, 7.0) for t in tasks])
    slow = ResultsStore._to_table([outcome_of(t, 7.0) for t in tasks])
    assert fast.equals(slow)


def test_an_unreadable_row_is_skipped_alone() -> None:
    """A row this version cannot read (a state it does not know, a short row) is skipped with
    a log line; the record's other rows, retrying marks and fair-share counters still apply."""
    tasks: dict[str, Task] = {}
    src = []
    for i in range(4):
        t = Task(f"t{i}", 5, 1.0, i, 0, "acme", "batch", "echo", "default")
        t.state = TaskState.QUEUED
        src.append(t)
    replay_rows(_through_json(rows_record(src, [], [], {}, [])), tasks, set(), {})
    for t in src:
        t.state, t.attempts = TaskState.RUNNING, 1
    src[3].state = TaskState.FAILED
    rec = _through_json(rows_record([], src, [], {"acme": 2.5}, ["t3"]))
    rec["ts"][1] = "paused-by-a-newer-version"
    rec["t"][2] = rec["t"][2][:3]
    retrying: set[str] = set()
    fair: dict[str, float] = {}
    assert replay_rows(rec, tasks, retrying, fair) == (2, 2)
    assert (tasks["t0"].state, tasks["t0"].attempts) == (TaskState.RUNNING, 1)
    assert (tasks["t1"].state, tasks["t1"].attempts) == (TaskState.QUEUED, 0)  # untouched
    assert (tasks["t2"].state, tasks["t2"].attempts) == (TaskState.QUEUED, 0)
    assert tasks["t3"].state is TaskState.FAILED
    assert retrying == {"t3"} and fair == {"acme": 2.5}


def test_start_rows_set_the_start_fields_and_nothing_else() -> None:
    """An ``r`` row: state running, the fields a start sets (and the level), as absolute values;
    the rest of the task (service, steps, its dict) stays; unknown tasks are skipped."""
    t = Task("a", 5, 1.0, 7, 10, "x", "batch", "echo", "default")
    t.payload, t.state, t.steps, t.service_s = {"p": 1}, TaskState.QUEUED, 3, 0.5
    t.quantum_used = 0.2
    t.error, t.error_type, t.attempts = "bad", "ValueError", 1  # failed once, retrying
    tasks: dict[str, Task] = {}
    retrying = {"a"}
    replay_rows(_through_json(rows_record([t], [], [], {}, ["a"])), tasks, retrying, {})
    t.state, t.attempts, t.quantum_used = TaskState.RUNNING, 2, 0.0
    t.started_at, t.worker, t.first_start, t.level = 9.0, "w", 2.0, 1
    rec = _through_json(rows_record([], [], [], {"x": 1.5}, [], starts=[t]))
    assert set(rec) == {"k", "n", "rf", "r", "fc"} and rec["n"] == 1
    fair: dict[str, float] = {}
    assert replay_rows(rec, tasks, retrying, fair) == (1, 0)
    _same(tasks["a"], t, ("id", *_FIELDS, *_STATE))
    assert retrying == set() and fair == {"x": 1.5}
    assert replay_rows(rec, {}, set(), {}) == (0, 1)
    assert len(dumps(rec["r"][0])) < len(dumps(rows_record([], [t], [], {}, [])["t"][0])) / 2


@given(
    spec=st.fixed_dictionaries(
        {}, optional={**_SPEC, "level": st.integers(0, 7), "depth": st.integers(0, 3)}
    ),
    state=st.sampled_from([TaskState.PENDING, TaskState.QUEUED]),
    size_hint=_maybe_float,
)
def test_a_fresh_row_brings_back_a_task_that_has_not_started(
    spec: dict[str, Any], state: TaskState, size_hint: float | None
) -> None:
    """A ``q`` row (a new task with no attempts, enqueued at its arrival) leaves out the state
    fields still at their defaults, and brings the task back whole."""
    t = Task("t1", 5, 100.0, 3, 12, "acme", "batch", "echo", "default", size_hint, None)
    t.state = state
    for k, v in spec.items():
        setattr(t, k, v)
    rec = _through_json(rows_record([], [], [], {}, [], fresh=[t]))
    assert "q" in rec and "s" not in rec and rec["n"] == 1
    assert len(rec["q"][0]) < len(rows_record([t], [], [], {}, [])["s"][0])
    tasks: dict[str, Task] = {}
    assert replay_rows(rec, tasks, set(), {}) == (1, 0)
    _same(tasks["t1"], t, ("id", *_FIELDS, *_STATE))


class _Level(enum.IntEnum):
    ONE = 1


def test_a_worker_encodes_only_outcomes_whose_json_reads_back_equal() -> None:
    """``split_done``: ``done`` events go encoded, in order, unless their JSON would change the
    value (a tuple, a NaN, a key that is not a string, bytes): those, and every other event, stay
    as they are, so the scheduler holds each result as the handler returned it."""
    plain = {"t": "done", "id": "a", "result": {"x": [1, 2.5, None, "é"]}, "service": 0.1}
    odd = [
        {"t": "done", "id": "b", "result": (1, 2)},
        {"t": "done", "id": "c", "result": float("nan")},
        {"t": "done", "id": "d", "result": {1: "one"}},
        {"t": "done", "id": "e", "result": b"raw"},
        {"t": "done", "id": "e2", "result": {"n": _Level.ONE}},  # equal to 1 as JSON, not 1
        {"t": "done", "id": "e3", "result": OrderedDict(a=1)},
        {"t": "done", "id": "e4", "result": 1 << 70},
    ]
    other = [{"t": "fail", "id": "f", "etype": "ValueError"}, {"t": "started", "id": "g"}]
    last = {"t": "done", "id": "h", "result": None}
    rest, data = split_done([plain, *odd, other[0], other[1], last])
    assert data is not None and orjson.loads(data) == [plain, last]
    assert [e["id"] for e in rest] == ["b", "c", "d", "e", "e2", "e3", "e4", "f", "g"]
    assert rest[0]["result"] == (1, 2)
    assert split_done(other) == (other, None)
