"""The task state machine (CONTRACT.md section 2): allowed moves are audited, others refused."""

from __future__ import annotations

import itertools

import pytest

from raysched.errors import InvalidTransition
from raysched.models import AuditEvent, TaskState
from raysched.policy.lifecycle import ALLOWED, CHANGED, CREATED, Lifecycle, LogAudit
from raysched.policy.task import Task

S = TaskState
ALL_PAIRS = list(itertools.product(list(TaskState), list(TaskState)))
ALLOWED_PAIRS = [(a, b) for a, b in ALL_PAIRS if b in ALLOWED[a]]
REFUSED_PAIRS = [(a, b) for a, b in ALL_PAIRS if b not in ALLOWED[a]]


def _task(state: TaskState) -> Task:
    t = Task("t1", 5, 0.0, 1)
    t.state = state
    return t


def test_table_covers_every_state_and_matches_contract() -> None:
    assert set(ALLOWED) == set(TaskState)
    assert {
        S.PENDING: {S.QUEUED, S.CANCELLED, S.FAILED},
        S.QUEUED: {S.RUNNING, S.CANCELLED},
        S.RUNNING: {S.PREEMPTED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT},
        S.PREEMPTED: {S.RUNNING, S.CANCELLED, S.TIMED_OUT, S.FAILED},
        S.FAILED: {S.QUEUED},
        S.TIMED_OUT: {S.QUEUED},
        S.SUCCEEDED: set(),
        S.CANCELLED: set(),
    } == ALLOWED


def test_contract_shape() -> None:
    # running <-> preempted; only failed / timed_out go back (a retry); the path of section 2.
    assert S.PREEMPTED in ALLOWED[S.RUNNING] and S.RUNNING in ALLOWED[S.PREEMPTED]
    for src, dsts in ALLOWED.items():
        assert src not in dsts, f"self-loop on {src}"
        if src.terminal:
            assert dsts <= {S.QUEUED}
    # every state is reachable from pending
    seen, frontier = {S.PENDING}, [S.PENDING]
    while frontier:
        for d in ALLOWED[frontier.pop()]:
            if d not in seen:
                seen.add(d)
                frontier.append(d)
    assert seen == set(TaskState)


@pytest.mark.parametrize(("src", "dst"), ALLOWED_PAIRS, ids=lambda s: s.value)
def test_allowed_transition_moves_and_audits(src: TaskState, dst: TaskState) -> None:
    log = LogAudit()
    seen: list[AuditEvent] = []
    refused: list[str] = []
    lc = Lifecycle([log, seen.append], on_refused=refused.append)
    t = _task(src)
    lc.move(t, dst, 12.5, "because")
    assert t.state is dst
    expected = AuditEvent(task_id="t1", src=src, dst=dst, at=12.5, reason="because")
    assert log.events == [expected]
    assert seen == [expected]
    assert refused == []


@pytest.mark.parametrize(("src", "dst"), REFUSED_PAIRS, ids=lambda s: s.value)
def test_refused_transition_raises_and_leaves_task(src: TaskState, dst: TaskState) -> None:
    log = LogAudit()
    refused: list[str] = []
    lc = Lifecycle([log], on_refused=refused.append)
    t = _task(src)
    with pytest.raises(InvalidTransition) as info:
        lc.move(t, dst, 3.0, "nope")
    assert t.state is src
    assert log.events == []
    assert info.value.task_id == "t1"
    assert (info.value.src, info.value.dst) == (src.value, dst.value)
    assert info.value.code == "invalid_transition"
    assert len(refused) == 1 and src.value in refused[0] and dst.value in refused[0]


def test_pair_enumeration_is_complete() -> None:
    assert len(ALLOWED_PAIRS) + len(REFUSED_PAIRS) == len(TaskState) ** 2 == 64
    assert len(ALLOWED_PAIRS) == 16


def test_no_hooks_still_moves() -> None:
    t = _task(S.QUEUED)
    Lifecycle().move(t, S.RUNNING, 0.0)
    assert t.state is S.RUNNING


def test_created_event() -> None:
    log = LogAudit()
    t = _task(S.PENDING)
    Lifecycle([log]).created(t, 4.0)
    assert log.events == [
        AuditEvent(task_id="t1", src=None, dst=S.PENDING, at=4.0, reason="submitted")
    ]


def test_log_audit_is_bounded() -> None:
    log = LogAudit(limit=3)
    lc = Lifecycle([log])
    t = _task(S.QUEUED)
    for i in range(5):
        lc.move(t, S.RUNNING, float(i))
        lc.move(t, S.PREEMPTED, float(i))
    assert len(log.events) == 3
    assert [e.dst for e in log.events] == [S.RUNNING, S.PREEMPTED, S.RUNNING]


def test_full_happy_path_with_retry() -> None:
    log = LogAudit()
    lc = Lifecycle([log])
    t = _task(S.PENDING)
    path = [
        S.QUEUED,
        S.RUNNING,
        S.PREEMPTED,
        S.RUNNING,
        S.FAILED,
        S.QUEUED,
        S.RUNNING,
        S.TIMED_OUT,
        S.QUEUED,
        S.RUNNING,
        S.SUCCEEDED,
    ]
    for i, dst in enumerate(path):
        lc.move(t, dst, float(i))
    assert [e.dst for e in log.events] == path
    assert [e.at for e in log.events] == [float(i) for i in range(len(path))]
    with pytest.raises(InvalidTransition):
        lc.move(t, S.QUEUED, 99.0)
    assert t.state is S.SUCCEEDED


def test_change_log_lists_a_lone_start_from_queued() -> None:
    """``Lifecycle.changes``: a birth is ``CREATED``, any other transition ``CHANGED``, except a
    start from ``queued`` of a task the log does not hold: that goes to ``starts`` (in order),
    and a transition after it marks the task ``CHANGED`` as usual."""
    lc = Lifecycle()
    lc.changes = {}
    new, waiting, resumed = (Task(n, 1, 0.0) for n in ("new", "waiting", "resumed"))
    lc.created(new, 0.0)
    for t, path in (
        (new, (S.QUEUED, S.RUNNING)),
        (waiting, (S.QUEUED,)),
        (resumed, (S.QUEUED, S.RUNNING, S.PREEMPTED)),
    ):
        for dst in path:
            lc.move(t, dst, 0.0)
    assert lc.changes == {new: CREATED, waiting: CHANGED, resumed: CHANGED}
    assert lc.starts == []
    lc.changes = {}
    lc.move(waiting, S.RUNNING, 1.0)
    lc.move(resumed, S.RUNNING, 1.0)
    assert lc.changes == {resumed: CHANGED} and lc.starts == [waiting]
    lc.move(waiting, S.SUCCEEDED, 2.0)
    assert lc.changes[waiting] == CHANGED and lc.starts == [waiting]
