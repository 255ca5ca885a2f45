"""GPU telemetry from NVML for the GPUs Ray assigned to this process. Where NVML is absent (a
CPU machine, logical GPUs) it says ``gpu: unavailable``; it never invents numbers."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["assigned_gpu_ids", "gpu_telemetry"]

_nvml_ok: bool | None = None


def _nvml() -> Any:
    global _nvml_ok
    try:
        import pynvml
    except ImportError:
        _nvml_ok = False
        return None
    if _nvml_ok is None:
        try:
            pynvml.nvmlInit()
            _nvml_ok = True
        except Exception:
            _nvml_ok = False
    return pynvml if _nvml_ok else None


def assigned_gpu_ids() -> list[str]:
    """Ray's GPU ids for this worker (logical on CPU machines), else CUDA_VISIBLE_DEVICES."""
    try:
        import ray

        if ray.is_initialized():
            return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
    except Exception:
        pass
    env = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [x for x in env.split(",") if x.strip()]


def gpu_telemetry() -> dict[str, Any]:
    ids = assigned_gpu_ids()
    nv = _nvml()
    if nv is None:
        return {"gpu": "unavailable", "gpu_ids": ids}
    gpus = []
    try:
        count = nv.nvmlDeviceGetCount()
        for raw in ids or []:
            idx = int(raw)
            if idx >= count:
                continue
            h = nv.nvmlDeviceGetHandleByIndex(idx)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h)
            gpus.append(
                {
                    "index": idx,
                    "name": str(nv.nvmlDeviceGetName(h)),
                    "util_pct": int(util.gpu),
                    "mem_used_mb": int(mem.used) // (1 << 20),
                    "mem_total_mb": int(mem.total) // (1 << 20),
                    "mem_free_mb": int(mem.free) // (1 << 20),
                }
            )
    except Exception as exc:
        return {"gpu": f"unavailable: {exc}", "gpu_ids": ids}
    return {"gpu": "nvml", "gpu_ids": ids, "gpus": gpus}
