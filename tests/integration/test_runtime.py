"""The runtime against a real local Ray: ordering, preemption, fractional GPUs, timeouts, cancel,
retries, a killed worker, dependencies, idempotency, detached survival, replay --clock ray."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest
import ray

from raysched.client import Client
from raysched.errors import TaskCancelled, TaskFailed, UnknownHandler, ValidationFailed
from raysched.models import TaskState
from raysched.settings import PolicySettings, PoolSettings

from .conftest import wait_ready

pytestmark = pytest.mark.ray

Make = Callable[..., Client]


def sim(out: int, prompt: int = 50, dec: float = 0.01) -> dict[str, float]:
    return {"prompt_tokens": prompt, "output_tokens": out, "decode_s_per_token": dec}


def expected_tokens(out: int) -> list[str]:
    return [f"tok{i} " for i in range(out)]


def test_tiers_run_first_under_saturation(make_client: Make) -> None:
    c = make_client(policy=PolicySettings(policy="priority"))
    wait_ready(c, 1)
    blocker = c.submit("simulate", sim(40), tier="batch")
    time.sleep(0.1)
    batch = [{"kind": "simulate", "payload": sim(3), "tier": "batch"} for _ in range(3)]
    inter = [{"kind": "simulate", "payload": sim(3), "tier": "interactive"} for _ in range(3)]
    ids = c.submit_batch(batch + inter)
    infos = c.wait([blocker, *ids], timeout=60)
    assert all(i.state is TaskState.SUCCEEDED for i in infos)
    by_id = {i.id: i for i in infos}
    last_inter = max(by_id[i].started_at or 0 for i in ids[3:])
    first_batch = min(by_id[i].started_at or 0 for i in ids[:3])
    assert last_inter < first_batch, "an interactive task started after a queued batch task"


def test_interactive_preempts_long_generation_which_then_finishes_unchanged(
    make_client: Make,
) -> None:
    c = make_client()
    wait_ready(c, 1)
    long_id = c.submit("simulate", sim(120), tier="batch")
    time.sleep(0.4)  # it is generating now
    chat = c.submit("simulate", sim(5), tier="interactive")
    assert c.result(chat, timeout=30) == "".join(expected_tokens(5))
    chat_info = c.status(chat)
    assert c.status(long_id).state in (TaskState.PREEMPTED, TaskState.RUNNING)
    assert c.result(long_id, timeout=60) == "".join(expected_tokens(120))
    long_info = c.status(long_id)
    assert chat_info.finished_at is not None and long_info.finished_at is not None
    assert chat_info.finished_at < long_info.finished_at
    assert chat_info.started_at is not None and chat_info.started_at - chat_info.submitted_at < 1.0
    # the stream of the preempted task holds each token exactly once, in order
    assert list(c.stream(long_id)) == expected_tokens(120)
    assert c.stats()["preemptions"] >= 1


def test_the_scheduler_learns_a_first_slice_from_finished_tasks(make_client: Make) -> None:
    """Live: once 100 generations of one tier have succeeded, the scheduler knows the first slice
    for it (``mlfq.learn_first_slice``; their decode time, about 0.05 s each)."""
    c = make_client()
    wait_ready(c, 1)
    ids = c.submit_batch(
        [{"kind": "simulate", "payload": sim(5), "tier": "batch"} for _ in range(100)]
    )
    assert all(i.state is TaskState.SUCCEEDED for i in c.wait(ids, timeout=120))
    learned = c.stats()["pools"]["default"]["first_slices"]
    assert set(learned) == {"batch"}
    assert learned["batch"]["samples"] == 100
    assert 0.04 <= learned["batch"]["slice"] < 1.0


def test_a_worker_full_of_paused_state_is_not_preempted_within_a_tier(make_client: Make) -> None:
    """With recompute on resume elsewhere (the default cost model) and room for one paused
    generator, the first preemption pauses A; then B, pausing which would evict A's state, is not
    preempted by a newer task of its tier (it is by a higher tier)."""
    pool = PoolSettings(name="default", min_workers=1, max_workers=1, max_paused=1)
    c = make_client(pools=[pool])
    wait_ready(c, 1)
    a = c.submit("simulate", sim(150), tier="batch")
    time.sleep(0.5)  # A is demoted past level 0
    b = c.submit("simulate", sim(120), tier="batch")  # level 0: preempts A, which is paused
    time.sleep(0.6)
    assert c.status(a).state is TaskState.PREEMPTED
    assert c.status(b).state is TaskState.RUNNING and c.status(b).level >= 2
    late = c.submit("simulate", sim(3), tier="batch")  # level 0: outranks B, but B is pinned
    time.sleep(0.3)
    assert c.status(b).state is TaskState.RUNNING
    assert c.status(late).state is TaskState.QUEUED
    chat = c.submit("simulate", sim(3), tier="interactive")  # a higher tier still preempts
    assert c.result(chat, timeout=30) == "".join(expected_tokens(3))
    for tid, n in ((a, 150), (b, 120), (late, 3)):
        assert c.result(tid, timeout=60) == "".join(expected_tokens(n))
    assert c.stats()["preemptions"] == 2  # A for B, B for the chat


def test_fractional_gpus_pack_four_workers_per_gpu(make_client: Make) -> None:
    c = make_client(pools=[PoolSettings(name="gpu", num_gpus=0.25, min_workers=4, max_workers=4)])
    wait_ready(c, 4, pool="gpu")
    workers = c.stats()["workers"]
    assert len(workers) == 4
    ids = {tuple(w["gpu_ids"]) for w in workers.values()}
    assert ids == {("0",)}, ids  # all four share the one logical GPU
    assert all(w["gpu"].startswith("unavailable") for w in workers.values())  # no NVML here
    assert ray.available_resources().get("GPU", 0.0) == pytest.approx(0.0)


def test_timeout_frees_the_slot(make_client: Make) -> None:
    c = make_client()
    wait_ready(c, 1)
    slow = c.submit("simulate", sim(500), timeout_s=0.3)
    with pytest.raises(TaskFailed) as ei:
        c.result(slow, timeout=30)
    assert ei.value.state == "timed_out" and ei.value.error_type == "TimeoutError"
    nxt = c.submit("echo", {"after": "timeout"})
    assert c.result(nxt, timeout=30) == {"after": "timeout"}


def test_stuck_plain_handler_gets_its_worker_replaced(make_client: Make) -> None:
    """A plain handler cannot be stopped between steps: after its timeout the scheduler asks the
    worker to stop it, and when the worker still holds it ``stop_grace_s`` later the worker is
    killed and replaced, so the pool's only slot comes back."""
    c = make_client(stop_grace_s=1.0)
    wait_ready(c, 1)
    before = set(c.stats()["workers"])
    stuck = c.submit("tests.integration.blocking:block", {"s": 120}, timeout_s=0.5)
    with pytest.raises(TaskFailed) as ei:
        c.result(stuck, timeout=30)
    assert ei.value.state == "timed_out"
    t0 = time.monotonic()
    assert c.result(c.submit("echo", {"after": "stuck"}), timeout=60) == {"after": "stuck"}
    after = set(c.stats()["workers"])
    assert after and not (after & before), (before, after)  # a new worker, the old one gone
    assert time.monotonic() - t0 < 60


