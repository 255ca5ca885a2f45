"""Durability against a real Ray: the scheduler actor's process killed with SIGKILL several times
in one run, worker actors killed at random. Every acknowledged task must end ``succeeded``, and
the results store (the Parquet files themselves, read here with pyarrow) must hold each exactly
once."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
import ray

from raysched.client import Client
from raysched.settings import PoolSettings

from .conftest import wait_ready

pytestmark = pytest.mark.ray

Make = Callable[..., Client]


def _specs(prefix: str, lo: int, hi: int, tokens: int = 8) -> list[dict[str, object]]:
    return [
        {
            "id": f"{prefix}-{i:05d}",
            "kind": "simulate",
            "payload": {"output_tokens": tokens, "decode_s_per_token": 0.005, "i": i},
        }
        for i in range(lo, hi)
    ]


def _results_rows(c: Client) -> list[dict[str, object]]:
    """Every row of every results Parquet file, duplicates included."""
    folder = Path(c.settings.store_root()) / "results"
    rows: list[dict[str, object]] = []
    if folder.is_dir():
        for f in sorted(folder.glob("part-*.parquet")):
            rows.extend(pq.read_table(f, columns=["id", "state", "attempts"]).to_pylist())
    return rows


def _wait_done(c: Client, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.progress()["completed"] >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"only {c.progress()} of {n} done after {timeout}s")


def _check_exactly_once(
    c: Client, ids: list[str], timeout: float = 60.0
) -> list[dict[str, object]]:
    """All ids succeeded (the scheduler's view), and the results files hold each exactly once."""
    infos = c.wait(ids, timeout=timeout)
    bad = [(i.id, i.state.value) for i in infos if i.state.value != "succeeded"]
    assert not bad, bad[:10]
    deadline = time.monotonic() + timeout
    while True:  # outcomes reach the results files within results_flush_s (a conversion)
        rows = _results_rows(c)
        if {r["id"] for r in rows} >= set(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    by_id: dict[object, int] = {}
    for r in rows:
        by_id[r["id"]] = by_id.get(r["id"], 0) + 1
    missing = set(ids) - set(by_id)
    dups = {k: v for k, v in by_id.items() if v > 1}
    assert not missing, sorted(missing)[:10]
    assert not dups, list(dups.items())[:10]
    assert all(r["state"] == "succeeded" for r in rows)
    return rows


def _actor_pid(c: Client) -> int:
    h = ray.get_actor(c.settings.actor_name, namespace=c.settings.namespace)
    return int(ray.get(h.pid.remote(), timeout=60))


def test_scheduler_process_killed_three_times(make_client: Make) -> None:
    c = make_client(pools=[PoolSettings(min_workers=2, max_workers=2, slots=8)])
    wait_ready(c, 2)
    n, first = 3000, 1500
    ids = c.submit_batch(_specs("k", 0, first))
    pids = [_actor_pid(c)]
    submitted = first
    for _ in range(3):
        # let some of the work finish, then kill the actor's process mid-run
        target = c.progress()["completed"] + 150
        deadline = time.monotonic() + 60
        while c.progress()["completed"] < target and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pids[-1], signal.SIGKILL)
        # submissions during the restart: the client retries with the same ids
        hi = submitted + (n - first) // 3
        ids += c.submit_batch(_specs("k", submitted, hi))
        submitted = hi
        pids.append(_actor_pid(c))
        assert pids[-1] != pids[-2], "the actor was not restarted"
    assert submitted == n and len(set(ids)) == n
    _wait_done(c, n, timeout=240)
    rows = _check_exactly_once(c, ids)
    # the kills hit running work: some tasks were redelivered (their attempt counted)
    assert any(int(r["attempts"]) > 1 for r in rows)  # type: ignore[call-overload]
    store = c.stats()["store"]
    assert store["error"] is None
    # the results files were made from the journal by a Ray task, not in the actor's process
    conv = store["results_converted"]
    assert conv["rows"] > 0 and conv["pid"] not in (0, pids[-1]), conv


def test_starts_the_journal_lacked_are_counted_from_the_workers_left(make_client: Make) -> None:
    """``store.hold_starts_s`` keeps starts out of the journal (here every start: 60 s). The
    scheduler's process is killed while tasks run; the restarted instance asks the workers the
    old one left which attempts they were given before it stops them, so the attempts that were
    running still count."""
    c = make_client(
        pools=[PoolSettings(min_workers=2, max_workers=2, slots=4)],
        store={"hold_starts_s": 60.0},
    )
    wait_ready(c, 2)
    ids = c.submit_batch(_specs("h", 0, 24, tokens=100))  # 0.5 s each, 8 at a time
    pid = _actor_pid(c)
    deadline = time.monotonic() + 60
    while c.progress()["dispatched"] < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # the handlers are running now
    assert c.progress()["completed"] < 8
    os.kill(pid, signal.SIGKILL)
    store = c.stats()["store"]  # the client waits for the restarted actor
    assert _actor_pid(c) != pid, "the actor was not restarted"
    assert store["recovery_started_by_workers"] >= 1, store
    assert store["recovery_requeued"] >= store["recovery_started_by_workers"]
    _wait_done(c, len(ids), timeout=120)
    rows = _check_exactly_once(c, ids)
    assert sum(int(r["attempts"]) > 1 for r in rows) >= store["recovery_started_by_workers"]  # type: ignore[call-overload]


def test_worker_actors_killed_at_random(make_client: Make) -> None:
    c = make_client(
        pools=[PoolSettings(min_workers=3, max_workers=3, slots=4)],
        policy={"max_redeliveries": 20},
    )
    wait_ready(c, 3)
    n = 1200
    ids = c.submit_batch(_specs("w", 0, n, tokens=10))
    rng = random.Random(7)
    killed = 0
    deadline = time.monotonic() + 120
    while c.progress()["completed"] < n * 0.8 and killed < 6 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.5, 1.5))
        workers = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == c.settings.namespace and a["name"].startswith("raysched-w-")
        ]
        if not workers:
            continue
        victim = ray.get_actor(rng.choice(workers), namespace=c.settings.namespace)
        ray.kill(victim, no_restart=True)
        killed += 1
    assert killed >= 3
    _wait_done(c, n, timeout=240)
    rows = _check_exactly_once(c, ids)
    assert any(int(r["attempts"]) > 1 for r in rows)  # type: ignore[call-overload]


