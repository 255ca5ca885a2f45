"""Prometheus metrics of one ingress replica: requests by route template and status (never the raw
path, whose cardinality a client controls), latency, and the scheduler's queues read from
``stats()`` when ``/metrics`` is scraped. Each replica has its own registry; behind Serve's proxy
a scrape reaches one replica, so request counters are per replica while scheduler gauges are
global."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "HTTPMetrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class HTTPMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "raysched_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "raysched_http_request_duration_seconds",
            "Time to the response's first byte, by route template and method",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "raysched_http_rejected_submissions",
            "Submissions refused with 429, by reason (rate or queue)",
            ["reason"],
            registry=r,
        )
        self.up = Gauge(
            "raysched_scheduler_up", "1 if the scheduler answered the scrape", registry=r
        )
        self.queued = Gauge("raysched_queued_tasks", "Tasks queued, by tier", ["tier"], registry=r)
        self.running = Gauge(
            "raysched_running_tasks", "Tasks running, by tier", ["tier"], registry=r
        )
        self.live = Gauge("raysched_live_tasks", "Tasks not yet final", registry=r)
        self.completed = Gauge("raysched_completed_tasks", "Tasks finished so far", registry=r)
        self.preemptions = Gauge("raysched_preemptions", "Preemptions so far", registry=r)
        self.pool_workers = Gauge(
            "raysched_pool_workers", "Ready workers, by pool", ["pool"], registry=r
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def update_scheduler(self, stats: dict[str, Any] | None) -> None:
        """Refresh the scheduler gauges from ``stats()`` (None: the scheduler did not answer)."""
        if stats is None:
            self.up.set(0)
            return
        self.up.set(1)
        # tiers that emptied must not keep their last value
        self.queued.clear()
        self.running.clear()
        self.pool_workers.clear()
        for tier, d in dict(stats.get("tiers") or {}).items():
            if isinstance(d, dict):
                self.queued.labels(str(tier)).set(_num(d.get("queued")))
                self.running.labels(str(tier)).set(_num(d.get("running")))
        for pool, d in dict(stats.get("pools") or {}).items():
            if isinstance(d, dict):
                self.pool_workers.labels(str(pool)).set(_num(d.get("ready_workers")))
        self.live.set(_num(stats.get("live")))
        self.completed.set(_num(stats.get("completed")))
        self.preemptions.set(_num(stats.get("preemptions")))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0
