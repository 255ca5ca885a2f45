"""The scheduling core: admission, dependencies, lifecycle, ready queues per pool, quanta,
preemption decisions, retries and timeouts. Pure Python with an injected notion of time (every call
takes ``now``), so the SchedulerActor, the virtual-clock replay and the benchmarks drive this same
class."""

from __future__ import annotations

import enum
import heapq
import math
import operator
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence, Set
from typing import TYPE_CHECKING, Any

from raysched.errors import DependencyError, QueueFull, TaskNotFound
from raysched.models import TaskInfo, TaskState
from raysched.policy.deps import DependencyGraph
from raysched.policy.fairshare import FairShare
from raysched.policy.lifecycle import AuditHook, Lifecycle
from raysched.policy.queues import Policy, TaskQueue, make_queue
from raysched.policy.scoring import Scorer
from raysched.policy.task import Task
from raysched.policy.victims import Eta, LowestRankVictim, VictimSelector

if TYPE_CHECKING:  # settings builds on policy's classes; import it only where needed
    from raysched.settings import PolicySettings

__all__ = ["Decision", "SchedulerCore"]

S = TaskState
_EPS = 1e-9
_TERMINAL = frozenset(s for s in TaskState if s.terminal)
_by_seq = operator.attrgetter("seq")
_by_enqueue = operator.attrgetter("enqueued_at", "seq")


class Decision(str, enum.Enum):
    """What a running task does at the end of a quantum."""

    CONTINUE = "continue"
    YIELD = "yield"


