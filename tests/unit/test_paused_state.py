"""What the core does about paused state (a KV cache) when resuming elsewhere costs a recompute:
pinned tasks (their worker has no room for another paused state) yield only to a higher tier,
and a task paused on another worker moves only when nothing of its tier waits that needs no
recompute. With the plain cost model none of this applies."""

from __future__ import annotations

import asyncio
import threading
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


def test_a_task_passed_over_preempts_only_on_its_own_worker() -> None:
    """What ``dispatch`` passed over it, ``plan_preemption`` must not take back elsewhere: a task
    paused on w1 displaces lower-ranked work of its tier on w1, not on w2."""
    core = make_core()
    home = core.submit(mk("home", prompt=3000), 0.0)
    assert core.dispatch(POOL, 1, 0.0, "w1") == [home]
    p = core.submit(mk("p", prompt=1000), 0.0)
    paused_on(core, p, "w1", 0.0)
    fresh = core.submit(mk("fresh", at=0.01, prompt=3000), 0.01)
    assert core.dispatch(POOL, 1, 1.0, "w2") == [fresh]
    q = core.queues[POOL]
    assert q.preempt_rank(p) < q.preempt_rank(fresh) == q.preempt_rank(home)
    assert core.plan_preemption(POOL, 1.0) == (p, home)
    # with w1's task out of the way, nothing else may be taken for p
    core.unreserve(p, 1.0)
    assert core.plan_preemption(POOL, 1.0, exclude={"home"}) is None


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


# -- the live scheduler's count of paused generators, with real in-process workers -------------
GATES: dict[str, threading.Semaphore] = {}


def gated(payload: dict[str, Any]) -> Any:
    """A generation whose steps the test releases one by one."""
    gate = GATES[payload["g"]]
    for i in range(100_000):
        if not gate.acquire(timeout=30):
            return
        yield i


def test_scheduler_forgets_a_paused_state_its_worker_dropped_at_once() -> None:
    """Past ``max_paused`` the worker may drop the state of the very task it just paused (it has
    the fewest steps). The scheduler must then hold no home for it, nor count it as paused on the
    worker: a phantom would pin that worker's running tasks."""
    from raysched.handlers import default_registry
    from raysched.runtime.scheduler import SchedulerService
    from raysched.settings import PoolSettings, Settings
    from tests.unit.http_fakes import InProcessSpawner, _Worker

    class Spawner(InProcessSpawner):
        def spawn(self, pool: PoolSettings, worker_id: str) -> _Worker:
            async def report(wid: str, events: list[dict[str, Any]]) -> None:
                await svc.report(wid, events)

            registry = default_registry()
            registry.register("gated", gated)
            return _Worker(worker_id, registry, report, slots=pool.slots, max_paused=1)

    for g in ("a", "b", "x", "y"):
        GATES[g] = threading.Semaphore(0)
    pool = PoolSettings(min_workers=1, max_workers=1, slots=2, max_paused=1)
    # the scheduler checks the name; the workers run this module's function (its GATES)
    settings = Settings(
        pools=[pool],
        store={"enabled": False},
        handlers={"gated": "tests.unit.test_paused_state:gated"},
    )

    async def until(cond: Any) -> None:
        for _ in range(1000):
            if cond():
                return
            await asyncio.sleep(0.005)
        raise AssertionError("timed out")

    svc: SchedulerService

    async def main() -> None:
        nonlocal svc
        svc = SchedulerService(settings, Spawner(settings))
        await svc.start()
        await until(lambda: any(w.ready for w in svc.workers.values()))
        (w,) = svc.workers.values()
        core = svc.core

        def steps(tid: str) -> int:
            return core.tasks[tid].steps

        async def submit(tid: str, tier: str) -> None:
            await svc.submit([{"id": tid, "kind": "gated", "payload": {"g": tid}, "tier": tier}])

        await submit("a", "best_effort")
        await submit("b", "batch")
        await until(lambda: w.running == {"a", "b"})
        GATES["a"].release(300)
        GATES["b"].release(100)
        await until(lambda: steps("a") == 300 and steps("b") == 100)

        async def step_until_paused(tid: str) -> None:  # it stops between steps
            for _ in range(100):
                if core.tasks[tid].state is S.PREEMPTED:
                    return
                GATES[tid].release(1)
                await asyncio.sleep(0.02)
            raise AssertionError(f"{tid} did not pause")

        await submit("x", "batch")  # outranks the lower tier: a is paused (room for one)
        await step_until_paused("a")
        await until(lambda: "x" in w.running)
        assert w.paused == {"a"}
        # the worker is full: b and x are pinned, a chat still preempts one of them (b, ranked
        # lower); the worker keeps a (300 steps) and drops b (100), the state it just paused
        await submit("y", "interactive")
        await step_until_paused("b")
        await until(lambda: "y" in w.running)
        await asyncio.sleep(0.05)  # the eviction event, if it comes after
        assert core.tasks["b"].home is None
        assert w.paused == {"a"} and core.tasks["a"].home == w.id
        for g in GATES.values():
            g.release(100_000)
        await svc.shutdown()

    asyncio.run(main())
