"""MLFQ specifics: level schedule, skip-join, demotion, aging (starvation control), rescoring."""

from __future__ import annotations

import itertools
import math

import pytest

from raysched.policy.levels import LevelSchedule
from raysched.policy.queues import MLFQQueue
from raysched.policy.scoring import CostModel, Scorer, Weights
from raysched.policy.task import Task

_seq = itertools.count(1)
BATCH, INTERACTIVE = 5, 1


def mk(
    tid: str, prio: int = BATCH, prompt: int = 10, *, at: float = 0.0, hint: float | None = None
) -> Task:
    return Task(tid, prio, at, next(_seq), prompt, "a", "", "simulate", "default", hint, None)


def enqueue(q: MLFQQueue, t: Task, now: float, *, admit: bool = True) -> None:
    if admit:
        q.admit(t)
    t.enqueued_at = now
    q.add(t, now)


def drain(q: MLFQQueue) -> list[str]:
    out = []
    while q:
        out.append(q.pop().id)
    return out


# -- level schedule ---------------------------------------------------------------------------
def test_default_quanta_grow_by_ratio_and_last_is_infinite() -> None:
    q = MLFQQueue()
    assert q.levels.levels == 16
    for p in range(15):
        assert q.quantum_of(p) == pytest.approx(0.05 * 2**p)
    for p in range(14):
        assert q.quantum_of(p + 1) == pytest.approx(2 * q.quantum_of(p))
    assert q.quantum_of(15) == math.inf
    assert q.quantum_of(100) == math.inf


@pytest.mark.parametrize(("levels", "base", "ratio"), [(3, 0.1, 3.0), (5, 1.0, 1.0), (1, 0.5, 2.0)])
def test_custom_schedule(levels: int, base: float, ratio: float) -> None:
    sched = LevelSchedule(levels, base, ratio)
    q = MLFQQueue(sched)
    for p in range(levels - 1):
        assert q.quantum_of(p) == pytest.approx(base * ratio**p)
        assert sched.quantum(p) == pytest.approx(base * ratio**p)
    assert q.quantum_of(levels - 1) == math.inf
    assert sched.quantum(levels - 1) == math.inf


@pytest.mark.parametrize(
    "kwargs",
    [
        {"levels": 0},
        {"base_quantum": 0.0},
        {"base_quantum": -1.0},
        {"ratio": 0.5},
        {"unit": "hours"},
    ],
)
def test_level_schedule_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LevelSchedule(**kwargs)  # type: ignore[arg-type]


def test_initial_level_matches_admit() -> None:
    sched = LevelSchedule()
    q = MLFQQueue(sched)
    for prompt in [0, 1, 100, 250, 251, 500, 501, 1000, 2000, 5000, 20000, 10**7]:
        t = mk("x", prompt=prompt)
        q.admit(t)
        assert t.level == sched.initial_level(prompt * 0.0002), prompt


# -- skip-join --------------------------------------------------------------------------------
def test_skip_join_long_prompt_enters_deeper() -> None:
    q = MLFQQueue()
    short, long_ = mk("short", prompt=100), mk("long", prompt=1000)  # 0.02 s vs 0.2 s prefill
    q.admit(short)
    q.admit(long_)
    assert short.level == 0
    assert long_.level > short.level
    assert q.quantum_of(long_.level) >= 1000 * 0.0002
    assert q.quantum_of(long_.level - 1) < 1000 * 0.0002
    assert long_.level == 2


def test_skip_join_uses_size_hint_without_prompt() -> None:
    q = MLFQQueue(hint_join=False)
    t = mk("h", prompt=0, hint=0.3)
    q.admit(t)
    assert t.level == 3  # 0.05, 0.1, 0.2 < 0.3 <= 0.4
    huge = mk("huge", prompt=10**8)
    q.admit(huge)
    assert huge.level == 15  # capped at the last level


