"""Ready queues: the shared interface and each policy's order."""

from __future__ import annotations

import itertools
import math

import pytest

from raysched.policy.queues import (
    FCFSQueue,
    MLFQQueue,
    Policy,
    PriorityQueue,
    SRPTQueue,
    TaskQueue,
    make_queue,
)
from raysched.policy.task import Task

POLICIES = [p.value for p in Policy]
_seq = itertools.count(1)


def mk(
    tid: str,
    prio: int = 5,
    prompt: int = 10,
    *,
    hint: float | None = None,
    at: float = 0.0,
    tenant: str = "a",
) -> Task:
    t = Task(tid, prio, at, next(_seq), prompt, tenant, "", "simulate", "default", None, None)
    t.remaining_hint = hint
    return t


def add(q: TaskQueue, t: Task, now: float = 0.0) -> None:
    q.admit(t)
    t.enqueued_at = now
    q.add(t, now)


def drain(q: TaskQueue) -> list[str]:
    out = []
    while len(q):
        out.append(q.pop().id)
    return out


def test_factory_types() -> None:
    assert type(make_queue("fcfs")) is FCFSQueue
    assert type(make_queue("priority")) is PriorityQueue
    assert type(make_queue(Policy.SRPT)) is SRPTQueue
    assert type(make_queue("mlfq")) is MLFQQueue
    assert make_queue("mlfq", starvation_s=3.0).starvation_s == 3.0  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        make_queue("lottery")


def test_only_fcfs_is_not_preemptive() -> None:
    assert make_queue("fcfs").preemptive is False
    t = mk("x")
    assert make_queue("fcfs").preempt_rank(t) is None
    for p in ("priority", "mlfq", "srpt"):
        assert make_queue(p).preempt_rank(t) is not None


@pytest.mark.parametrize("policy", POLICIES)
def test_empty_queue(policy: str) -> None:
    q = make_queue(policy)
    assert len(q) == 0 and not q
    assert q.peek() is None
    assert list(q) == []
    assert q.pop_batch(3) == []
    with pytest.raises(IndexError):
        q.pop()


@pytest.mark.parametrize("policy", POLICIES)
def test_add_peek_pop_len_iter(policy: str) -> None:
    q = make_queue(policy)
    ts = [mk(f"t{i}", prio=5, hint=1.0) for i in range(5)]
    for t in ts:
        add(q, t)
    assert len(q) == 5 and bool(q)
    assert sorted(t.id for t in q) == sorted(t.id for t in ts)
    assert all(t in q for t in ts)
    head = q.peek()
    assert head is not None
    assert q.peek() is head  # peek does not consume
    assert len(q) == 5
    assert q.pop() is head
    assert head not in q
    assert len(q) == 4
    rest = drain(q)
    assert sorted([head.id, *rest]) == sorted(t.id for t in ts)
    assert len(q) == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_equal_keys_are_fifo(policy: str) -> None:
    q = make_queue(policy)
    ids = [f"t{i}" for i in range(20)]
    for tid in ids:
        add(q, mk(tid, prio=5, prompt=10, hint=1.0))
    assert drain(q) == ids


def test_fcfs_ignores_priority() -> None:
    q = FCFSQueue()
    prios = [9, 0, 5, 1, 0, 9]
    for i, p in enumerate(prios):
        add(q, mk(f"t{i}", prio=p))
    assert drain(q) == [f"t{i}" for i in range(len(prios))]


@pytest.mark.parametrize("policy", ["priority", "mlfq"])
def test_strict_tier_order_then_fifo(policy: str) -> None:
    q = make_queue(policy)
    prios = [5, 1, 9, 0, 5, 1, 0, 9, 5]
    for i, p in enumerate(prios):
        add(q, mk(f"t{i}", prio=p))
    out = drain(q)
    expected = [f"t{i}" for i, _ in sorted(enumerate(prios), key=lambda x: (x[1], x[0]))]
    assert out == expected


def test_mlfq_tier_beats_score() -> None:
    """A batch task with every score advantage still runs after an interactive one."""
    q = MLFQQueue()
    best_batch = mk("batch", prio=5, prompt=0, at=-1000.0)
    best_batch.depth = 8
    best_batch.deadline = 0.0
    worst_inter = mk("inter", prio=1, prompt=200)
    add(q, best_batch, 0.0)
    add(q, worst_inter, 0.0)
    assert drain(q) == ["inter", "batch"]


def test_srpt_order() -> None:
    q = SRPTQueue()
    for tid, hint in [("a", 5.0), ("b", 1.0), ("c", None), ("d", 1.0), ("e", 0.5)]:
        add(q, mk(tid, hint=hint))
    assert drain(q) == ["e", "b", "d", "a", "c"]
    assert SRPTQueue().preempt_rank(mk("z")) == (math.inf,)


