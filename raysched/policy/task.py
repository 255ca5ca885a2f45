"""The policy core's task record.

The queue core handles hundreds of thousands of these per second, so: the fields every queued task
needs are slots set in a positional ``__init__``; the rest are class-level defaults that an instance
only stores (in a lazily created ``__dict__``) once they differ, e.g. a result or an error."""

from __future__ import annotations

from typing import Any

from raysched.models import TaskState

__all__ = ["Task"]


class Task:
    __slots__ = (
        "__dict__",
        "arrival",
        "attempts",
        "deadline",
        "depth",
        "enqueued_at",
        "id",
        "kind",
        "level",
        "payload",
        "pool",
        "priority",
        "prompt_tokens",
        "qkey",
        "quantum_used",
        "seq",
        "service_s",
        "size_hint",
        "started_at",
        "state",
        "steps",
        "tenant",
        "tier",
    )

    # Rarely differ from their default: stored per instance only when set.
    depends_on: tuple[str, ...] = ()
    timeout_s: float | None = None
    max_retries: int = 0
    idempotency_key: str | None = None
    preemptible: bool = True
    first_start: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    redeliveries: int = 0
    #: Worker holding the task's paused state (a preempted generator), if any.
    home: str | None = None
    not_before: float = 0.0
    #: Oracle-only: true remaining work in seconds (srpt in replay).
    remaining_hint: float | None = None
    trace_id: str | None = None
    gpu_memory_mb: int | None = None
    #: MLFQ: the level a starvation boost lifted the task from; it returns there after the slice.
    boosted_from: int | None = None

    def __init__(
        self,
        id: str,
        priority: int,
        arrival: float,
        seq: int = 0,
        prompt_tokens: int = 0,
        tenant: str = "default",
        tier: str = "",
        kind: str = "simulate",
        pool: str = "default",
        size_hint: float | None = None,
        deadline: float | None = None,
    ) -> None:
        self.id = id
        self.priority = priority
        self.arrival = arrival
        self.seq = seq
        self.prompt_tokens = prompt_tokens
        self.tenant = tenant
        self.tier = tier
        self.kind = kind
        self.pool = pool
        self.size_hint = size_hint
        self.deadline = deadline
        self.state = TaskState.PENDING
        self.level = 0
        self.depth = 0
        self.attempts = 0
        self.service_s = 0.0
        self.quantum_used = 0.0
        self.steps = 0
        self.started_at = 0.0
        self.enqueued_at = arrival
        # A slot although often small: the journal's state rows write ``__dict__`` as it is,
        # and must not repeat the payload there (``store.records``).
        self.payload: Any = None
        # The queue entry that holds the task; None when no queue does (lazy removal key).
        self.qkey: Any = None

    @classmethod
    def build(cls, id: str, priority: int, arrival: float, **fields: Any) -> Task:
        """Construct with any field by name (not on the hot path)."""
        hot = {k: fields.pop(k) for k in list(fields) if k in _INIT_ARGS}
        t = cls(id, priority, arrival, **hot)
        for k, v in fields.items():
            if not hasattr(cls, k):
                raise TypeError(f"Task has no field {k!r}")
            setattr(t, k, v)
        return t

    def __repr__(self) -> str:
        return f"Task({self.id!r}, p={self.priority}, L={self.level}, {self.state.value})"


_INIT_ARGS = frozenset(
    {"seq", "prompt_tokens", "tenant", "tier", "kind", "pool", "size_hint", "deadline"}
)
