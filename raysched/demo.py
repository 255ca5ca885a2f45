"""``raysched demo``: a local Ray, the scheduler, four simulated-LLM workers; long batch
generations saturate the workers while interactive chats arrive. A live view, then a per-tier table
with the same workload replayed under FCFS on the virtual clock, so the priority effect is plain."""

from __future__ import annotations

import random
import statistics
import tempfile
import time
import uuid
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from raysched.models import TaskInfo, TraceRecord
from raysched.settings import PoolSettings, Settings

__all__ = ["run_demo"]


def _workload(seed: int, n_batch: int, n_chat: int, span_s: float) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n_batch):  # a batch job submits its rows at once
        rows.append(
            {
                "id": f"batch{i}",
                "arrival_s": 0.0,
                "tier": "batch",
                "tenant": "etl",
                "prompt_tokens": rnd.randint(300, 1500),
                "output_tokens": rnd.randint(150, 400),
            }
        )
    t = 0.5
    for i in range(n_chat):
        rows.append(
            {
                "id": f"chat{i}",
                "arrival_s": round(t, 3),
                "tier": "interactive",
                "tenant": f"user{i % 3}",
                "prompt_tokens": rnd.randint(20, 200),
                "output_tokens": rnd.randint(8, 40),
            }
        )
        t += rnd.expovariate(n_chat / span_s)
    rows.sort(key=lambda r: r["arrival_s"])
    return rows


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))] if xs else 0.0


def _live_table(stats: dict[str, Any], done: int, total: int, elapsed: float) -> Table:
    tbl = Table(
        title=f"raysched demo: {done}/{total} done, {elapsed:4.1f}s, "
        f"{stats.get('preemptions', 0)} preemptions"
    )
    tbl.add_column("tier")
    tbl.add_column("queued", justify="right")
    tbl.add_column("running", justify="right")
    tbl.add_column("p99 wait s", justify="right")
    for tier, d in sorted(stats.get("tiers", {}).items()):
        tbl.add_row(
            tier,
            str(d.get("queued", 0)),
            str(d.get("running", 0)),
            f"{d.get('p99_wait_s', 0.0):.3f}",
        )
    pools = stats.get("pools", {})
    for name, p in pools.items():
        tbl.caption = (
            f"pool {name}: {p.get('ready_workers', 0)} workers, "
            f"{p.get('busy_slots', 0)}/{p.get('slots', 0)} slots busy"
        )
    return tbl


def run_demo(
    console: Console,
    *,
    workers: int = 4,
    seed: int = 7,
    batch: int = 16,
    chats: int = 30,
    span_s: float = 12.0,
) -> dict[str, Any]:
    from raysched.runtime.replay import local_session
    from raysched.sim.replay import replay_virtual

    rows = _workload(seed, batch, chats, span_s)
    # The demo journals like a real deployment, into a folder of its own that goes away after.
    state = tempfile.TemporaryDirectory(prefix="raysched-demo-")
    settings = Settings(
        namespace=f"raysched-demo-{uuid.uuid4().hex[:6]}",
        state_dir=state.name,
        pools=[PoolSettings(name="default", min_workers=workers, max_workers=workers, slots=1)],
    )
    console.print(
        f"[bold]raysched demo[/]: {batch} batch generations (150-400 tokens) saturate "
        f"{workers} workers while {chats} interactive chats arrive over {span_s:.0f}s."
    )
    with local_session(settings) as client:
        while client.stats()["pools"]["default"]["ready_workers"] < workers:
            time.sleep(0.1)
        t0 = time.monotonic()
        ids: dict[str, str] = {}
        i = 0
        with Live(console=console, refresh_per_second=8, transient=False) as live:
            while True:
                now = time.monotonic() - t0
                due = []
                while i < len(rows) and rows[i]["arrival_s"] <= now:
                    r = rows[i]
                    due.append(
                        {
                            "id": f"{r['id']}-{uuid.uuid4().hex[:6]}",
                            "kind": "simulate",
                            "tier": r["tier"],
                            "tenant": r["tenant"],
                            "prompt_tokens": r["prompt_tokens"],
                            "payload": {
                                "prompt_tokens": r["prompt_tokens"],
                                "output_tokens": r["output_tokens"],
                            },
                        }
                    )
                    i += 1
                if due:
                    for r_, tid in zip(
                        rows[i - len(due) : i], client.submit_batch(due), strict=True
                    ):
                        ids[r_["id"]] = tid
                stats = client.stats()
                done = stats["completed"]
                live.update(_live_table(stats, done, len(rows), now))
                if i >= len(rows) and done >= len(rows):
                    break
                time.sleep(0.1)
        infos = {k: client.status(v) for k, v in ids.items()}
        final = client.stats()
        preemptions = int(final["preemptions"])
        js = final.get("store") or {}
        console.print(
            f"journal ({js.get('sync')}): {js.get('journal_records')} records, "
            f"{js.get('journal_bytes')} bytes in {js.get('journal_writes')} group commits"
        )
    state.cleanup()
    elapsed = time.monotonic() - t0
    recs = [TraceRecord(**r) for r in rows]
    fcfs = replay_virtual(recs, "fcfs", workers)
    return _report(console, infos, fcfs.by_tier, preemptions, elapsed)


def _report(
    console: Console,
    infos: dict[str, TaskInfo],
    fcfs: dict[str, dict[str, float]],
    preemptions: int,
    elapsed: float,
) -> dict[str, Any]:
    by_tier: dict[str, list[TaskInfo]] = {}
    for info in infos.values():
        by_tier.setdefault(info.tier, []).append(info)
    tbl = Table(
        title=f"Per tier: raysched (mlfq, real actors) vs FCFS on the same workload "
        f"(virtual replay); {preemptions} preemptions, {elapsed:.1f}s"
    )
    for col in (
        "tier",
        "tasks",
        "p50 wait s",
        "p99 wait s",
        "mean JCT s",
        "p99 JCT s",
        "FCFS p99 wait s",
        "FCFS mean JCT s",
    ):
        tbl.add_column(col, justify="right" if col != "tier" else "left")
    summary: dict[str, Any] = {}
    for tier, xs in sorted(by_tier.items()):
        waits = [x.started_at - x.submitted_at for x in xs if x.started_at is not None]
        jcts = [x.finished_at - x.submitted_at for x in xs if x.finished_at is not None]
        f = fcfs.get(tier, {})
        summary[tier] = {
            "tasks": len(xs),
            "p99_wait_s": _pct(waits, 0.99),
            "mean_jct_s": statistics.fmean(jcts) if jcts else 0.0,
            "fcfs_p99_wait_s": f.get("p99_wait_s", 0.0),
        }
        tbl.add_row(
            tier,
            str(len(xs)),
            f"{_pct(waits, 0.5):.3f}",
            f"{_pct(waits, 0.99):.3f}",
            f"{summary[tier]['mean_jct_s']:.2f}",
            f"{_pct(jcts, 0.99):.2f}",
            f"{f.get('p99_wait_s', 0.0):.3f}",
            f"{f.get('mean_jct_s', 0.0):.2f}",
        )
    console.print(tbl)
    ok = all(x.state.value == "succeeded" for x in infos.values())
    console.print("all tasks succeeded" if ok else "[red]some tasks did not succeed[/]")
    summary["all_succeeded"] = ok
    return summary
