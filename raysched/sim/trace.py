"""Trace files (CONTRACT.md section 6): reading with line-numbered errors, and a generator of
synthetic LLM workloads (heavy-tailed output lengths, bursts, tiers, tenants)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from raysched.errors import ValidationFailed
from raysched.models import DEFAULT_TIERS, TraceRecord

__all__ = ["TraceError", "TraceSpec", "generate_trace", "read_trace", "write_trace"]


class TraceError(ValidationFailed):
    """A bad trace line; ``line_no`` and ``line`` say which."""

    code = "invalid_trace"

    def __init__(self, path: str, line_no: int, line: str, why: str) -> None:
        super().__init__(f"{path}:{line_no}: {why}\n  {line.strip()[:300]}")
        self.line_no, self.line = line_no, line


def read_trace(path: str | Path, tiers: Mapping[str, int] = DEFAULT_TIERS) -> list[TraceRecord]:
    """Parse and validate a JSONL trace. Ids must be unique and parents must come earlier, in the
    file and in time (the replay submits tasks in arrival order)."""
    out: list[TraceRecord] = []
    seen: dict[str, float] = {}  # id -> arrival_s
    p = str(path)
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ValidationFailed(f"cannot read trace {p}: {exc}") from exc
    with fh:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(p, no, line, f"not JSON: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise TraceError(p, no, line, "each line must be a JSON object")
            try:
                rec = TraceRecord.model_validate(obj, context={"tiers": tiers})
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(x) for x in err["loc"]) or "line"
                raise TraceError(p, no, line, f"{loc}: {err['msg']}") from exc
            if rec.id in seen:
                raise TraceError(p, no, line, f"duplicate id {rec.id!r}")
            for d in rec.depends_on:
                if d not in seen:
                    raise TraceError(p, no, line, f"depends on {d!r}, which does not come earlier")
                if seen[d] > rec.arrival_s:
                    raise TraceError(
                        p, no, line, f"depends on {d!r}, which arrives later ({seen[d]} s)"
                    )
            seen[rec.id] = rec.arrival_s
            out.append(rec)
    out.sort(key=lambda r: r.arrival_s)  # stable: file order breaks ties
    return out


def write_trace(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")


@dataclass(frozen=True)
class TraceSpec:
    """A synthetic workload: interactive chats (short prompts, short answers) arrive while batch
    jobs (long prompts, long heavy-tailed answers) keep the workers busy."""

    tasks: int = 2000
    workers: int = 4
    load: float = 0.9
    #: "lognormal" or "pareto" output lengths.
    dist: str = "lognormal"
    interactive_share: float = 0.5
    tenants: int = 3
    burstiness: float = 0.3  # share of batch arrival events that are bursts of 5-20 tasks
    prefill_s_per_token: float = 0.0002
    decode_s_per_token: float = 0.01
    seed: int = 0
    #: lognormal shape (sigma of the log) and Pareto tail index: the tail weight
    sigma: float = 1.4
    alpha: float = 1.3
    #: When set, each task carries a ``size_hint``: its true work (prefill + decode seconds) times
    #: exp(N(0, hint_error)), as from an output-length predictor of that accuracy (0.5: most
    #: hints within a factor of 1.65 of the truth). Drawn from a separate random stream, so the
    #: trace is otherwise the same as without hints.
    hint_error: float | None = None

    def output_tokens(self, rnd: random.Random, interactive: bool) -> int:
        if self.dist == "pareto":
            # Pareto (alpha 1.3 by default): heavy tail, finite mean.
            scale = 20 if interactive else 60
            return max(1, min(8000, int(scale * rnd.paretovariate(self.alpha))))
        if self.dist == "lognormal":
            mu = math.log(40) if interactive else math.log(150)
            return max(1, min(8000, int(rnd.lognormvariate(mu, self.sigma))))
        raise ValueError(f"unknown dist {self.dist!r}")


def generate_trace(spec: TraceSpec) -> list[dict[str, Any]]:
    """Arrival rate is set so that offered work / (workers x time) equals ``spec.load``."""
    rnd = random.Random(spec.seed)
    rows: list[dict[str, Any]] = []
    total_work = 0.0
    for i in range(spec.tasks):
        interactive = rnd.random() < spec.interactive_share
        prompt = rnd.randint(20, 400) if interactive else rnd.randint(200, 3000)
        out = spec.output_tokens(rnd, interactive)
        total_work += prompt * spec.prefill_s_per_token + out * spec.decode_s_per_token
        rows.append(
            {
                "id": f"t{i}",
                "tier": "interactive" if interactive else "batch",
                "tenant": f"tenant{rnd.randrange(spec.tenants)}",
                "prompt_tokens": prompt,
                "output_tokens": out,
            }
        )
    mean_work = total_work / spec.tasks
    rate = spec.load * spec.workers / mean_work  # arrivals per second, all tiers
    # Interactive requests arrive one by one (Poisson); batch work arrives partly in bursts, as a
    # batch job submits many rows at once. Both streams together offer ``load``.
    inter = [r for r in rows if r["tier"] == "interactive"]
    batch = [r for r in rows if r["tier"] == "batch"]
    share = len(inter) / len(rows)
    t = 0.0
    for r in inter:
        t += rnd.expovariate(rate * share)
        r["arrival_s"] = round(t, 6)
    t = 0.0
    i = 0
    brate = rate * (1 - share)
    while i < len(batch):
        if rnd.random() < spec.burstiness:
            burst = min(len(batch) - i, rnd.randint(5, 20))
            t += rnd.expovariate(brate / burst)
            for _ in range(burst):
                batch[i]["arrival_s"] = round(t, 6)
                i += 1
        else:
            t += rnd.expovariate(brate)
            batch[i]["arrival_s"] = round(t, 6)
            i += 1
    rows.sort(key=lambda r: (r["arrival_s"], int(r["id"][1:])))
    if spec.hint_error is not None:
        hint_rnd = random.Random(f"hints-{spec.seed}")
        for r in rows:
            work = r["prompt_tokens"] * spec.prefill_s_per_token
            work += r["output_tokens"] * spec.decode_s_per_token
            r["size_hint"] = round(work * math.exp(hint_rnd.gauss(0.0, spec.hint_error)), 6)
    return rows