@pytest.mark.parametrize(
    ("hint", "level"),
    [(0.0, 0), (0.05, 0), (0.06, 1), (0.15, 1), (0.2, 2), (1.0, 4), (3.0, 5), (3.2, 6), (1e9, 15)],
)
def test_hint_join_enters_where_a_task_of_that_size_would_finish(hint: float, level: int) -> None:
    """Cumulative service at the end of levels 0.. is 0.05, 0.15, 0.35, 0.75, 1.55, 3.15 s...:
    a task hinted at ``hint`` seconds starts at the level where such a task would finish."""
    q = MLFQQueue()
    t = mk("t", prompt=10, hint=hint)  # a 2 ms prefill alone would enter level 0
    q.admit(t)
    assert t.level == level


def test_hint_join_without_a_prompt_lands_where_it_would_with_a_short_prompt() -> None:
    q = MLFQQueue()
    for hint in (0.3, 3.0, 30.0):
        a, b = mk("a", prompt=0, hint=hint), mk("b", prompt=10, hint=hint)
        q.admit(a)
        q.admit(b)
        assert a.level == b.level, hint


def test_hint_join_keeps_the_prefill_level_when_deeper_and_orders_by_hint() -> None:
    q = MLFQQueue()
    long_prompt = mk("long_prompt", prompt=3000, hint=0.1)  # 0.6 s prefill: level 4
    q.admit(long_prompt)
    assert long_prompt.level == 4
    short, long_, unknown = mk("short", hint=0.1), mk("long", hint=30.0), mk("unknown")
    for t in (long_, short, unknown):
        enqueue(q, t, 0.0)
    assert drain(q) == ["unknown", "short", "long"]


def test_hint_join_in_steps_counts_decode_steps() -> None:
    q = MLFQQueue(LevelSchedule(16, 4, 2.0, "steps"), scorer=Scorer(cost=CostModel()))
    t = mk("t", prompt=0, hint=1.0)  # 100 decode steps of 10 ms; ends: 4, 12, 28, 60, 124
    q.admit(t)
    assert t.level == 4


def test_short_runs_before_long_prompt_of_same_tier() -> None:
    q = MLFQQueue()
    long_, short = mk("long", prompt=3000), mk("short", prompt=50)
    enqueue(q, long_, 0.0)
    enqueue(q, short, 0.0)
    assert drain(q) == ["short", "long"]


# -- demotion ---------------------------------------------------------------------------------
def test_expire_quantum_demotes_one_level_and_stops_at_last() -> None:
    q = MLFQQueue()
    t = mk("t", prompt=10)
    q.admit(t)
    levels = [t.level]
    for _ in range(18):
        q.expire_quantum(t)
        levels.append(t.level)
    assert levels == [*range(16), 15, 15, 15]


def test_demotion_skips_to_level_covering_recompute() -> None:
    q = MLFQQueue()
    t = mk("t", prompt=10)
    q.admit(t)
    t.steps = 2000  # recomputing 2010 tokens costs 0.402 s: level 4 covers it (0.8)
    q.expire_quantum(t)
    assert t.level == 4
    no_recompute = MLFQQueue(cost=CostModel(recompute=False))
    u = mk("u", prompt=10)
    no_recompute.admit(u)
    u.steps = 2000
    no_recompute.expire_quantum(u)
    assert u.level == 1


def test_demoted_task_runs_after_fresh_level0_work() -> None:
    q = MLFQQueue()
    old = mk("old")
    q.admit(old)
    q.expire_quantum(old)
    enqueue(q, old, 1.0, admit=False)
    enqueue(q, mk("fresh"), 1.0)
    assert q.preempt_rank(old) == (BATCH, 1)
    assert drain(q) == ["fresh", "old"]


