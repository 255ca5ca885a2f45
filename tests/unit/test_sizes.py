"""The learned first slice (policy/sizes.py): the Gittins slice of a sample, the bounded per-class
sample, and the stretched first quantum it gives MLFQ tasks without a hint."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raysched.models import DEFAULT_TIERS, TaskState
from raysched.policy.core import Decision, SchedulerCore
from raysched.policy.sizes import SizeSample, first_slice
from raysched.policy.task import Task
from raysched.settings import MLFQSettings, PolicySettings

POOL = "default"
PREFILL = 10 * 0.0002  # the first step of a 10-token prompt


def _gittins(xs: list[float], d: float) -> float:
    n = len(xs)
    return sum(x <= d for x in xs) / n / (sum(min(x, d) for x in xs) / n)


# -- the slice of a sample --------------------------------------------------------------------
def test_a_floor_makes_the_slice_reach_it() -> None:
    """Nine in ten need 1 s, one in ten 100 s: run a task up to 1 s before demoting it."""
    assert first_slice([1.0] * 90 + [100.0] * 10) == 1.0


def test_decreasing_hazard_gives_the_shortest_slice() -> None:
    """Half need 0.1 s, half 10 s: after 0.1 s a task is most likely a long one."""
    assert first_slice([0.1] * 50 + [10.0] * 50) == 0.1


def test_degenerate_samples() -> None:
    assert first_slice([]) == 0.0
    assert first_slice([0.0, 0.0]) == 0.0
    assert first_slice([2.5] * 7) == 2.5


@given(st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=60))
def test_slice_maximises_the_index_over_the_sample(xs: list[float]) -> None:
    d = first_slice(xs)
    cands = [x for x in xs if x > 0]
    if not cands:
        assert d == 0.0
        return
    assert d in cands
    best = max(_gittins(xs, c) for c in cands)
    assert _gittins(xs, d) == pytest.approx(best, rel=1e-9)


# -- the per-class sample ---------------------------------------------------------------------
def test_sample_learns_per_class_after_min_samples() -> None:
    s = SizeSample(capacity=8, min_samples=4, every=3)
    for _ in range(3):
        s.observe("a", 1.0)
    assert s.first_slice("a") == 0.0  # 3 < min_samples
    s.observe("a", 1.0)
    assert s.first_slice("a") == 1.0  # computed at once
    assert s.first_slice("b") == 0.0  # classes learn apart
    s.observe("a", 0.1)
    s.observe("a", 0.1)
    assert s.first_slice("a") == 1.0  # not again until 3 new ones
    s.observe("a", 0.1)
    assert s.first_slice("a") == 0.1


def test_sample_recomputes_as_observations_double_then_every_every(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from raysched.policy import sizes

    at: list[int] = []
    real = sizes.first_slice

    def spy(xs: Any) -> float:
        at.append(n)
        return real(xs)

    monkeypatch.setattr(sizes, "first_slice", spy)
    s = SizeSample(capacity=64, min_samples=10, every=50)
    n = 0
    while n < 199:
        n += 1
        s.observe("a", 1.0)
    assert at == [10, 20, 40, 80, 130, 180]


def test_sample_keeps_the_last_capacity_values() -> None:
    s = SizeSample(capacity=4, min_samples=4, every=1)
    for _ in range(4):
        s.observe("a", 5.0)
    assert s.first_slice("a") == 5.0
    for _ in range(4):
        s.observe("a", 2.0)  # the 5 s ones are pushed out
    assert s.samples("a") == 4
    assert s.first_slice("a") == 2.0


def test_sample_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SizeSample(capacity=0)


# -- in the scheduler -------------------------------------------------------------------------
def mk(tid: str, tier: str = "batch", **fields: Any) -> Task:
    return Task.build(tid, DEFAULT_TIERS[tier], 0.0, tier=tier, prompt_tokens=10, **fields)


def _learned_core(learn: bool = True) -> tuple[SchedulerCore, float]:
    """A core whose batch tasks finished needing 1 s (nine in ten) or 20 s
    of decoding, 128 of them (the slice is computed at the 100th)."""
    core = SchedulerCore(
        PolicySettings(policy="mlfq", mlfq=MLFQSettings(learn_first_slice=learn)), audit=[]
    )
    now = 0.0
    for i in range(128):
        t = core.submit(mk(f"old{i}"), now)
        assert core.dispatch(POOL, 1, now) == [t]
        work = PREFILL + (20.0 if i % 10 == 0 else 1.0)
        core.progress(t, work, 1, now + work)
        now += work
        core.finish(t, now, ok=True)
    return core, now


def test_first_quantum_covers_the_learned_slice() -> None:
    core, now = _learned_core()
    a = core.submit(mk("a"), now)
    assert core.dispatch(POOL, 1, now) == [a]
    assert a.level == 0
    assert core.quantum(a) == pytest.approx(PREFILL + 1.0)
    # a newcomer of the same tier does not displace it before the slice is used ...
    b = core.submit(mk("b"), now + 0.01)
    assert core.progress(a, 0.5, 50, now + 0.5) is Decision.CONTINUE
    assert a.level == 0 and a.state is TaskState.RUNNING
    # ... and once it is, the task goes down one level and yields as before
    assert core.progress(a, 0.6, 60, now + 1.1) is Decision.YIELD
    assert a.level == 1
    assert core.dispatch(POOL, 1, now + 1.1) == [b]


def test_without_learning_the_first_quantum_is_the_level_s() -> None:
    core, now = _learned_core(learn=False)
    a = core.submit(mk("a"), now)
    core.dispatch(POOL, 1, now)
    core.submit(mk("b"), now + 0.01)
    assert core.quantum(a) == pytest.approx(0.05)
    assert core.progress(a, 0.5, 50, now + 0.5) is Decision.YIELD


def test_hinted_tasks_and_other_tiers_get_no_stretch() -> None:
    core, now = _learned_core()
    hinted = core.submit(mk("h", size_hint=0.04), now)  # level 0, as the others
    chat = core.submit(mk("c", "interactive"), now)  # no interactive task finished yet
    got = core.dispatch(POOL, 2, now)
    assert set(got) == {hinted, chat}
    for t in got:
        assert t.level == 0
        assert core.quantum(t) == pytest.approx(0.05)


def test_the_slice_is_the_tier_s_whatever_the_handler() -> None:
    """Levels rank a tier's tasks by attained service whatever their handler: a slice per handler
    would let a long one hold off another handler's short newcomers at the same level."""
    core, now = _learned_core()  # learned from "simulate" tasks
    other = core.submit(mk("o", kind="embed"), now)
    assert core.dispatch(POOL, 1, now) == [other]
    assert core.quantum(other) == pytest.approx(PREFILL + 1.0)