def _converted(c: Client, rows: int, timeout: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        conv: dict[str, int] = c.stats()["store"]["results_converted"]
        if conv["rows"] >= rows or time.monotonic() > deadline:
            return conv
        time.sleep(0.2)


def test_result_answered_only_once_journaled(make_client: Make) -> None:
    """Outcomes reach the journal within ``store.flush_interval_s`` (1 s here): ``result`` and
    ``wait`` answer only once theirs is there, so a kill right after the answer cannot run the
    task again and record something else than what the caller saw. (The timed flush fires at
    any phase of its second: without the commit each half fails unless the flush happens to
    land between the answer and the kill, a few milliseconds.)"""
    c = make_client(store={"flush_interval_s": 1.0})
    wait_ready(c, 1)
    for call in ("result", "wait"):
        pid = _actor_pid(c)
        tid = c.submit("echo", {"call": call})
        if call == "result":
            assert c.result(tid, timeout=30) == {"call": call}
        else:
            assert c.wait([tid], timeout=30)[0].state == "succeeded"
        seen = c.status(tid)
        os.kill(pid, signal.SIGKILL)
        after = c.status(tid)  # the client retries until the restarted actor answers
        assert _actor_pid(c) != pid
        assert after.state == "succeeded", after
        assert (after.attempts, after.finished_at) == (seen.attempts, seen.finished_at), after
        assert c.result(tid, timeout=30) == {"call": call}


def _idle_threads(pid: int) -> bool:
    """Every thread of process ``pid`` is scheduled ``SCHED_IDLE``."""
    policies = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            policies.append(os.sched_getscheduler(int(tid)))
        except ProcessLookupError:  # a thread that just ended
            pass
    return bool(policies) and set(policies) == {os.SCHED_IDLE}


def test_results_converter_killed(make_client: Make) -> None:
    """The process that makes results files from the journal is SIGKILLed: Ray starts it again,
    the next conversion takes the outcomes the lost one would have, and the results files still
    hold every task exactly once."""
    c = make_client(
        pools=[PoolSettings(min_workers=2, max_workers=2, slots=8)],
        store={"results_flush_s": 0.5},
    )
    wait_ready(c, 2)
    ids = c.submit_batch(_specs("c", 0, 200, tokens=2))
    _wait_done(c, 200, timeout=60)
    conv = _converted(c, 200)
    assert conv["rows"] >= 200, conv
    assert _idle_threads(conv["pid"]), "the converter does not run at background priority"
    os.kill(conv["pid"], signal.SIGKILL)
    ids += c.submit_batch(_specs("c", 200, 400, tokens=2))
    _wait_done(c, 400, timeout=60)
    _check_exactly_once(c, ids)
    after = _converted(c, 400)
    assert after["rows"] >= 400 and after["pid"] not in (0, conv["pid"]), after
    assert _idle_threads(after["pid"])  # the restarted one too
    assert c.stats()["store"]["error"] is None


def _worker_names(c: Client) -> set[str]:
    return {
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == c.settings.namespace and a["name"].startswith("raysched-w-")
    }


def test_restarted_scheduler_drains_without_being_called(make_client: Make) -> None:
    """After Ray restarts the actor nobody may call it (the driver is gone): it must bring up
    its workers and drain the recovered queue by itself."""
    c = make_client(pools=[PoolSettings(min_workers=1, max_workers=1, slots=4)])
    wait_ready(c, 1)
    ids = c.submit_batch(_specs("r", 0, 200))
    old = _worker_names(c)
    os.kill(_actor_pid(c), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:  # no call to the scheduler here: only the results files are read
        done = {r["id"] for r in _results_rows(c)}
        if done >= set(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert _worker_names(c) - old, "the restarted scheduler spawned no workers"
    assert done >= set(ids), f"{len(set(ids) - done)} of {len(ids)} never finished"
    _check_exactly_once(c, ids)


def test_large_payloads_and_results_go_through_the_object_store_and_survive_a_restart(
    make_client: Make,
) -> None:
    """Payloads and results above ``store.inline_max_bytes``: blob files under the state
    directory plus the object store; the journal and the results files hold only descriptors.
    A scheduler killed with SIGKILL still answers the result (read back from its blob), and a
    queued large-payload task still runs (its worker reads the payload's blob)."""
    from raysched.store.blobs import BLOB_KEY, FOLDER

    c = make_client(
        pools=[PoolSettings(min_workers=1, max_workers=1, slots=1)],
        store={"inline_max_bytes": 4096, "checkpoint_interval_s": 1.0},
    )
    wait_ready(c, 1)
    root = Path(c.settings.store_root())
    big = {"text": "lorem ipsum " * 2000, "n": 1}  # ~24 KB of JSON
    tid = c.submit("echo", payload=big)
    assert c.result(tid, timeout=60) == big
    # the scheduler answered with a reference into the object store, not the value
    h = ray.get_actor(c.settings.actor_name, namespace=c.settings.namespace)
    raw = ray.get(h.result.remote(tid, 10.0), timeout=60)
    assert "result" not in raw and isinstance(raw["result_ref"], ray.ObjectRef)
    assert orjson.loads(ray.get(raw["result_ref"])) == big
    # the worker fetched the payload from the object store (the scheduler handed it the ref)
    assert c.stats()["store"]["blobs"] == {
        "payloads": 1,
        "payload_refs": 1,
        "results_read": 1,
        "swept": 0,
    }
    # one blob for the result; the payload's blob went at the first checkpoint after the task
    # was final
    deadline = time.monotonic() + 30
    while len(list((root / FOLDER).glob("*.json"))) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p.name.startswith(f"r.{tid}.") for p in (root / FOLDER).glob("*.json")] == [True]
    # a long task holds the one slot; a large-payload task waits behind it
    slow = c.submit("simulate", payload={"output_tokens": 40, "decode_s_per_token": 0.05})
    c.stats()
    queued_big = {"text": "dolor sit amet " * 2000, "n": 2}
    waiting = c.submit("echo", payload=queued_big, tier="best_effort")
    assert c.status(waiting).state.value == "queued"
    os.kill(_actor_pid(c), signal.SIGKILL)
    assert c.result(tid, timeout=120) == big  # from its blob, after the restart
    assert c.result(waiting, timeout=120) == queued_big
    assert c.status(slow).state.value in ("running", "queued", "succeeded")
    # the journal (what a checkpoint left of it) and the results files carry descriptors, never
    # the large values (tests/unit/test_store_blobs.py reads a journal before any checkpoint)
    journal = b"".join(p.read_bytes() for p in (root / "journal").glob("*"))
    assert b"lorem ipsum lorem" not in journal and b"dolor sit amet dolor" not in journal
    c.wait([slow], timeout=120)
    deadline = time.monotonic() + 30
    while True:
        files = sorted((root / "results").glob("part-*.parquet"))
        rows = [r for f in files for r in pq.read_table(f, columns=["id", "result"]).to_pylist()]
        if {tid, waiting} <= {r["id"] for r in rows} or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    got = {r["id"]: r["result"] for r in rows if r["id"] in (tid, waiting)}
    assert len(got) == 2 and all(BLOB_KEY in v and len(v) < 200 for v in got.values()), got
