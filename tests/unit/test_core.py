"""SchedulerCore driven by hand with a fake clock: submission, dependencies, admission, retries,
timeouts, lost workers, preemption and MLFQ quanta."""

from __future__ import annotations

from typing import Any

import pytest

from raysched.errors import DependencyError, QueueFull, TaskNotFound
from raysched.models import DEFAULT_TIERS, TaskInfo, TaskState
from raysched.policy.core import Decision, SchedulerCore
from raysched.policy.lifecycle import LogAudit
from raysched.policy.task import Task
from raysched.settings import PolicySettings

S = TaskState
POOL = "default"


def mk(
    tid: str,
    tier: str = "batch",
    *,
    at: float = 0.0,
    prompt: int = 10,
    tenant: str = "a",
    deps: tuple[str, ...] = (),
    **fields: Any,
) -> Task:
    t = Task.build(
        tid, DEFAULT_TIERS[tier], at, tier=tier, prompt_tokens=prompt, tenant=tenant, **fields
    )
    if deps:
        t.depends_on = tuple(deps)
    return t


def make_core(policy: str = "priority", log: LogAudit | None = None, **kw: Any) -> SchedulerCore:
    return SchedulerCore(PolicySettings(policy=policy, **kw), audit=[log] if log else [])


def states(core: SchedulerCore) -> dict[str, TaskState]:
    return {tid: t.state for tid, t in core.tasks.items()}


def path(log: LogAudit, tid: str) -> list[TaskState]:
    return [e.dst for e in log.events if e.task_id == tid]


# -- submit / dispatch / finish ---------------------------------------------------------------
def test_submit_dispatch_finish_happy_path() -> None:
    log = LogAudit()
    core = make_core(log=log)
    t = mk("t1")
    assert core.submit(t, 1.0) is t
    assert t.state is S.QUEUED
    assert core.live == 1 and core.queued() == 1 and core.queued(POOL) == 1
    got = core.dispatch(POOL, 4, 2.0, "w1")
    assert got == [t]
    assert t.state is S.RUNNING and t.attempts == 1 and t.first_start == 2.0
    assert t.worker == "w1"
    assert core.running[POOL] == {"t1": t}
    assert core.queued() == 0
    assert core.progress(t, 0.5, 3, 2.5) is Decision.CONTINUE  # priority: no quanta
    assert t.service_s == 0.5 and t.steps == 3
    changed = core.finish(t, 3.0, ok=True, result={"x": 1})
    assert changed == []
    assert t.state is S.SUCCEEDED and t.result == {"x": 1} and t.finished_at == 3.0
    assert core.live == 0 and core.completed == 1 and core.running[POOL] == {}
    assert path(log, "t1") == [S.PENDING, S.QUEUED, S.RUNNING, S.SUCCEEDED]
    assert [e.at for e in log.events] == [1.0, 1.0, 2.0, 3.0]
    assert log.events[0].src is None


def test_dispatch_order_and_limit() -> None:
    core = make_core()
    for i, tier in enumerate(["batch", "interactive", "best_effort", "critical", "batch"]):
        core.submit(mk(f"t{i}", tier), float(i))
    got = core.dispatch(POOL, 3, 10.0)
    assert [t.id for t in got] == ["t3", "t1", "t0"]
    assert [t.id for t in core.dispatch(POOL, 10, 10.0)] == ["t4", "t2"]
    assert core.dispatch(POOL, 10, 10.0) == []


def test_dispatch_accept_filter_keeps_skipped_tasks() -> None:
    core = make_core()
    for i in range(4):
        core.submit(mk(f"t{i}"), 0.0)
    got = core.dispatch(POOL, 2, 1.0, accept=lambda t: t.id in ("t1", "t3"))
    assert [t.id for t in got] == ["t1", "t3"]
    assert core.queued() == 2
    assert {t.id for t in core.queues[POOL]} == {"t0", "t2"}
    assert core.tasks["t0"].state is S.QUEUED