class SchedulerCore:
    def __init__(
        self,
        settings: PolicySettings | None = None,
        *,
        pools: Iterable[str] = ("default",),
        audit: Sequence[AuditHook] = (),
        victims: VictimSelector | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        if settings is None:
            from raysched.settings import PolicySettings

            settings = PolicySettings()
        self.settings = s = settings
        self.cost = s.cost()
        self.fair = FairShare(s.tenant_weights)
        self.scorer = Scorer(
            s.scorer.resolved(),
            cost=self.cost,
            fair=self.fair,
            age_horizon_s=s.scorer.age_horizon_s,
            urgency_horizon_s=s.scorer.urgency_horizon_s,
            size_scale_s=s.scorer.size_scale_s,
        )
        self.levels = s.mlfq.schedule()
        self.policy = Policy(s.policy)
        self.queues: dict[str, TaskQueue] = {}
        self.running: dict[str, dict[str, Task]] = {}
        for p in pools:
            self.add_pool(p)
        self.lifecycle = Lifecycle(list(audit), on_refused)
        self.victims: VictimSelector = victims or LowestRankVictim()
        self.deps = DependencyGraph()
        self.tasks: dict[str, Task] = {}
        self.idempotency: dict[tuple[str, str], str] = {}
        self._delayed: list[tuple[float, int, Task]] = []
        self._retrying: set[str] = set()  # failed / timed out, waiting out a retry backoff
        self._paused: dict[str, Task] = {}  # preempted tasks with a timeout (see ``overdue``)
        self._live = 0
        self._deadlines = 0  # live tasks with a deadline
        self._timed = False  # whether any task ever had a timeout (else ``overdue`` is a no-op)
        self._live_by_tenant: dict[str, int] = {}
        self._seq = 0
        self._next_rescore = 0.0
        self.preemptions = 0
        self.completed = 0

    # -- pools --------------------------------------------------------------------------------
    def add_pool(self, name: str) -> None:
        if name in self.queues:
            return
        self.queues[name] = make_queue(
            self.policy,
            levels=self.settings.mlfq.schedule(),
            scorer=self.scorer,
            starvation_s=self.settings.mlfq.starvation_s,
            hint_join=self.settings.mlfq.hint_join,
            learn_first_slice=self.settings.mlfq.learn_first_slice,
        )
        self.running[name] = {}

    # -- submission -----------------------------------------------------------------------------
    def get(self, tid: str) -> Task:
        t = self.tasks.get(tid)
        if t is None:
            raise TaskNotFound(f"no task {tid}")
        return t

    def find_duplicate(self, task: Task) -> Task | None:
        """The task already accepted under this id or idempotency key, if any."""
        old = self.tasks.get(task.id)
        if old is not None:
            return old
        if task.idempotency_key is not None:
            tid = self.idempotency.get((task.tenant, task.idempotency_key))
            if tid is not None:
                return self.tasks.get(tid)
        return None

    def submit(self, task: Task, now: float) -> Task:
        """Accept one task (or return the one already accepted under its id / idempotency key)."""
        return self.submit_many([task], now)[0]

    def submit_many(self, batch: Sequence[Task], now: float) -> list[Task]:
        """All or nothing: either every new task in ``batch`` is accepted, or none is and a typed
        error says why. Duplicates (same id or idempotency key) resolve to the accepted task."""
        if len(batch) == 1:  # the common case, without the batch bookkeeping
            t = batch[0]
            dup = self.find_duplicate(t)
            if dup is not None:
                return [dup]
            self._admit_check((t,))
            if t.depends_on:
                DependencyGraph.check_batch({t.id: t.depends_on}, self.tasks)
            self._accept(t, now)
            return [t]
        out: list[Task | None] = []
        fresh: dict[str, Task] = {}
        keys: dict[tuple[str, str], str] = {}
        for t in batch:
            dup = self.find_duplicate(t)
            if dup is None and t.idempotency_key is not None:
                first = keys.get((t.tenant, t.idempotency_key))
                dup = fresh.get(first) if first is not None else None
            if dup is None and t.id in fresh:
                dup = fresh[t.id]
            out.append(dup)
            if dup is None:
                fresh[t.id] = t
                if t.idempotency_key is not None:
                    keys[(t.tenant, t.idempotency_key)] = t.id
        if fresh:
            self._admit_check(fresh.values())
            order = DependencyGraph.check_batch(
                {i: t.depends_on for i, t in fresh.items()}, self.tasks
            )
            for tid in order:
                self._accept(fresh[tid], now)
        return [o if o is not None else fresh[b.id] for o, b in zip(out, batch, strict=True)]

    def _admit_check(self, tasks: Collection[Task]) -> None:
        s = self.settings
        if self._live + len(tasks) > s.max_queued:
            raise QueueFull(f"scheduler is at capacity ({s.max_queued} live tasks)")
        cap = s.max_queued_per_tenant
        if cap is None:  # the default: no count per tenant to make
            return
        by_tenant: dict[str, int] = {}
        for t in tasks:
            by_tenant[t.tenant] = by_tenant.get(t.tenant, 0) + 1
        for tenant, k in by_tenant.items():
            if self._live_by_tenant.get(tenant, 0) + k > cap:
                raise QueueFull(f"tenant {tenant!r} is at its quota of {cap} live tasks")

    def _accept(self, t: Task, now: float) -> None:
        if t.pool not in self.queues:
            raise DependencyError(f"task {t.id}: unknown pool {t.pool!r}")  # pragma: no cover
        self._seq += 1
        t.seq = self._seq
        t.state = S.PENDING
        self.tasks[t.id] = t
        if t.idempotency_key is not None:
            self.idempotency[(t.tenant, t.idempotency_key)] = t.id
        self._live += 1
        if t.deadline is not None:
            self._deadlines += 1
        if t.timeout_s is not None:
            self._timed = True
        self._live_by_tenant[t.tenant] = self._live_by_tenant.get(t.tenant, 0) + 1
        self.fair.activate(t.tenant)
        self.lifecycle.created(t, now)
        unmet: list[str] = []
        dead: Task | None = None
        for pid in t.depends_on:
            p = self.tasks[pid]
            if p.state is S.SUCCEEDED:
                continue
            if p.state.terminal and not self._may_retry(p):
                dead = p
                break
            unmet.append(pid)
            self._raise_depth(p, t.depth + 1)
        if dead is not None:
            self._fail_waiting(t, now, f"parent {dead.id} ended {dead.state.value}")
            return
        if not self.deps.add(t.id, unmet):
            self._make_ready(t, now)

    def _raise_depth(self, parent: Task, depth: int) -> None:
        stack = [(parent, depth)]
        while stack:
            p, d = stack.pop()
            if p.depth >= d or self.is_final(p):  # a task waiting out a retry is live
                continue
            p.depth = d
            stack.extend((self.tasks[g], d + 1) for g in p.depends_on if g in self.tasks)

    def _may_retry(self, t: Task) -> bool:
        return t.id in self._retrying

    @property
    def retrying(self) -> Set[str]:
        """Ids of the failed or timed-out tasks waiting out a retry backoff (read only)."""
        return self._retrying

    def is_final(self, t: Task) -> bool:
        """Terminal and not waiting for a retry: its outcome will not change."""
        return t.state.terminal and t.id not in self._retrying

    def _make_ready(self, t: Task, now: float) -> None:
        self.lifecycle.move(t, S.QUEUED, now, "ready")
        q = self.queues[t.pool]
        q.admit(t)
        t.enqueued_at = now
        q.add(t, now)

    # -- dispatch -------------------------------------------------------------------------------
    def movable(self, t: Task, worker: str | None, now: float) -> bool:
        """Whether ``t`` may start on ``worker``. A task paused with its state (a KV cache) on
        another worker waits for that worker until it has waited as long as recomputing the state
        elsewhere would take (the ski-rental rule), then goes wherever a slot is free."""
        h = t.home
        return (
            h is None
            or worker is None
            or h == worker
            or now - t.enqueued_at >= self.cost.recompute_s(t)
        )

    def dispatch(
        self,
        pool: str,
        n: int,
        now: float,
        worker: str | None = None,
        accept: Callable[[Task], bool] | None = None,
    ) -> list[Task]:
        """Pop up to ``n`` of the best ready tasks of ``pool`` that may run on ``worker`` (and pass
        ``accept``, e.g. a GPU-memory fit) and mark them running. Skipped tasks keep their place.

        When the cost model charges a recompute, a task paused on another worker that may move
        here (``movable``) is passed over for lower-ranked work of its own tier that needs no
        recompute: a recompute spends the pool's capacity, so under load it is cheaper to run
        that work here and let the task resume where its state is (at load 0.9 the moves alone
        kept a replay's queue growing). A worker that would otherwise idle, or run a lower tier,
        still takes it; on its own worker it goes in rank order (``plan_preemption`` holds it
        back likewise)."""
        q = self.queues[pool]
        got: list[Task]
        if worker is None and accept is None:
            got = q.pop_batch(n)
        else:
            got = []
            held: list[Task] = []
            movers: list[Task] = []  # paused elsewhere, free to move here: in reserve, best first
            while len(got) < n and len(held) + len(movers) < 64 and len(q):
                t = q.pop()
                if accept is not None and not accept(t):
                    held.append(t)
                elif t.home is None or t.home == worker or not self.cost.recompute:
                    while movers and movers[0].priority < t.priority and len(got) < n:
                        got.append(movers.pop(0))  # a higher tier does not wait for its worker
                    (got if len(got) < n else held).append(t)
                elif self.movable(t, worker, now):
                    movers.append(t)
                else:
                    held.append(t)
            while movers and len(got) < n:
                got.append(movers.pop(0))
            held.extend(movers)
            for t in held:
                q.add(t, now)
        for t in got:
            self.start(t, now, worker)
        return got

    def start(self, t: Task, now: float, worker: str | None = None) -> None:
        """Mark a task that left the queue (``dispatch`` or ``plan_preemption``) as running."""
        if t.state is S.QUEUED:
            t.attempts += 1
            # a fresh attempt: a negative start stretches its first quantum (see ``sizes``)
            c = self.queues[t.pool].first_credit(t)
            t.quantum_used = -c if c else 0.0
            t.started_at = now
        self.lifecycle.move(
            t, S.RUNNING, now, "dispatched" if t.attempts == 1 else f"attempt {t.attempts}"
        )
        if t.first_start is None:
            t.first_start = now
        t.worker = worker
        self._paused.pop(t.id, None)
        self.running[t.pool][t.id] = t

    def quantum(self, t: Task) -> float:
        """Remaining quantum of a running task, in the level schedule's unit."""
        return self.queues[t.pool].quantum(t) - t.quantum_used

    def progress(
        self,
        t: Task,
        service_s: float,
        steps: int,
        now: float,
        requeue: bool = True,
        pinned: bool = False,
    ) -> Decision:
        """A running task reports service since its last report. At the end of its quantum the
        policy demotes it and asks whether a queued task now outranks it. On YIELD the task is
        requeued as ``preempted`` here, unless ``requeue`` is False: then the caller calls
        ``preempt`` once the worker has actually stopped it (so it never runs twice at once).
        ``pinned``: pausing ``t`` would push a paused state out of its worker (see
        ``plan_preemption``)."""
        self.account(t, service_s, steps)
        q = self.queues[t.pool]
        expired = False
        while True:  # a coarse report may cover several quanta
            qt = q.quantum(t)
            if t.quantum_used + _EPS < qt:
                break
            q.expire_quantum(t)
            t.quantum_used = max(0.0, t.quantum_used - qt)
            expired = True
        if expired:
            head = q.peek()
            if head is not None:
                r_head, r_t = q.preempt_rank(head), q.preempt_rank(t)
                if (
                    r_head is not None
                    and r_t is not None
                    and r_head < r_t
                    and not (pinned and self._keeps_running(head, t))
                ):
                    if requeue:
                        self.preempt(t, now, f"quantum expired; {head.id} ranks higher")
                    return Decision.YIELD
        return Decision.CONTINUE

    def account(self, t: Task, service_s: float, steps: int) -> None:
        """Charge service to a task, its quantum and its tenant's fair-share counter."""
        t.service_s += service_s
        t.steps += steps
        if service_s:
            self.fair.charge(t.tenant, service_s)
        t.quantum_used += steps if self.levels.unit == "steps" else service_s

    def plan_preemption(
        self,
        pool: str,
        now: float,
        exclude: Iterable[str] = (),
        eta: Eta | None = None,
        rank: Callable[[Task], tuple[float, ...] | None] | None = None,
        pinned: Collection[str] = (),
    ) -> tuple[Task, Task] | None:
        """If the best queued task strictly outranks a preemptible running one, take it out of the
        queue (reserved for the victim's slot) and return (incoming, victim). The caller stops the
        victim at its next step boundary, then calls ``preempt(victim)`` and ``start(incoming)``.
        ``rank`` may stand in for the queue's rank of running tasks whose level moved since their
        last report (the replay runs several quanta in one event when nothing could preempt).
        ``pinned``: running tasks whose worker keeps no room for another paused state, so that
        pausing one evicts a paused task, which then recomputes its state when it resumes. When
        the cost model charges that recompute, such a task is a victim only when no other is,
        and only for a higher tier: between levels of one tier the recompute would cost more
        capacity than the reordering gains (at load 0.9 the evictions alone kept a replay's
        queue growing)."""
        q = self.queues[pool]
        if not q.preemptive:
            return None
        head = q.peek()
        if head is None:
            return None
        skip = set(exclude)
        pin = None if self.movable(head, "", now) else head.home
        # a task paused elsewhere displaces only a lower tier there, as in ``dispatch``
        home = head.home if pin is None and self.cost.recompute else None
        stay = pinned if pinned and self.cost.recompute else ()
        running = self.running[pool].values()
        cands = (
            t
            for t in running
            if t.id not in skip
            and (pin is None or t.worker == pin)
            and (home is None or t.worker == home or head.priority < t.priority)
            and t.id not in stay
        )
        victim = self.victims.choose(head, cands, rank or q.preempt_rank, eta)
        if victim is None and stay:
            # only pinned ones left: a higher tier still goes first, at the price of an eviction
            cands = (
                t
                for t in running
                if t.id in stay
                and t.id not in skip
                and (pin is None or t.worker == pin)
                and head.priority < t.priority
            )
            victim = self.victims.choose(head, cands, rank or q.preempt_rank, eta)
        if victim is None:
            return None
        q.remove(head)
        return head, victim

    def _keeps_running(self, head: Task, t: Task) -> bool:
        """A pinned ``t`` (see ``plan_preemption``) at the end of its quantum: it runs on unless
        ``head`` is of a higher tier."""
        return self.cost.recompute and head.priority >= t.priority

    def unreserve(self, t: Task, now: float) -> None:
        """A task reserved by ``plan_preemption`` goes back to the queue (its victim finished)."""
        if t.state in (S.QUEUED, S.PREEMPTED) and t.qkey is None:
            self.queues[t.pool].add(t, now)

    def preempt(self, t: Task, now: float, reason: str = "preempted") -> None:
        """A running task stopped between steps; it waits in the queue in state ``preempted``."""
        self.lifecycle.move(t, S.PREEMPTED, now, reason)
        self.running[t.pool].pop(t.id, None)
        if t.timeout_s is not None:
            self._paused[t.id] = t
        self.preemptions += 1
        t.enqueued_at = now
        self.queues[t.pool].add(t, now)

    # -- endings --------------------------------------------------------------------------------
    def finish(
        self,
        t: Task,
        now: float,
        *,
        ok: bool,
        result: Any = None,
        error_type: str | None = None,
        error: str | None = None,
        timed_out: bool = False,
    ) -> list[Task]:
        """Record a running task's outcome. Returns the tasks whose state changed as a result
        (children made ready or failed, the task itself re-queued for a retry)."""
        self.running[t.pool].pop(t.id, None)
        self._paused.pop(t.id, None)
        if t.qkey is not None:  # a timed-out preempted task still sits in the queue
            self.queues[t.pool].remove(t)
        t.finished_at = now
        if ok:
            t.result = result
            d = t.__dict__  # back to the class default (None) without storing it per task
            d.pop("error", None)
            d.pop("error_type", None)
            self.lifecycle.move(t, S.SUCCEEDED, now, "done")
            self.queues[t.pool].observe(t)
            self._retire(t)
            changed: list[Task] = []
            for cid in self.deps.succeeded(t.id):
                c = self.tasks[cid]
                self._make_ready(c, now)
                changed.append(c)
            return changed
        t.error_type, t.error = error_type, error
        dst = S.TIMED_OUT if timed_out else S.FAILED
        self.lifecycle.move(t, dst, now, f"{error_type}: {error}" if error_type else (error or ""))
        if t.attempts <= t.max_retries:
            self._retry_later(t, now, t.attempts)
            return [t]
        return self._end_failed(t, now)

    def lost(self, t: Task, now: float, reason: str) -> list[Task]:
        """The worker holding ``t`` died. Running work is redelivered (attempt counted) up to
        ``max(max_retries, max_redeliveries)`` times: a lost worker alone does not fail a task."""
        if t.state is S.PREEMPTED:
            return []  # it waits in the queue already; its paused state is simply gone
        if t.state is not S.RUNNING:
            return []
        self.running[t.pool].pop(t.id, None)
        t.error_type, t.error = "WorkerLost", reason
        self.lifecycle.move(t, S.FAILED, now, reason)
        t.redeliveries += 1
        if t.redeliveries <= self.settings.max_redeliveries or t.attempts <= t.max_retries:
            self._retry_later(t, now, 0)
            return [t]
        return self._end_failed(t, now)

    def _retry_later(self, t: Task, now: float, n: int) -> None:
        s = self.settings
        delay = 0.0 if n <= 0 else min(s.retry_backoff_max_s, s.retry_backoff_s * 2 ** (n - 1))
        t.not_before = now + delay
        if delay <= 0:
            self._requeue(t, now)
        else:
            self._retrying.add(t.id)
            heapq.heappush(self._delayed, (t.not_before, t.seq, t))

    def _requeue(self, t: Task, now: float) -> None:
        self.lifecycle.move(t, S.QUEUED, now, f"retry {t.attempts}")
        t.enqueued_at = now
        t.quantum_used = 0.0
        self.queues[t.pool].add(t, now)

    def _end_failed(self, t: Task, now: float) -> list[Task]:
        self._retire(t)
        changed = [t]
        for cid in self.deps.failed(t.id):
            c = self.tasks[cid]
            self._fail_waiting(c, now, f"parent {t.id} ended {t.state.value}")
            changed.append(c)
        return changed

    def _fail_waiting(self, t: Task, now: float, reason: str) -> None:
        t.error_type, t.error = "DependencyFailed", reason
        t.finished_at = now
        self.lifecycle.move(t, S.FAILED, now, reason)
        self._retire(t)

    def _retire(self, t: Task) -> None:
        self._live -= 1
        if t.deadline is not None:
            self._deadlines -= 1
        n = self._live_by_tenant.get(t.tenant, 0) - 1
        if n <= 0:
            self._live_by_tenant.pop(t.tenant, None)
        else:
            self._live_by_tenant[t.tenant] = n
        self.fair.deactivate(t.tenant)
        self.completed += 1

    def cancel(self, tid: str, now: float) -> bool:
        """Cancel a task that has not ended. A running one is marked cancelled here; the caller
        stops its worker (between steps, or by killing it)."""
        t = self.get(tid)
        if t.state.terminal and t.id not in self._retrying:
            return False
        if t.qkey is not None:
            self.queues[t.pool].remove(t)
        self.running[t.pool].pop(t.id, None)
        self._paused.pop(t.id, None)
        if t.id in self._retrying:  # its stale entry in _delayed is skipped by tick
            self._retrying.discard(t.id)
            self.lifecycle.move(t, S.QUEUED, now, "retry cancelled")
        self.deps.waiting.pop(t.id, None)
        t.finished_at = now
        self.lifecycle.move(t, S.CANCELLED, now, "cancelled")
        self._retire(t)
        for cid in self.deps.failed(t.id):
            self._fail_waiting(self.tasks[cid], now, f"parent {t.id} was cancelled")
        return True

    # -- recovery -------------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        """The sequence number given to the most recently accepted task."""
        return self._seq

    def restore(
        self,
        tasks: Iterable[Task],
        now: float,
        *,
        retrying: Collection[str] = (),
        fair_counters: Mapping[str, float] | None = None,
        seq: int = 0,
        reason: str = "scheduler restarted",
    ) -> list[Task]:
        """Recovery: re-insert tasks rebuilt from a snapshot and the journal, keeping their seq,
        state, level, attained service, attempts and steps (nothing is re-admitted or
        re-levelled). Final tasks are only indexed (ids, idempotency keys, finished parents).
        Pending ones wait on their live parents (or become ready, or fail, as ``submit`` would
        have it). Queued and preempted ones join their pool's queue in enqueue order. Failed or
        timed-out ones listed in ``retrying`` wait out their backoff until ``not_before``.
        Running ones lost their worker with the old scheduler: they are redelivered as ``lost``
        does (attempt counted, steps kept, audited with ``reason``), in seq order. Fair-share
        counters are set to ``fair_counters`` once the live tenants are active. Tasks enqueued at
        the same instant queue in seq order. Returns the tasks whose state changed here."""
        ordered = sorted(tasks, key=_by_seq)
        pending: list[Task] = []
        ready: dict[str, list[Task]] = {}
        running: list[Task] = []
        tenants: dict[str, int] = {}
        index, idem, queues = self.tasks, self.idempotency, self.queues
        queued, preempted, waiting, run = S.QUEUED, S.PREEMPTED, S.PENDING, S.RUNNING
        live = deadlines = done = 0
        for t in ordered:
            index[t.id] = t
            if t.idempotency_key is not None:
                idem[(t.tenant, t.idempotency_key)] = t.id
            st = t.state
            t.qkey = None
            if st in _TERMINAL and t.id not in retrying:
                done += 1
                continue
            if t.home is not None:
                t.home = None
            if t.pool not in queues:
                self.add_pool(t.pool)
            live += 1
            if t.deadline is not None:
                deadlines += 1
            if t.timeout_s is not None:
                self._timed = True
            tenants[t.tenant] = tenants.get(t.tenant, 0) + 1
            if st is queued or st is preempted:
                r = ready.get(t.pool)
                if r is None:
                    r = ready[t.pool] = []
                r.append(t)
                if st is preempted and t.timeout_s is not None:
                    self._paused[t.id] = t
            elif st is waiting:
                pending.append(t)
            elif st is run:
                running.append(t)
            else:
                self._retrying.add(t.id)
                heapq.heappush(self._delayed, (t.not_before, t.seq, t))
        if ordered:
            self._seq = max(self._seq, ordered[-1].seq)
        self._live += live
        self._deadlines += deadlines
        self.completed += done
        for tenant, n in tenants.items():
            self._live_by_tenant[tenant] = self._live_by_tenant.get(tenant, 0) + n
            self.fair.activate(tenant)
            self.fair.active[tenant] += n - 1
        self._seq = max(self._seq, seq)
        if fair_counters:
            self.fair.restore(fair_counters)
        changed: list[Task] = []
        for pool, ts in ready.items():
            ts.sort(key=_by_enqueue)
            self.queues[pool].add_batch(ts, now)
        for t in pending:
            unmet: list[str] = []
            dead: Task | None = None
            for pid in t.depends_on:
                p = self.tasks.get(pid)
                if p is None or p.state is S.SUCCEEDED:
                    continue
                if self.is_final(p):
                    dead = p
                    break
                unmet.append(pid)
                self._raise_depth(p, t.depth + 1)
            if dead is not None:
                self._fail_waiting(t, now, f"parent {dead.id} ended {dead.state.value}")
                changed.append(t)
            elif not self.deps.add(t.id, unmet):
                self._make_ready(t, now)
                changed.append(t)
        for t in running:
            self.running[t.pool][t.id] = t
            changed.append(t)
            changed.extend(c for c in self.lost(t, now, reason) if c is not t)
        return changed

    # -- time -----------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Task]:
        """Periodic work: release retries whose backoff ended, boost starving tasks, refresh scores.
        Returns running or paused tasks past their timeout (the caller stops and ``finish``es
        them with ``timed_out=True``)."""
        d = self._delayed
        while d and d[0][0] <= now:
            _, _, t = heapq.heappop(d)
            if t.id in self._retrying:
                self._retrying.discard(t.id)
                self._requeue(t, now)
        for q in self.queues.values():
            q.age(now)
        if now >= self._next_rescore:
            self._next_rescore = now + self.settings.rescore_interval_s
            # Age moves every task alike, so only fair share and deadlines reorder a queue.
            if (len(self.fair.active) > 1 and self.scorer.w.fair) or (
                self._deadlines and self.scorer.w.urgency
            ):
                for q in self.queues.values():
                    q.rescore(now)
        return self.overdue(now)

    def overdue(self, now: float) -> list[Task]:
        """Running and paused (preempted) tasks whose attempt has outlived its ``timeout_s``."""
        out: list[Task] = []
        if not self._timed:
            return out
        for run in self.running.values():
            for t in run.values():
                if t.timeout_s is not None and now - t.started_at > t.timeout_s:
                    out.append(t)
        for t in self._paused.values():
            if t.timeout_s is not None and now - t.started_at > t.timeout_s:
                out.append(t)
        return out

    def next_wakeup(self) -> float:
        """Earliest time at which ``tick`` has something to release (retries)."""
        d = self._delayed
        while d and d[0][2].id not in self._retrying:
            heapq.heappop(d)  # a retry cancelled meanwhile (``tick`` skips it): nothing to wake for
        return d[0][0] if d else math.inf

    # -- views ----------------------------------------------------------------------------------
    def _slices(self, q: TaskQueue) -> dict[str, Any]:
        """The first slices an MLFQ queue learned, by tier (``policy/sizes.py``)."""
        learned = q.learned_slices()
        if not learned:
            return {}
        names = {p: n for n, p in self.settings.tiers.items()}
        return {
            "first_slices": {
                names.get(prio, f"p{prio}"): {"slice": round(d, 6), "samples": n}
                for prio, (d, n) in sorted(learned.items())
            }
        }

    @property
    def live(self) -> int:
        return self._live

    def queued(self, pool: str | None = None) -> int:
        if pool is not None:
            return len(self.queues[pool])
        return sum(len(q) for q in self.queues.values())

    def info(self, t: Task) -> TaskInfo:
        return TaskInfo(
            id=t.id,
            kind=t.kind,
            state=t.state,
            tier=t.tier,
            priority=t.priority,
            level=t.level,
            tenant=t.tenant,
            attempts=t.attempts,
            submitted_at=t.arrival,
            started_at=t.first_start,
            finished_at=t.finished_at,
            worker=t.worker,
            steps=t.steps,
            service_s=t.service_s,
            error=t.error,
            error_type=t.error_type,
        )

    def stats(self) -> dict[str, Any]:
        tiers: dict[str, dict[str, int]] = {}
        levels: dict[int, int] = {}
        for q in self.queues.values():
            for t in q:
                d = tiers.setdefault(t.tier, {"queued": 0, "running": 0})
                d["queued"] += 1
                levels[t.level] = levels.get(t.level, 0) + 1
        for run in self.running.values():
            for t in run.values():
                tiers.setdefault(t.tier, {"queued": 0, "running": 0})["running"] += 1
        return {
            "policy": self.policy.value,
            "live": self._live,
            "pending": len(self.deps.waiting),
            "queued": self.queued(),
            "running": sum(len(r) for r in self.running.values()),
            "preemptions": self.preemptions,
            "completed": self.completed,
            "tiers": tiers,
            "levels": {str(k): v for k, v in sorted(levels.items())},
            "pools": {
                p: {"queued": len(q), "running": len(self.running[p]), **self._slices(q)}
                for p, q in self.queues.items()
            },
            "fair_share": self.fair.snapshot(),
        }
