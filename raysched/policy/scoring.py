"""The weighted multi-factor scorer: score = sum(weight x factor), each factor in 0..1, higher runs
earlier. It orders tasks *inside* one tier and MLFQ level; tiers and levels come first."""

from __future__ import annotations

from dataclasses import dataclass

from raysched.policy.fairshare import FairShare
from raysched.policy.task import Task

__all__ = ["PROFILES", "CostModel", "Scorer", "Weights"]


@dataclass(frozen=True)
class Weights:
    urgency: float = 0.2
    age: float = 0.2
    size: float = 0.2
    depth: float = 0.2
    fair: float = 0.2

    def __post_init__(self) -> None:
        for name in ("urgency", "age", "size", "depth", "fair"):
            if getattr(self, name) < 0:
                raise ValueError(f"weight {name} must be >= 0")


PROFILES: dict[str, Weights] = {
    # Deadlines and short work first: chat-style traffic.
    "responsive": Weights(urgency=0.35, age=0.1, size=0.35, depth=0.05, fair=0.15),
    # Short work and critical paths first, little regard for waiting: batch pipelines.
    "throughput": Weights(urgency=0.1, age=0.05, size=0.5, depth=0.3, fair=0.05),
    "balanced": Weights(),
}


@dataclass(frozen=True)
class CostModel:
    """An LLM's cost: one prefill step over the prompt, then one decode step per output token."""

    prefill_s_per_token: float = 0.0002
    decode_s_per_token: float = 0.01
    #: Whether resuming a paused task on another worker recomputes its state (vLLM-style).
    recompute: bool = True

    def first_step_s(self, task: Task) -> float:
        """What a policy may know of the first step: the prefill, or the caller's size hint."""
        if task.prompt_tokens:
            return task.prompt_tokens * self.prefill_s_per_token
        return task.size_hint or 0.0

    def recompute_s(self, task: Task) -> float:
        """Rebuilding a paused task's state elsewhere: its prompt and generated tokens again."""
        if not self.recompute:
            return 0.0
        return (task.prompt_tokens + task.steps) * self.prefill_s_per_token

    def known_size_s(self, task: Task) -> float:
        if task.size_hint is not None:
            return task.size_hint
        return task.prompt_tokens * self.prefill_s_per_token


class Scorer:
    def __init__(
        self,
        weights: Weights = PROFILES["balanced"],
        *,
        cost: CostModel | None = None,
        fair: FairShare | None = None,
        age_horizon_s: float = 60.0,
        urgency_horizon_s: float = 60.0,
        size_scale_s: float = 1.0,
        depth_cap: int = 8,
    ) -> None:
        self.w = weights
        self.cost = cost or CostModel()
        self.fair = fair
        self.age_h = age_horizon_s
        self.urg_h = urgency_horizon_s
        self.size_scale = size_scale_s
        self.depth_cap = depth_cap

    def factors(self, task: Task, now: float) -> dict[str, float]:
        age = min(1.0, max(0.0, (now - task.arrival) / self.age_h))
        if task.deadline is None:
            urgency = 0.0
        else:
            urgency = min(1.0, max(0.0, 1.0 - (task.deadline - now) / self.urg_h))
        size = 1.0 / (1.0 + self.cost.known_size_s(task) / self.size_scale)
        depth = min(1.0, task.depth / self.depth_cap)
        fair = self.fair.factor(task.tenant) if self.fair is not None else 1.0
        return {"urgency": urgency, "age": age, "size": size, "depth": depth, "fair": fair}

    def score(self, task: Task, now: float) -> float:
        # Inlined form of sum(w * factors(...)): this runs once per enqueue.
        w = self.w
        s = 0.0
        if w.age:
            a = (now - task.arrival) / self.age_h
            s += w.age * (1.0 if a > 1.0 else (a if a > 0.0 else 0.0))
        if w.urgency and task.deadline is not None:
            u = 1.0 - (task.deadline - now) / self.urg_h
            s += w.urgency * (1.0 if u > 1.0 else (u if u > 0.0 else 0.0))
        if w.size:
            known = (
                task.size_hint
                if task.size_hint is not None
                else (task.prompt_tokens * self.cost.prefill_s_per_token)
            )
            s += w.size / (1.0 + known / self.size_scale)
        if w.depth and task.depth:
            s += w.depth * min(1.0, task.depth / self.depth_cap)
        if w.fair:
            s += w.fair * (self.fair.factor(task.tenant) if self.fair is not None else 1.0)
        return s
