"""Benchmarks of the durability layer (raysched/store): no Ray.

1. Submission throughput through the scheduler's submit path (build a Task, ``submit_many`` into the
   policy core, ``await recorder.commit()`` before the acknowledgement) from concurrent asyncio
   clients, one task per call and 100 per call, with the journal under each sync policy and, as
   the baseline in the same run, without any journal.
2. Journal bytes per task: a submission alone, and a whole life (submit, start, one progress
   report, finish with a small result).
3. Recovery time for 10,000 and 100,000 queued tasks: from the journal alone (no snapshot yet) and
   from a snapshot (the normal case), plus what the checkpoint itself cost.

    python benchmarks/store.py [--tasks 20000] [--clients 64] [--write]

``--write`` puts the figures into benchmarks/RESULTS.md between ``<!-- store:begin -->`` and
``<!-- store:end -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raysched.policy.core import SchedulerCore
from raysched.policy.task import Task
from raysched.settings import PolicySettings
from raysched.store import Journal, Recorder, recover

TIERS = (("interactive", 1), ("batch", 5), ("best_effort", 9))
RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- store:begin -->", "<!-- store:end -->"


def make_task(i: int, rnd: random.Random, now: float) -> Task:
    """A task as SchedulerService._task_from builds it (the simulate handler's payload)."""
    tier, prio = TIERS[i % 3]
    prompt = rnd.randint(10, 2000)
    t = Task(f"{i:032x}", prio, now, 0, prompt, "abc"[i % 3], tier, "simulate", "default")
    t.payload = {"prompt_tokens": prompt, "output_tokens": rnd.randint(1, 500)}
    return t


# -- 1. throughput ---------------------------------------------------------------------------------
async def _submit_run(
    core: SchedulerCore, recorder: Recorder | None, n: int, clients: int, per_call: int
) -> float:
    rnd = random.Random(1)
    counter = iter(range(n))
    clock = time.time

    async def client() -> None:
        while True:
            batch = []
            for _ in range(per_call):
                i = next(counter, None)
                if i is None:
                    break
                batch.append(make_task(i, rnd, clock()))
            if not batch:
                return
            core.submit_many(batch, clock())
            if recorder is not None:
                await recorder.commit()  # the acknowledgement waits for the journal
            else:
                await asyncio.sleep(0)  # the same scheduling points as with a journal

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - t0


def throughput(mode: str, n: int, clients: int, per_call: int, workdir: Path) -> dict[str, Any]:
    core = SchedulerCore(PolicySettings())
    journal: Journal | None = None
    recorder: Recorder | None = None
    if mode != "memory":
        jdir = workdir / f"journal-{mode}-{per_call}"
        shutil.rmtree(jdir, ignore_errors=True)
        journal = Journal(jdir, sync=mode)  # type: ignore[arg-type]
        recorder = Recorder(core, journal)
    gc.collect()
    dt = asyncio.run(_submit_run(core, recorder, n, clients, per_call))
    row: dict[str, Any] = {"mode": mode, "per_call": per_call, "tasks_per_s": n / dt}
    if journal is not None:
        journal.close()
        st = journal.stats
        row.update(writes=st.writes, syncs=st.syncs, bytes=st.bytes)
    assert core.live == n
    return row


# -- 2. bytes per task -----------------------------------------------------------------------------
def bytes_per_task(n: int, workdir: Path) -> dict[str, float]:
    core = SchedulerCore(PolicySettings(policy="priority"))
    jdir = workdir / "journal-bytes"
    shutil.rmtree(jdir, ignore_errors=True)
    journal = Journal(jdir, sync="off")
    recorder = Recorder(core, journal)
    rnd = random.Random(2)
    core.submit_many([make_task(i, rnd, 1.0) for i in range(n)], 1.0)
    recorder.commit_sync()
    submit = journal.stats.bytes / n
    now = 2.0
    for i in range(0, n, 100):
        got = core.dispatch("default", 100, now, f"raysched-w-default-{i % 4:08x}")
        recorder.commit_sync()
        for t in got:
            core.progress(t, 0.05, 5, now + 0.05)
            recorder.touch(t)
        recorder.commit_sync()
        for t in got:
            core.account(t, 0.01, 1)
            core.finish(t, now + 0.1, ok=True, result={"tokens": 6, "text": "hello world"})
        recorder.commit_sync()
        now += 0.2
    journal.close()
    return {"submit": submit, "lifecycle": journal.stats.bytes / n}


# -- 3. recovery -----------------------------------------------------------------------------------
def build_state(state_dir: Path, n: int) -> None:
    st = recover(str(state_dir), settings=PolicySettings(), now=1.0, sync="off")
    rnd = random.Random(3)
    for i in range(0, n, 1000):
        now = 1.0 + i * 1e-4
        st.core.submit_many([make_task(j, rnd, now) for j in range(i, min(n, i + 1000))], now)
        st.recorder.flush()
    st.close()


def time_recovery(state_dir: Path, n: int, repeat: int) -> tuple[list[float], Any]:
    times = []
    rep = None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        st = recover(str(state_dir), settings=PolicySettings(), now=100.0, sync="off")
        times.append(time.perf_counter() - t0)
        assert st.core.queued() == n, (st.core.queued(), n)
        rep = st.report
        st.journal.close()  # no checkpoint, no requeue records: the next run sees the same state
    return times, rep


def recovery(n: int, workdir: Path, repeat: int) -> dict[str, Any]:
    sd = workdir / f"state-{n}"
    shutil.rmtree(sd, ignore_errors=True)
    build_state(sd, n)
    journal_times, jrep = time_recovery(sd, n, repeat)
    st = recover(str(sd), settings=PolicySettings(), now=50.0, sync="off")
    t0 = time.perf_counter()
    snap = st.begin_checkpoint()
    t1 = time.perf_counter()
    info = st.finish_checkpoint(snap)
    t2 = time.perf_counter()
    st.journal.close()
    snap_bytes = (sd / "snapshots" / info.name).stat().st_size
    snap_times, srep = time_recovery(sd, n, repeat)
    return {
        "tasks": n,
        "journal_s": journal_times,
        "journal_records": jrep.journal_records,
        "journal_phases": jrep.phases,
        "snapshot_s": snap_times,
        "snapshot_phases": srep.phases,
        "capture_s": t1 - t0,
        "save_s": t2 - t1,
        "snapshot_bytes": snap_bytes,
    }


# -- report ----------------------------------------------------------------------------------------
def _loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def render(
    args: argparse.Namespace,
    tp: list[dict[str, Any]],
    by: dict[str, float],
    rec: list[dict[str, Any]],
    wall: float,
    load: tuple[str, str],
) -> str:
    cmd = "python benchmarks/store.py " + " ".join(sys.argv[1:])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "## Durability: journal, checkpoints, recovery (raysched/store)",
        "",
        f"- Command: `{cmd.strip()}` (from the repository root; whole run {wall:.1f} s wall)",
        f"- Machine: `nproc` = {os.cpu_count()}, Python {platform.python_version()}, "
        f"{platform.system()}; run {now}; load average (1/5/15 min) {load[0]} before, "
        f"{load[1]} after. The machine is shared: other work ran alongside, so treat the "
        "figures as noisy; ratios within one run are more telling than absolutes.",
        "- Journal on the local disk of the machine (the state directory is a temporary "
        "folder); snapshots through `pyarrow.fs.LocalFileSystem`.",
        "",
        f"### Submission throughput ({args.tasks:,} tasks, {args.clients} concurrent asyncio "
        "clients)",
        "",
        "Each call builds its Task(s), runs `SchedulerCore.submit_many` and, with a journal, "
        "`await Recorder.commit()` before acknowledging (group commit: concurrent calls share "
        "one write). The baseline is the same loop with no journal, in the same run. Median "
        f"of {args.repeat} interleaved runs (min-max in parentheses); writes and fsyncs are "
        "the median run's.",
        "",
        "| journal | tasks per call | tasks/s | vs no journal (medians) | writes (group commits) | "
        "tasks per write | fsyncs |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["per_call"]: r["tasks_per_s"] for r in tp if r["mode"] == "memory"}
    for r in tp:
        ratio = r["tasks_per_s"] / base[r["per_call"]]
        rate = f"{r['tasks_per_s']:,.0f} ({min(r['all']):,.0f}-{max(r['all']):,.0f})"
        if r["mode"] == "memory":
            out.append(f"| none (in memory, baseline) | {r['per_call']} | {rate} | 1.00x | | | |")
        else:
            per = args.tasks / r["writes"] if r["writes"] else 0
            out.append(
                f"| `{r['mode']}` | {r['per_call']} | {rate} | {ratio:.2f}x | "
                f"{r['writes']:,} | {per:,.1f} | {r['syncs']:,} |"
            )
    out += [
        "",
        "What each policy can lose: `always` nothing that was acknowledged; `everysec` nothing "
        "on a process crash, up to about the last second or two on a machine crash; `off` "
        "nothing on a process crash, whatever the kernel had not written back on a machine crash.",
        "",
        "### Journal bytes per task",
        "",
        f"- Submission record only: {by['submit']:.0f} B/task (payload "
        '`{"prompt_tokens": N, "output_tokens": M}`, 32-hex-digit ids).',
        f"- Whole life (submit, start, one progress report, finish with a 34-byte result): "
        f"{by['lifecycle']:.0f} B/task.",
        "",
        "### Recovery of queued tasks (target: 100,000 in <= 2 s)",
        "",
        f"Median of {args.repeat} runs (min-max); `recover()` from the call to a core ready "
        "to dispatch, with every task queued.",
        "",
        "| queued tasks | from journal only | from snapshot | journal records | "
        "checkpoint capture (on the loop) | checkpoint write | snapshot size |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rec:
        j, s = r["journal_s"], r["snapshot_s"]
        out.append(
            f"| {r['tasks']:,} | {statistics.median(j):.2f} s ({min(j):.2f}-{max(j):.2f}) | "
            f"{statistics.median(s):.2f} s ({min(s):.2f}-{max(s):.2f}) | "
            f"{r['journal_records']:,} | {r['capture_s']:.2f} s | {r['save_s']:.2f} s | "
            f"{r['snapshot_bytes'] / 1e6:.1f} MB |"
        )
    big = rec[-1]
    out += [
        "",
        f"Phases at {big['tasks']:,} (last run): from the journal "
        + ", ".join(f"{k} {v:.2f} s" for k, v in big["journal_phases"].items())
        + "; from the snapshot "
        + ", ".join(f"{k} {v:.2f} s" for k, v in big["snapshot_phases"].items())
        + ". `restore` is `SchedulerCore.restore` (index, fair share, queue insertion with "
        "scoring); `persist` journals what recovery changed.",
    ]
    return "\n".join(out)


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000, help="tasks per throughput run")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--recovery", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load_before = _loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="raysched-store-bench-"))
    try:
        tp = []
        for per_call in (1, 100):
            runs: dict[str, list[dict[str, Any]]] = {}
            for _ in range(args.repeat):  # interleaved, so that load changes hit every mode
                for mode in ("memory", "off", "everysec", "always"):
                    r = throughput(mode, args.tasks, args.clients, per_call, workdir)
                    print(r, flush=True)
                    runs.setdefault(mode, []).append(r)
            for rs in runs.values():
                med = sorted(rs, key=lambda r: r["tasks_per_s"])[len(rs) // 2]
                tp.append({**med, "all": [r["tasks_per_s"] for r in rs]})
        by = bytes_per_task(min(args.tasks, 20_000), workdir)
        print(by, flush=True)
        rec = []
        for n in args.recovery:
            r = recovery(n, workdir, args.repeat)
            print({k: v for k, v in r.items() if not k.endswith("phases")}, flush=True)
            rec.append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    section = render(args, tp, by, rec, time.perf_counter() - t_start, (load_before, _loadavg()))
    print(section)
    if args.write:
        write_results(section)


if __name__ == "__main__":
    main()