def test_a_retry_gets_the_stretch_again_a_resumed_task_does_not() -> None:
    core, now = _learned_core()
    a = core.submit(mk("a", max_retries=1), now)
    core.dispatch(POOL, 1, now)
    core.submit(mk("hi", "interactive"), now)
    assert core.progress(a, 0.2, 20, now + 0.2) is Decision.CONTINUE
    plan = core.plan_preemption(POOL, now + 0.2)
    assert plan is not None and plan[1] is a
    core.preempt(a, now + 0.2)
    core.start(plan[0], now + 0.2)
    core.finish(plan[0], now + 0.3, ok=True)
    assert core.dispatch(POOL, 1, now + 0.3) == [a]
    assert core.quantum(a) == pytest.approx(PREFILL + 1.0 - 0.2)  # resumed: what is left
    core.finish(a, now + 0.4, ok=False, error="boom")
    core.tick(now + 10.0)  # the retry's backoff is over
    assert a.state is TaskState.QUEUED
    assert core.dispatch(POOL, 1, now + 10.0) == [a]
    assert core.quantum(a) == pytest.approx(PREFILL + 1.0)  # a fresh attempt: the whole slice


def test_a_schedule_in_steps_learns_steps() -> None:
    """With ``unit: steps`` the slice counts decode steps (the prefill is the first step)."""
    core = SchedulerCore(
        PolicySettings(policy="mlfq", mlfq=MLFQSettings(unit="steps", base_quantum=2)), audit=[]
    )
    now = 0.0
    for i in range(100):
        t = core.submit(mk(f"old{i}"), now)
        core.dispatch(POOL, 1, now)
        steps = 201 if i % 10 == 0 else 11  # the prefill and 200 or 10 decode steps
        core.progress(t, 0.5, steps, now + 0.5)
        now += 0.5
        core.finish(t, now, ok=True)
    a = core.submit(mk("a"), now)
    core.dispatch(POOL, 1, now)
    assert a.level == 0
    assert core.quantum(a) == pytest.approx(11)  # level 0's 2 steps, stretched to 1 + 10


def test_only_first_attempt_successes_are_learned() -> None:
    """A retried task's service covers its failed attempts: it would inflate the slice."""
    core = SchedulerCore(PolicySettings(policy="mlfq"), audit=[])
    now = 0.0
    for i in range(100):
        t = core.submit(mk(f"r{i}", max_retries=1), now)
        core.dispatch(POOL, 1, now)
        core.progress(t, 5.0, 1, now + 5.0)
        core.finish(t, now + 5.0, ok=False, error="boom")
        now += 10.0
        core.tick(now)  # the retry's backoff is over
        assert core.dispatch(POOL, 1, now) == [t]
        core.progress(t, 1.0, 1, now + 1.0)
        now += 1.0
        core.finish(t, now, ok=True)
    assert core.queues[POOL].sizes is not None
    assert core.queues[POOL].sizes.samples(DEFAULT_TIERS["batch"]) == 0


def test_a_boost_keeps_what_is_left_of_the_stretch() -> None:
    core, now = _learned_core()
    a = core.submit(mk("a"), now)
    core.dispatch(POOL, 1, now)
    core.submit(mk("hi", "interactive"), now)
    core.progress(a, 0.2, 20, now + 0.2)
    plan = core.plan_preemption(POOL, now + 0.2)
    assert plan is not None and plan[1] is a
    core.preempt(a, now + 0.2)
    left = core.quantum(a)
    assert left == pytest.approx(PREFILL + 1.0 - 0.2)
    core.tick(now + 0.2 + 20.0)  # it waited past starvation_s: boosted
    assert core.quantum(a) == pytest.approx(left)


def test_stats_show_the_learned_slices() -> None:
    core, _ = _learned_core()
    assert core.stats()["pools"][POOL]["first_slices"] == {"batch": {"slice": 1.0, "samples": 128}}
    off, _ = _learned_core(learn=False)
    assert "first_slices" not in off.stats()["pools"][POOL]
