"""Victim selection for preemption: which running task yields its slot to a better queued one."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from raysched.policy.task import Task

__all__ = ["LowestRankVictim", "VictimSelector"]

Rank = Callable[[Task], "tuple[float, ...] | None"]
#: Seconds until a running task reaches its next step boundary (where it can stop), if known.
Eta = Callable[[Task], float]


class VictimSelector(Protocol):
    def choose(
        self, incoming: Task, running: Iterable[Task], rank: Rank, eta: Eta | None = None
    ) -> Task | None:
        """A running task that ``incoming`` strictly outranks, or None."""
        ...


class LowestRankVictim:
    """Among the preemptible running tasks that ``incoming`` strictly outranks: the one that can
    stop soonest (a task in a long prefill step would keep the newcomer waiting), then the
    worst-ranked, then the one with the least attained service (the least progress to park)."""

    def choose(
        self, incoming: Task, running: Iterable[Task], rank: Rank, eta: Eta | None = None
    ) -> Task | None:
        r_in = rank(incoming)
        if r_in is None:
            return None
        best: Task | None = None
        best_key: tuple[float, tuple[float, ...], float] | None = None
        for t in running:
            if not t.preemptible:
                continue
            r = rank(t)
            if r is None or not r_in < r:
                continue
            key = (-(eta(t) if eta is not None else 0.0), r, -t.service_s)
            if best_key is None or key > best_key:
                best, best_key = t, key
        return best
