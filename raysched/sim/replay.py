"""``replay --clock virtual``: a discrete-event run of the real ``SchedulerCore`` over single-slot
workers. Each task is an LLM request: one prefill step of ``prompt_tokens x prefill_s_per_token``,
then ``output_tokens`` decode steps. Workers run a task in chunks that end at the policy's quantum
(rounded up to a step boundary, as preemption happens only between steps), at completion, or at
the next step boundary after a better task arrived. A task resumed on another worker than the one
that paused it pays a recompute of its prompt and generated tokens at the prefill rate (vLLM's
recompute preemption)."""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from raysched.models import DEFAULT_TIERS, TraceRecord
from raysched.pause import paused_gc
from raysched.policy.core import Decision, SchedulerCore
from raysched.policy.queues import Policy
from raysched.policy.scoring import CostModel
from raysched.policy.task import Task
from raysched.settings import PolicySettings

__all__ = ["Summary", "VirtualReplay", "replay_virtual", "summarize", "task_from_record"]

_ARRIVAL, _CHUNK = 0, 1


def task_from_record(rec: TraceRecord, tiers: Mapping[str, int], pool: str = "default") -> Task:
    if rec.priority is not None:
        prio = rec.priority
        tier = next((n for n, p in tiers.items() if p == prio), f"p{prio}")
    else:
        tier = rec.tier or "batch"
        prio = tiers[tier]
    t = Task(
        rec.id,
        prio,
        rec.arrival_s,
        0,
        rec.prompt_tokens,
        rec.tenant,
        tier,
        "simulate",
        pool,
        rec.size_hint,
        None if rec.deadline_s is None else rec.arrival_s + rec.deadline_s,
    )
    if rec.depends_on:
        t.depends_on = rec.depends_on
    return t


@dataclass
class Summary:
    policy: str
    clock: str
    workers: int
    tasks: int
    completed: int
    mean_jct_s: float
    p50_jct_s: float
    p99_jct_s: float
    max_wait_s: float
    preemptions: int
    by_tier: dict[str, dict[str, float]] = field(default_factory=dict)
    by_tenant: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "clock": self.clock,
            "workers": self.workers,
            "tasks": self.tasks,
            "completed": self.completed,
            "mean_jct_s": self.mean_jct_s,
            "p50_jct_s": self.p50_jct_s,
            "p99_jct_s": self.p99_jct_s,
            "max_wait_s": self.max_wait_s,
            "preemptions": self.preemptions,
            "by_tier": self.by_tier,
            "by_tenant": self.by_tenant,
        }


