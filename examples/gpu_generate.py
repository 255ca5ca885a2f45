"""A GPU example handler: a stepwise "generation" whose every step is a matrix product on the GPU
Ray assigned to the worker (torch), so scheduling, preemption and telemetry can be seen on real
hardware. On a machine without CUDA it runs the same steps on the CPU, smaller.

    client.submit("examples.gpu_generate:generate", {"steps": 200, "dim": 4096})
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any


def generate(payload: dict[str, Any], start_step: int = 0) -> Generator[str, None, dict[str, Any]]:
    import torch

    steps = int(payload.get("steps", 100))
    cuda = torch.cuda.is_available()
    dim = int(payload.get("dim", 4096 if cuda else 256))
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device=dev).manual_seed(int(payload.get("seed", 0)))
    w = torch.randn(dim, dim, device=dev, dtype=dtype, generator=g) / dim**0.5
    x = torch.randn(dim, dim, device=dev, dtype=dtype, generator=g)
    for _ in range(start_step):  # recompute the state of the steps already done
        x = torch.tanh(x @ w)
    for i in range(start_step, steps):
        x = torch.tanh(x @ w)
        if cuda:
            torch.cuda.synchronize()
        yield f"step{i}:{float(x[0, 0]):.4f} "
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dim": dim,
        "steps": steps,
        "max_mem_mb": torch.cuda.max_memory_allocated() // (1 << 20) if cuda else 0,
    }
