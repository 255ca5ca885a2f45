"""The task state machine of CONTRACT.md section 2. Transitions not listed here are refused with
``InvalidTransition`` and leave the task untouched; every accepted one is an audit event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from raysched.errors import InvalidTransition
from raysched.models import AuditEvent, TaskState
from raysched.policy.task import Task

__all__ = ["ALLOWED", "CHANGED", "CREATED", "AuditHook", "Lifecycle", "LogAudit"]

S = TaskState
ALLOWED: dict[TaskState, frozenset[TaskState]] = {
    S.PENDING: frozenset({S.QUEUED, S.CANCELLED, S.FAILED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.PREEMPTED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT}),
    S.PREEMPTED: frozenset({S.RUNNING, S.CANCELLED, S.TIMED_OUT, S.FAILED}),
    # A retry sends failed / timed-out work back to the queue while attempts remain.
    S.FAILED: frozenset({S.QUEUED}),
    S.TIMED_OUT: frozenset({S.QUEUED}),
    S.SUCCEEDED: frozenset(),
    S.CANCELLED: frozenset(),
}


class AuditHook(Protocol):
    def __call__(self, event: AuditEvent) -> None: ...


#: Marks in ``Lifecycle.changes``: the task entered the machine / changed state since the log's
#: owner last took it.
CREATED, CHANGED = 1, 2
_QUEUED, _RUNNING = S.QUEUED, S.RUNNING


class LogAudit:
    """Collects events in memory (bounded); tests and the replay use it."""

    def __init__(self, limit: int = 100_000) -> None:
        self.events: list[AuditEvent] = []
        self.limit = limit
        self.refused = 0

    def __call__(self, event: AuditEvent) -> None:
        if len(self.events) < self.limit:
            self.events.append(event)


class Lifecycle:
    """Applies transitions. Hooks are called synchronously, so keep them cheap; when no hook is
    installed no event object is built (the replay's hot path)."""

    def __init__(
        self, hooks: list[AuditHook] | None = None, on_refused: Callable[[str], None] | None = None
    ):
        self.hooks: list[AuditHook] = list(hooks or [])
        #: A change log (task -> ``CREATED`` or ``CHANGED``) the journal's recorder installs and
        #: empties: cheaper than any hook, no call and no event object per transition.
        self.changes: dict[Task, int] | None = None
        #: With a change log: the starts from ``queued`` of tasks it does not hold, in order (a
        #: list append; the recorder takes the list whole and journals the starts of those
        #: still running later, most tasks of a batch having ended by then).
        self.starts: list[Task] = []
        self._on_refused = on_refused

    def move(self, task: Task, dst: TaskState, now: float, reason: str = "") -> None:
        src = task.state
        if dst not in ALLOWED[src]:
            msg = f"refused transition {task.id}: {src.value} -> {dst.value} ({reason})"
            if self._on_refused is not None:
                self._on_refused(msg)
            raise InvalidTransition(task.id, src.value, dst.value)
        task.state = dst
        if self.hooks:
            event = AuditEvent(task_id=task.id, src=src, dst=dst, at=now, reason=reason)
            for hook in self.hooks:
                hook(event)
        changes = self.changes
        if changes is not None:
            if src is _QUEUED and dst is _RUNNING:
                if task not in changes:
                    self.starts.append(task)
            else:
                changes.setdefault(task, CHANGED)  # CREATED and CHANGED stay

    def created(self, task: Task, now: float, reason: str = "submitted") -> None:
        """The birth event: a task enters the machine in ``pending``."""
        if self.hooks:
            event = AuditEvent(task_id=task.id, src=None, dst=task.state, at=now, reason=reason)
            for hook in self.hooks:
                hook(event)
        if self.changes is not None:
            self.changes[task] = CREATED