def test_get_info_stats() -> None:
    core = make_core()
    t = core.submit(mk("t1", "interactive"), 0.0)
    info = core.info(t)
    assert isinstance(info, TaskInfo)
    assert (info.id, info.state, info.tier, info.priority) == ("t1", S.QUEUED, "interactive", 1)
    with pytest.raises(TaskNotFound):
        core.get("nope")
    st = core.stats()
    assert st["queued"] == 1 and st["live"] == 1 and st["running"] == 0
    assert st["tiers"] == {"interactive": {"queued": 1, "running": 0}}
    assert st["pools"] == {POOL: {"queued": 1, "running": 0}}


def test_cancel_queued_running_and_terminal() -> None:
    log = LogAudit()
    core = make_core(log=log)
    a, b = core.submit(mk("a"), 0.0), core.submit(mk("b"), 0.0)
    core.dispatch(POOL, 1, 1.0)  # a runs
    assert core.cancel("b", 2.0) is True
    assert b.state is S.CANCELLED and core.queued() == 0
    assert core.cancel("a", 2.0) is True
    assert a.state is S.CANCELLED and core.running[POOL] == {}
    assert core.cancel("a", 3.0) is False
    assert core.live == 0
    with pytest.raises(TaskNotFound):
        core.cancel("zzz", 3.0)
    assert path(log, "b")[-1] is S.CANCELLED


# -- duplicates -------------------------------------------------------------------------------
def test_same_id_returns_existing() -> None:
    core = make_core()
    first = core.submit(mk("t1"), 0.0)
    again = core.submit(mk("t1", "critical"), 1.0)
    assert again is first
    assert core.live == 1 and core.queued() == 1 and first.priority == 5


def test_idempotency_key_returns_first_task() -> None:
    core = make_core()
    a = mk("a")
    a.idempotency_key = "k"
    b = mk("b")
    b.idempotency_key = "k"
    assert core.submit(a, 0.0) is a
    assert core.submit(b, 1.0) is a
    assert "b" not in core.tasks and core.live == 1
    other_tenant = mk("c", tenant="z")
    other_tenant.idempotency_key = "k"
    assert core.submit(other_tenant, 1.0) is other_tenant
    assert core.live == 2


def test_idempotency_within_one_batch() -> None:
    core = make_core()
    x, y, z = mk("x"), mk("y"), mk("z")
    x.idempotency_key = y.idempotency_key = "same"
    out = core.submit_many([x, y, z, mk("x")], 0.0)
    assert out[0] is x and out[1] is x and out[2] is z and out[3] is x
    assert set(core.tasks) == {"x", "z"}


def test_idempotency_key_still_applies_after_the_task_ended() -> None:
    core = make_core()
    a = mk("a")
    a.idempotency_key = "k"
    core.submit(a, 0.0)
    core.dispatch(POOL, 1, 0.0)
    core.finish(a, 1.0, ok=True)
    b = mk("b")
    b.idempotency_key = "k"
    assert core.submit(b, 2.0) is a


# -- dependencies -----------------------------------------------------------------------------
def test_child_waits_for_parent_then_runs() -> None:
    core = make_core()
    p = core.submit(mk("p"), 0.0)
    c = core.submit(mk("c", deps=("p",)), 0.0)
    assert c.state is S.PENDING
    assert core.queued() == 1
    assert core.dispatch(POOL, 5, 1.0) == [p]
    changed = core.finish(p, 2.0, ok=True)
    assert changed == [c]
    assert c.state is S.QUEUED
    assert core.dispatch(POOL, 5, 2.0) == [c]


def test_child_of_two_parents_waits_for_both() -> None:
    core = make_core()
    p1, p2 = core.submit(mk("p1"), 0.0), core.submit(mk("p2"), 0.0)
    c = core.submit(mk("c", deps=("p1", "p2")), 0.0)
    core.dispatch(POOL, 2, 0.0)
    assert core.finish(p1, 1.0, ok=True) == []
    assert c.state is S.PENDING
    assert core.finish(p2, 2.0, ok=True) == [c]
    assert c.state is S.QUEUED


