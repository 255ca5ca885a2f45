"""User-facing data models (CONTRACT.md sections 2, 3 and 6), validated with pydantic.

The policy core keeps its own slotted records (``raysched.policy.task.Task``) because a pydantic
model costs microseconds per instance; these models sit at the edges: client, HTTP, CLI, traces."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = [
    "DEFAULT_TIERS",
    "MAX_PAYLOAD_BYTES",
    "AuditEvent",
    "ResourceRequest",
    "TaskInfo",
    "TaskSpec",
    "TaskState",
    "TraceRecord",
    "new_task_id",
]

#: Tier name -> priority. Lower runs earlier (the vLLM convention).
DEFAULT_TIERS: Mapping[str, int] = {"critical": 0, "interactive": 1, "batch": 5, "best_effort": 9}
MAX_PAYLOAD_BYTES = 1 << 20
#: The key of a large value's descriptor (``raysched.store.blobs``), reserved in payloads.
BLOB_KEY = "$raysched_blob"
MAX_PRIORITY = 99
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps(v, separators=...) without
# building an encoder per call


def new_task_id() -> str:
    """A random (version 4) UUID as 32 hex digits, like ``uuid.uuid4().hex`` but cheaper."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return b.hex()


class TaskState(str, enum.Enum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    PREEMPTED = "preempted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.TIMED_OUT}
)


class ResourceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu_memory_mb: int | None = Field(default=None, ge=0)


def _tiers(info: ValidationInfo) -> Mapping[str, int]:
    ctx = info.context
    if isinstance(ctx, Mapping) and "tiers" in ctx:
        tiers: Mapping[str, int] = ctx["tiers"]
        return tiers
    return DEFAULT_TIERS


class TaskSpec(BaseModel):
    """One task as submitted. ``kind`` names a registered handler or an import path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=new_task_id, min_length=1, max_length=128)
    kind: str = Field(min_length=1, max_length=256)
    payload: dict[str, Any] = Field(default_factory=dict)
    tier: str | None = None
    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    tenant: str = Field(default="default", min_length=1, max_length=128)
    timeout_s: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=0, ge=0, le=100)
    depends_on: tuple[str, ...] = ()
    size_hint: float | None = Field(default=None, ge=0)
    prompt_tokens: int | None = Field(default=None, ge=0)
    deadline_s: float | None = Field(default=None, gt=0)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    resources: ResourceRequest = Field(default_factory=ResourceRequest)

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, v: str | None, info: ValidationInfo) -> str | None:
        tiers = _tiers(info)
        if v is not None and v not in tiers:
            raise ValueError(f"unknown tier {v!r}; known tiers: {', '.join(tiers)}")
        return v

    @field_validator("payload")
    @classmethod
    def _payload_size(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if BLOB_KEY in v:  # it would be taken for a stored large payload's descriptor
            raise ValueError(f"the payload key {BLOB_KEY!r} is reserved")
        # orjson, the journal's encoder, is ~7x faster than the standard library (this runs on
        # every submission), but it also writes values JSON has no type for (datetime, UUID,
        # enums, dataclasses) as something else. So it decides only when the payload comes back
        # from JSON unchanged; anything else (those types, NaN, tuples, huge ints, deep nesting)
        # is judged by the standard library as before.
        try:
            data = orjson.dumps(v)
            plain = orjson.loads(data) == v
        except (TypeError, ValueError):
            plain = False
        if plain:
            size = len(data)
        else:
            try:
                size = len(_COMPACT_JSON.encode(v))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"payload must be JSON-serialisable: {exc}") from exc
        if size > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        if isinstance(info.context, dict):
            info.context["payload_bytes"] = size  # the scheduler puts large ones in blobs
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.tier is not None and self.priority is not None:
            raise ValueError("give a tier or a priority, not both")
        if self.id in self.depends_on:
            raise ValueError(f"task {self.id} depends on itself")
        if len(set(self.depends_on)) != len(self.depends_on):
            raise ValueError("depends_on lists a task twice")
        return self

    def resolved_priority(self, tiers: Mapping[str, int] = DEFAULT_TIERS) -> tuple[str, int]:
        """(tier name, priority). A bare priority is named after the tier that has it, if any."""
        if self.priority is not None:
            for name, p in tiers.items():
                if p == self.priority:
                    return name, p
            return f"p{self.priority}", self.priority
        tier = self.tier or "batch"
        return tier, tiers[tier]


class TaskInfo(BaseModel):
    """What ``client.status`` and ``GET /v1/tasks/{id}`` return."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: str
    state: TaskState
    tier: str
    priority: int
    level: int
    tenant: str
    attempts: int
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    steps: int = 0
    service_s: float = 0.0
    error: str | None = None
    error_type: str | None = None


class AuditEvent(BaseModel):
    """One lifecycle transition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str
    src: TaskState | None
    dst: TaskState
    at: float
    reason: str = ""


class TraceRecord(BaseModel):
    """One line of a replay trace (CONTRACT.md section 6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    arrival_s: float = Field(ge=0)
    tier: str | None = None
    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    tenant: str = "default"
    prompt_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=1, ge=0)
    depends_on: tuple[str, ...] = ()
    deadline_s: float | None = Field(default=None, gt=0)
    size_hint: float | None = Field(default=None, ge=0)

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, v: str | None, info: ValidationInfo) -> str | None:
        tiers = _tiers(info)
        if v is not None and v not in tiers:
            raise ValueError(f"unknown tier {v!r}; known tiers: {', '.join(tiers)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TraceRecord:
        if self.tier is not None and self.priority is not None:
            raise ValueError("give a tier or a priority, not both")
        if self.id in self.depends_on:
            raise ValueError(f"task {self.id} depends on itself")
        return self
