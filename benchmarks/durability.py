"""What durability costs the running scheduler, on a real local Ray, one run, one machine.

1. Throughput of no-op tasks (batched submission, 2 workers x 512 slots) with the store off
   (in memory: the runtime benchmark's figure) and with the journal under ``off``, ``everysec``
   and ``always``; rounds interleave the modes so drift hits them alike. Then longer runs
   (``--long-tasks``, in memory and ``everysec``): with a deeper queue more tasks end in a later
   journal segment than the one they were submitted in, and their outcome row is a whole one.
2. Acknowledgement latency and rate with 1,000 concurrent single-task submitters per mode (each
   acknowledgement waits for the journal).
3. Restart of the actor after SIGKILL with 10k / 100k queued tasks: kill to first answer, and the
   recovery time the actor reports; from the journal alone and from a snapshot plus journal tail.
4. Large values: echo tasks with a large payload (so a large result too), inline
   (``store.inline_max_bytes: null``) against blob files + object store (the default 64 KiB):
   throughput, journal bytes per task, scheduler memory, time to read every result back.

Every scheduler starts from an empty state directory of its own, as the in-memory one starts
with nothing: on a shared directory each round's scheduler would first recover every earlier
round's tasks and outcomes (restored into its memory), which slows later rounds of the durable
modes only.

    python benchmarks/durability.py [--tasks 20000] [--rounds 3] [--long-tasks 100000]
        [--long-rounds 4] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from sections import write_section

from raysched.client import Client, connect
from raysched.settings import PoolSettings, Settings

MODES = ("memory", "off", "everysec", "always")
LONG_MODES = ("memory", "everysec")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def make(mode: str, state: str, pool: PoolSettings, **store: Any) -> Client:
    """A scheduler on a fresh state directory under ``state`` (see the module docstring)."""
    st: dict[str, Any] = {"enabled": False} if mode == "memory" else {"sync": mode, **store}
    s = Settings(
        namespace=f"bench-{uuid.uuid4().hex[:6]}",
        actor_name="bench-sched",
        state_dir=tempfile.mkdtemp(prefix="run-", dir=state),
        pools=[pool],
        store=st,
    )
    return connect(settings=s)


def ready(c: Client, n: int) -> None:
    while c.stats()["pools"]["default"]["ready_workers"] < n:
        time.sleep(0.05)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu_s() -> float:
    """CPU seconds all cores have spent working so far (Linux ``/proc/stat``): user, nice,
    system, irq and softirq. Not idle or iowait, not steal (the hypervisor ran someone else),
    and not guest, which the kernel already counts in user and nice. In a container this is
    the host's."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def throughput(mode: str, n: int, state: str) -> dict[str, float]:
    c = make(mode, state, PoolSettings(min_workers=2, max_workers=2, slots=512))
    try:
        ready(c, 2)
        h = ray.get_actor(c.settings.actor_name, namespace=c.settings.namespace)
        pid = int(ray.get(h.pid.remote()))
        cpu0, machine0 = _cpu_s(pid), _machine_cpu_s()
        chunk = 2000
        t0 = time.perf_counter()
        for i in range(0, n, chunk):
            c.submit_batch(
                [{"kind": "echo", "payload": {"i": j}} for j in range(i, min(n, i + chunk))]
            )
        while c.progress()["completed"] < n:
            time.sleep(0.005)
        rate = n / (time.perf_counter() - t0)
        cpu_us = 1e6 * (_cpu_s(pid) - cpu0) / n
        machine_us = 1e6 * (_machine_cpu_s() - machine0) / n
        store = c.stats().get("store") or {}
        return {
            "per_s": rate,
            "journal_bytes_per_task": store.get("journal_bytes", 0) / n,
            "actor_cpu_us": cpu_us,
            "machine_cpu_us": machine_us,
        }
    finally:
        c.shutdown()
        shutil.rmtree(c.settings.state_dir, ignore_errors=True)  # rounds add up to gigabytes