def test_child_of_succeeded_parent_is_queued_at_once() -> None:
    core = make_core()
    p = core.submit(mk("p"), 0.0)
    core.dispatch(POOL, 1, 0.0)
    core.finish(p, 1.0, ok=True)
    c = core.submit(mk("c", deps=("p",)), 2.0)
    assert c.state is S.QUEUED


@pytest.mark.parametrize("how", ["failed", "cancelled", "timed_out", "cancel_pending"])
def test_parent_failure_fails_descendants(how: str) -> None:
    core = make_core()
    p = core.submit(mk("p"), 0.0)
    c = core.submit(mk("c", deps=("p",)), 0.0)
    g = core.submit(mk("g", deps=("c",)), 0.0)
    other = core.submit(mk("other"), 0.0)
    if how == "cancel_pending":
        assert core.cancel("c", 1.0)
        assert c.state is S.CANCELLED
        assert g.state is S.FAILED and g.error_type == "DependencyFailed"
        assert p.state is S.QUEUED
        return
    core.dispatch(POOL, 1, 0.0)
    if how == "failed":
        changed = core.finish(p, 1.0, ok=False, error_type="ValueError", error="boom")
        assert {t.id for t in changed} == {"p", "c", "g"}
    elif how == "timed_out":
        core.finish(p, 1.0, ok=False, error_type="TimeoutError", error="slow", timed_out=True)
        assert p.state is S.TIMED_OUT
    else:
        assert core.cancel("p", 1.0)
    for t in (c, g):
        assert t.state is S.FAILED
        assert t.error_type == "DependencyFailed"
        assert t.finished_at == 1.0
    assert other.state is S.QUEUED
    assert core.live == 1  # only 'other'


@pytest.mark.parametrize("how", ["failed", "cancelled"])
def test_child_of_dead_parent_fails_on_submit(how: str) -> None:
    core = make_core()
    p = core.submit(mk("p"), 0.0)
    if how == "failed":
        core.dispatch(POOL, 1, 0.0)
        core.finish(p, 1.0, ok=False, error_type="E", error="x")
    else:
        core.cancel("p", 1.0)
    c = core.submit(mk("c", deps=("p",)), 2.0)
    assert c.state is S.FAILED and c.error_type == "DependencyFailed"
    assert core.live == 0


def test_unknown_parent_rejects_whole_batch() -> None:
    core = make_core()
    with pytest.raises(DependencyError):
        core.submit_many([mk("ok"), mk("c", deps=("ghost",))], 0.0)
    assert core.tasks == {} and core.live == 0 and core.queued() == 0
    with pytest.raises(DependencyError):
        core.submit(mk("solo", deps=("ghost",)), 0.0)
    assert core.tasks == {}


def test_cycle_rejects_whole_batch() -> None:
    core = make_core()
    batch = [mk("free"), mk("a", deps=("b",)), mk("b", deps=("c",)), mk("c", deps=("a",))]
    with pytest.raises(DependencyError, match="cycle"):
        core.submit_many(batch, 0.0)
    assert core.tasks == {} and core.live == 0 and core.queued() == 0
    with pytest.raises(DependencyError):
        core.submit(mk("self", deps=("self",)), 0.0)
    assert core.tasks == {}


def test_batch_in_child_first_order_is_accepted() -> None:
    core = make_core()
    out = core.submit_many([mk("c", deps=("b",)), mk("b", deps=("a",)), mk("a")], 0.0)
    assert [t.id for t in out] == ["c", "b", "a"]
    assert states(core) == {"a": S.QUEUED, "b": S.PENDING, "c": S.PENDING}
    assert core.tasks["a"].depth == 2 and core.tasks["b"].depth == 1
    (a,) = core.dispatch(POOL, 5, 0.0)
    core.finish(a, 1.0, ok=True)
    assert core.tasks["b"].state is S.QUEUED and core.tasks["c"].state is S.PENDING


