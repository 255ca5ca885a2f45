"""The recorder: turns the policy core's state changes into journal records, so the scheduler does
not have to name every change at every call site.

It installs itself as the lifecycle's change log (``Lifecycle.changes``: no call and no event
object per transition). Every transition (submission, preemption, retry, finish, cancel, a child
failed by its parent, a retry released by ``tick``) marks the task there, but a start from
``queued`` of a task without a mark, which the lifecycle lists (``Lifecycle.starts``); changes
that are not transitions (service and steps reported by a running task, a level demotion) are
marked with ``touch``. With ``hold_starts_s`` set (the scheduler's default is 50 ms), a drain
takes the listed starts as one batch and holds it back that long: most short tasks then end
before their start is drained, and one outcome row says both (a restarted scheduler counts the
held starts the surviving workers report: ``recover(started=)``). Only the tasks of a released
batch still running get a start row: nothing per task for the others until then.
``drain`` builds one row per dirty task from its *current* state (several changes between two
drains cost one row; the rows of a drain make one ``rows`` record, see ``records``); a task that
ended gets a whole row, or a state row if its first row is in the same journal segment: the results
files are made from them later (``results``, off the scheduler's process). ``commit`` waits until
the journal has everything changed so far (await it before acknowledging a submission or a cancel,
and before answering an outcome; ``commit(new_only=True)`` waits for the new tasks only, enough to
acknowledge a submission); ``flush`` drains without waiting (after dispatch, worker reports and
ticks). The tasks of a frame whose write failed go again, whole, in the next drain, and a
``commit`` returns only once they are written.

A successful outcome that a worker encoded (``records.split_done``) is journaled as the worker's
bytes: ``outcomes`` takes the task out of the pending changes and queues a ``done`` record
(``records``) in its place, written with the next drain after that drain's rows, so the scheduler
neither builds nor encodes a row for it."""

from __future__ import annotations

import asyncio
import operator
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import orjson

from raysched.models import TaskState
from raysched.pause import paused_gc
from raysched.policy.lifecycle import CHANGED, CREATED
from raysched.policy.task import Task
from raysched.store.journal import Journal, settle_future
from raysched.store.records import fair_counters, rows_record

if TYPE_CHECKING:
    from raysched.policy.core import SchedulerCore

__all__ = ["Recorder"]

_TERMINAL = frozenset(s for s in TaskState if s.terminal)
_get_level = operator.attrgetter("level")
_get_first_start = operator.attrgetter("first_start")


