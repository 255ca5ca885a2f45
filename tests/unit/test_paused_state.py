"""What the core does about paused state (a KV cache) when resuming elsewhere costs a recompute:
pinned tasks (their worker has no room for another paused state) yield only to a higher tier,
and a task paused on another worker moves only when nothing of its tier waits that needs no
recompute. With the plain cost model none of this applies."""

from __future__ import annotations

from typing import Any

from raysched.models import DEFAULT_TIERS, TaskState
from raysched.policy.core import Decision, SchedulerCore
from raysched.policy.task import Task
from raysched.settings import PolicySettings

S = TaskState
POOL = "default"


def mk(tid: str, tier: str = "batch", *, at: float = 0.0, prompt: int = 10) -> Task:
    return Task.build(tid, DEFAULT_TIERS[tier], at, tier=tier, prompt_tokens=prompt)


def make_core(recompute: bool = True, **kw: Any) -> SchedulerCore:
    return SchedulerCore(PolicySettings(policy="mlfq", recompute_on_migrate=recompute, **kw))


def running_at_level_1(core: SchedulerCore, tid: str, worker: str) -> Task:
    t = core.submit(mk(tid), 0.0)
    assert core.dispatch(POOL, 1, 0.0, worker) == [t]
    assert core.progress(t, 0.06, 6, 0.06) is Decision.CONTINUE  # nothing waits: demoted
    assert t.level == 1
    return t


def test_pinned_task_is_no_victim_within_its_tier() -> None:
    core = make_core()
    a = running_at_level_1(core, "a", "w1")
    core.submit(mk("new", at=0.1), 0.1)  # level 0 of the same tier: outranks a
    assert core.plan_preemption(POOL, 0.1, pinned={"a"}) is None
    plan = core.plan_preemption(POOL, 0.1)
    assert plan is not None and plan[1] is a


def test_pinned_task_yields_to_a_higher_tier() -> None:
    core = make_core()
    a = running_at_level_1(core, "a", "w1")
    chat = core.submit(mk("chat", "interactive", at=0.1), 0.1)
    assert core.plan_preemption(POOL, 0.1, pinned={"a"}) == (chat, a)


def test_unpinned_victim_goes_before_a_pinned_one() -> None:
    core = make_core()
    a = running_at_level_1(core, "a", "w1")
    b = running_at_level_1(core, "b", "w2")
    chat = core.submit(mk("chat", "interactive", at=0.1), 0.1)
    # both are outranked; the one whose pause evicts nothing yields, whichever stops sooner
    eta = {"a": 0.0, "b": 0.009}
    plan = core.plan_preemption(POOL, 0.1, eta=lambda t: eta[t.id], pinned={"a"})
    assert plan == (chat, b)
    assert a.state is S.RUNNING


def test_pinned_ignored_without_recompute() -> None:
    core = make_core(recompute=False)
    a = running_at_level_1(core, "a", "w1")
    core.submit(mk("new", at=0.1), 0.1)
    plan = core.plan_preemption(POOL, 0.1, pinned={"a"})
    assert plan is not None and plan[1] is a


def test_pinned_task_runs_on_at_quantum_end_unless_a_higher_tier_waits() -> None:
    core = make_core()
    a = running_at_level_1(core, "a", "w1")
    core.submit(mk("new", at=0.1), 0.1)
    # a's level-1 quantum (0.1 s) ends with a level-0 task of its tier waiting
    assert core.progress(a, 0.1, 10, 0.16, requeue=False, pinned=True) is Decision.CONTINUE
    assert a.level == 2 and a.state is S.RUNNING
    core.submit(mk("chat", "interactive", at=0.2), 0.2)
    assert core.progress(a, 0.2, 20, 0.36, requeue=False, pinned=True) is Decision.YIELD
    # unpinned, the same tier is enough
    core2 = make_core()
    b = running_at_level_1(core2, "b", "w1")
    core2.submit(mk("new", at=0.1), 0.1)
    assert core2.progress(b, 0.1, 10, 0.16, requeue=False) is Decision.YIELD


def paused_on(core: SchedulerCore, t: Task, worker: str, now: float) -> None:
    assert core.dispatch(POOL, 1, 0.0, worker) == [t]
    core.preempt(t, now)
    t.home = worker


def test_task_paused_elsewhere_moves_only_when_nothing_of_its_tier_waits() -> None:
    core = make_core()
    p = core.submit(mk("p", prompt=1000), 0.0)  # its recompute: (1000 + 0) x 0.0002 = 0.2 s
    paused_on(core, p, "w1", 0.0)
    fresh = core.submit(mk("fresh", at=0.01, prompt=3000), 0.01)  # ranks below p (bigger)
    # long past the ski-rental wait, p could move to w2; w2 runs the fresh task instead
    assert core.movable(p, "w2", 1.0)
    assert core.dispatch(POOL, 1, 1.0, "w2") == [fresh]
    assert p.state is S.PREEMPTED and p in core.queues[POOL]
    # nothing else waits: w2 would idle, so p moves
    assert core.dispatch(POOL, 1, 1.0, "w3") == [p]


def test_higher_tier_paused_elsewhere_does_not_wait_behind_a_lower_tier() -> None:
    core = make_core()
    chat = core.submit(mk("chat", "interactive", prompt=1000), 0.0)
    paused_on(core, chat, "w1", 0.0)
    core.submit(mk("batch", at=0.01), 0.01)
    assert core.dispatch(POOL, 1, 1.0, "w2") == [chat]


def test_before_the_ski_rental_wait_a_paused_task_stays_for_its_worker() -> None:
    core = make_core()
    p = core.submit(mk("p", prompt=1000), 0.0)
    paused_on(core, p, "w1", 0.0)
    assert core.dispatch(POOL, 1, 0.1, "w2") == []  # 0.1 s < its 0.2 s recompute
    assert core.dispatch(POOL, 1, 0.1, "w1") == [p]


def test_without_recompute_rank_order_decides() -> None:
    core = make_core(recompute=False)
    p = core.submit(mk("p", prompt=1000), 0.0)
    paused_on(core, p, "w1", 0.0)
    core.submit(mk("fresh", at=0.01, prompt=3000), 0.01)
    assert core.dispatch(POOL, 1, 0.01, "w2") == [p]