# -- admission --------------------------------------------------------------------------------
def test_max_queued() -> None:
    core = make_core(max_queued=2)
    core.submit(mk("a"), 0.0)
    core.submit(mk("b"), 0.0)
    with pytest.raises(QueueFull) as info:
        core.submit(mk("c"), 0.0)
    assert info.value.retry_after_s > 0 and info.value.code == "queue_full"
    assert "c" not in core.tasks
    assert core.submit(mk("a"), 0.0) is core.tasks["a"]  # a duplicate is not a new task
    (a,) = core.dispatch(POOL, 1, 0.0)
    core.finish(a, 1.0, ok=True)
    assert core.submit(mk("c"), 1.0).state is S.QUEUED


def test_max_queued_batch_is_all_or_nothing() -> None:
    core = make_core(max_queued=2)
    core.submit(mk("a"), 0.0)
    with pytest.raises(QueueFull):
        core.submit_many([mk("b"), mk("c")], 0.0)
    assert set(core.tasks) == {"a"}


def test_max_queued_per_tenant() -> None:
    core = make_core(max_queued_per_tenant=2)
    core.submit(mk("a1", tenant="a"), 0.0)
    core.submit(mk("a2", tenant="a"), 0.0)
    with pytest.raises(QueueFull, match="'a'"):
        core.submit(mk("a3", tenant="a"), 0.0)
    assert core.submit(mk("b1", tenant="b"), 0.0).state is S.QUEUED
    with pytest.raises(QueueFull):
        core.submit_many([mk("b2", tenant="b"), mk("b3", tenant="b")], 0.0)
    assert set(core.tasks) == {"a1", "a2", "b1"}
    core.cancel("a1", 1.0)
    assert core.submit(mk("a3", tenant="a"), 1.0).state is S.QUEUED


# -- retries ----------------------------------------------------------------------------------
def test_a_cancelled_retry_leaves_nothing_to_wake_for() -> None:
    """A task cancelled during its retry backoff: ``next_wakeup`` no longer names its retry
    (the scheduler's loop would wake for nothing), and ``tick`` releases nothing."""
    core = make_core(retry_backoff_s=0.5)
    t = core.submit(mk("t", max_retries=1), 0.0)
    u = core.submit(mk("u", max_retries=1), 0.0)
    for x in core.dispatch(POOL, 2, 1.0):
        core.finish(x, 2.0 if x is t else 3.0, ok=False, error_type="ValueError", error="boom")
    assert core.next_wakeup() == pytest.approx(2.5)
    core.cancel("t", 2.1)
    assert core.next_wakeup() == pytest.approx(3.5)  # u's retry
    core.cancel("u", 2.2)
    assert core.next_wakeup() == float("inf")
    core.tick(10.0)
    assert (t.state, u.state, core.queued()) == (S.CANCELLED, S.CANCELLED, 0)


def test_retry_after_backoff_then_terminal() -> None:
    log = LogAudit()
    core = make_core(log=log, retry_backoff_s=0.5)
    t = core.submit(mk("t", max_retries=1), 0.0)
    core.dispatch(POOL, 1, 1.0)
    changed = core.finish(t, 2.0, ok=False, error_type="ValueError", error="boom")
    assert changed == [t]
    assert t.state is S.FAILED and t.error_type == "ValueError" and t.error == "boom"
    assert core.live == 1  # not retired: a retry is coming
    assert core.next_wakeup() == pytest.approx(2.5)
    core.tick(2.49)
    assert t.state is S.FAILED and core.queued() == 0
    core.tick(2.5)
    assert t.state is S.QUEUED and core.queued() == 1
    assert core.dispatch(POOL, 1, 3.0) == [t]
    assert t.attempts == 2
    changed = core.finish(t, 4.0, ok=False, error_type="ValueError", error="again")
    assert changed == [t]
    assert t.state is S.FAILED and t.error == "again"
    assert core.live == 0 and core.next_wakeup() == float("inf")
    core.tick(100.0)
    assert t.state is S.FAILED and core.queued() == 0
    assert path(log, "t") == [
        S.PENDING,
        S.QUEUED,
        S.RUNNING,
        S.FAILED,
        S.QUEUED,
        S.RUNNING,
        S.FAILED,
    ]