class Recorder:
    """Installs itself as the change log of ``core``'s lifecycle."""

    def __init__(
        self,
        core: SchedulerCore,
        journal: Journal,
        *,
        hold_starts_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.journal = journal
        #: A start is drained only once the task has run this long (by ``clock``, the clock the
        #: core's ``now`` comes from): a task that ends sooner costs no start row, its outcome
        #: row says everything. 0 drains every start at the next drain.
        self.hold_starts_s = hold_starts_s
        self.clock = clock
        #: Final outcomes drained so far (whole rows the results files are made from).
        self.ended = 0
        # Transitions, filled by the lifecycle (task -> CREATED | CHANGED); keyed by
        # the task objects (the core never replaces one): no lookup by id per task.
        self._changes: dict[Task, int] = {}
        self._touched: set[Task] = set()
        # Held-back starts: (when the drain took them, the batch of tasks), oldest first.
        self._held: deque[tuple[float, list[Task]]] = deque()
        # Running tasks touched while their start may be held back: written whole once they
        # have run ``hold_starts_s`` (their start row would not say their progress).
        self._late: set[Task] = set()
        # Tasks whose first (``s`` or ``q``) row went to journal segment ``_segment``: their
        # outcome there is a state row (``records``, kind ``e``); the results files take the
        # spec from the first row.
        self._segment = -1
        self._in_segment: set[Task] = set()
        self._ticks: dict[asyncio.AbstractEventLoop, asyncio.Future[None]] = {}
        # loops whose pending commit must drain every change (not only new tasks)
        self._full_ticks: set[asyncio.AbstractEventLoop] = set()
        # The tasks of frames whose write failed (appended by the writer thread): the next drain
        # writes them again, whole.
        self._redo: deque[list[Task]] = deque()
        # ``done`` records to write (segment, record, its tasks), see ``outcomes``
        self._done: list[tuple[int, dict[str, Any], list[Task]]] = []
        core.lifecycle.changes = self._changes
        core.lifecycle.starts = []

    def touch(self, t: Task) -> None:
        """``t``'s service, steps, quantum or level changed without a transition."""
        self._touched.add(t)

    @property
    def pending(self) -> int:
        """Tasks with changes not yet drained (held-back starts of running tasks included)."""
        running = TaskState.RUNNING
        starts = [self.core.lifecycle.starts, *(b for _, b in self._held)]
        return (
            len(self._changes)
            + len(self._touched)
            + len(self._late)
            + sum(t.state is running for b in starts for t in b)
            + sum(map(len, self._redo))
            + sum(len(d[2]) for d in self._done)
        )

    def outcomes(
        self,
        worker: str,
        at: float,
        data: bytes,
        events: list[dict[str, Any]],
        taken: list[Task | None],
    ) -> None:
        """Successful outcomes of ``worker`` reported at ``at`` (``now``), as the worker encoded
        them (``data``, the JSON list ``events`` of ``done`` events, see
        ``records.split_done``): ``taken[i]`` is the task ``events[i]`` ended, or None where the
        scheduler refused it. Those that ended a first attempt with no steps and the event's
        service (what ``records.done_as_rows`` reads the record as), whose first row is in the
        current segment and that changed in nothing else since the last drain, are journaled as
        ``data`` (a ``done`` record, written with the next drain); the others get rows as
        usual."""
        if self.journal.segment != self._segment:  # a new segment: its first rows are unknown
            return
        changes = self._changes
        touched = self._touched
        here = self._in_segment
        use: list[int] = []
        tasks: list[Task] = []
        pop = changes.pop
        for i, t in enumerate(taken):
            # (``!=`` as ``done_as_rows`` reads the service: ``float`` of what the event says)
            if (
                t is None
                or t.attempts != 1
                or t.steps
                or t.boosted_from is not None
                or t not in here
                or t.service_s != events[i].get("service", 0.0)
                or (touched and t in touched)
            ):
                continue
            mark = pop(t, None)  # the record says its outcome (a held start of it is skipped)
            if mark != CHANGED:  # not changed since the last drain (None), or new
                if mark is not None:
                    changes[t] = mark
                continue
            here.discard(t)  # (ended: keeps the set to the tasks in flight)
            use.append(i)
            tasks.append(t)
        if tasks:
            rec = {
                "k": "done",
                "w": worker,
                "at": at,
                "ev": orjson.Fragment(data),
                "use": use,
                "lv": list(map(_get_level, tasks)),
                "fs": list(map(_get_first_start, tasks)),
            }
            self._done.append((self._segment, rec, tasks))
            self.ended += len(tasks)

    def drain(self, everything: bool = False) -> list[dict[str, Any]]:
        """The changes since the last drain as one ``rows`` record (``records.rows_record``;
        none if nothing changed). Running tasks that started less than ``hold_starts_s`` ago
        stay back for a later drain, unless ``everything``."""
        return self._drain(everything)[0]

    def _drain(
        self, everything: bool, new_only: bool = False
    ) -> tuple[list[dict[str, Any]], tuple[list[Task], ...]]:
        """``drain``, and the lists of the tasks its record holds (for ``_written``);
        ``new_only``: only new tasks (and frames to write again); other changes stay for the
        next drain."""
        changes = self._changes
        held = self._held
        lc = self.core.lifecycle
        if new_only:  # the new tasks go now, the rest stays for the next drain
            if CHANGED in changes.values():  # (a scan in C: often there are only new tasks)
                dirty = {t: m for t, m in changes.items() if m & CREATED}
                rest = {t: m for t, m in changes.items() if not m & CREATED}
            else:
                dirty, rest = changes, {}
            if not (dirty or self._redo):
                return [], ()
            self._changes = rest
        elif not (
            changes or self._touched or lc.starts or held or self._late or self._redo or self._done
        ):
            return [], ()
        else:
            dirty, self._changes = changes, {}
        while self._redo:  # their rows are lost: whole rows again, as if new
            for t in self._redo.popleft():
                dirty[t] = dirty.get(t, 0) | CREATED
        core = self.core
        core.lifecycle.changes = self._changes
        if new_only:
            touched: set[Task] = set()
        else:
            touched, self._touched = self._touched, set()
        waiting = core.retrying
        terminal = _TERMINAL
        new: list[Task] = []
        fresh: list[Task] = []  # new, not started yet: its state fields are at their defaults
        changed: list[Task] = []
        ended: list[Task] = []
        starts: list[Task] = []  # a start from queued is all that changed: a short row
        retrying: list[str] = []
        children: list[Task] = []
        hold = self.hold_starts_s > 0 and not everything
        now = self.clock()
        young = now - self.hold_starts_s if hold else 0.0
        running = TaskState.RUNNING
        for t, mark in dirty.items():
            if mark & CREATED and t.depends_on:  # always written (it is being acknowledged)
                children.append(t)
            if t.state in terminal:
                if t.id not in waiting:  # final
                    ended.append(t)
                    continue
                retrying.append(t.id)
            if not mark & CREATED:
                changed.append(t)
            elif t.attempts == 0 and t.enqueued_at == t.arrival:
                fresh.append(t)
            else:
                new.append(t)
        if not new_only:
            late: set[Task] = set()
            if self._late:  # progress of a held start, once it has run long enough: whole
                if hold:
                    late = {t for t in self._late if t.started_at <= young}
                    self._late -= late
                else:
                    late, self._late = self._late, set()
                late = {t for t in late if t.state is running and t not in dirty}
                changed += late
            if lc.starts:
                held.append((now, lc.starts))
                lc.starts = []
            # starts held long enough (or all, for ``everything``): a start row for each task
            # still running that has no row in this drain (any later change of a task got a
            # whole row, and rows hold absolute values: a start row then is merely redundant)
            released: list[Task] = []
            while held and (not hold or held[0][0] <= young):
                released += held.popleft()[1]
            if released:
                live = [t for t in released if t.state is running and t not in dirty]
                if len(live) > 1:
                    live = list(dict.fromkeys(live))  # started twice while held
                for t in live:
                    if t in late:
                        continue
                    (starts if t.boosted_from is None else changed).append(t)  # a boost: whole
        if children:
            touched.update(self._raised_parents(children))
        if touched:
            if starts:  # progress since the start too: a whole row
                changed.extend(t for t in starts if t in touched)
                starts = [t for t in starts if t not in touched]
            touched.difference_update(new)
            touched.difference_update(fresh)
            touched.difference_update(changed)
            touched.difference_update(ended)
            if hold:  # progress of a start that may be held: a whole row once it is released
                young_ones = [t for t in touched if t.state is running and t.started_at > young]
                self._late.update(young_ones)
                touched.difference_update(young_ones)
        done: list[dict[str, Any]] = []
        done_tasks: list[Task] = []
        if self._done and not new_only:
            segment = self.journal.segment
            for seg, rec, tasks in self._done:
                if seg == segment:
                    rec["fc"] = fair_counters(core.fair.counters, (tasks,))
                    done.append(rec)
                    done_tasks.extend(tasks)
                else:  # the segment of their first rows is sealed: whole rows, as any outcome
                    ended.extend(tasks)
                    self.ended -= len(tasks)
            self._done = []
        if not (new or fresh or changed or touched or ended or starts or done):
            return [], ()
        self.ended += len(ended)
        # the record goes to the journal's current segment (drains and rotations happen on one
        # thread, and an append queues behind any rotation)
        segment = self.journal.segment
        here = self._in_segment
        if segment != self._segment:
            here.clear()
            self._segment = segment
        ended_here: list[Task] = []
        if here and ended:
            whole: list[Task] = []
            for t in ended:
                if t in here:
                    here.discard(t)
                    ended_here.append(t)
                else:
                    whole.append(t)
            ended = whole
        here.update(new)
        here.update(fresh)
        touched_list = list(touched)
        groups = (new, fresh, changed, touched_list, ended, ended_here, starts, done_tasks)
        records = (
            [
                rows_record(
                    new,
                    changed,
                    touched_list,
                    core.fair.counters,
                    retrying,
                    ended,
                    ended_here,
                    starts,
                    fresh,
                )
            ]
            if new or fresh or changed or touched_list or ended or ended_here or starts
            else []
        )
        return records + done, groups

    def _raised_parents(self, children: list[Task]) -> list[Task]:
        """Live ancestors of new tasks: accepting a child raises its parents' ``depth`` (a
        scoring factor) without a transition. The walk goes on through ancestors that have
        ended since: the core raised the depths above them while they were live."""
        tasks = self.core.tasks
        out: list[Task] = []
        seen: set[str] = set()
        for t in children:
            stack = list(t.depends_on)
            while stack:
                pid = stack.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                p = tasks.get(pid)
                if p is None:
                    continue
                if not self.core.is_final(p):
                    out.append(p)
                stack.extend(p.depends_on)
        return out

    def flush(self, everything: bool = False, new_only: bool = False) -> Future[None]:
        """Drain into the journal without waiting (the future resolves when written);
        ``everything``: held-back starts too; ``new_only``: new tasks only (see ``_drain``)."""
        with paused_gc():  # thousands of rows at once: see ``pause``
            records, groups = self._drain(everything, new_only)
            done = self.journal.append_nowait(records)
            # freed while paused: alive at the collection that re-enabling soon triggers, the
            # rows would be scanned and moved to an older generation for nothing
            del records
        if groups:
            done.add_done_callback(lambda f: self._written(f, groups))
        return done

    def _written(self, done: Future[None], groups: tuple[list[Task], ...]) -> None:
        if done.exception() is not None:
            # The frame is lost: its tasks go again, whole, in the next drain (a deque append,
            # safe from the writer thread; resolved before any later frame's future, so a commit
            # whose own drain was empty still sees them, see ``commit``). First rows may be
            # among them: later outcomes go whole too (the next drain starts a fresh set).
            self._redo.append([t for g in groups for t in g])
            self._segment = -1

    async def commit(self, new_only: bool = False) -> None:
        """Wait until every change made so far is written per the sync policy: call before
        acknowledging what changed. The commits of one turn of the event loop share one drain,
        one encoding and one journal entry (and the journal's writer batches further).
        ``new_only``: enough to acknowledge submissions: the new tasks (with their current
        state) are written, other changes wait for the next ``flush``."""
        loop = asyncio.get_running_loop()
        while True:
            fut = self._ticks.get(loop)
            if fut is None:
                fut = self._ticks[loop] = loop.create_future()
                loop.call_soon(self._commit_tick, loop)
            if not new_only:
                self._full_ticks.add(loop)
            await asyncio.shield(fut)
            if not self._redo:  # else an earlier frame failed: its changes are not written yet
                return

    def _commit_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        fut = self._ticks.pop(loop)
        full = loop in self._full_ticks
        self._full_ticks.discard(loop)
        try:
            done = self.flush(new_only=not full)
        except BaseException as exc:
            fut.set_exception(exc)
            return
        if done.done():  # written in this thread (see ``Journal``): no hop through the loop
            settle_future(done, fut)
        else:
            done.add_done_callback(lambda f: loop.call_soon_threadsafe(settle_future, f, fut))

    def commit_sync(self) -> None:
        """``commit`` for threads that are not an event loop (tests, benchmarks, recovery)."""
        self.flush().result()
        while self._redo:
            self.flush().result()

    def detach(self) -> None:
        """Stop recording (the lifecycle keeps no change log)."""
        if self.core.lifecycle.changes is self._changes:
            self.core.lifecycle.changes = None
