"""One prepared check on a machine with a real NVIDIA GPU (the lent device): four 0.25-GPU
workers share one GPU, pynvml telemetry per worker, the GPU example handler with a long batch
generation preempted by an interactive one, and gpu_memory_mb placement against NVML's free memory.

    python benchmarks/gpu_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import ray

from raysched.client import connect
from raysched.errors import TaskFailed
from raysched.settings import PoolSettings, Settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    a = ap.parse_args()
    res: dict[str, Any] = {}
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, namespace="gpu-check")
    res["ray_resources"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    s = Settings(
        namespace="gpu-check",
        pools=[
            PoolSettings(
                name="gpu",
                num_gpus=0.25,
                num_cpus=1,
                min_workers=4,
                max_workers=4,
                slots=1,
                handlers=["*"],
            ),
        ],
    )
    c = connect(settings=s)
    t0 = time.time()
    while c.stats()["pools"]["gpu"]["ready_workers"] < 4 and time.time() - t0 < 120:
        time.sleep(0.2)
    st = c.stats()
    res["workers"] = st["workers"]
    kind = "examples.gpu_generate:generate"
    # saturate the 4 workers with long GPU generations, then an interactive one arrives
    batch = [c.submit(kind, {"steps": 400, "dim": 8192, "seed": i}, tier="batch") for i in range(4)]
    time.sleep(3.0)
    solo = c.submit(kind, {"steps": 20, "dim": 2048, "seed": 98}, tier="critical")
    c.result(solo, timeout=300)  # warm: the first GPU task on a worker pays CUDA start-up
    si = c.status(solo)
    res["warmup_critical"] = {
        "wait_s": (si.started_at or 0) - si.submitted_at,
        "jct_s": (si.finished_at or 0) - si.submitted_at,
    }
    busy = c.stats()
    res["telemetry_while_busy"] = busy["workers"]
    t_sub = time.time()
    chat = c.submit(kind, {"steps": 20, "dim": 2048, "seed": 99}, tier="interactive")
    chat_res = c.result(chat, timeout=300)
    chat_info = c.status(chat)
    res["interactive"] = {
        "result": chat_res,
        "wait_s": (chat_info.started_at or 0) - chat_info.submitted_at,
        "jct_s": (chat_info.finished_at or 0) - chat_info.submitted_at,
        "client_seen_s": time.time() - t_sub,
    }
    res["batch"] = []
    for b in batch:
        r = c.result(b, timeout=600)
        i = c.status(b)
        res["batch"].append(
            {
                "result": r,
                "attempts": i.attempts,
                "jct_s": (i.finished_at or 0) - i.submitted_at,
                "stream_ok": len(list(c.stream(b))) == 400,
            }
        )
    res["preemptions"] = c.stats()["preemptions"]
    # placement: one request that no worker's free memory can hold, one that fits
    free = (
        min(g["mem_free_mb"] for w in c.stats()["workers"].values() for g in w.get("gpus", []))
        if any(w.get("gpus") for w in c.stats()["workers"].values())
        else None
    )
    res["gpu_free_mb_min"] = free
    if free is not None:
        small = c.submit(kind, {"steps": 5, "dim": 1024}, gpu_memory_mb=1024)
        huge = c.submit(kind, {"steps": 5, "dim": 1024}, gpu_memory_mb=free * 4)
        res["placement_small"] = str(c.result(small, timeout=120))
        time.sleep(2.0)
        res["placement_huge_state"] = c.status(huge).state.value
        c.cancel(huge)
    try:
        c.shutdown()
    except TaskFailed:
        pass
    ray.shutdown()
    text = json.dumps(res, indent=2, default=str)
    print(text)
    with open(os.path.join(a.out, "gpu_check.json"), "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