def test_cancel_queued_and_running(make_client: Make) -> None:
    c = make_client()
    wait_ready(c, 1)
    running = c.submit("simulate", sim(300), tier="batch")
    queued = c.submit("simulate", sim(300), tier="best_effort")
    time.sleep(0.3)
    assert c.cancel(queued)
    assert c.cancel(running)
    assert not c.cancel(running)  # already ended
    for tid in (queued, running):
        with pytest.raises(TaskCancelled):
            c.result(tid, timeout=10)
    assert c.result(c.submit("echo", {"ok": 1}), timeout=30) == {"ok": 1}


def test_retries_with_backoff_then_a_clear_error(make_client: Make) -> None:
    c = make_client()
    wait_ready(c, 1)
    bad = c.submit("simulate", {"output_tokens": -1}, max_retries=2)
    with pytest.raises(TaskFailed) as ei:
        c.result(bad, timeout=30)
    assert ei.value.error_type == "ValueError"
    assert "must be >= 0" in ei.value.error_message
    assert c.status(bad).attempts == 3


def test_killed_worker_loses_no_task(make_client: Make) -> None:
    c = make_client(pools=[PoolSettings(name="default", min_workers=2, max_workers=2)])
    wait_ready(c, 2)
    ids = c.submit_batch(
        [{"kind": "simulate", "payload": sim(30), "tier": "batch"} for _ in range(6)]
    )
    time.sleep(0.3)
    victim = next(iter(c.stats()["workers"]))
    ray.kill(ray.get_actor(victim, namespace=c.settings.namespace), no_restart=True)
    infos = c.wait(ids, timeout=90)
    assert [i.state for i in infos] == [TaskState.SUCCEEDED] * 6
    assert any(i.attempts > 1 for i in infos)
    for tid in ids:
        assert list(c.stream(tid)) == expected_tokens(30)