def test_backoff_doubles_up_to_cap() -> None:
    core = make_core(retry_backoff_s=0.5, retry_backoff_max_s=1.5)
    t = core.submit(mk("t", max_retries=4), 0.0)
    now = 0.0
    delays = []
    for _ in range(4):
        assert core.dispatch(POOL, 1, now) == [t]
        core.finish(t, now, ok=False, error_type="E", error="x")
        delays.append(core.next_wakeup() - now)
        now = core.next_wakeup()
        core.tick(now)
        assert t.state is S.QUEUED
    assert delays == pytest.approx([0.5, 1.0, 1.5, 1.5])


def test_child_survives_parent_retry() -> None:
    core = make_core(retry_backoff_s=0.1)
    p = core.submit(mk("p", max_retries=1), 0.0)
    c = core.submit(mk("c", deps=("p",)), 0.0)
    core.dispatch(POOL, 1, 0.0)
    core.finish(p, 1.0, ok=False, error_type="E", error="x")
    assert c.state is S.PENDING
    late = core.submit(mk("late", deps=("p",)), 1.05)  # parent failed but will retry
    assert late.state is S.PENDING
    core.tick(1.1)
    core.dispatch(POOL, 1, 1.1)
    assert set(t.id for t in core.finish(p, 2.0, ok=True)) == {"c", "late"}
    assert c.state is S.QUEUED and late.state is S.QUEUED


def test_cancel_during_backoff() -> None:
    core = make_core(retry_backoff_s=1.0)
    t = core.submit(mk("t", max_retries=2), 0.0)
    core.dispatch(POOL, 1, 0.0)
    core.finish(t, 1.0, ok=False, error_type="E", error="x")
    assert core.cancel("t", 1.5) is True
    assert t.state is S.CANCELLED and core.live == 0
    core.tick(5.0)
    assert t.state is S.CANCELLED and core.queued() == 0


# -- timeouts ---------------------------------------------------------------------------------
def test_overdue_lists_running_task_past_timeout() -> None:
    core = make_core()
    t = core.submit(mk("t", timeout_s=1.0), 0.0)
    free = core.submit(mk("free"), 0.0)
    core.dispatch(POOL, 2, 10.0)
    assert free.state is S.RUNNING
    assert core.overdue(10.5) == []
    assert core.overdue(11.0) == []
    assert core.overdue(11.01) == [t]
    assert core.tick(11.01) == [t]
    core.finish(t, 11.01, ok=False, error_type="TimeoutError", error="slow", timed_out=True)
    assert t.state is S.TIMED_OUT and core.live == 1
    assert core.overdue(1000.0) == []


def test_overdue_lists_paused_task_past_timeout() -> None:
    """A task preempted (paused in the queue) still times out: tick returns it so the caller can
    finish it with ``timed_out=True``."""
    core = make_core()
    slow = core.submit(mk("slow", "batch", timeout_s=5.0), 0.0)
    core.dispatch(POOL, 1, 0.0)
    vip = core.submit(mk("vip", "interactive"), 1.0)
    plan = core.plan_preemption(POOL, 1.0)
    assert plan == (vip, slow)
    core.preempt(slow, 1.0)
    core.start(vip, 1.0)
    assert slow.state is S.PREEMPTED
    assert core.overdue(4.0) == []
    assert core.tick(6.0) == [slow]
    core.finish(slow, 6.0, ok=False, error_type="TimeoutError", error="slow", timed_out=True)
    assert slow.state is S.TIMED_OUT
    assert slow not in core.queues[POOL] and core.queued() == 0
    assert core.overdue(100.0) == []


def test_timed_out_task_retries() -> None:
    core = make_core(retry_backoff_s=0.0)
    t = core.submit(mk("t", timeout_s=1.0, max_retries=1), 0.0)
    core.dispatch(POOL, 1, 0.0)
    core.finish(t, 2.0, ok=False, error_type="TimeoutError", error="slow", timed_out=True)
    assert t.state is S.QUEUED  # zero backoff: straight back
    core.dispatch(POOL, 1, 3.0)
    assert core.overdue(3.5) == []  # the timeout counts from the new attempt's start
    assert core.overdue(4.5) == [t]


