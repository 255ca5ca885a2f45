"""How much of the FCFS->SRPT gap a scheduler that does not know output lengths can close: the
policies benchmark's traces in a coarse fluid model, under policies that see only a task's tier,
prompt and attained service (blind), next to the oracles that see its true size.

The model: 4 workers; every ``--dt`` seconds (0.05 s, five decode steps) the 4 best-ranked tasks
present each get ``dt`` of service (preemption at any ``dt``, no step boundaries, no recompute).
So its means differ from the replay's; compare the gap closed, within this model. Policies:

- ``fcfs``; ``srpt`` (the oracle); ``tiered srpt`` (the oracle inside strict tiers);
- ``las``: least attained service inside strict tiers -- what MLFQ's levels approximate;
- ``gittins``: the Gittins index of each tier's true decode-length distribution (sampled from
  the generator, 200,000 draws per tier), the optimal blind order for one server when sizes are
  all that is unknown (Gittins; Scully et al., "SOAP", 2018). Approximations: a task still in
  its prefill ranks as a fresh one (its known remaining prefill is not priced in), and 4
  servers are not one;
- ``las + slice``: las on decode service, except that service within a task's first slice (the
  d maximising P(X <= d) / E[min(X, d)] of its tier's distribution) counts as none, ties going
  to the task further along. MLFQ's ``learn_first_slice`` stretches the first quantum to the
  same slice, learned instead of known; after it MLFQ demotes one level at a time rather than
  ranking by exact attained service.

    python benchmarks/blind_policies.py [--seeds 3 4 5] [--write]
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sections import write_section

from raysched.policy.sizes import first_slice
from raysched.sim.trace import TraceSpec, generate_trace

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- blind:begin -->", "<!-- blind:end -->"
PRE, DEC = 0.0002, 0.01  # the contract's cost model
TIERS = ("interactive", "batch")
POLICIES = ("fcfs", "srpt", "tiered srpt", "las", "gittins", "las + slice")

Job = dict[str, Any]


def decode_sample(dist: str, tier: str, n: int = 200_000) -> np.ndarray:
    spec, rnd = TraceSpec(dist=dist), random.Random(99)
    return np.sort([spec.output_tokens(rnd, tier == "interactive") * DEC for _ in range(n)])


def gittins_table(xs: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """G(a) = max over d of P(X - a <= d | X > a) / E[min(X - a, d) | X > a], on ``grid``."""
    out = np.empty(len(grid))
    for i, a in enumerate(grid):
        rem = xs[xs > a] - a  # sorted
        if len(rem) == 0:
            out[i] = np.inf
            continue
        k = np.arange(1, len(rem) + 1)
        work = np.cumsum(rem) + rem * (len(rem) - k)
        out[i] = float((k / work).max())
    return out


def fluid(jobs: list[Job], rank: Callable[[Job], tuple[float, ...]], dt: float) -> float:
    for j in jobs:
        j["att"], j["fin"] = 0.0, None
    t, i, n, done = 0.0, 0, len(jobs), 0
    present: list[Job] = []
    while done < n:
        while i < n and jobs[i]["arr"] <= t + 1e-12:
            present.append(jobs[i])
            i += 1
        if not present:
            t = jobs[i]["arr"]
            continue
        for j in heapq.nsmallest(4, present, key=rank) if len(present) > 4 else present:
            j["att"] += dt
            if j["att"] >= j["size"] - 1e-9:
                j["fin"] = t + dt - (j["att"] - j["size"])
                done += 1
        present = [j for j in present if j["fin"] is None]
        t += dt
    return float(sum(j["fin"] - j["arr"] for j in jobs) / n)


def run_trace(dist: str, seed: int, tasks: int, dt: float) -> dict[str, float]:
    rows = generate_trace(TraceSpec(tasks=tasks, workers=4, load=0.9, dist=dist, seed=seed))
    jobs = [
        {
            "arr": r["arrival_s"],
            "tier": TIERS.index(r["tier"]),
            "pre": r["prompt_tokens"] * PRE,
            "size": r["prompt_tokens"] * PRE + r["output_tokens"] * DEC,
        }
        for r in rows
    ]
    samples = [decode_sample(dist, tier) for tier in TIERS]
    grid = np.arange(0, int(80.0 / dt) + 2) * dt  # outputs are capped at 8,000 tokens (80 s)
    gt = [gittins_table(xs, grid) for xs in samples]
    cut = [first_slice(xs.tolist()) for xs in samples]

    def gittins(j: Job) -> tuple[float, ...]:
        # in its prefill a task ranks as a fresh one; ties go to the task further along
        a = j["att"] - j["pre"]
        g = gt[j["tier"]][min(int(max(a, 0.0) / dt + 1e-9), len(grid) - 1)]
        return (j["tier"], -g, -a, j["arr"])

    def las_slice(j: Job) -> tuple[float, ...]:
        a = j["att"] - j["pre"]
        return (j["tier"], 0.0 if a < cut[j["tier"]] else a, -a, j["arr"])

    ranks: dict[str, Callable[[Job], tuple[float, ...]]] = {
        "fcfs": lambda j: (j["arr"],),
        "srpt": lambda j: (j["size"] - j["att"],),
        "tiered srpt": lambda j: (j["tier"], j["size"] - j["att"]),
        "las": lambda j: (j["tier"], j["att"], j["arr"]),
        "gittins": gittins,
        "las + slice": las_slice,
    }
    return {p: fluid(jobs, ranks[p], dt) for p in POLICIES}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--dt", type=float, default=0.05)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    lines = []
    for dist in ("lognormal", "pareto"):
        for seed in args.seeds:
            m = run_trace(dist, seed, args.tasks, args.dt)
            span = m["fcfs"] - m["srpt"]
            gaps = " | ".join(f"{(m['fcfs'] - m[p]) / span:.3f}" for p in POLICIES[2:])
            means = " | ".join(f"{m[p]:.2f}" for p in POLICIES)
            lines.append(f"| {dist} | {seed} | {means} | {gaps} |")
            print(lines[-1], flush=True)
    wall = time.perf_counter() - t0
    cmd = " ".join(["python benchmarks/blind_policies.py", *(argv or sys.argv[1:])])
    block = "\n".join(
        [
            BEGIN,
            "## What a blind policy can close (coarse fluid model)",
            "",
            f"- Command: `{cmd}` ({wall:.0f} s). The policies benchmark's traces "
            f"({args.tasks:,} tasks, "
            f"load 0.9, 4 workers, seeds {' '.join(map(str, args.seeds))}) in a fluid model: "
            f"every {args.dt} s the 4 best-ranked tasks get {args.dt} s of service each (no "
            "step boundaries, no recompute), so its means differ from the replay's; the gap "
            "closed is (fcfs - policy) / (fcfs - srpt) within the model. Blind policies (las, "
            "gittins, las + slice) see a task's tier, prompt and attained service only; gittins "
            "and las + slice use each tier's true output-length distribution. See the script's "
            "docstring.",
            "",
            "| dist | seed | "
            + " | ".join(f"{p} mean s" for p in POLICIES)
            + " | "
            + " | ".join(f"{p} gap" for p in POLICIES[2:])
            + " |",
            "|---|---|" + "---|" * (len(POLICIES) + len(POLICIES) - 2),
            *lines,
            END,
        ]
    )
    print(block)
    if args.write:
        write_section(args.results, BEGIN, END, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