def test_dependencies(make_client: Make) -> None:
    c = make_client()
    wait_ready(c, 1)
    parent = c.submit("simulate", sim(10))
    child = c.submit("echo", {"child": True}, depends_on=[parent])
    assert c.status(child).state in (TaskState.PENDING, TaskState.QUEUED, TaskState.RUNNING)
    assert c.result(child, timeout=30) == {"child": True}
    assert c.status(parent).finished_at <= c.status(child).started_at  # type: ignore[operator]
    bad_parent = c.submit("simulate", {"output_tokens": -1})
    orphan = c.submit("echo", {}, depends_on=[bad_parent])
    with pytest.raises(TaskFailed) as ei:
        c.result(orphan, timeout=30)
    assert ei.value.error_type == "DependencyFailed"


def test_idempotency_and_bad_input(make_client: Make) -> None:
    c = make_client()
    a = c.submit("echo", {"n": 1}, idempotency_key="k1")
    b = c.submit("echo", {"n": 2}, idempotency_key="k1")
    assert a == b
    assert c.result(a, timeout=30) == {"n": 1}
    with pytest.raises(UnknownHandler):
        c.submit("no-such-handler", {})
    with pytest.raises(ValidationFailed):
        c.submit("echo", {}, tier="platinum")
    with pytest.raises(ValidationFailed):
        c.submit("echo", {}, timeout_s=-1)


def test_scheduler_and_tasks_survive_driver_exit(make_client: Make) -> None:
    c = make_client()
    wait_ready(c, 1)
    script = textwrap.dedent(
        f"""
        import ray
        from raysched.client import connect
        from raysched.settings import Settings, PoolSettings
        ray.init(address="auto", namespace="other")
        c = connect(start=False, settings=Settings(namespace={c.settings.namespace!r},
                    actor_name={c.settings.actor_name!r}))
        print(c.submit("simulate", {{"output_tokens": 20}}, idempotency_key="from-dead-driver"))
        """
    )
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    tid = r.stdout.strip().splitlines()[-1]
    assert c.result(tid, timeout=30) == "".join(expected_tokens(20))


def test_replay_on_ray_matches_the_trace(ray_cluster: None) -> None:
    from raysched.models import TraceRecord
    from raysched.runtime.replay import replay_on_ray
    from raysched.settings import Settings

    recs = [
        TraceRecord(id=f"b{i}", arrival_s=0.0, tier="batch", prompt_tokens=100, output_tokens=40)
        for i in range(4)
    ] + [
        TraceRecord(
            id=f"i{i}",
            arrival_s=0.2 + 0.1 * i,
            tier="interactive",
            prompt_tokens=20,
            output_tokens=5,
        )
        for i in range(4)
    ]
    out = replay_on_ray(recs, Settings(), workers=2)
    assert out["clock"] == "ray" and out["tasks"] == 8 and out["completed"] == 8
    assert out["by_tier"]["interactive"]["p99_wait_s"] < out["by_tier"]["batch"]["p99_wait_s"]


def test_pool_grows_under_waiting_work_and_shrinks_when_idle(make_client: Make) -> None:
    pool = PoolSettings(
        name="default", min_workers=1, max_workers=3, scale_up_wait_s=0.2, idle_timeout_s=1.0
    )
    c = make_client(pools=[pool])
    wait_ready(c, 1)
    ids = c.submit_batch(
        [{"kind": "simulate", "payload": sim(800), "tier": "batch"} for _ in range(3)]
    )
    deadline = time.monotonic() + 30
    peak = 0
    while time.monotonic() < deadline and peak < 3:
        peak = max(peak, c.stats()["pools"]["default"]["ready_workers"])
        time.sleep(0.1)
    assert peak == 3, "the pool did not grow to max_workers while tasks waited"
    assert [i.state for i in c.wait(ids, timeout=60)] == [TaskState.SUCCEEDED] * 3
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and c.stats()["pools"]["default"]["workers"] > 1:
        time.sleep(0.2)
    assert c.stats()["pools"]["default"]["workers"] == 1, "idle workers were not reaped"


def test_gpu_memory_requests_are_placed_only_where_they_fit(make_client: Make) -> None:
    pool = PoolSettings(name="default", min_workers=1, max_workers=1, gpu_memory_mb=2048)
    c = make_client(pools=[pool])
    wait_ready(c, 1)
    big = c.submit("echo", {"n": "big"}, gpu_memory_mb=4096)
    small = c.submit("echo", {"n": "small"}, gpu_memory_mb=1024)
    assert c.result(small, timeout=30) == {"n": "small"}
    time.sleep(0.5)
    assert c.status(big).state is TaskState.QUEUED
    assert c.cancel(big)
