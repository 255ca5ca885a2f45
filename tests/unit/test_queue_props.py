"""Rule-based property test: any sequence of queue operations on any policy's queue never loses or
duplicates a task, keeps ``len`` exact, and pops in the policy's order."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from raysched.policy.queues import Policy, make_queue
from raysched.policy.task import Task

PRIOS = st.sampled_from([0, 1, 5, 9])
PROMPTS = st.integers(min_value=0, max_value=4000)
HINTS = st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0, allow_nan=False))
TENANTS = st.sampled_from(["a", "b", "c"])


class QueueMachine(RuleBasedStateMachine):
    policy: Policy = Policy.FCFS

    @initialize()
    def setup(self) -> None:
        self.q = make_queue(self.policy, starvation_s=2.0)
        self.now = 0.0
        self.seq = 0
        self.model: dict[str, Task] = {}  # expected queued tasks
        self.outside: dict[str, Task] = {}  # known tasks not queued
        self.added: dict[str, int] = {}  # id -> add counter (FIFO order of the latest add)
        self.adds = 0

    # -- helpers ------------------------------------------------------------------------------
    def _new(self, prio: int, prompt: int, hint: float | None, tenant: str) -> Task:
        self.seq += 1
        t = Task(
            f"t{self.seq}",
            prio,
            self.now,
            self.seq,
            prompt,
            tenant,
            "",
            "simulate",
            "default",
            None,
            None,
        )
        t.remaining_hint = hint
        self.q.admit(t)
        return t

    def _mark_added(self, t: Task) -> None:
        assert t.id not in self.model
        t.enqueued_at = self.now
        self.model[t.id] = t
        self.outside.pop(t.id, None)
        self.adds += 1
        self.added[t.id] = self.adds

    def _took(self, t: Task) -> None:
        assert t.id in self.model, f"{t.id} popped but not queued"
        self._check_order(t)
        del self.model[t.id]
        self.outside[t.id] = t

    def _check_order(self, t: Task) -> None:
        """``t`` is what the queue returned as the best of ``self.model``."""
        m = self.model.values()
        if self.policy is Policy.FCFS:
            assert self.added[t.id] == min(self.added[x.id] for x in m)
        elif self.policy is Policy.PRIORITY:
            assert (t.priority, self.added[t.id]) == min((x.priority, self.added[x.id]) for x in m)
        elif self.policy is Policy.SRPT:

            def key(x: Task) -> tuple[float, int]:
                return (math.inf if x.remaining_hint is None else x.remaining_hint, x.seq)

            assert key(t) == min(key(x) for x in m)
        else:  # mlfq: tiers are strict whatever the level, score or boost
            assert t.priority == min(x.priority for x in m)

    # -- rules --------------------------------------------------------------------------------
    @rule(prio=PRIOS, prompt=PROMPTS, hint=HINTS, tenant=TENANTS)
    def add(self, prio: int, prompt: int, hint: float | None, tenant: str) -> None:
        t = self._new(prio, prompt, hint, tenant)
        self._mark_added(t)
        self.q.add(t, self.now)

    @rule(specs=st.lists(st.tuples(PRIOS, PROMPTS, HINTS, TENANTS), max_size=6))
    def add_batch(self, specs: list[tuple[int, int, float | None, str]]) -> None:
        ts = [self._new(*s) for s in specs]
        for t in ts:
            self._mark_added(t)
        self.q.add_batch(ts, self.now)

    @precondition(lambda self: bool(self.outside))
    @rule(data=st.data(), demote=st.booleans())
    def readd(self, data: st.DataObject, demote: bool) -> None:
        """A popped or removed task comes back (a preempted or held task)."""
        tid = data.draw(st.sampled_from(sorted(self.outside)))
        t = self.outside[tid]
        if demote:
            self.q.expire_quantum(t)
        self._mark_added(t)
        self.q.add(t, self.now)

    @rule()
    def pop(self) -> None:
        if not self.model:
            with pytest.raises(IndexError):
                self.q.pop()
            assert self.q.peek() is None
            return
        head = self.q.peek()
        t = self.q.pop()
        assert head is t
        self._took(t)

    @rule(n=st.integers(min_value=0, max_value=8))
    def pop_batch(self, n: int) -> None:
        expect = min(n, len(self.model))
        out = self.q.pop_batch(n)
        assert len(out) == expect
        assert len({t.id for t in out}) == len(out)
        for t in out:
            self._took(t)

    @precondition(lambda self: bool(self.model) or bool(self.outside))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(self.model) + sorted(self.outside)))
        queued = tid in self.model
        t = self.model.get(tid) or self.outside[tid]
        assert self.q.remove(t) is queued
        if queued:
            del self.model[tid]
            self.outside[tid] = t
        assert self.q.remove(t) is False

    @rule(dt=st.floats(min_value=0.0, max_value=3.0, allow_nan=False))
    def age(self, dt: float) -> None:
        self.now += dt
        boosted = self.q.age(self.now)
        assert 0 <= boosted <= len(self.model)

    @rule(dt=st.floats(min_value=0.0, max_value=3.0, allow_nan=False))
    def rescore(self, dt: float) -> None:
        self.now += dt
        self.q.rescore(self.now)

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "q"):
            return
        assert len(self.q) == len(self.model)
        listed = [t.id for t in self.q]
        assert len(listed) == len(set(listed)), "a task is listed twice"
        assert set(listed) == set(self.model)
        for t in self.model.values():
            assert t in self.q
        for t in self.outside.values():
            assert t not in self.q
        head = self.q.peek()
        assert (head is None) == (not self.model)
        if head is not None:
            assert head.id in self.model


@pytest.mark.parametrize("policy", list(Policy), ids=lambda p: p.value)
def test_queue_state_machine(policy: Policy) -> None:
    machine = type(f"QueueMachine_{policy.value}", (QueueMachine,), {"policy": policy})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
