"""The training step on a GPU: throughput, precision, launch overhead, compilation.

``python -m mmdistill bench --what gpu --device cuda --override params-paper.yaml`` measures, at
the parameters' sizes (the paper preset: d 33, 3 heads, 7 layers, MOSEI's full lengths 500 /
500 / 50, batch 24), for the complete teacher, the no-KD student and the attention-map KD
student (EDAM-S; the teacher's maps computed per step, as at full length they do not fit a
cache), in fp32 and in bf16 (``torch.autocast``):

* the training step as the training loop runs it (forward, loss, backward, gradient clipping,
  Adam), timed over blocks of steps with one device synchronization per block (the loop does
  not synchronize per step either): seconds per step and samples per second;
* FLOPs per step (``torch.utils.flop_counter``) and the achieved rate as a share of the
  device's bf16 matmul rate, measured in the same run (a large bf16 ``mm``);
* peak device memory of the case (``torch.cuda.max_memory_allocated``; on a CPU dry run
  ``None``);
* whether the step is bound by kernel launches: kernels per step and the device's busy time
  per step from ``torch.profiler`` (busy time / step time well below 1 = the GPU waits for the
  host), and the step time at 1/4, 1/2, 1 and 2 times the batch (a step bound by launches takes
  about the same time at every batch size);
* ``torch.compile`` of the trained model (``train.compile``, :mod:`mmdistill.train.accel`) in
  the given modes (``reduce-overhead`` adds CUDA graphs): compilation time, step time and the
  gain over eager;

and derives the figures the targets are stated in (:func:`targets`): a full-length MOSEI
teacher epoch (16,326 training samples), attention KD over no-KD, bf16 over fp32.

Sections that do not fit the time budget are recorded as skipped; a section that fails
records its error and the run goes on, so one JSON always comes out. On a CPU (a dry run of
the check script) everything runs the same way at whatever sizes the parameters give, and the
figures describe that CPU only.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from mmdistill.bench import Setting, build_case, random_split, step_flops
from mmdistill.modalities import FEATURE_DIM
from mmdistill.precision import autocast
from mmdistill.train.accel import compile_model

GPU_CASES = ("teacher", "student_nokd", "student_attention_kd")
MOSEI_SPLITS = {"train": 16326, "valid": 1871, "test": 4659}  # segments of MulT's unaligned pickle
TARGETS = {"teacher_epoch_s": 60.0, "attention_kd_over_nokd": 1.5, "bf16_over_fp32_speedup": 1.5}
POOL = 4  # distinct batches cycled through (the cost does not depend on the values)
COMPILE_MIN_LEFT_S = 90.0  # a compilation of the paper-size models may take a minute or more


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Rate of an ``n x n @ n x n`` matmul in ``dtype``, TFLOP/s (median of ``repeats``)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


class StepRunner:
    """One benchmark case, built once, stepping exactly as the training loop does."""

    def __init__(self, case: str, s: Setting, device: torch.device, precision: str, compile_mode: str = "none"):
        self.device, self.precision, self.case = device, precision, case
        split = random_split(s.lengths, s.batch_size * POOL, feature_dims=s.feature_dims)
        self.model, self.objective = build_case(case, s, split, device)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.objective.kd is not None:
            params += [p for p in self.objective.kd.loss.parameters() if p.requires_grad]
        self.params = params
        self.opt = torch.optim.Adam(params, lr=1e-4)
        self.batches = [b.to(device) for b in split.batches(s.batch_size)]
        self.flops = step_flops(self.objective, self.model, self.batches[0])
        self.compile_mode = compile_mode
        compile_model(self.model, compile_mode)
        self.i = 0

    def step(self) -> None:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        with autocast(self.device, self.precision):
            loss, _ = self.objective(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, 0.8)
        self.opt.step()

    def time_steps(self, steps: int, blocks: int = 3) -> float:
        """Median over ``blocks`` of the mean step time of ``steps`` steps (one sync per block)."""
        means = []
        for _ in range(blocks):
            _sync(self.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                self.step()
            _sync(self.device)
            means.append((time.perf_counter() - t0) / steps)
        return statistics.median(means)

    @property
    def fell_back(self) -> bool | None:
        state = self.model.__dict__.get("compile_state")
        if state is None:
            return None
        return state["fn"] is not None and getattr(state["fn"], "__self__", None) is self.model


@torch.no_grad()
def eval_rate(runner: StepRunner, steps: int) -> float:
    """Samples per second of the model's evaluation pass (eval mode, no autocast)."""
    from mmdistill.models.outputs import NOTHING

    runner.model.eval()
    batches = runner.batches
    runner.model(batches[0].inputs, NOTHING)
    _sync(runner.device)
    t0 = time.perf_counter()
    for i in range(steps):
        runner.model(batches[i % len(batches)].inputs, NOTHING)
    _sync(runner.device)
    runner.model.train()
    return steps * len(batches[0]) / (time.perf_counter() - t0)


