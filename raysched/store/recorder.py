"""The recorder: turns the policy core's state changes into journal records, so the scheduler does
not have to name every change at every call site.

It is a lifecycle watcher (``Lifecycle.watchers``: cheaper than an audit hook, no event object is
built). Every transition (submission, start, preemption, retry, finish, cancel, a child failed by
its parent, a retry released by ``tick``) marks the task dirty; changes that are not transitions
(service and steps reported by a running task, a level demotion) are marked with ``touch``.
``drain`` builds one row per dirty task from its *current* state (several changes between two
drains cost one row; the rows of a drain make one ``rows`` record, see ``records``); a task that
ended gets a whole row, from which the results files are made later (``results``, off the
scheduler's process). ``commit`` waits until the journal has everything changed so far (await
it before acknowledging a submission or a cancel); ``flush`` drains without waiting (after
dispatch, worker reports and ticks)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from raysched.models import TaskState
from raysched.policy.task import Task
from raysched.store.journal import Journal, settle_future
from raysched.store.pause import paused_gc
from raysched.store.records import rows_record

if TYPE_CHECKING:
    from raysched.policy.core import SchedulerCore

__all__ = ["Recorder"]

_NEW, _CHANGED, _TOUCHED = 1, 2, 4
_TERMINAL = frozenset(s for s in TaskState if s.terminal)


class Recorder:
    """Installs itself as a lifecycle watcher of ``core``."""

    def __init__(
        self,
        core: SchedulerCore,
        journal: Journal,
    ) -> None:
        self.core = core
        self.journal = journal
        #: Final outcomes drained so far (whole rows the results files are made from).
        self.ended = 0
        self._dirty: dict[Task, int] = {}
        self._children: list[Task] = []  # new tasks with parents, since the last drain
        self._ticks: dict[asyncio.AbstractEventLoop, asyncio.Future[None]] = {}
        core.lifecycle.watchers.append(self)

    def __call__(self, task: Task, created: bool) -> None:
        d = self._dirty
        d[task] = d.get(task, 0) | (_NEW if created else _CHANGED)
        if created and task.depends_on:
            self._children.append(task)

    def touch(self, t: Task) -> None:
        """``t``'s service, steps, quantum or level changed without a transition."""
        d = self._dirty
        d[t] = d.get(t, 0) | _TOUCHED

    @property
    def pending(self) -> int:
        """Tasks with changes not yet drained."""
        return len(self._dirty)

    def drain(self) -> list[dict[str, Any]]:
        """The changes since the last drain as one ``rows`` record (``records.rows_record``;
        none if nothing changed)."""
        dirty, self._dirty = self._dirty, {}
        children, self._children = self._children, []
        if not dirty:
            return []
        core = self.core
        is_final = core.is_final
        terminal = _TERMINAL
        if children:
            for p in self._raised_parents(children):
                dirty[p] = dirty.get(p, 0) | _TOUCHED
        new: list[Task] = []
        changed: list[Task] = []
        touched: list[Task] = []
        ended: list[Task] = []
        retrying: list[str] = []
        # Keyed by the task objects (the core never replaces one): no lookup by id per task.
        for t, flags in dirty.items():
            if flags & (_NEW | _CHANGED):
                if t.state in terminal:
                    if is_final(t):
                        ended.append(t)
                        continue
                    retrying.append(t.id)
                (new if flags & _NEW else changed).append(t)
            else:
                touched.append(t)
        self.ended += len(ended)
        return [rows_record(new, changed, touched, core.fair.counters, retrying, ended)]

    def _raised_parents(self, children: list[Task]) -> list[Task]:
        """Live ancestors of new tasks: accepting a child raises its parents' ``depth`` (a
        scoring factor) without a transition."""
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
                if p is None or p.state.terminal:
                    continue
                out.append(p)
                stack.extend(p.depends_on)
        return out

    def flush(self) -> Future[None]:
        """Drain into the journal without waiting (the future resolves when written)."""
        with paused_gc():  # thousands of rows at once: see ``pause``
            return self.journal.append_nowait(self.drain())

    async def commit(self) -> None:
        """Wait until every change made so far is written per the sync policy: call before
        acknowledging what changed. The commits of one turn of the event loop share one drain,
        one encoding and one journal entry (and the journal's writer batches further)."""
        loop = asyncio.get_running_loop()
        fut = self._ticks.get(loop)
        if fut is None:
            fut = self._ticks[loop] = loop.create_future()
            loop.call_soon(self._commit_tick, loop)
        await asyncio.shield(fut)

    def _commit_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        fut = self._ticks.pop(loop)
        try:
            done = self.flush()
        except BaseException as exc:
            fut.set_exception(exc)
            return
        done.add_done_callback(lambda f: loop.call_soon_threadsafe(settle_future, f, fut))

    def commit_sync(self) -> None:
        """``commit`` for threads that are not an event loop (tests, benchmarks, recovery)."""
        self.journal.append_many(self.drain())

    def detach(self) -> None:
        """Stop recording (removes the watcher)."""
        watchers = self.core.lifecycle.watchers
        if self in watchers:
            watchers.remove(self)
