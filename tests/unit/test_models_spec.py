"""TaskSpec / TraceRecord validation (CONTRACT.md sections 1, 3 and 6)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid

import pytest
from pydantic import ValidationError

from raysched.models import (
    DEFAULT_TIERS,
    MAX_PAYLOAD_BYTES,
    AuditEvent,
    TaskSpec,
    TaskState,
    TraceRecord,
)


def test_valid_spec_is_accepted() -> None:
    spec = TaskSpec(
        id="t1",
        kind="generate",
        payload={"prompt": "hi", "max_new_tokens": 64, "nested": [1, 2.5, None, {"a": True}]},
        tier="interactive",
        tenant="acme",
        timeout_s=2.5,
        max_retries=3,
        depends_on=("p1", "p2"),
        size_hint=0.3,
        idempotency_key="k-1",
    )
    assert spec.id == "t1"
    assert spec.tier == "interactive"
    assert spec.depends_on == ("p1", "p2")
    assert spec.timeout_s == 2.5
    assert spec.resolved_priority() == ("interactive", 1)


def test_default_id_is_generated_and_unique() -> None:
    a, b = TaskSpec(kind="echo"), TaskSpec(kind="echo")
    assert a.id and b.id and a.id != b.id


def test_default_tiers_match_contract() -> None:
    assert dict(DEFAULT_TIERS) == {"critical": 0, "interactive": 1, "batch": 5, "best_effort": 9}


@pytest.mark.parametrize("timeout", [-1.0, -0.001, 0.0])
def test_non_positive_timeout_rejected(timeout: float) -> None:
    with pytest.raises(ValidationError, match="timeout_s"):
        TaskSpec(kind="echo", timeout_s=timeout)


def test_unknown_tier_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown tier 'gold'"):
        TaskSpec(kind="echo", tier="gold")


def test_custom_tiers_from_context() -> None:
    spec = TaskSpec.model_validate({"kind": "echo", "tier": "gold"}, context={"tiers": {"gold": 2}})
    assert spec.resolved_priority({"gold": 2}) == ("gold", 2)
    with pytest.raises(ValidationError):
        TaskSpec.model_validate({"kind": "echo", "tier": "batch"}, context={"tiers": {"gold": 2}})


def test_tier_and_priority_together_rejected() -> None:
    with pytest.raises(ValidationError, match="not both"):
        TaskSpec(kind="echo", tier="batch", priority=5)


@pytest.mark.parametrize("prio", [-1, 100])
def test_priority_out_of_range_rejected(prio: int) -> None:
    with pytest.raises(ValidationError):
        TaskSpec(kind="echo", priority=prio)


def test_self_dependency_rejected() -> None:
    with pytest.raises(ValidationError, match="depends on itself"):
        TaskSpec(id="a", kind="echo", depends_on=("b", "a"))


def test_duplicate_dependency_rejected() -> None:
    with pytest.raises(ValidationError, match="twice"):
        TaskSpec(id="a", kind="echo", depends_on=("b", "c", "b"))


def test_payload_at_limit_accepted_and_over_limit_rejected() -> None:
    overhead = len(json.dumps({"b": ""}, separators=(",", ":")))
    at_limit = {"b": "x" * (MAX_PAYLOAD_BYTES - overhead)}
    assert len(json.dumps(at_limit, separators=(",", ":"))) == MAX_PAYLOAD_BYTES
    assert TaskSpec(kind="echo", payload=at_limit).payload is not None
    over = {"b": "x" * (MAX_PAYLOAD_BYTES - overhead + 1)}
    with pytest.raises(ValidationError, match="limit"):
        TaskSpec(kind="echo", payload=over)


class _Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "bad",
    [
        object(),
        {1, 2},
        b"bytes",
        complex(1, 2),
        # JSON has no type for these; orjson would write them as strings or dicts, so a task
        # rebuilt from the journal would get a different payload than the live one
        dt.datetime(2026, 1, 1),
        uuid.UUID(int=7),
        _Colour.RED,
        _Point(1),
    ],
)
def test_non_json_payload_rejected(bad: object) -> None:
    with pytest.raises(ValidationError, match="JSON"):
        TaskSpec(kind="echo", payload={"x": bad})


def test_extra_fields_and_empty_kind_rejected() -> None:
    with pytest.raises(ValidationError):
        TaskSpec(kind="echo", colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TaskSpec(kind="")


def test_negative_retries_and_size_hint_rejected() -> None:
    with pytest.raises(ValidationError):
        TaskSpec(kind="echo", max_retries=-1)
    with pytest.raises(ValidationError):
        TaskSpec(kind="echo", size_hint=-0.5)


def test_spec_is_frozen() -> None:
    spec = TaskSpec(kind="echo")
    with pytest.raises(ValidationError):
        spec.tier = "batch"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, ("batch", 5)),
        ({"tier": "critical"}, ("critical", 0)),
        ({"tier": "best_effort"}, ("best_effort", 9)),
        ({"priority": 1}, ("interactive", 1)),
        ({"priority": 0}, ("critical", 0)),
        ({"priority": 3}, ("p3", 3)),
        ({"priority": 99}, ("p99", 99)),
    ],
)
def test_resolved_priority(fields: dict[str, object], expected: tuple[str, int]) -> None:
    assert TaskSpec(kind="echo", **fields).resolved_priority() == expected  # type: ignore[arg-type]


def test_resolved_priority_with_custom_tiers() -> None:
    tiers = {"gold": 2, "silver": 4}
    assert TaskSpec(kind="echo", priority=4).resolved_priority(tiers) == ("silver", 4)
    assert TaskSpec(kind="echo", priority=5).resolved_priority(tiers) == ("p5", 5)


def test_terminal_states() -> None:
    terminal = {s for s in TaskState if s.terminal}
    assert terminal == {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.TIMED_OUT,
    }
    assert {s.value for s in TaskState} == {
        "pending",
        "queued",
        "running",
        "preempted",
        "succeeded",
        "failed",
        "cancelled",
        "timed_out",
    }


def test_trace_record_validation() -> None:
    rec = TraceRecord(
        id="t1",
        arrival_s=0.013,
        tier="interactive",
        tenant="a",
        prompt_tokens=120,
        output_tokens=350,
    )
    assert rec.depends_on == () and rec.deadline_s is None
    with pytest.raises(ValidationError, match="not both"):
        TraceRecord(id="t1", arrival_s=0.0, tier="batch", priority=5)
    with pytest.raises(ValidationError, match="unknown tier"):
        TraceRecord(id="t1", arrival_s=0.0, tier="gold")
    with pytest.raises(ValidationError):
        TraceRecord(id="t1", arrival_s=-1.0)
    with pytest.raises(ValidationError, match="itself"):
        TraceRecord(id="t1", arrival_s=0.0, depends_on=("t1",))


def test_audit_event_shape() -> None:
    ev = AuditEvent(task_id="x", src=None, dst=TaskState.PENDING, at=1.5, reason="submitted")
    assert ev.model_dump() == {
        "task_id": "x",
        "src": None,
        "dst": TaskState.PENDING,
        "at": 1.5,
        "reason": "submitted",
    }


def test_validation_reports_the_payload_size_to_its_caller() -> None:
    """The scheduler learns the encoded size from validation (it decides which payloads go to
    blob files) instead of encoding every payload a second time."""
    ctx: dict[str, object] = {}
    TaskSpec.model_validate({"kind": "echo", "payload": {"a": "xyz"}}, context=ctx)
    assert ctx["payload_bytes"] == len(b'{"a":"xyz"}')
    TaskSpec.model_validate({"kind": "echo", "payload": {"a": "xyz"}})  # no context: fine