def profile_steps(runner: StepRunner, steps: int = 3) -> dict[str, Any]:
    """Kernels and device busy time per step, from ``torch.profiler`` (CUDA only)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if runner.device.type != "cuda":
        return {"kernels_per_step": None, "device_busy_s_per_step": None, "note": "no CUDA device"}
    _sync(runner.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            runner.step()
        _sync(runner.device)
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    return {"kernels_per_step": len(kernels) / steps, "device_busy_s_per_step": busy_us / 1e6 / steps}


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def gpu_bench(
    model: dict[str, Any],
    lengths: dict[str, int],
    batch_size: int,
    *,
    device_name: str = "cuda",
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    compile_modes: tuple[str, ...] = ("reduce-overhead",),
    steps: int = 10,
    warmup: int = 3,
    budget_s: float = 300.0,
    matmul_n: int | None = None,
    log: Callable[[str], Any] = print,
    checkpoint: Callable[[dict[str, Any]], Any] | None = None,
    feature_dims: dict[str, int] = FEATURE_DIM,
) -> dict[str, Any]:
    """See the module docstring. ``budget_s`` bounds the whole measurement (seconds): a section
    starts only while time is left (a compilation only with ``COMPILE_MIN_LEFT_S`` left).
    ``checkpoint`` is called with the result so far after every section, so that a run killed
    from outside still leaves its figures."""
    t_start = time.perf_counter()
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench --device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    s = Setting("gpu", model, lengths, batch_size, steps, teacher_cache_mb=0.0, feature_dims=dict(feature_dims))
    n = matmul_n or (8192 if device.type == "cuda" else 1024)
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        ),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "setting": {
            "model": model,
            "lengths": lengths,
            "feature_dims": dict(feature_dims),
            "batch_size": batch_size,
            "steps": steps,
            "warmup": warmup,
        },
        "matmul_tflops": {},
        "cases": {},
        "launch": {},
        "compile": {},
        "skipped": [],
        "errors": {},
    }
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        result["matmul_tflops"][name] = matmul_tflops(device, dtype, n)
    bf16_rate = result["matmul_tflops"]["bf16"]
    log(
        f"matmul {n}^3 on {result['device_name']}: "
        + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in result["matmul_tflops"].items())
    )

    def left() -> float:
        return budget_s - (time.perf_counter() - t_start)

    def guarded(section: str, fn: Callable[[], Any], min_left: float = 0.0) -> Any:
        if left() <= min_left:
            result["skipped"].append(section)
            log(f"{section}: skipped ({left():.0f} s of the time budget of {budget_s:.0f} s left)")
            return None
        try:
            return fn()
        except Exception as exc:  # record and go on: one JSON must come out of the check
            result["errors"][section] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
            log(f"{section}: FAILED {type(exc).__name__}: {exc}")
            return None
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if checkpoint is not None:
                checkpoint(result)

    # 1. every case in every precision
    for case in GPU_CASES:
        for prec in precisions:

            def measure(case=case, prec=prec) -> dict[str, Any]:
                _peak_reset(device)
                runner = StepRunner(case, s, device, prec)
                for _ in range(warmup):
                    runner.step()
                step_s = runner.time_steps(steps)
                r = {
                    "step_s": step_s,
                    "samples_per_s": batch_size / step_s,
                    "flops_per_step": runner.flops,
                    "achieved_tflops": runner.flops / step_s / 1e12,
                    "share_of_bf16_matmul": runner.flops / step_s / 1e12 / bf16_rate,
                    "peak_mem_mb": _peak_mb(device),
                }
                if prec == "fp32":  # the loop's validation and test passes: fp32, no gradients
                    r["eval_samples_per_s"] = eval_rate(runner, steps)
                result["cases"].setdefault(case, {})[prec] = r
                mem = "" if r["peak_mem_mb"] is None else f", peak {r['peak_mem_mb']:.0f} MiB"
                log(
                    f"{case} {prec}: {1000 * step_s:.2f} ms/step, {r['samples_per_s']:.0f} samples/s, "
                    f"{100 * r['share_of_bf16_matmul']:.2f}% of bf16 matmul{mem}"
                )
                return runner

            guarded(f"step {case} {prec}", measure)

    # 2. launch-bound? kernels and busy time per step; step time against batch size
    main_prec = "bf16" if "bf16" in precisions else precisions[0]
    for case in ("teacher", "student_nokd"):

        def launch(case=case) -> None:
            entry: dict[str, Any] = {"precision": main_prec}
            runner = StepRunner(case, s, device, main_prec)
            for _ in range(warmup):
                runner.step()
            step_s = runner.time_steps(steps)
            entry.update(profile_steps(runner))
            busy = entry.get("device_busy_s_per_step")
            entry["step_s"] = step_s
            entry["device_busy_fraction"] = None if busy is None else busy / step_s
            del runner
            by_batch = {}
            for bs in sorted({max(1, batch_size // 4), max(1, batch_size // 2), batch_size, 2 * batch_size}):
                r = StepRunner(case, replace(s, batch_size=bs), device, main_prec)
                for _ in range(warmup):
                    r.step()
                by_batch[str(bs)] = r.time_steps(steps)
                del r
            entry["step_s_by_batch"] = by_batch
            small, full = by_batch[str(max(1, batch_size // 4))], by_batch[str(batch_size)]
            entry["step_time_ratio_batch_x4"] = full / small  # 1: launch-bound, 4: proportional to work
            result["launch"][case] = entry
            frac = entry["device_busy_fraction"]
            log(
                f"launch {case} {main_prec}: {entry.get('kernels_per_step')} kernels/step, device busy "
                f"{'n/a' if frac is None else f'{100 * frac:.0f}%'} of the step; "
                f"step time x{entry['step_time_ratio_batch_x4']:.2f} for 4x the batch"
            )

        guarded(f"launch {case}", launch)

    # 3. torch.compile: gain over eager
    for case in ("student_nokd", "teacher"):
        for mode in compile_modes:

            def comp(case=case, mode=mode) -> None:
                eager = result["cases"].get(case, {}).get(main_prec, {}).get("step_s")
                runner = StepRunner(case, s, device, main_prec, compile_mode=mode)
                t0 = time.perf_counter()
                for _ in range(warmup):
                    runner.step()
                _sync(device)
                compile_s = time.perf_counter() - t0
                step_s = runner.time_steps(steps)
                entry = {
                    "precision": main_prec,
                    "compile_s": compile_s,
                    "step_s": step_s,
                    "eager_step_s": eager,
                    "gain": None if eager is None else eager / step_s,
                    "fell_back_to_eager": runner.fell_back,
                }
                result["compile"].setdefault(case, {})[mode] = entry
                gain = "n/a" if entry["gain"] is None else f"{entry['gain']:.2f}x"
                log(f"compile {case} {mode}: {1000 * step_s:.2f} ms/step (compiled in {compile_s:.0f} s), gain {gain}")

            guarded(f"compile {case} {mode}", comp, min_left=COMPILE_MIN_LEFT_S if device.type == "cuda" else 0.0)

    result["targets"] = targets(result)
    result["elapsed_s"] = time.perf_counter() - t_start
    return result


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets are stated in, from a :func:`gpu_bench` result.

    teacher_epoch_s:         MOSEI's 16,326 training samples / the teacher's samples per second
                             (training steps only), per precision, and with the best compiled
                             mode where one was measured;
    attention_kd_over_nokd:  attention-KD step time / no-KD step time, per precision;
    bf16_over_fp32_speedup:  fp32 step time / bf16 step time, per case.
    """
    cases = r.get("cases", {})
    out: dict[str, Any] = {"goals": dict(TARGETS), "teacher_epoch_s": {}, "attention_kd_over_nokd": {}}
    for prec, c in cases.get("teacher", {}).items():
        out["teacher_epoch_s"][prec] = MOSEI_SPLITS["train"] / c["samples_per_s"]
    comp = r.get("compile", {}).get("teacher", {})
    best = [e for m, e in comp.items() if m != "none" and e.get("step_s") and not e.get("fell_back_to_eager")]
    if best:
        e = min(best, key=lambda e: e["step_s"])
        bs = r["setting"]["batch_size"]
        out["teacher_epoch_s"][f"{e['precision']}_compiled"] = MOSEI_SPLITS["train"] / (bs / e["step_s"])
    for prec in cases.get("student_nokd", {}):
        if prec in cases.get("student_attention_kd", {}):
            out["attention_kd_over_nokd"][prec] = (
                cases["student_attention_kd"][prec]["step_s"] / cases["student_nokd"][prec]["step_s"]
            )
    out["bf16_over_fp32_speedup"] = {
        case: c["fp32"]["step_s"] / c["bf16"]["step_s"] for case, c in cases.items() if {"fp32", "bf16"} <= set(c)
    }
    # met (only on a CUDA device: the targets are stated for one): the fastest teacher variant;
    # attention KD in bf16 (the paper preset's precision) when measured; bf16 speed-up of every case
    epoch = min(out["teacher_epoch_s"].values(), default=math.inf)
    ratio = out["attention_kd_over_nokd"]
    ratio = ratio.get("bf16", ratio.get("fp32"))
    speedups = out["bf16_over_fp32_speedup"].values()
    on_gpu = r.get("device", "").startswith("cuda")
    out["met"] = {
        "teacher_epoch_s": epoch <= TARGETS["teacher_epoch_s"] if out["teacher_epoch_s"] else None,
        "attention_kd_over_nokd": None if ratio is None else ratio <= TARGETS["attention_kd_over_nokd"],
        "bf16_over_fp32_speedup": min(speedups) >= TARGETS["bf16_over_fp32_speedup"] if speedups else None,
    }
    if not on_gpu:
        out["met"] = {k: None for k in out["met"]}
    out["device"] = r.get("device")
    return out
