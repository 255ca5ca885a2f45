"""The journal's CPU in the scheduler's thread, without Ray: low-noise, per phase.

A task's life as ``SchedulerService`` drives the policy core and the recorder, cycle after cycle:
a batch of no-op tasks is submitted and committed (``flush(new_only=True)``, what an
acknowledgement waits for), dispatched in slices to two workers with a flush after each slice
(the scheduler flushes about every ``store.flush_interval_s``), and ended slice by slice as the
workers report them: ``core.account`` and ``core.finish`` per task, then ``Recorder.outcomes``
with the events as a worker encodes them (``records.split_done``, done outside the timing) and a
flush. One core journals (``everysec``'s inline writes, ``store.hold_starts_s`` = 50 ms on an
injected clock); an identical one does not; the two alternate cycle by cycle in one process,
and each phase's thread CPU per task is compared within its cycle pair. Ray, the workers, the
event loop, the fsync thread and the machine's other processes are left out: see
``durability.py`` for what the whole scheduler does.

    python benchmarks/journal_cost.py [--tasks 2000] [--cycles 40] [--slice 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

import orjson

from raysched.policy.core import SchedulerCore
from raysched.policy.task import Task
from raysched.settings import PolicySettings
from raysched.store import Journal, Recorder
from raysched.store.records import split_done

PHASES = (
    ("submit", "build and accept the batch (the lifecycle's change log)"),
    ("commit", "journal the new tasks (what the acknowledgement waits for)"),
    ("dispatch", "start the tasks (a list append per start)"),
    ("flush after dispatch", "hold the batch of starts back"),
    ("finish", "account and finish each task (its mark)"),
    ("outcomes", "pick the successes journaled as the worker's bytes"),
    ("flush after outcomes", "write them (a done record)"),
    ("flush at the end", "release the held starts (nothing still runs)"),
)


class Pipeline:
    def __init__(self, journaled: bool, clock: list[float], root: str) -> None:
        self.core = SchedulerCore(PolicySettings())
        self.rec: Recorder | None = None
        if journaled:
            journal = Journal(tempfile.mkdtemp(dir=root), sync="everysec")
            self.rec = Recorder(self.core, journal, hold_starts_s=0.05, clock=lambda: clock[0])

    def flush(self, new_only: bool = False) -> None:
        if self.rec is not None:
            self.rec.flush(new_only=new_only).result()


def cycle(
    p: Pipeline, n: int, step: int, seq0: int, clock: list[float], tt: Callable[[], float]
) -> dict[str, float]:
    """One batch through its life; thread seconds per phase."""
    out = dict.fromkeys((name for name, _ in PHASES), 0.0)
    ids = [uuid.uuid4().hex for _ in range(n)]
    now = clock[0]
    a = tt()
    tasks = []
    for i, tid in enumerate(ids):
        t = Task(tid, 1, now, seq0 + i, 0, "default", "batch", "echo", "default", None, None)
        t.payload = {"i": i}
        tasks.append(t)
    p.core.submit_many(tasks, now)
    b = tt()
    p.flush(new_only=True)
    c = tt()
    out["submit"] += b - a
    out["commit"] += c - b
    slices = []
    for k in range(0, n, step):
        clock[0] += 0.0005
        a = tt()
        worker = "w-a" if k // step % 2 else "w-b"
        slices.append(p.core.dispatch("default", step, clock[0], worker=worker))
        b = tt()
        p.flush()
        c = tt()
        out["dispatch"] += b - a
        out["flush after dispatch"] += c - b
    reports = []
    for got in slices:  # what the workers send (encoded in their processes: not timed)
        evs = [
            {"t": "done", "id": t.id, "result": None, "ts0": clock[0], "service": 0.0} for t in got
        ]
        _, data = split_done(evs)
        assert data is not None
        reports.append((got, data))
    for got, data in reports:
        clock[0] += 0.0005
        now = clock[0]
        a = tt()
        evs = orjson.loads(data)
        taken: list[Task | None] = []
        for ev, t in zip(evs, got, strict=True):
            t.first_start = max(t.arrival, float(ev["ts0"]))
            p.core.account(t, float(ev["service"]), 0)
            p.core.finish(t, now, ok=True, result=ev["result"])
            taken.append(t)
        b = tt()
        if p.rec is not None:
            p.rec.outcomes(got[0].worker or "", now, data, evs, taken)
        c = tt()
        p.flush()
        d = tt()
        out["finish"] += b - a
        out["outcomes"] += c - b
        out["flush after outcomes"] += d - c
    clock[0] += 0.1  # past the hold: the next flush releases this batch's starts
    a = tt()
    p.flush()
    out["flush at the end"] += tt() - a
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2000, help="tasks per batch (cycle)")
    ap.add_argument("--cycles", type=int, default=40, help="cycles per pipeline")
    ap.add_argument("--slice", type=int, default=200, help="tasks per dispatch / report")
    ap.add_argument("--warmup", type=int, default=4)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="raysched-journal-cost-")
    try:
        clock = [1000.0]
        pipes = {"memory": Pipeline(False, clock, root), "journal": Pipeline(True, clock, root)}
        per: dict[str, list[dict[str, float]]] = {m: [] for m in pipes}
        seq = 0
        for i in range(a.cycles + a.warmup):
            for m in ("memory", "journal") if i % 2 else ("journal", "memory"):
                got = cycle(pipes[m], a.tasks, a.slice, seq, clock, time.thread_time)
                seq += a.tasks
                if i >= a.warmup:
                    per[m].append({k: 1e6 * v / a.tasks for k, v in got.items()})
        rec = pipes["journal"].rec
        assert rec is not None
        stats = rec.journal.stats
        print(
            f"`python benchmarks/journal_cost.py --tasks {a.tasks} --cycles {a.cycles} "
            f"--slice {a.slice}`: {stats.bytes / (seq / 2):.0f} journal B/task\n"
        )
        print("| phase | in memory µs/task | journaled µs/task | paired difference | what |")
        print("|---|---:|---:|---:|---|")
        total = 0.0
        for name, what in PHASES:
            mem = [c[name] for c in per["memory"]]
            jr = [c[name] for c in per["journal"]]
            diff = statistics.median(y - x for x, y in zip(mem, jr, strict=True))
            total += diff
            print(
                f"| {name} | {statistics.median(mem):.3f} | {statistics.median(jr):.3f} | "
                f"{diff:+.3f} | {what} |"
            )
        mem_all = [sum(c.values()) for c in per["memory"]]
        jr_all = [sum(c.values()) for c in per["journal"]]
        whole = statistics.median(y - x for x, y in zip(mem_all, jr_all, strict=True))
        print(
            f"| whole cycle | {statistics.median(mem_all):.3f} | {statistics.median(jr_all):.3f} "
            f"| {whole:+.3f} | (sum of the phases' differences {total:+.3f}) |"
        )
        rec.journal.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
