"""Per-tenant submission rate, as a token bucket per tenant in each ingress replica.

The bucket may go into debt: a batch larger than the burst is admitted when the bucket is full and
then pays for every task it carried before the tenant may submit again, so the long-run rate holds
whatever the batch sizes. Each replica keeps its own buckets; with N replicas behind Serve's proxy
the cluster-wide ceiling is N times the configured rate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_per_s > 0:
            raise ValueError("rate_per_s must be > 0")
        self.rate = float(rate_per_s)
        self.burst = float(burst if burst is not None else max(1, math.ceil(rate_per_s)))
        self._clock = clock
        self._level: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def take(self, tenant: str, n: int = 1) -> float | None:
        """Admit ``n`` submissions for ``tenant`` (returns None) or say how many seconds to wait
        before trying again (and admit nothing)."""
        now = self._clock()
        level, at = self._level.get(tenant, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        need = min(float(n), self.burst)
        if level + 1e-9 < need:  # float dust must not refuse an exact refill
            self._level[tenant] = (level, now)
            return (need - level) / self.rate
        self._level[tenant] = (level - n, now)
        return None
