"""Inference cost of a model: parameter count and latency.

Latency is the median wall time of a forward pass (no gradients, eval mode) over
``repeats`` calls after ``warmup`` calls, at a fixed thread count, measured for every model
one after another in one process so the numbers are comparable. On CUDA the device is
synchronized around each call.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from mmdistill.models.outputs import NOTHING


@torch.no_grad()
def measure_latency(model: nn.Module, inputs: dict[str, torch.Tensor], warmup: int, repeats: int) -> dict:
    model.eval()
    device = next(model.parameters()).device
    inputs = {m: x.to(device) for m, x in inputs.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(inputs, NOTHING)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(inputs, NOTHING)
        sync()
        times.append(time.perf_counter() - t0)
    return {
        "median_ms": 1000 * statistics.median(times),
        "p10_ms": 1000 * sorted(times)[len(times) // 10],
        "p90_ms": 1000 * sorted(times)[(9 * len(times)) // 10],
        "repeats": repeats,
    }


def random_inputs(lengths: dict[str, int], dims: dict[str, int], batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, lengths[m], dims[m], generator=g) for m in lengths}