# -- aging ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("prompt", "boost_level"), [(10, 0), (1000, 2), (4000, 4)])
def test_aging_boosts_deep_task_ahead_of_fresh_level0(prompt: int, boost_level: int) -> None:
    """After ``starvation_s`` a waiting deep task runs before fresh level-0 work of its tier,
    whatever level its own quantum needs (a long prompt needs a deeper one)."""
    q = MLFQQueue(starvation_s=15.0)
    deep = mk("deep", prompt=prompt)
    q.admit(deep)
    for _ in range(3):
        q.expire_quantum(deep)
    assert deep.level >= 3
    enqueue(q, deep, 0.0, admit=False)
    fresh = [mk(f"f{i}", prompt=5, at=10.0) for i in range(5)]
    for f in fresh:
        enqueue(q, f, 10.0)
    assert all(f.level == 0 for f in fresh)

    assert q.age(14.9) == 0
    assert q.peek() is not deep

    assert q.age(15.0) == 1
    assert deep.level == boost_level  # level 0, or the first that covers its recompute
    assert q.peek() is deep
    assert len(q) == 6
    assert drain(q) == ["deep", "f0", "f1", "f2", "f3", "f4"]


def test_boost_is_one_slice_then_the_task_returns_to_its_level() -> None:
    """A boost lends one quantum ahead of everything; used up, the task goes back to the level
    it was lifted from instead of walking down through every short level again."""
    q = MLFQQueue(starvation_s=15.0)
    deep = mk("deep", prompt=10)
    q.admit(deep)
    for _ in range(6):
        q.expire_quantum(deep)
    assert deep.level == 6
    enqueue(q, deep, 0.0, admit=False)
    assert q.age(15.0) == 1
    assert deep.level == 0 and deep.boosted_from == 6
    assert q.pop() is deep
    assert q.next_level(deep, 0) == 6  # what the replay's look-ahead sees too
    q.expire_quantum(deep)
    assert deep.level == 6 and deep.boosted_from is None
    q.expire_quantum(deep)
    assert deep.level == 7  # demotion as usual afterwards
    # a task lifted while still on loan keeps the deeper level it came from
    t = mk("t", prompt=10)
    q.admit(t)
    for _ in range(3):
        q.expire_quantum(t)
    enqueue(q, t, 20.0, admit=False)
    assert q.age(40.0) == 1 and t.boosted_from == 3
    assert q.pop() is t
    enqueue(q, t, 41.0, admit=False)  # preempted during its slice: still on loan
    assert q.age(60.0) == 1 and t.boosted_from == 3 and t.level == 0


def test_boost_level_covers_recompute() -> None:
    q = MLFQQueue(starvation_s=1.0)
    small, big = mk("small", prompt=10), mk("big", prompt=1000)
    for t in (small, big):
        q.admit(t)
        for _ in range(4):
            q.expire_quantum(t)
        enqueue(q, t, 0.0, admit=False)
    assert q.age(2.0) == 2
    assert small.level == 0
    assert big.level == 2  # 0.2 s of recompute needs level 2's quantum
    assert len(q) == 2


def test_aging_never_crosses_tiers() -> None:
    q = MLFQQueue(starvation_s=15.0)
    starving = mk("starving_batch", prio=BATCH)
    q.admit(starving)
    for _ in range(4):
        q.expire_quantum(starving)
    enqueue(q, starving, 0.0, admit=False)
    better = [mk(f"i{i}", prio=INTERACTIVE, prompt=3000, at=20.0) for i in range(3)]
    for t in better:
        enqueue(q, t, 20.0)
    fresh_batch = mk("fresh_batch", prio=BATCH, at=20.0)
    enqueue(q, fresh_batch, 20.0)
    assert q.age(20.0) == 1
    assert drain(q) == ["i0", "i1", "i2", "starving_batch", "fresh_batch"]


def test_boosted_tasks_keep_fifo_order_and_are_not_aged_twice() -> None:
    q = MLFQQueue(starvation_s=5.0)
    a, b = mk("a", prompt=2000), mk("b", prompt=10)
    for i, t in enumerate((a, b)):
        q.admit(t)
        q.expire_quantum(t)
        enqueue(q, t, float(i))
    enqueue(q, mk("fresh"), 9.0)
    assert q.age(7.0) == 2
    assert q.age(8.0) == 0  # already boosted
    assert q.age(100.0) == 1  # only 'fresh' is left to boost
    assert len(q) == 3
    assert drain(q) == ["a", "b", "fresh"]


