"""The MLFQ boost bound: under continuous same-tier load of short tasks that a single worker
cannot keep up with, a long task still runs within about ``starvation_s`` (plus the work that
had been waiting even longer than it, which is boosted ahead of it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raysched.policy.core import Decision, SchedulerCore
from raysched.policy.task import Task
from raysched.settings import PolicySettings

POOL = "default"
DT = 0.01  # the fake clock's step, and the scheduler's tick
SLACK = 0.5  # tick resolution and the task running when the boost happens, with room to spare


@dataclass
class Wait:
    """One wait of the long task in the queue."""

    since: float  # its enqueued_at
    ended: float | None = None  # when it was dispatched again
    older_at_boost: int | None = None  # tasks queued since no later than it, once starved
    overtakers: list[str] = field(default_factory=list)  # younger tasks dispatched past the bound


def simulate(
    long_prompt: int,
    short_prompt: int,
    service: float,
    gap: float,
    *,
    starvation_s: float = 15.0,
    horizon: float = 20.0,
    long_runs_first: bool = False,
    tenants: int = 1,
) -> tuple[list[Wait], int]:
    """One worker; short tasks of ``service`` seconds arrive every ``gap`` < ``service`` seconds.
    With ``long_runs_first`` the worker is idle when the long task arrives, so it starts at once
    and is later preempted at a quantum end; otherwise a backlog of shorts is already waiting.
    Returns the long task's waits in the queue and how many tasks were queued at the end."""
    core = SchedulerCore(PolicySettings(policy="mlfq", mlfq={"starvation_s": starvation_s}))
    need: dict[str, float] = {}
    n = 0

    def submit_short(at: float) -> None:
        nonlocal n
        t = Task(f"s{n}", 5, at, 0, short_prompt, f"t{n % tenants}", "batch")
        n += 1
        need[t.id] = service
        core.submit(t, at)

    if not long_runs_first:
        for _ in range(3):
            submit_short(0.0)
    long_ = Task("long", 5, 0.0, 0, long_prompt, "t0", "batch")
    need["long"] = 1e9
    core.submit(long_, 0.0)
    waits: list[Wait] = [] if long_runs_first else [Wait(0.0)]
    next_arrival = DT / 2 if long_runs_first else gap
    cur: Task | None = None
    done = 0.0
    now = 0.0
    while now < horizon:
        while next_arrival <= now + 1e-12:
            submit_short(next_arrival)
            next_arrival += gap
        core.tick(now)
        w = waits[-1] if waits and waits[-1].ended is None else None
        # starved from the first tick at least ``starvation_s`` after it was enqueued (a tick
        # of slack: ``now - starvation_s`` is computed in floating point)
        starved = w is not None and now >= w.since + starvation_s + DT
        if w is not None and starved and w.older_at_boost is None:
            w.older_at_boost = sum(
                1 for t in core.queues[POOL] if t is not long_ and t.enqueued_at <= w.since
            )
        if cur is None:
            got = core.dispatch(POOL, 1, now, "w0")
            if got:
                cur = got[0]
                done = cur.service_s
                if w is not None:
                    if cur is long_:
                        w.ended = now
                    elif starved and cur.enqueued_at > w.since:
                        w.overtakers.append(cur.id)
        now = round(now + DT, 9)
        if cur is None:
            continue
        d = core.progress(cur, DT, 1, now)
        done += DT
        if d is Decision.YIELD:
            if cur is long_:
                waits.append(Wait(long_.enqueued_at))
            cur = None
        elif done >= need[cur.id] - 1e-9:
            core.finish(cur, now, ok=True)
            cur = None
    return waits, core.queued()


def check(waits: list[Wait], service: float, starvation_s: float, horizon: float) -> None:
    for w in waits:
        deadline = w.since + starvation_s + (w.older_at_boost or 0) * service + SLACK
        if deadline < horizon - SLACK:
            assert w.ended is not None, f"the long task starved after waiting from {w.since}"
        if w.ended is not None:
            assert w.ended <= deadline
        assert w.overtakers == [], "younger work ran ahead of the starved long task"


def test_long_prompt_runs_within_starvation_bound() -> None:
    waits, queued = simulate(long_prompt=1000, short_prompt=10, service=0.04, gap=0.03)
    w = waits[0]
    assert w.ended is not None, "the long task starved"
    assert 15.0 - 1e-9 <= w.ended <= 15.0 + SLACK
    assert not w.older_at_boost  # the initial backlog was served long before
    assert w.overtakers == []
    # it then ran one quantum of its (skip-join) level 2, 0.2 s, stretched by the first slice
    # learned from the shorts of its class (0.04 s of service, 0.002 s of it prefill: its 0.2 s
    # prefill plus 0.038 s; 0.24 s in the clock's 0.01 s steps), and yielded to short work again
    assert len(waits) == 2 and waits[1].since == pytest.approx(w.ended + 0.24)
    assert queued > 50  # the load really was continuous
    check(waits, 0.04, 15.0, 20.0)


def test_preempted_long_task_runs_again_within_bound() -> None:
    waits, _ = simulate(
        long_prompt=0, short_prompt=10, service=0.04, gap=0.03, long_runs_first=True
    )
    assert waits, "the long task was never preempted"
    first = waits[0]
    assert first.since <= 0.1  # it ran one 0.05 s quantum, then yielded to a short task
    assert first.ended is not None, "the preempted long task starved"
    assert first.ended <= first.since + 15.0 + (first.older_at_boost or 0) * 0.04 + SLACK
    check(waits, 0.04, 15.0, 20.0)


@settings(max_examples=60, deadline=None)
@given(
    long_prompt=st.integers(min_value=0, max_value=6000),
    short_prompt=st.integers(min_value=1, max_value=200),
    service=st.sampled_from([0.02, 0.03, 0.04, 0.06, 0.08]),
    load=st.floats(min_value=1.1, max_value=2.0),
    starvation_s=st.sampled_from([2.0, 5.0]),
    tenants=st.integers(min_value=1, max_value=3),
    long_runs_first=st.booleans(),
)
def test_boost_bound_property(
    long_prompt: int,
    short_prompt: int,
    service: float,
    load: float,
    starvation_s: float,
    tenants: int,
    long_runs_first: bool,
) -> None:
    horizon = starvation_s + 4.0
    waits, _ = simulate(
        long_prompt,
        short_prompt,
        service,
        round(service / load, 4),
        starvation_s=starvation_s,
        horizon=horizon,
        long_runs_first=long_runs_first,
        tenants=tenants,
    )
    if not long_runs_first:
        assert waits[0].ended is not None, "the long task never ran"
    check(waits, service, starvation_s, horizon)
