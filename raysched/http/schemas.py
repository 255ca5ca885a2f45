"""Request and response bodies of the HTTP API (CONTRACT.md section 4), as they appear in
``/openapi.json``. A task over HTTP has no ``id`` and no ``tenant``: the ingress makes the id (so a
retried call after a scheduler restart is the same submission) and the tenant comes from the
token; either field in a body is a 422."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from raysched.models import MAX_PRIORITY, TaskInfo, TaskState

__all__ = [
    "BatchIn",
    "BatchOut",
    "CancelOut",
    "ErrorBody",
    "ErrorOut",
    "HealthOut",
    "ResultOut",
    "SubmitOut",
    "TaskIn",
    "TaskInfo",
]

#: Deepest nesting accepted in a payload; deeper JSON only serves to blow up recursive code.
MAX_DEPTH = 64
_INT_MAX = 2**63 - 1
_MAX_SECONDS = 1e7  # about 115 days: longer timeouts and deadlines are typos
_ID = Field(min_length=1, max_length=128)


def check_json_value(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Refuse what JSON allows in Python but not on the wire or in float arithmetic downstream:
    NaN and infinities, integers beyond 64 bits, strings that are not valid UTF-8 (lone
    surrogates), and nesting deeper than ``max_depth``. Iterative, so depth cannot recurse."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        if isinstance(v, dict):
            for k, x in v.items():
                _check_str(k)
                stack.append((x, depth + 1))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, str):
            _check_str(v)
        elif isinstance(v, bool) or v is None:
            pass
        elif isinstance(v, int):
            if not -_INT_MAX - 1 <= v <= _INT_MAX:
                raise ValueError("integers must fit in 64 bits")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError("NaN and infinite numbers are not JSON")
        else:
            raise ValueError(f"not a JSON value: {type(v).__name__}")


def _check_str(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("strings must be valid UTF-8 (no lone surrogates)") from None


class TaskIn(BaseModel):
    """One task to submit. ``kind`` names a registered handler (import paths are refused);
    give a ``tier`` or a ``priority`` (lower runs earlier), not both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"kind": "echo", "payload": {"x": 1}, "tier": "batch"}]},
    )

    kind: str = Field(min_length=1, max_length=256, examples=["echo", "simulate"])
    payload: dict[str, Any] = Field(default_factory=dict)
    tier: str | None = Field(default=None, min_length=1, max_length=64, examples=["interactive"])
    priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    timeout_s: float | None = Field(default=None, gt=0, le=_MAX_SECONDS, allow_inf_nan=False)
    max_retries: int = Field(default=0, ge=0, le=100)
    depends_on: list[str] = Field(default_factory=list, max_length=256)
    size_hint: float | None = Field(default=None, ge=0, le=1e12, allow_inf_nan=False)
    prompt_tokens: int | None = Field(default=None, ge=0, le=10**9)
    deadline_s: float | None = Field(default=None, gt=0, le=_MAX_SECONDS, allow_inf_nan=False)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)

    @field_validator("kind", "tier", "idempotency_key")
    @classmethod
    def _utf8(cls, v: str | None) -> str | None:
        if v is not None:
            _check_str(v)
        return v

    @field_validator("depends_on")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        for x in v:
            if not 1 <= len(x) <= 128:
                raise ValueError("task ids are 1 to 128 characters")
            _check_str(x)
        if len(set(v)) != len(v):
            raise ValueError("depends_on lists a task twice")
        return v

    @field_validator("payload")
    @classmethod
    def _payload(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_json_value(v)
        # the scheduler reads a payload's prompt_tokens as the prompt size when the field is absent
        pt = v.get("prompt_tokens")
        if isinstance(pt, int) and not isinstance(pt, bool) and not 0 <= pt <= 10**9:
            raise ValueError("payload.prompt_tokens must be between 0 and 10**9")
        return v


class BatchIn(BaseModel):
    """Tasks accepted all or nothing."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskIn] = Field(min_length=1, max_length=100_000)


class SubmitOut(BaseModel):
    id: str
    state: TaskState


class BatchOut(BaseModel):
    ids: list[str]


class ResultOut(BaseModel):
    """``done`` false (HTTP 202): still ``state``. Done: ``result`` when it succeeded, else
    ``error_type`` and ``error``."""

    id: str
    state: TaskState
    done: bool
    result: Any = None
    error_type: str | None = None
    error: str | None = None


class CancelOut(BaseModel):
    id: str
    cancelled: bool
    state: TaskState


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    """Every error: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorBody


class HealthOut(BaseModel):
    status: str
    detail: str | None = None
