"""``replay --clock ray`` and the local session the demo uses: a trace through a real scheduler
actor and real worker actors, every decode step a real sleep."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import ray

from raysched.client import Client, connect
from raysched.models import TaskInfo, TaskState, TraceRecord
from raysched.policy.task import Task
from raysched.settings import PoolSettings, Settings
from raysched.sim.replay import summarize

__all__ = ["local_session", "replay_on_ray", "task_from_info"]


@contextlib.contextmanager
def local_session(settings: Settings, *, num_cpus: int | None = None) -> Iterator[Client]:
    """A scheduler in its own namespace on the running Ray, or on a local Ray started here (and
    stopped again on exit, with everything in it)."""
    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=num_cpus or max(2, os.cpu_count() or 2),
            namespace=settings.namespace,
            include_dashboard=False,
            log_to_driver=False,
        )
        started = True
    client = connect(settings=settings)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.shutdown()
        if started:
            ray.shutdown()


def task_from_info(info: TaskInfo) -> Task:
    t = Task(info.id, info.priority, info.submitted_at, 0, 0, info.tenant, info.tier, info.kind)
    t.first_start = info.started_at
    t.finished_at = info.finished_at if info.state is TaskState.SUCCEEDED else None
    t.service_s = info.service_s
    t.state = info.state
    return t


def replay_on_ray(
    records: Sequence[TraceRecord], settings: Settings, *, workers: int = 4
) -> dict[str, Any]:
    ps = settings.policy
    s = settings.model_copy(
        update={
            "namespace": f"raysched-replay-{uuid.uuid4().hex[:8]}",
            "pools": [
                PoolSettings(name="default", min_workers=workers, max_workers=workers, slots=1)
            ],
            # a replay is a measurement: nothing to keep
            "store": settings.store.model_copy(update={"enabled": False}),
        }
    )
    with local_session(s) as client:
        # wait for the workers, so start-up does not count as queueing
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if client.stats()["pools"]["default"]["ready_workers"] >= workers:
                break
            time.sleep(0.1)
        t0 = time.monotonic()
        ids: list[str] = []
        i = 0
        while i < len(records):
            now = time.monotonic() - t0
            batch = []
            while i < len(records) and records[i].arrival_s <= now:
                r = records[i]
                batch.append(
                    {
                        "id": r.id,
                        "kind": "simulate",
                        "tier": r.tier,
                        "priority": r.priority,
                        "tenant": r.tenant,
                        "prompt_tokens": r.prompt_tokens,
                        "size_hint": r.size_hint,
                        "depends_on": list(r.depends_on),
                        "deadline_s": r.deadline_s,
                        "payload": {
                            "prompt_tokens": r.prompt_tokens,
                            "output_tokens": r.output_tokens,
                            "prefill_s_per_token": ps.prefill_s_per_token,
                            "decode_s_per_token": ps.decode_s_per_token,
                        },
                    }
                )
                i += 1
            if batch:
                ids.extend(client.submit_batch(batch))
            elif i < len(records):
                time.sleep(min(0.005, max(0.0, records[i].arrival_s - now)))
        infos = client.wait(ids, timeout=None)
        stats = client.stats()
    tasks = [task_from_info(x) for x in infos]
    summary = summarize(ps.policy.value, "ray", workers, tasks, int(stats["preemptions"]))
    return summary.as_dict()
