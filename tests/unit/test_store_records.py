"""The record builders read task fields directly for speed; here they are checked against a plain
reading of the field tables (``HOT_SPEC``, ``RARE_SPEC``, ``STATE_FIELDS``) on varied tasks."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from raysched.models import TaskState
from raysched.policy.task import Task
from raysched.store.records import (
    HOT_SPEC,
    RARE_SPEC,
    STATE_FIELDS,
    apply_record,
    state_record,
    submit_record,
    task_from_record,
)


def _reference_state(rec: dict[str, Any], t: Task) -> None:
    rec["state"] = t.state.value
    if t.enqueued_at != t.arrival:
        rec["enqueued_at"] = t.enqueued_at
    for name, default in STATE_FIELDS[2:]:
        v = getattr(t, name)
        if v != default:
            rec[name] = v
    if t.state is TaskState.SUCCEEDED and t.result is not None:
        rec["result"] = t.result


def _reference_submit(t: Task, fc: float | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "k": "submit",
        "id": t.id,
        "priority": t.priority,
        "arrival": t.arrival,
        "seq": t.seq,
    }
    for name in HOT_SPEC:
        v = getattr(t, name)
        if v is not None:
            rec[name] = v
    for name, default in RARE_SPEC:
        v = getattr(t, name)
        if v != default:
            rec[name] = v
    _reference_state(rec, t)
    if fc:
        rec["fc"] = fc
    return rec


_maybe_float = st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False))
_changes = st.fixed_dictionaries(
    {},
    optional={
        "depends_on": st.lists(st.text(min_size=1, max_size=4), max_size=2).map(tuple),
        "timeout_s": _maybe_float,
        "max_retries": st.integers(0, 3),
        "payload": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        "idempotency_key": st.one_of(st.none(), st.text(max_size=5)),
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
    changes=_changes,
    state=st.sampled_from(list(TaskState)),
    size_hint=_maybe_float,
    deadline=_maybe_float,
    fc=st.one_of(st.none(), st.floats(0, 10, allow_nan=False)),
)
def test_builders_match_the_field_tables(
    changes: dict[str, Any],
    state: TaskState,
    size_hint: float | None,
    deadline: float | None,
    fc: float | None,
) -> None:
    t = Task("t1", 5, 100.0, 3, 12, "acme", "batch", "echo", "default", size_hint, deadline)
    t.state = state
    for k, v in changes.items():
        setattr(t, k, v)
    assert submit_record(t, fc) == _reference_submit(t, fc)
    ref = {"k": state_record(t)["k"], "id": t.id}
    _reference_state(ref, t)
    assert state_record(t) == ref
    # and a record brings the same state back
    back = task_from_record(submit_record(t, fc))
    apply_record(back, state_record(t))
    for name, _ in STATE_FIELDS[1:]:
        assert getattr(back, name) == getattr(t, name), name


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
