"""Ready queues behind one interface (after vLLM v1's ``request_queue.py``): add, pop, peek, remove,
len, iteration, batch pop; one class per policy, an enum and a factory.

Design for speed: tasks are grouped in buckets by their discrete keys (priority, MLFQ level) and a
small heap orders the non-empty bucket keys, so the per-task work is a deque append/popleft (FCFS
inside a priority) or a heap operation on plain tuples (the score inside an MLFQ level). Removal is
lazy: a task's ``qkey`` points at its live entry, and entries it no longer points at are skipped."""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator

from raysched.policy.levels import LevelSchedule
from raysched.policy.scoring import CostModel, Scorer
from raysched.policy.sizes import SizeSample
from raysched.policy.task import Task

__all__ = [
    "FCFSQueue",
    "MLFQQueue",
    "Policy",
    "PriorityQueue",
    "SRPTQueue",
    "TaskQueue",
    "make_queue",
]

_heappush = heapq.heappush
_heappop = heapq.heappop


class Policy(str, enum.Enum):
    FCFS = "fcfs"
    PRIORITY = "priority"
    MLFQ = "mlfq"
    SRPT = "srpt"


class TaskQueue(ABC):
    """The ready queue of one pool. ``pop`` raises IndexError when empty; ``peek`` returns None."""

    #: Whether a queued task may displace a running one (see ``preempt_rank``).
    preemptive: bool = True

    @abstractmethod
    def add(self, task: Task, now: float) -> None: ...

    @abstractmethod
    def pop(self) -> Task: ...

    @abstractmethod
    def peek(self) -> Task | None: ...

    @abstractmethod
    def remove(self, task: Task) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[Task]:
        """Queued tasks in no particular order."""

    def add_batch(self, tasks: Iterable[Task], now: float) -> None:
        for t in tasks:
            self.add(t, now)

    def pop_batch(self, n: int) -> list[Task]:
        out: list[Task] = []
        while len(out) < n and len(self):
            out.append(self.pop())
        return out

    def __bool__(self) -> bool:
        return len(self) > 0

    def __contains__(self, task: object) -> bool:
        return isinstance(task, Task) and task.qkey is not None and task.qkey[-1] is task

    # -- policy hooks with neutral defaults ---------------------------------------------------
    def admit(self, task: Task) -> None:
        """Called once when a task first becomes ready (MLFQ: skip-join level)."""

    def preempt_rank(self, task: Task) -> tuple[float, ...] | None:
        """Coarse rank for preemption; a queued task displaces a running one only when its rank is
        strictly lower (better). None: this policy never preempts."""
        return None

    def quantum(self, task: Task) -> float:
        """Service (seconds or steps) the task may use before the policy looks again."""
        return self.quantum_of(task.level)

    def quantum_of(self, level: int) -> float:
        return math.inf

    def expire_quantum(self, task: Task) -> None:
        """The running task used up its quantum (MLFQ: demote)."""

    def next_level(self, task: Task, level: int) -> int:
        """The level ``task`` drops to when it uses up the quantum of ``level``."""
        return level

    def rank_at(self, task: Task, level: int) -> tuple[float, ...] | None:
        """``preempt_rank`` of ``task`` if it were at ``level``."""
        return self.preempt_rank(task)

    def age(self, now: float) -> int:
        """Starvation control; returns how many tasks were boosted."""
        return 0

    def rescore(self, now: float) -> None:
        """Recompute time-dependent scores (MLFQ)."""

    def observe(self, task: Task) -> None:
        """A task of this queue succeeded: its service tells about tasks like it (MLFQ learns its
        first slice from it)."""

    def learned_slices(self) -> dict[int, tuple[float, int]]:
        """Priority -> (learned first slice, samples held) (MLFQ)."""
        return {}

    def first_credit(self, task: Task) -> float:
        """Service beyond its level's quantum that ``task`` may use in its first slice of an
        attempt (MLFQ: the learned Gittins slice)."""
        return 0.0