def acks(mode: str, k: int, state: str) -> dict[str, float]:
    c = make(mode, state, PoolSettings(min_workers=2, max_workers=2, slots=512))
    try:
        ready(c, 2)
        h = c._h

        async def one(i: int) -> float:
            t = time.perf_counter()
            await h.submit.remote([{"id": f"a{i}-{uuid.uuid4().hex[:6]}", "kind": "echo"}])
            return time.perf_counter() - t

        async def all_() -> tuple[list[float], float]:
            t0 = time.perf_counter()
            lat = list(await asyncio.gather(*(one(i) for i in range(k))))
            return lat, time.perf_counter() - t0

        lat, wall = asyncio.run(all_())
        return {
            "acks_per_s": k / wall,
            "p50_ms": 1e3 * statistics.median(lat),
            "p99_ms": 1e3 * pct(lat, 0.99),
        }
    finally:
        c.shutdown()


def restart(n: int, snapshot: bool, state: str) -> dict[str, float]:
    # workers ask for more CPUs than exist: every task stays queued
    store: dict[str, Any] = {"checkpoint_interval_s": 1.0 if snapshot else 3600.0}
    c = make("everysec", state, PoolSettings(num_cpus=64, min_workers=1, max_workers=1), **store)
    try:
        for i in range(0, n, 5000):
            c.submit_batch(
                [
                    {"kind": "echo", "payload": {"i": j}, "tier": "batch"}
                    for j in range(i, min(n, i + 5000))
                ]
            )
        while snapshot and c.stats()["store"]["checkpoint_tasks"] < n:
            time.sleep(0.1)  # a snapshot holding the whole queue
        h = ray.get_actor(c.settings.actor_name, namespace=c.settings.namespace)
        pid = ray.get(h.pid.remote())
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        live = c.progress()["live"]  # the client retries until the restarted actor answers
        answered = time.perf_counter() - t0
        assert live == n, (live, n)
        info = ray.get(c._h.start.remote())["recovery"]
        return {"kill_to_answer_s": answered, "recovery_s": info["seconds"]}
    finally:
        c.shutdown()


def large(inline: bool, n: int, kb: int, state: str) -> dict[str, float]:
    """``n`` echo tasks with a ``kb`` KiB payload each, submitted 10 per call."""
    store: dict[str, Any] = {"inline_max_bytes": None if inline else 64 * 1024}
    c = make("everysec", state, PoolSettings(min_workers=2, max_workers=2, slots=4), **store)
    try:
        ready(c, 2)
        text = "x" * (kb * 1024)
        rss0 = c.stats()["rss_mb"]
        t0 = time.perf_counter()
        ids: list[str] = []
        for i in range(0, n, 10):
            ids += c.submit_batch(
                [{"kind": "echo", "payload": {"i": j, "text": text}} for j in range(i, i + 10)]
            )
        while c.progress()["completed"] < n:
            time.sleep(0.01)
        run_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for tid in ids:
            assert len(c.result(tid)["text"]) == len(text)
        read_s = time.perf_counter() - t1
        st = c.stats()
        return {
            "per_s": n / run_s,
            "read_per_s": n / read_s,
            "journal_bytes_per_task": st["store"]["journal_bytes"] / n,
            "rss_growth_mb": (st["rss_mb"] or 0.0) - (rss0 or 0.0),
        }
    finally:
        c.shutdown()


TABLE_HEAD = (
    "| store | tasks/s (median) | rounds | vs in-memory "
    "| vs in-memory, same round (median; bootstrap 95% interval) "
    "| journal B/task | scheduler CPU µs/task (median) | vs in-memory "
    "| machine CPU µs/task (median) | vs in-memory |",
    "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
)


def paired(xs: list[float], base: list[float]) -> float:
    """The median over rounds of ``xs[i] / base[i] - 1``: each run against the in-memory run of
    its own round (minutes apart at most), which the machine's drift moves less than it moves
    a ratio of medians taken over the whole run."""
    return statistics.median(x / b - 1 for x, b in zip(xs, base, strict=True))


