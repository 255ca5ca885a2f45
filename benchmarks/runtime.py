"""Runtime benchmarks on a real local Ray, one run, one machine:

1. no-op tasks: raysched (batched submission and dispatch to long-lived workers) vs the same count
   of plain ``@ray.remote`` tasks;
2. submit-to-start latency with idle workers (sequential submissions) and with 1,000 concurrent
   submitters;
3. scheduler memory (RSS) with 100,000 queued tasks.

    python benchmarks/runtime.py [--tasks 20000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import ray

from raysched.client import connect
from raysched.settings import PoolSettings, Settings


@ray.remote
def noop(x: int) -> int:
    return x


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def plain_ray(n: int) -> float:
    ray.get([noop.remote(i) for i in range(100)])  # warm the worker pool
    t0 = time.perf_counter()
    ray.get([noop.remote(i) for i in range(n)])
    return n / (time.perf_counter() - t0)


def settings(pools: list[PoolSettings]) -> Settings:
    # The in-memory figures (store off); benchmarks/durability.py measures what the store costs.
    return Settings(
        namespace=f"bench-{uuid.uuid4().hex[:6]}",
        actor_name="bench-sched",
        pools=pools,
        store={"enabled": False},
    )


def ready(c: Any, n: int) -> None:
    while c.stats()["pools"]["default"]["ready_workers"] < n:
        time.sleep(0.05)


def raysched_throughput(n: int, workers: int = 2) -> float:
    c = connect(
        settings=settings([PoolSettings(min_workers=workers, max_workers=workers, slots=512)])
    )
    try:
        ready(c, workers)
        chunk = 2000
        base = c.progress()["completed"]
        t0 = time.perf_counter()
        for i in range(0, n, chunk):
            c.submit_batch(
                [{"kind": "echo", "payload": {"i": j}} for j in range(i, min(n, i + chunk))]
            )
        while c.progress()["completed"] - base < n:
            time.sleep(0.005)  # progress() is a cheap counter read; poll finely to stop the clock
        return n / (time.perf_counter() - t0)
    finally:
        c.shutdown()


def latency_idle(k: int) -> list[float]:
    c = connect(settings=settings([PoolSettings(min_workers=2, max_workers=2, slots=4)]))
    try:
        ready(c, 2)
        out = []
        for _ in range(k):
            tid = c.submit("echo", {})
            c.result(tid, timeout=30)
            info = c.status(tid)
            assert info.started_at is not None
            out.append(info.started_at - info.submitted_at)
        return out
    finally:
        c.shutdown()


def latency_concurrent(k: int) -> list[float]:
    c = connect(settings=settings([PoolSettings(min_workers=2, max_workers=2, slots=512)]))
    try:
        ready(c, 2)
        h = c._h  # the actor handle: 1,000 submitters in flight at once

        async def one(i: int) -> str:
            r = await h.submit.remote(
                [{"id": f"c{i}-{uuid.uuid4().hex[:6]}", "kind": "echo", "payload": {}}]
            )
            return str(r["ids"][0])

        async def all_() -> list[str]:
            return list(await asyncio.gather(*(one(i) for i in range(k))))

        ids = asyncio.run(all_())
        infos = c.wait(ids, timeout=120)
        return [i.started_at - i.submitted_at for i in infos if i.started_at is not None]
    finally:
        c.shutdown()


def memory_queued(n: int) -> dict[str, float]:
    # workers ask for more CPUs than exist, so none starts and every task stays queued
    c = connect(settings=settings([PoolSettings(num_cpus=64, min_workers=1, max_workers=1)]))
    try:
        before = c.stats()["rss_mb"]
        for i in range(0, n, 5000):
            c.submit_batch(
                [{"kind": "echo", "payload": {"i": j}, "tier": "batch"} for j in range(i, i + 5000)]
            )
        st = c.stats()
        assert st["queued"] == n, st["queued"]
        return {
            "rss_before_mb": before,
            "rss_after_mb": st["rss_mb"],
            "bytes_per_task": (st["rss_mb"] - before) * (1 << 20) / n,
        }
    finally:
        c.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench")
    res: dict[str, Any] = {}
    res["plain_ray_tasks_per_s"] = plain_ray(a.tasks)
    res["raysched_tasks_per_s"] = raysched_throughput(a.tasks)
    res["speedup"] = res["raysched_tasks_per_s"] / res["plain_ray_tasks_per_s"]
    idle = latency_idle(300)
    res["idle_submit_to_start_ms"] = {
        "p50": 1e3 * statistics.median(idle),
        "p99": 1e3 * pct(idle, 0.99),
    }
    conc = latency_concurrent(1000)
    res["concurrent1000_submit_to_start_ms"] = {
        "p50": 1e3 * statistics.median(conc),
        "p99": 1e3 * pct(conc, 0.99),
    }
    res["memory_100k_queued"] = memory_queued(a.queued)
    ray.shutdown()
    if a.json:
        print(json.dumps(res))
        return
    print(
        f"no-op tasks ({a.tasks:,}): plain Ray {res['plain_ray_tasks_per_s']:,.0f}/s, "
        f"raysched {res['raysched_tasks_per_s']:,.0f}/s, ratio {res['speedup']:.1f}x"
    )
    print(
        f"submit-to-start, idle workers: p50 {res['idle_submit_to_start_ms']['p50']:.2f} ms, "
        f"p99 {res['idle_submit_to_start_ms']['p99']:.2f} ms"
    )
    print(
        f"submit-to-start, 1,000 concurrent submitters: "
        f"p50 {res['concurrent1000_submit_to_start_ms']['p50']:.1f} ms, "
        f"p99 {res['concurrent1000_submit_to_start_ms']['p99']:.1f} ms"
    )
    m = res["memory_100k_queued"]
    print(
        f"scheduler RSS: {m['rss_before_mb']:.0f} MiB -> {m['rss_after_mb']:.0f} MiB with "
        f"{a.queued:,} queued ({m['bytes_per_task']:.0f} B/task)"
    )


if __name__ == "__main__":
    main()