class _DequeBuckets(TaskQueue):
    """FIFO deques keyed by a discrete bucket key, with a heap over the non-empty keys."""

    def __init__(self) -> None:
        self._buckets: dict[int, deque[tuple[Task]]] = {}
        self._keys: list[int] = []
        self._live: set[int] = set()
        self._n = 0

    def _key(self, task: Task, now: float) -> int:
        raise NotImplementedError

    def add(self, task: Task, now: float = 0.0) -> None:
        self._push(task, self._key(task, now))

    def add_batch(self, tasks: Iterable[Task], now: float) -> None:
        key, push = self._key, self._push
        for t in tasks:
            push(t, key(t, now))

    def _push(self, task: Task, k: int) -> None:
        dq = self._buckets.get(k)
        if dq is None:
            dq = self._buckets[k] = deque()
        if k not in self._live:
            self._live.add(k)
            _heappush(self._keys, k)
        e = (task,)
        task.qkey = e
        dq.append(e)
        self._n += 1

    def pop(self) -> Task:
        keys, buckets = self._keys, self._buckets
        while keys:
            k = keys[0]
            dq = buckets[k]
            while dq:
                e = dq.popleft()
                t = e[0]
                if t.qkey is e:
                    t.qkey = None
                    self._n -= 1
                    if not dq:
                        _heappop(keys)
                        self._live.discard(k)
                    return t
            _heappop(keys)
            self._live.discard(k)
        raise IndexError("pop from an empty queue")

    def pop_batch(self, n: int) -> list[Task]:
        out: list[Task] = []
        keys, buckets = self._keys, self._buckets
        while keys and len(out) < n:
            k = keys[0]
            dq = buckets[k]
            while dq and len(out) < n:
                e = dq.popleft()
                t = e[0]
                if t.qkey is e:
                    t.qkey = None
                    out.append(t)
            if not dq:
                _heappop(keys)
                self._live.discard(k)
        self._n -= len(out)
        return out

    def peek(self) -> Task | None:
        keys, buckets = self._keys, self._buckets
        while keys:
            k = keys[0]
            dq = buckets[k]
            while dq:
                t = dq[0][0]
                if t.qkey is dq[0]:
                    return t
                dq.popleft()
            _heappop(keys)
            self._live.discard(k)
        return None

    def remove(self, task: Task) -> bool:
        if task.qkey is None or task.qkey[-1] is not task:
            return False
        task.qkey = None
        self._n -= 1
        return True

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Task]:
        for dq in self._buckets.values():
            for e in dq:
                if e[0].qkey is e:
                    yield e[0]


class FCFSQueue(_DequeBuckets):
    """Arrival order, nothing else. Never preempts."""

    preemptive = False

    def _key(self, task: Task, now: float) -> int:
        return 0


class PriorityQueue(_DequeBuckets):
    """Tier / priority first (lower first), then arrival order."""

    def _key(self, task: Task, now: float) -> int:
        return task.priority

    def preempt_rank(self, task: Task) -> tuple[float, ...] | None:
        return (task.priority,)