# -- lost workers -----------------------------------------------------------------------------
def test_lost_worker_redelivers_without_retries() -> None:
    log = LogAudit()
    core = make_core(log=log, max_redeliveries=2)
    t = core.submit(mk("t", max_retries=0), 0.0)
    for i in range(2):
        assert core.dispatch(POOL, 1, float(i)) == [t]
        assert core.lost(t, float(i) + 0.5, "node died") == [t]
        assert t.state is S.QUEUED
        assert t.redeliveries == i + 1
        assert t.error_type == "WorkerLost"
        assert core.running[POOL] == {}
    assert core.dispatch(POOL, 1, 5.0) == [t]
    assert t.attempts == 3
    assert core.lost(t, 5.5, "node died again") == [t]
    assert t.state is S.FAILED and t.error_type == "WorkerLost"
    assert core.live == 0 and core.queued() == 0
    assert path(log, "t").count(S.FAILED) == 3


def test_lost_ignores_tasks_not_running() -> None:
    core = make_core()
    q = core.submit(mk("q"), 0.0)
    assert core.lost(q, 1.0, "x") == []
    assert q.state is S.QUEUED and core.queued() == 1


def test_lost_fails_children_when_final() -> None:
    core = make_core(max_redeliveries=0)
    p = core.submit(mk("p"), 0.0)
    c = core.submit(mk("c", deps=("p",)), 0.0)
    core.dispatch(POOL, 1, 0.0)
    assert {t.id for t in core.lost(p, 1.0, "gone")} == {"p", "c"}
    assert c.state is S.FAILED and c.error_type == "DependencyFailed"


# -- preemption -------------------------------------------------------------------------------
def _busy(policy: str, running_tier: str, incoming_tier: str) -> tuple[SchedulerCore, Task, Task]:
    core = make_core(policy)
    victim = core.submit(mk("victim", running_tier), 0.0)
    assert core.dispatch(POOL, 1, 0.0, "w0") == [victim]
    incoming = core.submit(mk("incoming", incoming_tier), 1.0)
    return core, victim, incoming


@pytest.mark.parametrize("policy", ["priority", "mlfq"])
def test_plan_preemption_when_incoming_outranks(policy: str) -> None:
    core, victim, incoming = _busy(policy, "batch", "interactive")
    plan = core.plan_preemption(POOL, 1.0)
    assert plan == (incoming, victim)
    assert core.queued() == 0  # reserved: out of the queue
    core.preempt(victim, 1.5)
    core.start(incoming, 1.5, "w0")
    assert victim.state is S.PREEMPTED and incoming.state is S.RUNNING
    assert core.preemptions == 1
    assert victim in core.queues[POOL]
    assert core.running[POOL] == {"incoming": incoming}
    assert core.dispatch(POOL, 1, 2.0, "w1") == [victim]
    assert victim.attempts == 1  # resuming is not a new attempt


@pytest.mark.parametrize(
    ("policy", "running", "incoming"),
    [
        ("priority", "batch", "batch"),
        ("priority", "interactive", "batch"),
        ("priority", "critical", "interactive"),
        ("fcfs", "best_effort", "critical"),
        ("fcfs", "batch", "batch"),
        ("mlfq", "interactive", "best_effort"),
    ],
)
def test_no_preemption_without_strict_outrank(policy: str, running: str, incoming: str) -> None:
    core, victim, inc = _busy(policy, running, incoming)
    assert core.plan_preemption(POOL, 1.0) is None
    assert inc in core.queues[POOL] and victim.state is S.RUNNING


def test_non_preemptible_task_is_never_a_victim() -> None:
    core, victim, _ = _busy("priority", "batch", "critical")
    victim.preemptible = False
    assert core.plan_preemption(POOL, 1.0) is None


