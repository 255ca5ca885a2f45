"""MLFQ level schedule: quantum of level p = base x ratio^p; the last level never demotes further.

Skip-join (FastServe): a new task enters the first level whose quantum covers its estimated first
step, so a long prefill does not burn through every short quantum on the way down."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LevelSchedule"]


@dataclass(frozen=True)
class LevelSchedule:
    levels: int = 16
    base_quantum: float = 0.05
    ratio: float = 2.0
    #: "seconds" of attained service or "steps" (yields of a stepwise handler).
    unit: str = "seconds"

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ValueError("levels must be >= 1")
        if self.base_quantum <= 0 or self.ratio < 1:
            raise ValueError("base_quantum must be > 0 and ratio >= 1")
        if self.unit not in ("seconds", "steps"):
            raise ValueError("unit must be 'seconds' or 'steps'")

    def quantum(self, level: int) -> float:
        if level >= self.levels - 1:
            return math.inf
        return self.base_quantum * self.ratio**level

    def initial_level(self, first_step: float) -> int:
        """Skip-join: first level whose quantum is at least the first step's estimate."""
        for p in range(self.levels):
            if self.quantum(p) >= first_step:
                return p
        return self.levels - 1
