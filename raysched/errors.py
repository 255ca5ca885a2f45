"""Typed errors. Every error a client can cause maps to one class here, and each carries a
stable ``code`` that the HTTP front and the CLI reuse."""

from __future__ import annotations

__all__ = [
    "DependencyError",
    "InvalidTransition",
    "QueueFull",
    "RayschedError",
    "SchedulerUnavailable",
    "TaskCancelled",
    "TaskFailed",
    "TaskNotFound",
    "UnknownHandler",
    "ValidationFailed",
]


class RayschedError(Exception):
    """Base of every raysched error."""

    code = "raysched_error"


class ValidationFailed(RayschedError, ValueError):
    """A task spec or setting that makes no sense (the message says which field and why)."""

    code = "invalid_request"


class UnknownHandler(ValidationFailed):
    code = "unknown_handler"


class DependencyError(ValidationFailed):
    """Self-dependency, unknown parent or a cycle."""

    code = "invalid_dependency"


class InvalidTransition(RayschedError):
    """A lifecycle transition that CONTRACT.md section 2 does not allow."""

    code = "invalid_transition"

    def __init__(self, task_id: str, src: str, dst: str) -> None:
        super().__init__(f"task {task_id}: transition {src} -> {dst} is not allowed")
        self.task_id, self.src, self.dst = task_id, src, dst


class QueueFull(RayschedError):
    """Admission refused: the scheduler or the tenant is at capacity."""

    code = "queue_full"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TaskNotFound(RayschedError, KeyError):
    code = "not_found"

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else "task not found"


class TaskFailed(RayschedError):
    """The task ended failed or timed out; carries the handler's exception type and message."""

    code = "task_failed"

    def __init__(self, task_id: str, state: str, error_type: str, message: str) -> None:
        super().__init__(f"task {task_id} {state}: {error_type}: {message}")
        self.task_id, self.state, self.error_type, self.error_message = (
            task_id,
            state,
            error_type,
            message,
        )


class TaskCancelled(RayschedError):
    code = "task_cancelled"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id


class SchedulerUnavailable(RayschedError):
    code = "scheduler_unavailable"