def paired_interval(xs: list[float], base: list[float], n: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% interval for ``paired``: the rounds resampled with replacement ``n``
    times (seeded, so the same rounds give the same interval)."""
    d = [x / b - 1 for x, b in zip(xs, base, strict=True)]
    rnd = random.Random(0)
    meds = sorted(statistics.median(rnd.choices(d, k=len(d))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def table_rows(res: dict[str, Any], modes: tuple[str, ...]) -> list[str]:
    """One row per mode: medians of the rounds, and the differences to in memory."""
    mem = statistics.median(res["throughput"]["memory"])
    mem_cpu = statistics.median(res["actor_cpu_us"]["memory"])
    mem_mach = statistics.median(res["machine_cpu_us"]["memory"])
    out = []
    for m in modes:
        xs = res["throughput"][m]
        med = statistics.median(xs)
        jb = statistics.median(res["journal_bytes"][m]) if m != "memory" else 0.0
        cpu = statistics.median(res["actor_cpu_us"][m])
        mach = statistics.median(res["machine_cpu_us"][m])
        same = paired(xs, res["throughput"]["memory"])
        lo, hi = paired_interval(xs, res["throughput"]["memory"])
        same_s = f"{100 * same:+.1f}% ({100 * lo:+.1f} to {100 * hi:+.1f})"
        out.append(
            f"| {m if m != 'memory' else 'in memory (store off)'} | {med:,.0f} | "
            f"{', '.join(f'{x:,.0f}' for x in xs)} | "
            f"{'-' if m == 'memory' else f'{100 * (med / mem - 1):+.1f}%'} | "
            f"{'-' if m == 'memory' else same_s} | "
            f"{'-' if m == 'memory' else f'{jb:.0f}'} | {cpu:.1f} | "
            f"{'-' if m == 'memory' else f'{cpu - mem_cpu:+.1f}'} | {mach:.1f} | "
            f"{'-' if m == 'memory' else f'{mach - mem_mach:+.1f}'} |"
        )
    return out


def render(a: argparse.Namespace, res: dict[str, Any]) -> str:
    lines = [
        "### Durability cost in the running scheduler (`benchmarks/durability.py`)",
        "",
        f"Command: `python benchmarks/durability.py --tasks {a.tasks} --rounds {a.rounds} "
        f"--long-tasks {a.long_tasks} --long-rounds {a.long_rounds} --write` (2 cores, one "
        f"local Ray, modes interleaved per round; load average before: {res['loadavg']}).",
        "",
        f"No-op tasks, {a.tasks:,} per run, batched submission (2,000 per call), 2 workers x 512 "
        "slots; median of the rounds and every round:",
        "",
        *TABLE_HEAD,
        *table_rows(res, MODES),
    ]
    if res.get("long"):
        lines += [
            "",
            f"Longer runs, {a.long_tasks:,} no-op tasks per run, rounds: {a.long_rounds} (same "
            "setup). The queue is deeper and the run spans several journal segments: a task "
            "that ends in a later segment than its submission's gets a whole outcome row "
            "(`records`: `f`, not `e`):",
            "",
            *TABLE_HEAD,
            *table_rows(res["long"], LONG_MODES),
        ]
    lines += [
        "",
        "Scheduler CPU: user + system seconds of the scheduler actor's process (all its "
        "threads, from `/proc`) over the run, per task; the results converter runs in a "
        "process of its own and is not included. Machine CPU: working seconds of all cores "
        "(`/proc/stat`) over the run, per task: the scheduler, its workers and results "
        "converter, Ray's own processes and this driver (user + nice + system + irq + softirq; "
        f"{os.cpu_count()} cores).",
    ]
    lines += [
        "",
        f"{a.acks:,} concurrent submitters, one task per call (each acknowledgement waits for the "
        "journal), last round:",
        "",
        "| store | acks/s | ack p50 ms | ack p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for m in MODES:
        r = res["acks"][m]
        lines.append(f"| {m} | {r['acks_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    lines += [
        "",
        "Actor restart after SIGKILL with the queue full (everysec): kill to the first answer "
        "of the restarted actor (Ray's restart + worker reaping + recovery), and the recovery "
        "time the actor reports:",
        "",
        "| queued | state on disk | kill -> answer s | recovery s |",
        "|---:|---|---:|---:|",
    ]
    for r in res["restart"]:
        lines.append(
            f"| {r['n']:,} | {r['from']} | {r['kill_to_answer_s']:.2f} | {r['recovery_s']:.2f} |"
        )
    if res.get("large"):
        lines += [
            "",
            f"Large values: {a.large:,} echo tasks with a {a.large_kb} KiB payload each (so a "
            f"{a.large_kb} KiB result too), 10 per call, 2 workers x 4 slots, everysec; then "
            "`client.result` for each, one by one:",
            "",
            "| large values | tasks/s | results read/s | journal B/task "
            "| scheduler RSS growth MB |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, r in res["large"].items():
            lines.append(
                f"| {name} | {r['per_s']:,.1f} | {r['read_per_s']:,.1f} | "
                f"{r['journal_bytes_per_task']:,.0f} | {r['rss_growth_mb']:,.1f} |"
            )
    return "\n".join(lines) + "\n"


def empty_throughput(modes: tuple[str, ...]) -> dict[str, dict[str, list[float]]]:
    keys = ("throughput", "journal_bytes", "actor_cpu_us", "machine_cpu_us")
    return {k: {m: [] for m in modes} for k in keys}


def throughput_rounds(
    res: dict[str, Any], modes: tuple[str, ...], n: int, rounds: int, state: str
) -> None:
    """``rounds`` runs of ``n`` tasks per mode, the order reversed every other round."""
    for r in range(rounds):
        order = modes if r % 2 == 0 else tuple(reversed(modes))
        for m in order:
            t = throughput(m, n, state)
            res["throughput"][m].append(t["per_s"])
            res["journal_bytes"][m].append(t["journal_bytes_per_task"])
            res["actor_cpu_us"][m].append(t["actor_cpu_us"])
            res["machine_cpu_us"][m].append(t["machine_cpu_us"])
            print(
                f"round {r} {m} ({n:,} tasks): {t['per_s']:,.0f} tasks/s, "
                f"scheduler {t['actor_cpu_us']:.1f} µs/task, "
                f"machine {t['machine_cpu_us']:.1f} µs/task",
                flush=True,
            )


def write_results(section: str) -> None:
    begin, end = "<!-- durability:begin -->", "<!-- durability:end -->"
    write_section(Path(__file__).with_name("RESULTS.md"), begin, end, f"{begin}\n{section}{end}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--long-tasks", type=int, default=100_000, help="tasks per longer run (0: skip them)"
    )
    ap.add_argument("--long-rounds", type=int, default=4)
    ap.add_argument("--acks", type=int, default=1000)
    ap.add_argument("--restart", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--large", type=int, default=300, help="large-value tasks (0: skip)")
    ap.add_argument("--large-kb", type=int, default=256)
    ap.add_argument(
        "--throughput-only",
        metavar="MODES",
        help="only part 1's first runs (not the longer ones), for these comma-separated modes "
        "(e.g. memory,everysec); prints the medians, writes nothing",
    )
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res: dict[str, Any] = {
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        **empty_throughput(MODES),
        "acks": {},
        "restart": [],
        "large": {},
    }
    modes = tuple(a.throughput_only.split(",")) if a.throughput_only else MODES
    if not set(modes) <= set(MODES) or "memory" not in modes:
        ap.error(f"--throughput-only takes modes among {', '.join(MODES)}, memory included")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench")
    with tempfile.TemporaryDirectory(prefix="raysched-bench-") as state:
        throughput_rounds(res, modes, a.tasks, a.rounds, state)
        if a.throughput_only:
            ray.shutdown()
            print("\n".join([*TABLE_HEAD, *table_rows(res, modes)]))
            return
        if a.long_tasks > 0 and a.long_rounds > 0:
            res["long"] = empty_throughput(LONG_MODES)
            throughput_rounds(res["long"], LONG_MODES, a.long_tasks, a.long_rounds, state)
        for m in MODES:
            res["acks"][m] = acks(m, a.acks, state)
            print(f"acks {m}: {res['acks'][m]}", flush=True)
        for n in a.restart:
            for snap in (False, True):
                r_ = restart(n, snap, state)
                res["restart"].append(
                    {"n": n, "from": "snapshot + tail" if snap else "journal only", **r_}
                )
                print(f"restart {n} snapshot={snap}: {r_}", flush=True)
        if a.large:
            for name, inline in (
                ("inline (inline_max_bytes: null)", True),
                ("blobs + object store (64 KiB)", False),
            ):
                res["large"][name] = large(inline, a.large, a.large_kb, state)
                print(f"large {name}: {res['large'][name]}", flush=True)
    ray.shutdown()
    if a.json:
        print(json.dumps(res))
    section = render(a, res)
    print(section)
    if a.write:
        write_results(section)


if __name__ == "__main__":
    main()