def _pct(sorted_vals: Sequence[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[i]


def summarize(
    policy: str, clock: str, workers: int, tasks: Sequence[Task], preemptions: int
) -> Summary:
    """The CONTRACT.md section 6 summary over tasks (JCT = finish - arrival, wait = first start -
    arrival); only tasks that finished count towards the JCT figures."""
    done = [t for t in tasks if t.finished_at is not None and t.first_start is not None]
    jcts = sorted(t.finished_at - t.arrival for t in done)  # type: ignore[operator]
    waits = [t.first_start - t.arrival for t in done]  # type: ignore[operator]
    by_tier: dict[str, dict[str, float]] = {}
    groups: dict[str, list[Task]] = {}
    for t in done:
        groups.setdefault(t.tier, []).append(t)
    for tier, ts in sorted(groups.items()):
        j = sorted(t.finished_at - t.arrival for t in ts)  # type: ignore[operator]
        w = sorted(t.first_start - t.arrival for t in ts)  # type: ignore[operator]
        by_tier[tier] = {
            "tasks": len(ts),
            "mean_jct_s": round(statistics.fmean(j), 6),
            "p99_jct_s": round(_pct(j, 0.99), 6),
            "p99_wait_s": round(_pct(w, 0.99), 6),
        }
    by_tenant: dict[str, dict[str, float]] = {}
    for t in tasks:
        d = by_tenant.setdefault(t.tenant, {"tasks": 0, "service_s": 0.0})
        d["tasks"] += 1
        d["service_s"] = round(d["service_s"] + t.service_s, 6)
    return Summary(
        policy=policy,
        clock=clock,
        workers=workers,
        tasks=len(tasks),
        completed=len(done),
        mean_jct_s=round(statistics.fmean(jcts), 6) if jcts else 0.0,
        p50_jct_s=round(_pct(jcts, 0.5), 6),
        p99_jct_s=round(_pct(jcts, 0.99), 6),
        max_wait_s=round(max(waits), 6) if waits else 0.0,
        preemptions=preemptions,
        by_tier=by_tier,
        by_tenant=dict(sorted(by_tenant.items())),
    )


class _Worker:
    __slots__ = (
        "chunk_end",
        "chunk_start",
        "extra",
        "name",
        "paused",
        "reserved",
        "run_service",
        "task",
        "version",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.task: Task | None = None
        self.chunk_start = 0.0
        self.chunk_end = 0.0
        self.run_service = 0.0  # service the current chunk delivers if it runs to chunk_end
        self.extra = 0.0  # of which recompute (no progress)
        self.version = 0
        self.reserved: Task | None = None  # a task waiting for this worker's preempted task
        self.paused: list[str] = []  # ids of tasks whose state (KV cache) this worker keeps


class VirtualReplay:
    def __init__(
        self,
        records: Sequence[TraceRecord],
        settings: PolicySettings | None = None,
        *,
        workers: int = 4,
        max_paused: int = 4,
    ) -> None:
        self.settings = settings or PolicySettings()
        self.cost: CostModel = self.settings.cost()
        self.records = records
        self.nworkers = workers
        self.max_paused = max_paused
        self.core = SchedulerCore(self.settings)
        self.oracle = self.core.policy is Policy.SRPT

    def run(self) -> Summary:
        # Hundreds of thousands of short-lived event tuples and queue entries, no cycles: the
        # collector's full passes over every task would only slow the run (see ``pause``).
        with paused_gc():
            return self._run()

    def _run(self) -> Summary:
        core, cost = self.core, self.cost
        pre, dec = cost.prefill_s_per_token, cost.decode_s_per_token
        workers = [_Worker(f"w{i}") for i in range(self.nworkers)]
        free: list[_Worker] = list(reversed(workers))
        total: dict[str, float] = {}  # true work of each task (seconds)
        prefill: dict[str, float] = {}
        progress: dict[str, float] = {}  # work done towards completion
        by_name = {w.name: w for w in workers}
        q = core.queues["default"]
        running_on: dict[str, _Worker] = {}
        now_ = 0.0
        # Chunk ends are the only events in the heap (a handful per worker); arrivals are merged
        # in from the sorted trace, ahead of chunk ends at the same instant.
        events: list[tuple[float, int, int, Any]] = []
        arrivals = sorted(self.records, key=lambda r: r.arrival_s)  # stable: file order on ties
        n_arr = len(arrivals)
        ai = 0
        seq = 0
        tasks: list[Task] = []
        tiers = self.settings.tiers
        max_paused = self.max_paused

        def boundary_after(t: Task, done: float) -> float:
            """Smallest step boundary (in work done) >= ``done``."""
            p = prefill[t.id]
            if done <= p:
                return p
            k = math.ceil((done - p) / dec - 1e-9) if dec > 0 else 0
            return min(total[t.id], p + k * dec)

        def begin(w: _Worker, t: Task, now: float) -> None:
            """Run ``t`` (already marked running by the core) on ``w``."""
            resumed = progress.get(t.id, 0.0) > 0.0
            h = by_name.get(t.home) if t.home is not None else None
            t.home = None
            if h is not None:
                h.paused.remove(t.id)
            w.task = t
            # resumed without its paused state: recompute prompt + generated tokens (prefill rate)
            plan(w, t, now, cost.recompute_s(t) if resumed and h is not w else 0.0)

        qs = dec if self.settings.mlfq.unit == "steps" else 1.0  # quantum unit -> seconds
        # bound once: these run several times per event
        quantum_of, next_level, rank_at = q.quantum_of, q.next_level, q.rank_at
        peek, preempt_rank = q.peek, q.preempt_rank
        # quantum_of as a table: a task's level never passes the schedule's last one
        qtab = tuple(quantum_of(i) for i in range(self.settings.mlfq.levels))

        def plan(w: _Worker, t: Task, now: float, extra: float = 0.0) -> None:
            """Schedule the end of ``t``'s next chunk on ``w``. While nothing queued could outrank
            the task at its next level, the chunk runs on through that level too: one event
            instead of one per quantum (arrivals re-rank running tasks in ``preempt_check``)."""
            nonlocal seq
            done = progress.get(t.id, 0.0)
            tot = total[t.id]
            left = tot - done
            lvl = t.level
            budget = qtab[lvl] - t.quantum_used
            budget = budget * qs if budget > 0.0 else 0.0
            if budget < left:
                head = peek()
                hr = preempt_rank(head) if head is not None else None
                if hr is None:
                    budget = math.inf  # nothing queued could stop it: on to the end (or an arrival)
                while budget < left:
                    nl = next_level(t, lvl)
                    if nl == lvl:
                        break
                    r = rank_at(t, nl)
                    if hr is not None and r is not None and hr < r:
                        break
                    lvl = nl
                    budget += qtab[nl] * qs
            target = tot if budget >= left else min(tot, boundary_after(t, done + budget))
            w.chunk_start = now
            w.extra = extra
            w.run_service = target - done + extra
            w.chunk_end = now + w.run_service
            w.version += 1
            seq += 1
            heapq.heappush(events, (w.chunk_end, seq, _CHUNK, (w, w.version)))

        def rank_running(w: _Worker, t: Task) -> tuple[float, ...] | None:
            """Rank of ``t``, running on ``w``, as of now: its chunk may be past some quanta."""
            used = t.quantum_used + (now_ - w.chunk_start) / qs
            lvl = t.level
            qo = qtab[lvl]
            while used >= qo:
                nl = next_level(t, lvl)
                if nl == lvl:
                    break
                used -= qo
                lvl = nl
                qo = qtab[lvl]
            return rank_at(t, lvl)

        def current_rank(t: Task) -> tuple[float, ...] | None:
            w = running_on.get(t.id)
            return preempt_rank(t) if w is None else rank_running(w, t)

        def steps_between(t: Task, x0: float, x1: float) -> int:
            """Steps completed between ``x0`` and ``x1`` of work done (the prefill is one)."""
            p = prefill[t.id]
            if x1 < p - 1e-12:
                return 0
            n1 = 1 + (int((x1 - p) / dec + 1e-9) if dec > 0 else 0)
            if x0 < p - 1e-12:
                return n1
            return n1 - 1 - (int((x0 - p) / dec + 1e-9) if dec > 0 else 0)

        def fill(now: float) -> None:
            i = len(free) - 1
            while i >= 0 and len(q):
                w = free[i]
                got = core.dispatch("default", 1, now, w.name)
                if got:
                    free.pop(i)
                    begin(w, got[0], now)
                i -= 1

        def preempt_check(now: float) -> None:
            nonlocal seq, now_
            if not q.preemptive:
                return
            now_ = now
            ranks: dict[str, tuple[float, ...] | None] | None = None
            if not self.oracle:
                # Ranks of the running tasks, worked out once per arrival (they do not change
                # while it is handled). Most of the time the head outranks no running task that
                # is not already stopping: then there is nothing more to look at.
                head = peek()
                hr = preempt_rank(head) if head is not None else None
                if hr is None:
                    return
                ranks = {}
                hit = False
                for w in workers:
                    if w.task is not None:
                        r = ranks[w.task.id] = rank_running(w, w.task)
                        if r is not None and hr < r and w.reserved is None:
                            hit = True
                if not hit:
                    return
            running_on.clear()
            for w in workers:
                if w.task is not None:
                    running_on[w.task.id] = w
            if ranks is None:
                for w in workers:
                    if w.task is not None:
                        done_now = progress.get(w.task.id, 0.0) + max(0.0, now - w.chunk_start)
                        w.task.remaining_hint = total[w.task.id] - done_now
                rank = current_rank
            else:
                known = ranks

                def rank(t: Task) -> tuple[float, ...] | None:
                    return known[t.id] if t.id in known else preempt_rank(t)

            signalled = [
                w.task.id for w in workers if w.reserved is not None and w.task is not None
            ]
            # tasks whose pause would evict a paused state (see ``plan_preemption``)
            pinned = (
                [w.task.id for w in workers if w.task is not None and len(w.paused) >= max_paused]
                if cost.recompute
                else []
            )

            def eta(t: Task) -> float:
                w = running_on[t.id]
                base = progress.get(t.id, 0.0)
                done_now = base + max(0.0, now - w.chunk_start - w.extra)
                return max(0.0, w.chunk_start + w.extra + boundary_after(t, done_now) - base - now)

            while True:
                plan_ = core.plan_preemption("default", now, signalled, eta, rank, pinned)
                if plan_ is None:
                    return
                incoming, victim = plan_
                w = next(w for w in workers if w.task is victim)
                signalled.append(victim.id)
                w.reserved = incoming
                # stop at the next step boundary (after any recompute in progress)
                base = progress.get(victim.id, 0.0)
                done_now = base + max(0.0, now - w.chunk_start - w.extra)
                stop = boundary_after(victim, done_now)
                target_end = w.chunk_start + w.extra + (stop - base)
                if target_end < w.chunk_end - 1e-12:
                    w.run_service = w.extra + (stop - base)
                    w.chunk_end = target_end
                    w.version += 1
                    seq += 1
                    heapq.heappush(events, (w.chunk_end, seq, _CHUNK, (w, w.version)))
                if ranks is not None:
                    # does the new head outrank another running task that is not stopping?
                    head = peek()
                    hr = preempt_rank(head) if head is not None else None
                    if hr is None or not any(
                        (r := ranks[tid]) is not None and hr < r
                        for tid in running_on
                        if tid not in signalled
                    ):
                        return

        now = 0.0
        next_tick = 0.0
        # Aging / retries / rescoring resolution in virtual seconds: 1% of the starvation bound
        # (a boost a few ms late changes nothing), at most 0.25 s.
        tick_every = min(0.25, self.settings.mlfq.starvation_s / 100)
        while ai < n_arr or events:
            if events and (ai == n_arr or events[0][0] < arrivals[ai].arrival_s):
                now, _, kind, data = heapq.heappop(events)
            else:
                kind, data = _ARRIVAL, arrivals[ai]
                now = data.arrival_s
                ai += 1
            if kind == _ARRIVAL:
                arriving: TraceRecord = data
                t = task_from_record(arriving, tiers)
                p = prefill[t.id] = arriving.prompt_tokens * pre
                t.remaining_hint = total[t.id] = p + arriving.output_tokens * dec
                tasks.append(t)
                core.submit(t, now)
            else:
                w, version = data
                if version != w.version:
                    continue
                t = w.task
                assert t is not None
                before = progress.get(t.id, 0.0)
                after = before + max(0.0, w.run_service - w.extra)
                progress[t.id] = after
                service = w.chunk_end - w.chunk_start
                steps = steps_between(t, before, after)
                w.task = None
                reserved, w.reserved = w.reserved, None
                if after >= total[t.id] - 1e-9:
                    core.account(t, service, steps)
                    core.finish(t, now, ok=True)
                    if reserved is not None:
                        core.unreserve(reserved, now)
                    free.append(w)
                else:
                    t.remaining_hint = total[t.id] - after
                    d = core.progress(
                        t,
                        service,
                        steps,
                        now,
                        pinned=cost.recompute and len(w.paused) >= max_paused,
                    )
                    if reserved is not None:
                        if d is Decision.CONTINUE:
                            core.preempt(t, now, f"{reserved.id} outranks it")
                        self._pause_on(w, t)
                        core.start(reserved, now, w.name)
                        begin(w, reserved, now)
                    elif d is Decision.YIELD:
                        self._pause_on(w, t)
                        free.append(w)
                    else:
                        w.task = t
                        plan(w, t, now)
            if now >= next_tick:
                core.tick(now)
                next_tick = now + tick_every
            if free and len(q):
                fill(now)
            # Preemption is looked at on arrivals: dispatch takes the best task a worker may run,
            # so besides a newcomer only a task held back for its own worker (its paused state is
            # there) can outrank a running task; that one waits for the next arrival or the
            # running task's quantum end (the live scheduler looks after every dispatch).
            if kind == _ARRIVAL and not free and len(q):
                preempt_check(now)
        return summarize(self.core.policy.value, "virtual", self.nworkers, tasks, core.preemptions)

    def _pause_on(self, w: _Worker, t: Task) -> None:
        t.home = w.name
        w.paused.append(t.id)
        if len(w.paused) > self.max_paused:
            # as the worker does: drop the state cheapest to rebuild, the fewest steps taken
            # (the oldest of those); without recompute no state costs anything to lose, and
            # which one goes changes nothing: the oldest, without the search
            tasks, paused = self.core.tasks, w.paused
            i = (
                min(range(len(paused)), key=lambda j: tasks[paused[j]].steps)
                if self.cost.recompute
                else 0
            )
            evicted = tasks[paused.pop(i)]
            evicted.home = None  # its state is gone: resuming anywhere recomputes


def replay_virtual(
    records: Sequence[TraceRecord],
    policy: str,
    workers: int = 4,
    *,
    settings: PolicySettings | None = None,
    prefill_s_per_token: float | None = None,
    decode_s_per_token: float | None = None,
    recompute: bool = False,
) -> Summary:
    """Replay ``records`` under ``policy``. By default the cost model is CONTRACT.md's (prefill and
    decode only); ``recompute=True`` also charges a paused task that resumes away from its state."""
    s = settings or PolicySettings(tiers=dict(DEFAULT_TIERS))
    upd: dict[str, Any] = {"policy": Policy(policy), "recompute_on_migrate": recompute}
    if prefill_s_per_token is not None:
        upd["prefill_s_per_token"] = prefill_s_per_token
    if decode_s_per_token is not None:
        upd["decode_s_per_token"] = decode_s_per_token
    return VirtualReplay(records, s.model_copy(update=upd), workers=workers).run()
