"""Where the time goes: training-step and inference cost of teacher and students, side by side.

``python -m mmdistill bench`` measures, in one run:

* the training step (forward, backward, optimizer step) of the complete teacher, the no-KD
  student, a student with output-level KD (Hinton KD on cached teacher logits) and a student
  with attention-map KD (EDAM-S, the teacher run per step with maps of the distilled pairs);
* inference latency of the complete teacher and the student at batch 1 and 32;
* achieved GFLOP/s of each training step (FLOPs counted by ``torch.utils.flop_counter``)
  against a large float32 matmul timed in the same run;
* peak memory (CUDA: ``max_memory_allocated``; CPU: growth of the process's peak RSS while
  the case runs, each case in a fresh subprocess so the peaks do not mask each other);

at the configured (default) sizes and at MOSEI's full lengths with the paper-size model;
and (``--what rows``) the training cost of every student row of the registry through the
pipeline's own loop, against a no-KD student of the same architecture (:func:`row_costs`);
(``--what jobs``) one whole pipeline job of each kind split into start-up, data, teacher,
steps, evaluation and writing (:func:`job_split`); (``--what run``) the schedule of a
finished run read back from its jobs' metrics (:func:`run_timeline`).
Results go to ``results/bench.json`` and ``results/bench.md``.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mmdistill.allocator import keep_freed_memory
from mmdistill.data.dataset import SplitData
from mmdistill.distill.base import DistillContext, build_loss
from mmdistill.modalities import FEATURE_DIM, MODALITIES
from mmdistill.models import build_student, build_teacher, count_parameters
from mmdistill.models.config import PAPER_PRESET, ModelConfig
from mmdistill.models.configurations import CONFIGURATIONS
from mmdistill.train.latency import measure_latency, random_inputs
from mmdistill.train.loop import Distillation, Objective

FULL_LENGTHS = {"V": 500, "A": 500, "L": 50}
CASES = ("teacher", "student_nokd", "student_output_kd", "student_attention_kd")


@dataclass(frozen=True)
class Setting:
    name: str
    model: dict[str, Any]
    lengths: dict[str, int]
    batch_size: int
    steps: int
    teacher_cache_mb: float = 0.0  # as train.teacher_cache_mb: cache the teacher's maps if they fit
    feature_dims: dict[str, int] = field(default_factory=lambda: dict(FEATURE_DIM))  # input widths


def random_split(
    lengths: dict[str, int], n: int, seed: int = 0, feature_dims: dict[str, int] = FEATURE_DIM
) -> SplitData:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, lengths[m], feature_dims[m], generator=g) for m in MODALITIES}
    label = torch.randint(0, 7, (n,), generator=g)
    length = torch.tensor([[lengths[m] for m in MODALITIES]] * n, dtype=torch.int32)
    return SplitData("bench", inputs, length, label, label.float() - 3, [str(i) for i in range(n)])


def build_case(case: str, s: Setting, split: SplitData, device: torch.device):
    """The model and the objective of one benchmark case."""
    cfg = ModelConfig.from_dict(s.model)
    torch.manual_seed(0)
    if case == "teacher":
        model = build_teacher(cfg, ("V", "A", "L"), s.feature_dims).to(device)
        return model, Objective(model, None, split, s.batch_size, device)
    student = build_student(cfg, "language_audio", "V", s.lengths, "down", s.feature_dims).to(device)
    if case == "student_nokd":
        return student, Objective(student, None, split, s.batch_size, device)
    teacher = build_teacher(cfg, ("V", "A", "L"), s.feature_dims).to(device).eval()
    method, level = ("hinton", "final") if case == "student_output_kd" else ("edam", "attention")
    example = next(split.batches(s.batch_size))
    example = example.to(device)

    def probe(s_req, t_req):
        with torch.no_grad():
            return student(example.inputs, s_req), teacher(example.inputs, t_req)

    ctx = DistillContext(
        level=level, pairs=CONFIGURATIONS["language_audio"].distilled_pairs, n_data=len(split), probe=probe
    )
    loss = build_loss(method, ctx, {}).to(device)
    kd = Distillation(teacher=teacher, loss=loss, alpha=1.0, beta=1.0)
    return student, Objective(student, kd, split, s.batch_size, device, s.teacher_cache_mb)


def flop_counter():
    """A ``FlopCounterMode`` that also counts PyTorch's CPU fused attention.

    torch's counter has formulas for the CUDA fused-attention kernels only; on CPU
    ``scaled_dot_product_attention`` dispatches to ``_scaled_dot_product_flash_attention_for_cpu``
    (and its backward), which it would count as zero FLOPs. They get the same formulas as
    the CUDA kernels: two (B*H) batched products forward, five backward (scores recomputed).
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    def forward(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    def backward(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)

    aten = torch.ops.aten
    extra = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = forward
        extra[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    return FlopCounterMode(display=False, custom_mapping=extra)


def step_flops(objective: Objective, model, batch) -> int:
    counter = flop_counter()
    with counter:
        loss, _ = objective(batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run_case(case: str, s: Setting, device_name: str, threads: int) -> dict[str, Any]:
    """Time ``s.steps`` training steps of one case (after one warm-up step)."""
    kept = keep_freed_memory()  # as every pipeline command (a spawned child starts with glibc's defaults)
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    split = random_split(s.lengths, s.batch_size * (s.steps + 1), feature_dims=s.feature_dims)
    model, objective = build_case(case, s, split, device)
    model.train()
    params = [p for p in model.parameters()]
    if objective.kd is not None:
        params += list(objective.kd.loss.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    batches = [b.to(device) for b in split.batches(s.batch_size)]
    flops = step_flops(objective, model, batches[0])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i, batch in enumerate(batches):
        sync()
        t0 = time.perf_counter()
        loss, _ = objective(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i > 0:  # the first step is a warm-up
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    )
    cached = objective.cache.has_internals if objective.cache is not None else None
    return {
        "step_s": step,
        "steps_timed": len(times),
        "flops_per_step": flops,
        "teacher_maps_cached": cached,
        "freed_memory_kept": kept,
        "gflops_per_s": flops / step / 1e9,
        "peak_mem_mb": peak,
        "parameters": count_parameters(model),
    }


def _child(conn, *args):
    try:
        conn.send(run_case(*args))
    except BaseException as exc:  # report the failure to the parent, which raises it
        conn.send(exc)
    finally:
        conn.close()


def run_isolated(*args) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, *args))
    proc.start()
    result = parent.recv()
    proc.join()
    if isinstance(result, BaseException):
        raise result
    return result


def matmul_gflops(n: int, device: torch.device, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def latency(s: Setting, device: torch.device, repeats: int) -> dict[str, Any]:
    """Median batch-1 and batch-32 inference time of the complete teacher and the student.

    The two models take turns call by call (after 3 warm-up calls each), so a change of the
    machine's speed during the measurement moves both and not their ratio.
    """
    cfg = ModelConfig.from_dict(s.model)
    models = {
        "teacher": build_teacher(cfg, ("V", "A", "L"), s.feature_dims).to(device),
        "student": build_student(cfg, "language_audio", "V", s.lengths, "down", s.feature_dims).to(device),
    }
    out: dict[str, Any] = {name: {"parameters": count_parameters(m)} for name, m in models.items()}
    for bs in (1, 32):
        inputs = random_inputs(s.lengths, s.feature_dims, bs)
        for m in models.values():
            measure_latency(m, inputs, 3, 1)
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, m in models.items():
                times[name].append(measure_latency(m, inputs, 0, 1)["median_ms"])
        for name in models:
            out[name][f"b{bs}_ms"] = statistics.median(times[name])
    out["student_over_teacher_b1"] = out["student"]["b1_ms"] / out["teacher"]["b1_ms"]
    out["student_over_teacher_b32"] = out["student"]["b32_ms"] / out["teacher"]["b32_ms"]
    return out


def bench(
    default_model: dict[str, Any],
    default_lengths: dict[str, int],
    batch_size: int,
    *,
    device_name: str = "auto",
    threads: int | None = None,
    full: bool = True,
    full_steps: int = 2,
    steps: int = 10,
    teacher_cache_mb: float = 0.0,
    feature_dims: dict[str, int] = FEATURE_DIM,
    log=print,
) -> dict[str, Any]:
    """Both settings use ``feature_dims`` (input width per modality, the data's)."""
    device = torch.device(device_name if device_name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dims = dict(feature_dims)
    settings = [Setting("default", default_model, default_lengths, batch_size, steps, teacher_cache_mb, dims)]
    if full:
        settings.append(
            Setting("full", {**default_model, **PAPER_PRESET}, FULL_LENGTHS, 16, full_steps, teacher_cache_mb, dims)
        )
    result: dict[str, Any] = {
        "device": str(device),
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "matmul_gflops": matmul_gflops(2048, device),
        "settings": {},
    }
    log(f"matmul 2048x2048 fp32: {result['matmul_gflops']:.1f} GFLOP/s on {device} ({threads} threads)")
    for s in settings:
        entry: dict[str, Any] = {
            "model": s.model,
            "lengths": s.lengths,
            "feature_dims": s.feature_dims,
            "batch_size": s.batch_size,
            "teacher_cache_mb": s.teacher_cache_mb,
            "train_step": {},
        }
        for case in CASES:
            r = run_isolated(case, s, str(device), threads)
            r["fraction_of_matmul"] = r["gflops_per_s"] / result["matmul_gflops"]
            entry["train_step"][case] = r
            log(
                f"[{s.name}] {case}: {1000 * r['step_s']:.1f} ms/step, {r['gflops_per_s']:.1f} GFLOP/s "
                f"({100 * r['fraction_of_matmul']:.0f}% of matmul), peak +{r['peak_mem_mb']:.0f} MB"
            )
        ts = entry["train_step"]
        entry["ratios"] = {
            "attention_kd_over_nokd_step": ts["student_attention_kd"]["step_s"] / ts["student_nokd"]["step_s"],
            "output_kd_over_nokd_step": ts["student_output_kd"]["step_s"] / ts["student_nokd"]["step_s"],
        }
        entry["inference"] = latency(s, device, repeats=20 if s.name == "default" else 9)
        log(
            f"[{s.name}] inference b1: teacher {entry['inference']['teacher']['b1_ms']:.2f} ms, "
            f"student {entry['inference']['student']['b1_ms']:.2f} ms"
        )
        result["settings"][s.name] = entry
    return result


# ---------------------------------------------------------------------- cost of each Table 1 row
def row_costs(
    reg, epochs: int = 3, threads: int | None = None, log=print, feature_dims: dict[str, int] = FEATURE_DIM
) -> dict[str, Any]:
    """Training cost of every student row of the registry against a no-KD student.

    Each row trains for ``epochs`` epochs through the pipeline's own loop
    (:func:`mmdistill.train.loop.train`) with its own loss and options, one row at a time in
    this process, on random data of the synthetic data set's sizes, the configured lengths and ``feature_dims``,
    distilling from a freshly initialized teacher of its teacher run's architecture (cost does
    not depend on the weights). Per row: the median epoch time (training steps plus the
    validation pass) and the one-time set-up (loss construction and the teacher's
    once-per-data-set outputs). Each row is compared with a no-KD student of the *same*
    student architecture (the 9-transformer student of configuration 1 and EDAM-T's
    full-length proxies are larger than the 3-transformer no-KD row; such a baseline is timed
    here even if it is not a row) and with the registry's no-KD row.
    """
    import tempfile
    from pathlib import Path

    from mmdistill.experiment import blueprint, build_from_blueprint, make_distillation
    from mmdistill.registry import Run, params_hash
    from mmdistill.train.loop import TrainConfig, train

    tp = dict(reg.params["train"])
    threads = threads or tp["threads"]
    cfg = TrainConfig.from_dict(
        {**tp, "epochs": epochs, "early_stop": epochs + 1, "lr_patience": epochs + 1, "threads": threads}
    )
    lengths = dict(reg.params["data"]["lengths"])
    syn = reg.params["data"]["synthetic"]
    dims = dict(feature_dims)
    train_split = random_split(lengths, syn["n_train"], seed=1, feature_dims=dims)
    valid_split = random_split(lengths, syn["n_valid"], seed=2, feature_dims=dims)
    seed = reg.seeds[0]

    def time_one(run: Run | None, bp: dict[str, Any], label: str, tmp: Path) -> dict[str, Any]:
        torch.manual_seed(0)
        student = build_from_blueprint(bp)
        t0 = time.perf_counter()
        kd = None
        if run is not None and reg.spec(run).distils:
            teacher = build_from_blueprint(blueprint(reg, reg.teacher_run(run), dims)).eval()
            kd = make_distillation(reg, run, student, train_split, valid_split, cfg.batch_size, teacher=teacher)
        result = train(
            student,
            train_split,
            valid_split,
            cfg,
            seed=seed,
            run_label=label,
            resume_path=tmp / f"{label}.pt",
            config_hash=label,
            kd=kd,
            progress=False,
        )
        wall = time.perf_counter() - t0
        per_epoch = [h["seconds"] for h in result.history]
        return {
            "epoch_s": statistics.median(per_epoch),
            "setup_s": wall - sum(per_epoch),
            "parameters": count_parameters(student),
        }

    out: dict[str, Any] = {
        "epochs": epochs,
        "threads": threads,
        "n_train": syn["n_train"],
        "n_valid": syn["n_valid"],
        "lengths": lengths,
        "feature_dims": dims,
        "batch_size": cfg.batch_size,
        "rows": {},
        "baselines": {},
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        arch_of: dict[str, str] = {}
        for name in reg.students:
            run = Run("student", name, seed)
            bp = blueprint(reg, run, dims)
            arch = params_hash(bp)
            arch_of[name] = arch
            r = time_one(run, bp, name, tmp)
            spec = reg.spec(run)
            r.update(method=spec.method, level=spec.level, configuration=spec.configuration, architecture=arch)
            out["rows"][name] = r
            if not spec.distils:
                out["baselines"].setdefault(arch, {"row": name, **r})
            log(f"[rows] {name}: {r['epoch_s']:.2f} s/epoch, set-up {r['setup_s']:.2f} s")
        for name, arch in arch_of.items():
            if arch not in out["baselines"]:
                bp = blueprint(reg, Run("student", name, seed), dims)
                r = time_one(None, bp, f"nokd_{arch[:8]}", tmp)
                out["baselines"][arch] = {"row": None, "like": name, **r}
                log(f"[rows] no-KD student shaped like {name}: {r['epoch_s']:.2f} s/epoch")
    nokd_rows = [n for n, r in out["rows"].items() if r["method"] == "none"]
    main_nokd = out["rows"][nokd_rows[0]]["epoch_s"] if nokd_rows else None
    for r in out["rows"].values():
        base = out["baselines"][r["architecture"]]
        r["over_same_architecture_nokd"] = r["epoch_s"] / base["epoch_s"]
        r["over_nokd_row"] = r["epoch_s"] / main_nokd if main_nokd else None
    return out


def rows_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Training cost per row: median of {r['epochs']} epochs ({r['n_train']} training and {r['n_valid']} "
        f"validation samples, lengths {r['lengths']}, batch {r['batch_size']}, {r['threads']} thread(s)).",
        "",
        "| Row | Method | Level | Parameters | s/epoch | Set-up (s) | vs no-KD, same architecture | vs no-KD row |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, x in r["rows"].items():
        vs = "–" if x["over_nokd_row"] is None else f"{x['over_nokd_row']:.2f}x"
        lines.append(
            f"| {name} | {x['method']} | {x['level'] or '–'} | {x['parameters']:,} | {x['epoch_s']:.2f} | "
            f"{x['setup_s']:.2f} | {x['over_same_architecture_nokd']:.2f}x | {vs} |"
        )
    extra = [b for b in r["baselines"].values() if b["row"] is None]
    for b in extra:
        lines.append(
            f"| (no-KD student shaped like {b['like']}) | none | – | {b['parameters']:,} | {b['epoch_s']:.2f} | "
            f"{b['setup_s']:.2f} | 1.00x | – |"
        )
    return "\n".join(lines) + "\n"


def to_markdown(r: dict[str, Any]) -> str:
    parts = []
    if "settings" in r:
        parts.append(steps_markdown(r))
    if "row_costs" in r:
        parts.append(rows_markdown(r["row_costs"]))
    if "job_split" in r:
        parts.append(jobs_markdown(r["job_split"]))
    if "timeline" in r:
        parts.append(timeline_markdown(r["timeline"]))
    return "\n".join(parts)


def steps_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Measured on {r['device']} ({r['processor']}, {r['threads']} threads, torch {r['torch']}); "
        f"float32 matmul 2048^3: **{r['matmul_gflops']:.1f} GFLOP/s**.",
        "",
        "Freed host memory kept for reuse (mmdistill.allocator): "
        + ", ".join(
            sorted(
                {
                    "yes" if c.get("freed_memory_kept") else "no"
                    for e in r["settings"].values()
                    for c in e["train_step"].values()
                }
            )
        )
        + ".",
        "",
        "| Setting | Case | Step (ms) | GFLOP/s | % of matmul | Peak mem. (MB) | Parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in r["settings"].items():
        for case, c in e["train_step"].items():
            lines.append(
                f"| {name} | {case} | {1000 * c['step_s']:.1f} | {c['gflops_per_s']:.1f} | "
                f"{100 * c['fraction_of_matmul']:.1f} | {c['peak_mem_mb']:.0f} | {c['parameters']:,} |"
            )
    for name, e in r["settings"].items():
        cached = e["train_step"]["student_attention_kd"].get("teacher_maps_cached")
        lines.append(
            f"\n{name}: the attention-KD student's teacher maps are "
            + (
                "cached once per data set (they fit teacher_cache_mb)"
                if cached
                else "computed per step (they do not fit teacher_cache_mb)"
            )
            + "."
        )
    lines += [
        "",
        "| Setting | Lengths V/A/L | Batch | Teacher b1 (ms) | Student b1 (ms) | Student/teacher b1 | "
        "Teacher b32 (ms) | Student b32 (ms) | Attn-KD step / no-KD step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in r["settings"].items():
        inf, L = e["inference"], e["lengths"]
        lines.append(
            f"| {name} | {L['V']}/{L['A']}/{L['L']} | {e['batch_size']} | {inf['teacher']['b1_ms']:.2f} | "
            f"{inf['student']['b1_ms']:.2f} | {inf['student_over_teacher_b1']:.2f} | {inf['teacher']['b32_ms']:.2f} | "
            f"{inf['student']['b32_ms']:.2f} | {e['ratios']['attention_kd_over_nokd_step']:.2f} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- where a whole job's time goes
JOB_KINDS = ("teacher", "student_nokd", "student_output_kd", "student_attention_kd")


def pick_jobs(reg) -> dict[str, Any]:
    """One run of each kind (seed ``reg.seeds[0]``): the teacher most student rows distil from,
    the first no-KD row, and the first output-level (Hinton KD, else the first at level
    ``final``) and attention-level rows that distil from that teacher."""
    from mmdistill.registry import Run

    seed = reg.seeds[0]
    students = [Run("student", n, seed) for n in reg.students]
    distilled = [r for r in students if reg.spec(r).distils]
    if not distilled:
        raise ValueError("bench --what jobs needs a distilled student row (students with a teacher)")
    counts: dict[str, int] = {}
    for r in distilled:
        counts[reg.spec(r).teacher] = counts.get(reg.spec(r).teacher, 0) + 1
    teacher = max(counts, key=counts.get)

    def first(level: str | None, distils: bool) -> Any:
        for r in students:
            spec = reg.spec(r)
            if spec.distils == distils and (not distils or (spec.teacher == teacher and spec.level == level)):
                return r
        return None

    hinton = [r for r in distilled if reg.spec(r).teacher == teacher and reg.spec(r).method == "hinton"]
    jobs = {
        "teacher": Run("teacher", teacher, seed),
        "student_nokd": first(None, False),
        "student_output_kd": hinton[0] if hinton else first("final", True),
        "student_attention_kd": first("attention", True),
    }
    return {k: r for k, r in jobs.items() if r is not None}


def job_split(reg, *, keep: str | None = None, log=print) -> dict[str, Any]:
    """Run one whole training job of each kind (:func:`pick_jobs`) exactly as the pipeline
    does -- ``python -m mmdistill train ...`` in a fresh process, one after another -- and
    split each job's wall time into the phases it records (:mod:`mmdistill.train.timing`).

    The jobs run in a scratch directory (``keep``, or a temporary one) holding the
    parameters (overrides merged) and the prepared data: linked from this project when it
    exists, otherwise downloaded and prepared there first (timed apart). The wall time is
    taken by this process around each job; ``other`` is what no phase covers (interpreter
    shutdown included). The students distil from the teacher trained here.
    """
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import yaml

    from mmdistill.registry import Registry
    from mmdistill.train.timing import OUTSIDE_STEPS, PHASES

    jobs = pick_jobs(reg)
    tmp = tempfile.TemporaryDirectory(prefix="mmdistill-bench-jobs-") if keep is None else None
    work = Path(keep if keep is not None else tmp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(reg.params, sort_keys=False))
    scratch = Registry.from_file(work / "params.yaml")
    out: dict[str, Any] = {"threads": reg.params["train"]["threads"], "jobs": {}, "phases": list(PHASES)}

    def cli(*args: str) -> float:
        cmd = [sys.executable, "-m", "mmdistill", *args, "--params", "params.yaml", "--quiet"]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=work, env=dict(os.environ), capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}) in {work}:\n{proc.stderr[-4000:]}")
        return wall

    try:
        src = reg.prepared().resolve()
        if src.exists():
            for p in (scratch.prepared(), scratch.data_summary()):
                p.parent.mkdir(parents=True, exist_ok=True)
                p.unlink(missing_ok=True)
                p.symlink_to((reg.prepared().parent / p.name).resolve())
            out["data_preparation_s"] = None
        else:
            log(f"[jobs] no prepared data at {reg.prepared()}: download and prepare in {work}")
            out["data_preparation_s"] = cli("download") + cli("prepare")
        for kind, run in jobs.items():
            wall = cli("train", "--role", run.role, "--name", run.name, "--seed", str(run.seed))
            m = json.loads(scratch.metrics(run).read_text())
            phases = m["timing"]["seconds"]
            other = wall - sum(phases.values())
            entry = {
                "run": run.id,
                "wall_s": wall,
                "phases_s": {**phases, "other": other},
                "epochs_run": m["epochs_run"],
                "outside_steps_fraction": (wall - phases["steps"]) / wall,
            }
            out["jobs"][kind] = entry
            top = ", ".join(f"{p} {phases[p]:.2f}" for p in OUTSIDE_STEPS if phases[p] >= 0.05)
            log(
                f"[jobs] {kind} ({run.id}): {wall:.1f} s, steps {phases['steps']:.1f} s over {m['epochs_run']} epochs, "
                f"{100 * entry['outside_steps_fraction']:.0f}% outside steps ({top}, other {other:.2f})"
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    return out


def jobs_markdown(r: dict[str, Any]) -> str:
    phases = [*r["phases"], "other"]
    lines = [
        f"Where one whole job's wall time goes (seconds; each job alone in a fresh process, {r['threads']} torch "
        "thread(s); `other`: what no phase covers, interpreter shutdown included).",
        "",
        "| Job | Run | Epochs | Wall (s) | " + " | ".join(phases) + " | Outside steps |",
        "|---|---|---|---|" + "---|" * len(phases) + "---|",
    ]
    for kind, j in r["jobs"].items():
        cells = " | ".join(f"{j['phases_s'][p]:.2f}" for p in phases)
        lines.append(
            f"| {kind} | {j['run']} | {j['epochs_run']} | {j['wall_s']:.2f} | {cells} | "
            f"{100 * j['outside_steps_fraction']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- the whole run, read back
def snakemake_jobs(log_path) -> list[dict[str, Any]]:
    """Every job a Snakemake log records: rule, wildcards, start and end (Unix seconds; the log
    stamps whole seconds). A job without a ``Finished`` line (failed or still running) has
    ``end`` None."""
    import re
    from datetime import datetime
    from pathlib import Path

    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
    jobs: dict[str, dict[str, Any]] = {}
    now = None
    current = None
    for line in Path(log_path).read_text().splitlines():
        m = stamp.match(line.strip())
        if m:
            now = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y").timestamp()
            continue
        text = line.strip()
        if (m := re.match(r"^(?:local)?rule (\w+):$", text)) and now is not None:
            current = {"rule": m.group(1), "wildcards": {}, "start": now, "end": None}
        elif current is not None and (m := re.match(r"^jobid: (\d+)$", text)):
            jobs[m.group(1)] = current
        elif current is not None and text.startswith("wildcards: "):
            current["wildcards"] = dict(kv.split("=", 1) for kv in text[len("wildcards: ") :].split(", "))
        elif (m := re.match(r"^Finished jobid: (\d+)", text)) and m.group(1) in jobs:
            jobs[m.group(1)]["end"] = now
            current = None
    return list(jobs.values())


def newest_snakemake_log(root) -> Any:
    from pathlib import Path

    logs = sorted((Path(root) / ".snakemake" / "log").glob("*.snakemake.log"))
    return logs[-1] if logs else None


def run_timeline(reg, cores: int, long_jobs: int = 10, snakemake_log=None) -> dict[str, Any]:
    """The schedule of a finished run, read from the ``timing`` each training job recorded in
    its metrics.json (process start and end, phases).

    Reports the span from the first training job's start to the last one's end; the summed
    job time and phases; the mean number of jobs running; the tail -- from the last moment
    ``cores`` jobs were running to the end -- with the core-seconds left idle in it (``cores``:
    the machine's cores, not Snakemake's ``--cores``: 4 jobs on 2 cores keep both busy); the
    critical path (the longest teacher -> student chain of measured job times, the least
    any schedule could take); the order in which the longest jobs started; and per row (a
    teacher or student over its seeds) the mean job time and the mean shares of it spent
    outside the training steps and in start-up (jobs that timed themselves only).

    A training job whose metrics lack ``timing`` (written by an older version) takes its
    start and end from the Snakemake log (``snakemake_log``, default: the newest under
    ``.snakemake/log``; whole seconds, no phases); with the log, the whole workflow's span
    (data, profile, report jobs included) is reported too. Jobs found in neither are listed
    as missing.
    """
    from mmdistill.io import read_json
    from mmdistill.registry import Run

    log_path = snakemake_log or newest_snakemake_log(reg.root)
    logged = snakemake_jobs(log_path) if log_path else []
    from_log = {
        Run(j["rule"].removeprefix("train_"), j["wildcards"]["name"], int(j["wildcards"]["seed"])).id: j
        for j in logged
        if j["rule"] in ("train_teacher", "train_student") and j["end"] is not None
    }
    jobs: dict[str, dict[str, Any]] = {}
    missing = []
    for run in reg.runs():
        path = reg.metrics(run)
        m = read_json(path) if path.exists() else {}
        t = m.get("timing")
        if t:
            jobs[run.id] = {"run": run, "start": t["started_at"], "end": t["ended_at"], "seconds": t["seconds"]}
        elif run.id in from_log:
            j = from_log[run.id]
            jobs[run.id] = {"run": run, "start": j["start"], "end": j["end"], "seconds": {}}
        else:
            missing.append(run.id)
    if not jobs:
        raise ValueError(f"no training job with timing under {reg.root / 'results'} or in a Snakemake log")
    t0 = min(j["start"] for j in jobs.values())
    t1 = max(j["end"] for j in jobs.values())
    for j in jobs.values():
        j["duration"] = j["end"] - j["start"]
    # number of jobs running between consecutive start/end events
    events = sorted({j["start"] for j in jobs.values()} | {j["end"] for j in jobs.values()})
    running = [
        (a, b, sum(1 for j in jobs.values() if j["start"] <= a and j["end"] >= b)) for a, b in zip(events, events[1:])
    ]
    full = [b for a, b, n in running if n >= cores]
    tail_start = max(full) if full else t0
    idle_tail = sum((b - a) * max(0, cores - n) for a, b, n in running if a >= tail_start)

    def chain(rid: str) -> float:
        run = jobs[rid]["run"]
        teacher = reg.teacher_run(run)
        before = jobs[teacher.id]["duration"] if teacher is not None and teacher.id in jobs else 0.0
        return before + jobs[rid]["duration"]

    critical = max(jobs, key=chain)
    teacher = reg.teacher_run(jobs[critical]["run"])
    order = sorted(jobs, key=lambda rid: jobs[rid]["start"])
    longest = sorted(jobs, key=lambda rid: -jobs[rid]["duration"])[:long_jobs]
    total = sum(j["duration"] for j in jobs.values())
    phases: dict[str, float] = {}
    for j in jobs.values():
        for p, s in j["seconds"].items():
            phases[p] = phases.get(p, 0.0) + s
    phases["other"] = total - sum(phases.values())
    per_row: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for j in jobs.values():
        if j["seconds"] and j["duration"] > 0:
            per_row.setdefault((j["run"].role, j["run"].name), []).append(j)
    rows = sorted(
        (
            {
                "row": f"{role}s/{name}",
                "jobs": len(js),
                "mean_job_s": statistics.fmean(j["duration"] for j in js),
                "outside_steps": statistics.fmean(1 - j["seconds"].get("steps", 0.0) / j["duration"] for j in js),
                "startup": statistics.fmean(j["seconds"].get("startup", 0.0) / j["duration"] for j in js),
            }
            for (role, name), js in per_row.items()
        ),
        key=lambda w: w["outside_steps"],
    )
    finished = [j for j in logged if j["end"] is not None]
    workflow = None
    if finished:
        w0, w1 = min(j["start"] for j in finished), max(j["end"] for j in finished)
        by_rule: dict[str, float] = {}
        for j in finished:
            by_rule[j["rule"]] = by_rule.get(j["rule"], 0.0) + j["end"] - j["start"]
        workflow = {"log": str(log_path), "jobs": len(finished), "span_s": w1 - w0, "rule_seconds": by_rule}
    return {
        "cores": cores,
        "jobs": len(jobs),
        "timed_by_the_jobs": sum(1 for j in jobs.values() if j["seconds"]),
        "missing": missing,
        "workflow": workflow,
        "span_s": t1 - t0,
        "job_seconds": total,
        "phases_s": phases,
        "mean_running": total / (t1 - t0) if t1 > t0 else float(len(jobs)),
        "tail_s": t1 - tail_start,
        "idle_core_s_in_tail": idle_tail,
        "critical_path": {
            "runs": ([teacher.id] if teacher is not None and teacher.id in jobs else []) + [critical],
            "seconds": chain(critical),
        },
        "lower_bound_s": max(chain(critical), total / cores),
        "longest": [
            {
                "run": rid,
                "duration_s": jobs[rid]["duration"],
                "started_at_s": jobs[rid]["start"] - t0,
                "start_rank": order.index(rid) + 1,
            }
            for rid in longest
        ],
        "rows": rows,
        "last_started": order[-1],
        "last_ended": max(jobs, key=lambda rid: jobs[rid]["end"]),
    }


def timeline_markdown(r: dict[str, Any]) -> str:
    total = r["job_seconds"]
    lines = []
    if r.get("workflow"):
        w = r["workflow"]
        lines += [
            f"Whole workflow ({w['log']}): {w['jobs']} jobs in **{w['span_s']:.0f} s**; summed job time per rule: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in w["rule_seconds"].items())
            + ".",
            "",
        ]
    lines += [
        f"Training jobs of the run: {r['jobs']} ({r['timed_by_the_jobs']} timed by the jobs themselves, "
        f"{r['jobs'] - r['timed_by_the_jobs']} from the Snakemake log, {len(r['missing'])} missing), "
        f"first start to last end **{r['span_s']:.0f} s**; summed job time {total:.0f} s, "
        f"{r['mean_running']:.2f} jobs running on average.",
        "",
        f"Tail: from the last moment {r['cores']} jobs ran to the end, {r['tail_s']:.0f} s with "
        f"{r['idle_core_s_in_tail']:.0f} core-seconds idle (of {r['cores']} cores). Critical path "
        f"{' -> '.join(r['critical_path']['runs'])}: {r['critical_path']['seconds']:.0f} s; no schedule on "
        f"{r['cores']} cores beats max(critical path, summed time / cores) = {r['lower_bound_s']:.0f} s.",
        "",
        "| Phase | Summed s | Share |",
        "|---|---|---|",
    ]
    for p, s in r["phases_s"].items():
        lines.append(f"| {p} | {s:.1f} | {100 * s / total:.1f}% |")
    if r["timed_by_the_jobs"] < r["jobs"]:
        lines.append(f"\n(phases of the {r['timed_by_the_jobs']} jobs that timed themselves; the rest is in `other`)")
    lines += ["", "| Longest jobs | s | Started at (s) | Start rank |", "|---|---|---|---|"]
    for j in r["longest"]:
        lines.append(f"| {j['run']} | {j['duration_s']:.1f} | {j['started_at_s']:.1f} | {j['start_rank']} |")
    if r["rows"]:
        lines += [
            "",
            "Per row, means over its jobs: the share of a job's wall time outside the training steps, and in start-up.",
            "",
            "| Row | Jobs | Job s | Outside steps | Start-up |",
            "|---|---|---|---|---|",
        ]
        for w in r["rows"]:
            lines.append(
                f"| {w['row']} | {w['jobs']} | {w['mean_job_s']:.1f} | {100 * w['outside_steps']:.1f}% "
                f"| {100 * w['startup']:.1f}% |"
            )
    return "\n".join(lines) + "\n"