def test_victim_is_worst_ranked() -> None:
    core = make_core("priority")
    for tid, tier in [("c", "interactive"), ("b", "batch"), ("e", "best_effort")]:
        core.submit(mk(tid, tier), 0.0)
    core.dispatch(POOL, 3, 0.0)
    inc = core.submit(mk("crit", "critical"), 1.0)
    plan = core.plan_preemption(POOL, 1.0)
    assert plan is not None and plan[0] is inc and plan[1].id == "e"
    assert core.plan_preemption(POOL, 1.0) is None  # nothing queued any more


def test_unreserve_puts_incoming_back() -> None:
    core, victim, incoming = _busy("priority", "batch", "interactive")
    assert core.plan_preemption(POOL, 1.0) == (incoming, victim)
    core.finish(victim, 1.2, ok=True)  # the victim finished before it could stop
    core.unreserve(incoming, 1.2)
    assert incoming in core.queues[POOL]
    assert core.dispatch(POOL, 1, 1.3) == [incoming]


def test_mlfq_quantum_end_demotes_and_yields() -> None:
    core = make_core("mlfq")
    a = core.submit(mk("a", prompt=10), 0.0)
    assert core.dispatch(POOL, 1, 0.0) == [a]
    b = core.submit(mk("b", prompt=10), 0.01)
    assert a.level == 0 and b.level == 0
    assert core.quantum(a) == pytest.approx(0.05)
    assert core.progress(a, 0.03, 3, 0.03) is Decision.CONTINUE
    assert a.level == 0 and core.quantum(a) == pytest.approx(0.02)
    assert core.progress(a, 0.03, 3, 0.06) is Decision.YIELD
    assert a.level == 1
    assert a.state is S.PREEMPTED and a in core.queues[POOL]
    assert core.preemptions == 1
    assert core.dispatch(POOL, 1, 0.06) == [b]


def test_mlfq_quantum_end_continues_when_nothing_better_waits() -> None:
    core = make_core("mlfq")
    a = core.submit(mk("a", prompt=10), 0.0)
    core.dispatch(POOL, 1, 0.0)
    core.submit(mk("low", "best_effort", prompt=10), 0.01)
    assert core.progress(a, 0.06, 6, 0.06) is Decision.CONTINUE
    assert a.level == 1 and a.state is S.RUNNING
    # a coarse report covering several quanta demotes several levels
    assert core.progress(a, 0.1 + 0.2 + 0.4, 70, 1.0) is Decision.CONTINUE
    assert a.level == 4
    assert core.quantum(a) == pytest.approx(0.8 - 0.01)


def test_mlfq_lower_level_running_task_yields_to_same_level() -> None:
    """Yield happens only for a strictly better rank: a queued task at the demoted level does not
    displace it."""
    core = make_core("mlfq")
    a = core.submit(mk("a", prompt=10), 0.0)
    core.dispatch(POOL, 1, 0.0)
    deep = core.submit(mk("deep", prompt=400), 0.01)  # 0.08 s prefill: level 1
    assert deep.level == 1
    assert core.progress(a, 0.05, 5, 0.05) is Decision.CONTINUE
    assert a.level == 1 and a.state is S.RUNNING


def test_steps_unit_quanta() -> None:
    core = make_core("mlfq", mlfq={"unit": "steps", "base_quantum": 4, "ratio": 2})
    a = core.submit(mk("a", prompt=0), 0.0)
    core.dispatch(POOL, 1, 0.0)
    core.submit(mk("b", prompt=0), 0.0)
    assert core.progress(a, 10.0, 3, 1.0) is Decision.CONTINUE  # 3 of 4 steps
    assert core.progress(a, 0.1, 1, 1.1) is Decision.YIELD
    assert a.level == 1


def test_fair_share_counter_lifted_through_core() -> None:
    core = make_core()
    a = core.submit(mk("a1", tenant="a"), 0.0)
    core.dispatch(POOL, 1, 0.0)
    core.progress(a, 7.0, 1, 7.0)
    assert core.fair.counters["a"] == pytest.approx(7.0)
    core.submit(mk("b1", tenant="b"), 7.0)
    assert core.fair.counters["b"] == pytest.approx(7.0)
    assert core.fair.factor("b") == 1.0
