"""What finished tasks say about the size of new ones: a bounded sample of the service each class of
task (MLFQ: each tier) needed, and the first slice that the Gittins index gives a task of that
class before it may be demoted.

Without a size hint the scheduler knows only a task's class and the service it has had. For such
blind scheduling the Gittins index is the optimal order (Gittins; Scully et al., "SOAP", 2018): a
task that has had no service is worth running for the slice ``d`` that maximises
``P(X <= d) / E[min(X, d)]`` over the class's size distribution ``X``. When sizes have a floor (a
Pareto tail: hardly any answer is shorter than its scale) that slice is long: preempting a task
just before it is likely to finish wastes the work already done. MLFQ's short first quanta assume
the opposite (the least served task is the most likely to finish soon), which holds only past the
floor. So a task's first quantum in each attempt is stretched to cover the learned slice; at its end
the task is demoted as at any quantum's end.

The sample holds tasks that succeeded at their first attempt (a retried task's service covers its
failed attempts too). Service is what the quantum counts: under a recompute cost model it includes
recomputing a paused task's state."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["SizeSample"]

K = TypeVar("K", bound=Hashable)


class SizeSample(Generic[K]):
    """Per class, the last ``capacity`` services (in the level schedule's unit) of tasks that
    succeeded. The Gittins first slice is computed once ``min_samples`` are in, again each time
    the observations have doubled, and then every ``every`` new ones (a sort and a pass over the
    sample: about 0.2 ms, so about 0.05 µs per outcome). Not persisted: after a restart the
    sample is learned again."""

    def __init__(self, capacity: int = 1024, min_samples: int = 100, every: int = 4096) -> None:
        if capacity < 1 or min_samples < 1 or every < 1:
            raise ValueError("capacity, min_samples and every must be >= 1")
        self.capacity = capacity
        self.min_samples = min(min_samples, capacity)
        self.every = every
        # class -> (the last services, oldest dropping out; [observations since the slice was
        # last computed, observations when it was])
        self._classes: dict[K, tuple[deque[float], list[int]]] = {}
        self._slice: dict[K, float] = {}

    def observe(self, cls: K, service: float) -> None:
        c = self._classes.get(cls)
        if c is None:
            c = self._classes[cls] = (deque(maxlen=self.capacity), [0, 0])
        ring, count = c
        ring.append(service)
        count[0] += 1
        # at min_samples, then each time the observations have doubled, then every ``every``
        if count[0] >= (min(self.every, count[1]) if count[1] else self.min_samples):
            self._slice[cls] = first_slice(ring)
            count[1] += count[0]
            count[0] = 0

    def first_slice(self, cls: K) -> float:
        """The learned slice for ``cls``; 0 until enough of its tasks have finished."""
        return self._slice.get(cls, 0.0)

    def learned(self) -> dict[K, tuple[float, int]]:
        """Class -> (its slice, the samples held), for the classes with a slice."""
        return {k: (d, len(self._classes[k][0])) for k, d in self._slice.items()}

    def samples(self, cls: K) -> int:
        c = self._classes.get(cls)
        return len(c[0]) if c is not None else 0


def first_slice(services: Iterable[float]) -> float:
    """The ``d`` among the sample's values that maximises ``P(X <= d) / E[min(X, d)]`` (the Gittins
    index of a task with no service yet); 0 for an empty sample or one of zeros."""
    xs = sorted(services)
    n = len(xs)
    best, best_d = -1.0, 0.0
    prefix = 0.0
    for i, x in enumerate(xs):
        prefix += x
        if i + 1 < n and xs[i + 1] == x:
            continue  # P(X <= x) counts every equal value
        k = i + 1
        work = prefix + x * (n - k)  # n x E[min(X, x)]
        if work <= 0.0:
            continue
        v = k / work
        if v > best:
            best, best_d = v, x
    return best_d
