"""Micro-benchmark of the policy core's ready queues at 100,000 queued tasks.

Each operation creates a Task object, adds it, and pops the best task: one at a time, and in
batches of 16 (add_batch + pop_batch). A plain heapq of dataclasses is measured in the same run as
the baseline. Bytes per queued task come from tracemalloc.

    python benchmarks/queue_core.py [--queued 100000] [--ops 400000] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import heapq
import json
import random
import time
import tracemalloc

from raysched.policy import Task, make_queue

PRIOS = (1, 5, 5, 9)


def _fill(policy: str, n: int, rnd: random.Random):  # type: ignore[no-untyped-def]
    q = make_queue(policy)
    for i in range(n):
        t = Task(f"q{i}", PRIOS[i & 3], 0.0, i, rnd.randint(10, 2000))
        q.admit(t)
        q.add(t, 0.0)
    return q


def bench(policy: str, queued: int, ops: int, batch: int) -> float:
    rnd = random.Random(7)
    q = _fill(policy, queued, rnd)
    toks = [rnd.randint(10, 2000) for _ in range(4096)]
    admit = q.admit
    seq = queued
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    if batch == 1:
        add, pop = q.add, q.pop
        for i in range(ops):
            seq += 1
            t = Task("x", PRIOS[i & 3], 1.0, seq, toks[i & 4095])
            admit(t)
            add(t, 1.0)
            pop()
    else:
        add_batch, pop_batch = q.add_batch, q.pop_batch
        for i in range(ops // batch):
            ts = []
            for j in range(batch):
                seq += 1
                t = Task("x", PRIOS[j & 3], 1.0, seq, toks[(i + j) & 4095])
                admit(t)
                ts.append(t)
            add_batch(ts, 1.0)
            pop_batch(batch)
    dt = time.perf_counter() - t0
    gc.enable()
    assert len(q) == queued
    return ops / dt


@dataclasses.dataclass(order=True)
class _DC:
    priority: int
    seq: int
    id: str = dataclasses.field(compare=False)
    prompt_tokens: int = dataclasses.field(compare=False)


def bench_heapq(queued: int, ops: int, batch: int) -> float:
    rnd = random.Random(7)
    h = [_DC(PRIOS[i & 3], i, f"q{i}", rnd.randint(10, 2000)) for i in range(queued)]
    heapq.heapify(h)
    seq = queued
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    for _ in range(ops // batch):
        for j in range(batch):
            seq += 1
            heapq.heappush(h, _DC(PRIOS[j & 3], seq, "x", 100))
        for _ in range(batch):
            heapq.heappop(h)
    dt = time.perf_counter() - t0
    gc.enable()
    return ops / dt


def bytes_per_task(policy: str, n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    q = _fill(policy, n, random.Random(7))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(q) == n
    return (after - before) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--ops", type=int, default=400_000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    rows.append(
        {
            "queue": "heapq of dataclasses (baseline)",
            "single_per_s": bench_heapq(a.queued, a.ops, 1),
            "batch16_per_s": bench_heapq(a.queued, a.ops, 16),
            "bytes_per_task": None,
        }
    )
    for p in ("fcfs", "priority", "mlfq"):
        rows.append(
            {
                "queue": p,
                "single_per_s": bench(p, a.queued, a.ops, 1),
                "batch16_per_s": bench(p, a.queued, a.ops, 16),
                "bytes_per_task": bytes_per_task(p, a.queued),
            }
        )
    if a.json:
        print(json.dumps(rows))
        return
    print(f"queue core at {a.queued:,} queued tasks, {a.ops:,} add+pop ops each")
    print(f"{'queue':34} {'single/s':>12} {'batch16/s':>12} {'B/task':>8}")
    for r in rows:
        b = "" if r["bytes_per_task"] is None else f"{r['bytes_per_task']:.0f}"
        print(f"{r['queue']:34} {r['single_per_s']:>12,.0f} {r['batch16_per_s']:>12,.0f} {b:>8}")


if __name__ == "__main__":
    main()