def test_rescore_keeps_boosted_tasks_in_front() -> None:
    q = MLFQQueue(starvation_s=5.0)
    deep = mk("deep", prompt=1500)
    q.admit(deep)
    q.expire_quantum(deep)
    enqueue(q, deep, 0.0, admit=False)
    assert q.age(6.0) == 1
    for i in range(4):
        enqueue(q, mk(f"f{i}", prompt=1), 6.5)
    q.rescore(7.0)
    assert len(q) == 5
    assert q.peek() is deep
    assert q.age(7.5) == 0  # a boosted task is not aged again after a rescore either
    assert drain(q)[0] == "deep"


def test_age_and_rescore_on_empty_queue() -> None:
    q = MLFQQueue()
    assert q.age(1e6) == 0
    q.rescore(1e6)
    assert len(q) == 0 and q.peek() is None


# -- scoring inside a level -------------------------------------------------------------------
def test_score_orders_within_level() -> None:
    q = MLFQQueue(scorer=Scorer())
    plain = mk("plain", prompt=200)
    urgent = mk("urgent", prompt=200)
    urgent.deadline = 1.0  # due now: full urgency
    enqueue(q, plain, 1.0)
    enqueue(q, urgent, 1.0)
    assert plain.level == urgent.level == 0
    assert drain(q) == ["urgent", "plain"]


def test_rescore_lets_age_reorder() -> None:
    """Age only counts after a rescore: an older task overtakes a smaller newer one."""
    q = MLFQQueue(scorer=Scorer(age_horizon_s=10.0), starvation_s=1e9)
    old = mk("old", prompt=240, at=0.0)  # bigger prompt: lower size factor
    new = mk("new", prompt=0, at=9.0)
    enqueue(q, old, 0.0)
    enqueue(q, new, 9.0)
    assert q.peek() is new
    q.rescore(10.0)
    assert q.peek() is old
    assert len(q) == 2


def test_rescore_keeps_enqueue_order_and_drops_popped_entries() -> None:
    """Rescoring takes tasks in enqueue order (no sort): tasks landing in one band stay FIFO,
    popped tasks leave no trace, and aging afterwards still boosts the oldest first."""
    q = MLFQQueue(scorer=Scorer(Weights(urgency=0, age=0, size=0, depth=0, fair=1)), starvation_s=5)
    tasks = [mk(f"t{i}", prompt=10) for i in range(6)]
    for i, t in enumerate(tasks):
        enqueue(q, t, float(i) * 0.1)
    assert q.pop() is tasks[0] and q.pop() is tasks[1]
    q.rescore(1.0)
    assert len(q) == 4 and len(q._order) == 4
    assert drain(q) == ["t2", "t3", "t4", "t5"]
    for i, t in enumerate(tasks[:3]):
        t.qkey = None
        enqueue(q, t, 2.0 + i)
    q.rescore(3.0)
    assert q.age(8.0) == 2  # t0 (2.0) and t1 (3.0); t2 (4.0) is not due yet
    assert drain(q) == ["t0", "t1", "t2"]


def test_rescore_puts_tasks_put_back_out_of_order_into_enqueue_order() -> None:
    """A task re-added with its old enqueue time (held by a dispatch) lands behind newer ones in
    the aging order; a rescore restores enqueue order so it is boosted on time."""
    q = MLFQQueue(starvation_s=10.0)
    a, b = mk("a"), mk("b")
    enqueue(q, a, 0.0)
    enqueue(q, b, 5.0)
    assert {q.pop().id, q.pop().id} == {"a", "b"}
    q.add(b, 7.0)  # put back first, then the older one (enqueued_at unchanged)
    q.add(a, 7.0)
    q.rescore(7.0)
    assert q.age(11.0) == 1 and a.boosted_from is None and q.peek() is a
