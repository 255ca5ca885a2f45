"""HTTP front under overload, one run, one machine, real HTTP on loopback:

1. a bare Serve endpoint that does nothing (FastAPI ``POST /noop``), closed loop: the floor that
   Serve's proxy and a replica cost here;
2. ``POST /v1/tasks`` on an ingress without a rate limit, same closed loop: the capacity C of the
   HTTP front plus the scheduler actor, in accepted submissions/s;
3. open loop at ``--overload`` x C against an ingress with a per-tenant rate limit
   (``http.submissions_per_s``) and a queued-task quota (``policy.max_queued_per_tenant``):
   accepted/s, share of 429 and whether each carried ``Retry-After``, p50/p99 latency, other
   statuses, scheduler RSS before and after, and whether every accepted task completed.

Every phase is bounded in requests and in seconds.

    python benchmarks/http_overload.py [--seconds 8] [--concurrency 32] [--overload 4] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import ray
from fastapi import FastAPI
from ray import serve

from raysched.client import connect
from raysched.http.auth import TokenStore
from raysched.http.serve import ingress_app
from raysched.settings import PoolSettings, Settings

RESULTS = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- http:begin -->", "<!-- http:end -->"
TASK = {
    "kind": "simulate",
    "payload": {"prompt_tokens": 1, "output_tokens": 3, "decode_s_per_token": 0.002},
}

bare = FastAPI()


@bare.post("/noop")
async def noop() -> dict[str, bool]:
    return {"ok": True}


@serve.deployment(name="Bare", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(bare)
class Bare:
    pass


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def closed_loop(
    url: str, body: Any, headers: dict[str, str], conc: int, seconds: float, cap: int
) -> dict[str, Any]:
    """``conc`` clients, each sending its next request when the last one answered."""
    lat: list[float] = []
    codes: dict[int, int] = {}
    ids: list[str] = []
    sent = 0
    t_end = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.perf_counter() < t_end and sent < cap:
            sent += 1
            t0 = time.perf_counter()
            r = await client.post(url, json=body, headers=headers)
            lat.append(time.perf_counter() - t0)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 202:
                ids.append(r.json()["id"])

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(conc)))
        wall = time.perf_counter() - t0
    ok = sum(v for k, v in codes.items() if k < 300)
    return {
        "requests": len(lat),
        "wall_s": wall,
        "ok_per_s": ok / wall,
        "p50_ms": 1000 * pct(lat, 0.5),
        "p99_ms": 1000 * pct(lat, 0.99),
        "codes": codes,
        "ids": ids,
    }


async def open_loop(
    url: str,
    body: Any,
    tokens: list[str],
    rate: float,
    seconds: float,
    cap: int,
    max_in_flight: int,
) -> dict[str, Any]:
    """Requests sent at ``rate``/s whatever the answers, alternating tenants; at most
    ``max_in_flight`` outstanding (beyond that the sender waits and the miss is counted)."""
    lat: list[float] = []
    acc_lat: list[float] = []
    codes: dict[int, int] = {}
    ids: list[str] = []
    with_retry_after = 0
    late = 0
    errors = 0
    sem = asyncio.Semaphore(max_in_flight)
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal with_retry_after, errors
        try:
            t0 = time.perf_counter()
            h = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
            r = await client.post(url, json=body, headers=h)
            dt = time.perf_counter() - t0
        except httpx.HTTPError:
            errors += 1
            return
        finally:
            sem.release()
        lat.append(dt)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        if r.status_code == 202:
            acc_lat.append(dt)
            ids.append(r.json()["id"])
        elif r.status_code == 429 and r.headers.get("retry-after", "").isdigit():
            with_retry_after += 1

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        n = min(cap, int(rate * seconds))
        for i in range(n):
            due = t0 + i / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.05:
                late += 1
            await sem.acquire()
            tasks.append(asyncio.create_task(one(client, i)))
        send_wall = time.perf_counter() - t0
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    answered = len(lat)
    n429 = codes.get(429, 0)
    return {
        "offered_per_s": n / send_wall,
        "sent": n,
        "late_sends": late,
        "wall_s": wall,
        "answered": answered,
        "transport_errors": errors,
        "accepted": codes.get(202, 0),
        "accepted_per_s": codes.get(202, 0) / send_wall,
        "share_429": n429 / max(1, answered),
        "retry_after_on_429": with_retry_after / max(1, n429),
        "server_errors": sum(v for k, v in codes.items() if k >= 500),
        "p50_ms": 1000 * pct(lat, 0.5),
        "p99_ms": 1000 * pct(lat, 0.99),
        "accepted_p50_ms": 1000 * pct(acc_lat, 0.5),
        "accepted_p99_ms": 1000 * pct(acc_lat, 0.99),
        "codes": codes,
        "ids": ids,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    ns = f"bench-http-{uuid.uuid4().hex[:6]}"
    ray.init(num_cpus=2, include_dashboard=False, namespace=ns, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="raysched-http-bench-"))
    tokens_file = tmp / "tokens.json"
    toks = {t: TokenStore.add(tokens_file, t)[0] for t in ("cap", "t1", "t2")}
    port = free_port()
    base_settings = Settings(
        namespace=ns,
        actor_name="bench-sched",
        state_dir=str(tmp / "state"),
        pools=[PoolSettings(min_workers=2, max_workers=2, slots=64)],
        policy={"max_queued_per_tenant": args.queue_quota},
        http={"port": port, "tokens_file": str(tokens_file)},
    )
    client = connect(settings=base_settings)
    out: dict[str, Any] = {"concurrency": args.concurrency, "seconds": args.seconds}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Bare.bind(), name="bare", route_prefix="/bare")  # type: ignore[attr-defined]
        serve.run(ingress_app(base_settings), name="open", route_prefix="/open")
        base = f"http://127.0.0.1:{port}"
        hdr = {"Authorization": f"Bearer {toks['cap']}"}
        # warm both paths (replica start, first actor calls)
        asyncio.run(closed_loop(f"{base}/bare/noop", {}, {}, 4, 1.0, 200))
        warm = asyncio.run(closed_loop(f"{base}/open/v1/tasks", TASK, hdr, 4, 1.0, 200))
        client.wait(warm["ids"], timeout=120)
        cap = args.max_requests
        out["bare"] = asyncio.run(
            closed_loop(f"{base}/bare/noop", {}, {}, args.concurrency, args.seconds, cap)
        )
        rss0 = client.stats().get("rss_mb")
        out["capacity"] = asyncio.run(
            closed_loop(f"{base}/open/v1/tasks", TASK, hdr, args.concurrency, args.seconds, cap)
        )
        capacity = out["capacity"]["ok_per_s"]
        done_cap = client.wait(out["capacity"]["ids"], timeout=300)
        out["capacity"]["completed"] = sum(1 for i in done_cap if i.state.value == "succeeded")
        # the limited ingress: two tenants, each allowed an eighth of the measured capacity, so
        # together they may use a quarter of it
        limit = max(1.0, round(capacity / 8, 1))
        limited = base_settings.model_copy(
            update={
                "http": base_settings.http.model_copy(
                    update={"submissions_per_s": limit, "submissions_burst": max(1, int(limit))}
                )
            }
        )
        serve.run(ingress_app(limited), name="limited", route_prefix="/limited")
        out["rate_limit_per_tenant"] = limit
        rate = args.overload * capacity
        ov = asyncio.run(
            open_loop(
                f"{base}/limited/v1/tasks",
                TASK,
                [toks["t1"], toks["t2"]],
                rate,
                args.seconds,
                cap,
                args.max_in_flight,
            )
        )
        out["overload"] = ov
        out["overload"]["target_per_s"] = rate
        t0 = time.perf_counter()
        infos = client.wait(ov["ids"], timeout=300)
        out["overload"]["completed"] = sum(1 for i in infos if i.state.value == "succeeded")
        out["overload"]["drain_s"] = time.perf_counter() - t0
        out["rss_mb_before"] = rss0
        out["rss_mb_after"] = client.stats().get("rss_mb")
    finally:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            try:
                client.shutdown()
            finally:
                ray.shutdown()
    for k in ("bare", "capacity", "overload"):
        out[k].pop("ids", None)
    return out


def _codes(c: dict[int, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))


def markdown(r: dict[str, Any], args: argparse.Namespace, wall: float) -> str:
    b, c, o = r["bare"], r["capacity"], r["overload"]
    cpu = platform.processor() or platform.machine()
    lines = [
        "## HTTP front under overload (Serve ingress, real HTTP on loopback)",
        "",
        f"- Command: `python benchmarks/http_overload.py --seconds {args.seconds:g} "
        f"--concurrency {args.concurrency} --overload {args.overload:g} "
        f"--max-in-flight {args.max_in_flight} --write` "
        f"(whole run {wall:.0f} s wall)",
        f"- Machine: `nproc` = {_nproc()} ({cpu}), Python {platform.python_version()}, "
        f"Ray {ray.__version__}; local Ray with `num_cpus=2`, one ingress replica per app, "
        f"2 workers x 64 slots; the load generator (httpx, asyncio) shares the same 2 cores; "
        f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Task: `simulate` with 3 output tokens of 2 ms (so accepted work drains quickly); "
        f"queued-task quota `policy.max_queued_per_tenant` = {args.queue_quota}",
        "",
        "| phase | load | answered | ok/s | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|---|---|",
        f"| bare Serve `POST /noop` | closed loop, {r['concurrency']} clients | {b['requests']} "
        f"| {b['ok_per_s']:.0f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {_codes(b['codes'])} |",
        f"| `POST /v1/tasks`, no rate limit (capacity C) | closed loop, {r['concurrency']} "
        f"clients | {c['requests']} | {c['ok_per_s']:.0f} | {c['p50_ms']:.1f} | "
        f"{c['p99_ms']:.1f} | {_codes(c['codes'])} |",
        f"| `POST /v1/tasks`, {r['rate_limit_per_tenant']:g}/s per tenant x 2 tenants | "
        f"open loop, target {o['target_per_s']:.0f}/s ({args.overload:g} x C), sent "
        f"{o['offered_per_s']:.0f}/s (at most {args.max_in_flight} in flight) | {o['answered']} | "
        f"{o['accepted_per_s']:.0f} accepted | {o['p50_ms']:.1f} | {o['p99_ms']:.1f} | "
        f"{_codes(o['codes'])} |",
        "",
        f"- Overload: {o['share_429']:.1%} of answers were 429; "
        f"{o['retry_after_on_429']:.1%} of those carried `Retry-After`; "
        f"{o['server_errors']} 5xx; {o['transport_errors']} transport errors; "
        f"{o['late_sends']} of {o['sent']} sends more than 50 ms behind schedule (the "
        f"in-flight cap held the sender back: past it the load is effectively closed-loop).",
        f"- Accepted submissions: p50 {o['accepted_p50_ms']:.1f} ms, "
        f"p99 {o['accepted_p99_ms']:.1f} ms; {o['completed']}/{o['accepted']} accepted tasks "
        f"succeeded (drained {o['drain_s']:.1f} s after the last send); capacity phase "
        f"{c['completed']}/{c['codes'].get(202, 0)} succeeded.",
        f"- HTTP overhead over bare Serve at the same concurrency: p50 "
        f"{c['p50_ms'] - b['p50_ms']:+.1f} ms (auth, validation, one `submit` call to the "
        f"scheduler actor).",
        f"- Scheduler RSS: {_mb(r['rss_mb_before'])} before the capacity phase, "
        f"{_mb(r['rss_mb_after'])} after the overload phase.",
    ]
    return "\n".join(lines) + "\n"


def _mb(v: Any) -> str:
    return f"{v:.0f} MiB" if isinstance(v, (int, float)) else "n/a"


def _nproc() -> int:
    import os

    return os.cpu_count() or 0


def write(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="per phase")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--overload", type=float, default=4.0, help="offered load, x capacity")
    ap.add_argument("--max-requests", type=int, default=20_000, help="per phase")
    ap.add_argument("--max-in-flight", type=int, default=128)
    ap.add_argument("--queue-quota", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    args = ap.parse_args()
    t0 = time.perf_counter()
    r = run(args)
    wall = time.perf_counter() - t0
    md = markdown(r, args, wall)
    print(md)
    if args.json:
        print(json.dumps(r, default=str))
    if args.write:
        write(md)


if __name__ == "__main__":
    main()