class SRPTQueue(TaskQueue):
    """Shortest remaining processing time, from the oracle's ``remaining_hint``. Replay only: a real
    scheduler cannot know a generation's length."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Task]] = []
        self._n = 0

    def add(self, task: Task, now: float = 0.0) -> None:
        rem = task.remaining_hint if task.remaining_hint is not None else math.inf
        e = (rem, task.seq, task)
        task.qkey = e
        _heappush(self._heap, e)
        self._n += 1

    def pop(self) -> Task:
        h = self._heap
        while h:
            e = _heappop(h)
            t = e[2]
            if t.qkey is e:
                t.qkey = None
                self._n -= 1
                return t
        raise IndexError("pop from an empty queue")

    def peek(self) -> Task | None:
        h = self._heap
        while h:
            e = h[0]
            t: Task = e[2]
            if t.qkey is e:
                return t
            _heappop(h)
        return None

    def remove(self, task: Task) -> bool:
        if task.qkey is None or task.qkey[-1] is not task:
            return False
        task.qkey = None
        self._n -= 1
        return True

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Task]:
        return (e[2] for e in self._heap if e[2].qkey is e)

    def preempt_rank(self, task: Task) -> tuple[float, ...] | None:
        rem = task.remaining_hint if task.remaining_hint is not None else math.inf
        return (rem,)


_BANDS = 1024  # score resolution inside one MLFQ level
_LEVEL_SHIFT = 11  # bucket key = priority << 21 | level << 11 | band; band 0 = boosted
_PRIO_SHIFT = 21


class MLFQQueue(_DequeBuckets):
    """Tiers first, then feedback levels, then the weighted score inside a level.

    The score is quantised to 1/1024 of its range: each (tier, level, score band) is a FIFO bucket
    and one integer heap orders the non-empty buckets, so adding and popping cost a deque operation
    instead of a heap operation over every queued task. Within a band, arrival order decides.

    A task enters by skip-join, is demoted when it uses up its level's quantum and keeps its level
    when it yields early. A task that has waited ``starvation_s`` since it was last enqueued is
    boosted to level 0 (or the first level whose quantum covers resuming it on another worker) and
    queued ahead of all unboosted work of its tier, so under continuous load of its tier it runs
    within about ``starvation_s`` plus the boosted work ahead of it. The boost is a loan of one
    slice: when that quantum is used the task returns to the level it was lifted from, so boosts
    keep long tasks moving without re-running them through every short level. Tiers stay
    strict.

    A task without a hint (any task, with ``hint_join`` off) starts each attempt with a first
    quantum stretched to the slice learned from finished tasks of its tier (``sizes.SizeSample``,
    ``first_credit``). Per tier, not per handler: levels rank a tier's tasks by attained service
    whatever their handler, so a handler's own long slice would hold off another handler's short
    newcomers at the same level."""

    def __init__(
        self,
        levels: LevelSchedule | None = None,
        scorer: Scorer | None = None,
        *,
        starvation_s: float = 15.0,
        cost: CostModel | None = None,
        hint_join: bool = True,
        learn_first_slice: bool = True,
    ) -> None:
        super().__init__()
        self.sizes: SizeSample[int] | None = SizeSample() if learn_first_slice else None
        self.levels = levels or LevelSchedule()
        self.scorer = scorer or Scorer()
        self.cost = cost or self.scorer.cost
        self.starvation_s = starvation_s
        self._order: deque[tuple[Task]] = deque()  # entries in enqueue order, for aging
        self._quanta = [self.levels.quantum(p) for p in range(self.levels.levels)]
        self._last = self.levels.levels - 1
        # Service a task has had by the end of each level, walking down from level 0.
        self._ends = list(itertools.accumulate(self._quanta[: self._last]))
        self.hint_join = hint_join
        dec = self.cost.decode_s_per_token
        # size_hint is in seconds; a schedule in steps counts decode steps
        self._hint_unit = 1.0 if self.levels.unit == "seconds" else (1.0 / dec if dec > 0 else 0.0)
        self._seconds = self.levels.unit == "seconds"
        self._prefill = self.cost.prefill_s_per_token
        self._recompute = self.cost.recompute
        w = self.scorer.w
        self._band_scale = (_BANDS - 1) / max(w.urgency + w.age + w.size + w.depth + w.fair, 1e-9)
        self._score = self.scorer.score

    def admit(self, task: Task) -> None:
        # Skip-join: the first level whose quantum covers the first step (quanta ascend).
        hint = task.size_hint
        if hint is not None and self.hint_join:
            # The hint is the whole task's size: the first step is what the prompt says, and the
            # task enters no higher than where a task of that size would finish when walking
            # down from level 0 -- short work ahead of long work from the start (SRPT on the
            # estimate), while a task that outgrows its hint keeps being demoted.
            level = max(
                bisect_left(self._quanta, task.prompt_tokens * self._prefill),
                bisect_left(self._ends, hint * self._hint_unit),
            )
        else:
            first = task.prompt_tokens * self._prefill if task.prompt_tokens else (hint or 0.0)
            level = bisect_left(self._quanta, first)
        task.level = min(level, self._last)

    def _first_step(self, task: Task) -> float:
        """The first step (the prefill) in the schedule's unit."""
        return task.prompt_tokens * self._prefill if self._seconds else 1.0

    def observe(self, task: Task) -> None:
        # one attempt only: a retried task's service covers its failed attempts too
        if self.sizes is not None and task.attempts == 1:
            used = task.service_s if self._seconds else float(task.steps)
            x = used - self._first_step(task)
            self.sizes.observe(task.priority, x if x > 0.0 else 0.0)

    def learned_slices(self) -> dict[int, tuple[float, int]]:
        if self.sizes is None:
            return {}
        return self.sizes.learned()

    def first_credit(self, task: Task) -> float:
        if self.sizes is None or (task.size_hint is not None and self.hint_join):
            return 0.0
        d = self.sizes.first_slice(task.priority)
        if d <= 0.0:
            return 0.0
        c = self._first_step(task) + d - self._quanta[task.level]
        return c if c > 0.0 else 0.0

    def _key(self, task: Task, now: float) -> int:
        b = _BANDS - int(self._score(task, now) * self._band_scale)
        b = 1 if b < 1 else (_BANDS if b > _BANDS else b)
        return (task.priority << _PRIO_SHIFT) | (task.level << _LEVEL_SHIFT) | b

    def _push(self, task: Task, k: int) -> None:
        dq = self._buckets.get(k)
        if dq is None:
            dq = self._buckets[k] = deque()
        if k not in self._live:
            self._live.add(k)
            _heappush(self._keys, k)
        e = (task,)
        task.qkey = e
        dq.append(e)
        self._order.append(e)
        self._n += 1

    def add_batch(self, tasks: Iterable[Task], now: float) -> None:
        # add() unrolled: one loop, locals only (the batched hot path).
        score, scale = self._score, self._band_scale
        buckets, live, keys, order = self._buckets, self._live, self._keys, self._order
        n = 0
        for t in tasks:
            b = _BANDS - int(score(t, now) * scale)
            b = 1 if b < 1 else (_BANDS if b > _BANDS else b)
            k = (t.priority << _PRIO_SHIFT) | (t.level << _LEVEL_SHIFT) | b
            dq = buckets.get(k)
            if dq is None:
                dq = buckets[k] = deque()
            if k not in live:
                live.add(k)
                _heappush(keys, k)
            e = (t,)
            t.qkey = e
            dq.append(e)
            order.append(e)
            n += 1
        self._n += n

    def remove(self, task: Task) -> bool:
        if not super().remove(task):
            return False
        if len(self._order) > 2048 and len(self._order) > 4 * self._n:
            self._order = deque(e for e in self._order if e[0].qkey is e)
        return True

    def preempt_rank(self, task: Task) -> tuple[float, ...] | None:
        return (task.priority, task.level)

    def rank_at(self, task: Task, level: int) -> tuple[float, ...] | None:
        return (task.priority, level)

    def expire_quantum(self, task: Task) -> None:
        task.level = self.next_level(task, task.level)
        if task.boosted_from is not None and task.level >= task.boosted_from:
            task.boosted_from = None

    def next_level(self, task: Task, level: int) -> int:
        # Down one level, and further if needed so that the new quantum covers what resuming
        # the task elsewhere would cost (skip-join applied to the recompute): otherwise a long
        # task preempted on short quanta spends more time recomputing than running.
        if not self._recompute:
            nl = level + 1 if level < self._last else level
        else:
            nl = max(
                min(level + 1, self._last),
                min(bisect_left(self._quanta, self.cost.recompute_s(task)), self._last),
            )
        b = task.boosted_from
        # A boost lends one slice ahead of the task's level; then it goes back to where it was
        # (restarting its way down from level 0 would hand a long task all the short quanta
        # again, at the expense of every newer task).
        return b if b is not None and b > nl else nl

    def quantum_of(self, level: int) -> float:
        return self._quanta[level] if level < len(self._quanta) else math.inf

    def age(self, now: float) -> int:
        boosted = 0
        order, limit = self._order, now - self.starvation_s
        while order:
            e = order[0]
            t = e[0]
            if t.qkey is not e:
                order.popleft()
                continue
            if t.enqueued_at > limit:
                break
            order.popleft()
            t.qkey = None  # the old entry goes stale; the task moves to a boosted band
            self._n -= 1
            if t.quantum_used > 0.0:  # a fresh quantum at its new level (and any stretch left)
                t.quantum_used = 0.0
            # Up to level 0, or to the first level whose quantum covers resuming it elsewhere;
            # either way it waits in its tier's boosted bucket (level 0, band 0), ahead of all
            # unboosted work of the tier: keyed at a deeper level it would stay behind a steady
            # stream of fresh level-0 tasks and starve.
            lifted = min(bisect_left(self._quanta, self.cost.recompute_s(t)), self._last)
            if t.level > lifted:
                t.boosted_from = t.level if t.boosted_from is None else max(t.boosted_from, t.level)
            t.level = lifted
            self._push(t, t.priority << _PRIO_SHIFT)
            order.pop()  # a boosted task is not aged again until it is re-enqueued
            boosted += 1
        return boosted

    def rescore(self, now: float) -> None:
        """Re-band every queued task with fresh scores (age, deadlines, fair share move)."""
        # Unboosted tasks are taken in aging order (``_order`` is enqueue order), so those that
        # share a new bucket keep FIFO order and aging stays in enqueue order, without a sort.
        # Boosted ones keep their place in front and are not aged again.
        queued = [e[0] for e in self._order if e[0].qkey is e]
        # Tasks put back with their old enqueue time (held by a dispatch, an unreserved slot)
        # sit behind newer ones in ``_order``; aging stops at the first task not yet due, so put
        # them back in enqueue order here (the usual case, already ordered, costs one pass).
        if any(a.enqueued_at > b.enqueued_at for a, b in itertools.pairwise(queued)):
            queued.sort(key=_enqueue_order)
        mask = (1 << _LEVEL_SHIFT) - 1
        boosted = [
            (k, e[0])
            for k in self._live
            if k & mask == 0
            for e in self._buckets[k]
            if e[0].qkey is e
        ]
        self._buckets.clear()
        self._keys.clear()
        self._live.clear()
        self._order = deque()
        self._n = 0
        for k, t in boosted:
            self._push(t, k)
            self._order.pop()
        self.add_batch(queued, now)


def _enqueue_order(t: Task) -> tuple[float, int]:
    return (t.enqueued_at, t.seq)


def make_queue(
    policy: Policy | str,
    *,
    levels: LevelSchedule | None = None,
    scorer: Scorer | None = None,
    starvation_s: float = 15.0,
    hint_join: bool = True,
    learn_first_slice: bool = True,
) -> TaskQueue:
    p = Policy(policy)
    if p is Policy.FCFS:
        return FCFSQueue()
    if p is Policy.PRIORITY:
        return PriorityQueue()
    if p is Policy.SRPT:
        return SRPTQueue()
    return MLFQQueue(
        levels,
        scorer,
        starvation_s=starvation_s,
        hint_join=hint_join,
        learn_first_slice=learn_first_slice,
    )