@pytest.mark.parametrize("policy", POLICIES)
def test_remove(policy: str) -> None:
    q = make_queue(policy)
    ts = [mk(f"t{i}", hint=float(i)) for i in range(6)]
    for t in ts:
        add(q, t)
    assert q.remove(ts[0]) is True
    assert q.remove(ts[3]) is True
    assert q.remove(ts[3]) is False  # already removed
    assert ts[0] not in q and ts[3] not in q
    assert len(q) == 4
    assert sorted(t.id for t in q) == ["t1", "t2", "t4", "t5"]
    out = drain(q)
    assert sorted(out) == ["t1", "t2", "t4", "t5"]


@pytest.mark.parametrize("policy", POLICIES)
def test_remove_not_queued_returns_false(policy: str) -> None:
    q = make_queue(policy)
    other = make_queue(policy)
    stranger = mk("stranger")
    assert q.remove(stranger) is False
    t = mk("t")
    add(q, t)
    popped = q.pop()
    assert popped is t
    assert q.remove(t) is False
    assert len(q) == 0
    u = mk("u")
    add(other, u)
    assert len(other) == 1


@pytest.mark.parametrize("policy", POLICIES)
def test_remove_head_then_peek_and_pop(policy: str) -> None:
    q = make_queue(policy)
    a, b = mk("a", hint=1.0), mk("b", hint=2.0)
    add(q, a)
    add(q, b)
    assert q.peek() is a
    assert q.remove(a)
    assert q.peek() is b
    assert q.pop() is b
    with pytest.raises(IndexError):
        q.pop()


@pytest.mark.parametrize("policy", POLICIES)
def test_readd_after_remove_is_single(policy: str) -> None:
    q = make_queue(policy)
    a, b = mk("a", hint=1.0), mk("b", hint=1.0)
    add(q, a)
    add(q, b)
    q.remove(a)
    add(q, a)  # back at the end of its class (srpt: ties broken by seq, not by add order)
    assert len(q) == 2
    assert sorted(t.id for t in q) == ["a", "b"]
    assert drain(q) == (["a", "b"] if policy == "srpt" else ["b", "a"])


@pytest.mark.parametrize("policy", POLICIES)
def test_pop_batch(policy: str) -> None:
    q = make_queue(policy)
    ids = [f"t{i}" for i in range(10)]
    for tid in ids:
        add(q, mk(tid, hint=1.0))
    q.remove(next(t for t in q if t.id == "t2"))
    assert q.pop_batch(0) == []
    first = [t.id for t in q.pop_batch(4)]
    assert first == ["t0", "t1", "t3", "t4"]
    assert len(q) == 5
    rest = [t.id for t in q.pop_batch(100)]
    assert rest == ["t5", "t6", "t7", "t8", "t9"]
    assert len(q) == 0 and q.peek() is None


@pytest.mark.parametrize("policy", ["priority", "mlfq"])
def test_pop_batch_respects_tiers(policy: str) -> None:
    q = make_queue(policy)
    for i, p in enumerate([9, 5, 1, 5, 0]):
        add(q, mk(f"t{i}", prio=p))
    assert [t.id for t in q.pop_batch(3)] == ["t4", "t2", "t1"]
    assert [t.id for t in q.pop_batch(3)] == ["t3", "t0"]


@pytest.mark.parametrize("policy", POLICIES)
def test_add_batch_equals_sequential_add(policy: str) -> None:
    specs = [
        ("a", 5, 10, 3.0),
        ("b", 1, 300, 1.0),
        ("c", 5, 10, 2.0),
        ("d", 0, 5000, 0.5),
        ("e", 1, 300, 1.0),
    ]
    q1, q2 = make_queue(policy), make_queue(policy)
    ts1 = [mk(i, p, n, hint=h) for i, p, n, h in specs]
    ts2 = [mk(i, p, n, hint=h) for i, p, n, h in specs]
    for t in ts1:
        add(q1, t, 1.0)
    for t in ts2:
        q2.admit(t)
        t.enqueued_at = 1.0
    q2.add_batch(ts2, 1.0)
    assert len(q1) == len(q2) == len(specs)
    assert drain(q1) == drain(q2)


@pytest.mark.parametrize("policy", POLICIES)
def test_iteration_skips_stale_entries(policy: str) -> None:
    q = make_queue(policy)
    ts = [mk(f"t{i}", hint=1.0) for i in range(4)]
    for t in ts:
        add(q, t)
    q.remove(ts[1])
    q.pop()
    listed = [t.id for t in q]
    assert sorted(listed) == ["t2", "t3"]
    assert len(listed) == len(set(listed)) == len(q)


def test_mlfq_many_removals_compact() -> None:
    q = MLFQQueue()
    ts = [mk(f"t{i}") for i in range(3000)]
    for t in ts:
        add(q, t)
    for t in ts[:2900]:
        assert q.remove(t)
    assert len(q) == 100
    assert len(q._order) <= 4 * 100 + 2048  # compacted, not growing without bound
    assert drain(q) == [f"t{i}" for i in range(2900, 3000)]


def test_base_queue_neutral_hooks() -> None:
    q = PriorityQueue()
    t = mk("x", prio=3)
    q.expire_quantum(t)
    assert t.level == 0
    assert q.quantum(t) == math.inf
    assert q.age(1e9) == 0
    assert q.next_level(t, 2) == 2
    assert q.rank_at(t, 4) == (3,)
