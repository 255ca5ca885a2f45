"""Tenant fair share, VTC-style (Sheng et al., "Fairness in Serving Large Language Models").

Each tenant has a virtual counter of service received (seconds, divided by the tenant's weight).
When a tenant becomes active again its counter is lifted to the least counter among active tenants,
so idle time does not bank credit."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["FairShare"]


class FairShare:
    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(weights or {})
        self.counters: dict[str, float] = {}
        self.active: dict[str, int] = {}
        self._lo = 0.0
        self._hi = 0.0
        self._dirty = False

    def activate(self, tenant: str) -> None:
        """One more live task for ``tenant``."""
        n = self.active.get(tenant, 0)
        if n == 0:
            lift = min((self.counters.get(t, 0.0) for t in self.active), default=None)
            cur = self.counters.get(tenant, 0.0)
            if lift is not None and cur < lift:
                cur = lift
            self.counters[tenant] = cur
            self._dirty = True
        self.active[tenant] = n + 1

    def deactivate(self, tenant: str) -> None:
        n = self.active.get(tenant, 0) - 1
        if n <= 0:
            self.active.pop(tenant, None)
            self._dirty = True
        else:
            self.active[tenant] = n

    def charge(self, tenant: str, service: float) -> None:
        old = self.counters.get(tenant, 0.0)
        c = self.counters[tenant] = old + service / self.weights.get(tenant, 1.0)
        if tenant in self.active and not self._dirty:
            # Counters only grow: the top moves up with this one, the bottom only if this tenant
            # was at the bottom (then the least counter must be found again).
            if c > self._hi:
                self._hi = c
            if old <= self._lo:
                self._dirty = True

    def factor(self, tenant: str) -> float:
        """1.0 for the least-served active tenant, 0.0 for the most-served one."""
        if len(self.active) <= 1:
            return 1.0
        if self._dirty:
            vals = [self.counters.get(t, 0.0) for t in self.active]
            self._lo, self._hi = (min(vals), max(vals)) if vals else (0.0, 0.0)
            self._dirty = False
        span = self._hi - self._lo
        if span <= 0.0:
            return 1.0
        f = (self._hi - self.counters.get(tenant, self._lo)) / span
        return 1.0 if f > 1.0 else (f if f > 0.0 else 0.0)

    def snapshot(self) -> dict[str, float]:
        return dict(self.counters)

    def restore(self, counters: Mapping[str, float]) -> None:
        """Recovery: set the counters to recorded values (after the live tenants were
        activated, so that no lift applies on top of them)."""
        self.counters.update(counters)
        self._dirty = True
