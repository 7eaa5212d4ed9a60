"""Glue between the registry and the library: build, train and evaluate one run.

Everything here takes a :class:`~mmdistill.registry.Registry` and a
:class:`~mmdistill.registry.Run`, turns them into plain objects (model configs, splits,
losses) and hands them to the library; the library itself never sees params.yaml.
"""

from __future__ import annotations

import logging
import platform
from typing import Any

import torch
from torch import nn

from mmdistill.data.dataset import SplitData, load_split, read_feature_dims
from mmdistill.distill.base import DistillContext, build_loss
from mmdistill.io import atomic_path, load_checkpoint, write_json, write_text
from mmdistill.models import build_student, build_teacher, count_parameters
from mmdistill.models.config import ModelConfig
from mmdistill.models.configurations import CONFIGURATIONS
from mmdistill.models.outputs import Request
from mmdistill.registry import Registry, Run, params_hash
from mmdistill.train.loop import Distillation, TrainConfig, evaluate, resolve_device, train
from mmdistill.train.timing import NULL_TIMER, JobTimer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- models
def blueprint(reg: Registry, run: Run, feature_dims: dict[str, int] | None = None) -> dict[str, Any]:
    """A plain description from which the run's model can be rebuilt (stored in its checkpoint).

    ``feature_dims`` (input width per modality) default to the widths the prepared data file
    records, so every model is built for the data it trains on."""
    spec = reg.spec(run)
    if feature_dims is None:
        feature_dims = read_feature_dims(reg.prepared())
    bp: dict[str, Any] = {"role": run.role, "model": dict(reg.params["model"]), "feature_dims": dict(feature_dims)}
    if reg.regression:
        bp["model"]["n_classes"] = 1  # one output: the continuous label
    if run.role == "teacher":
        bp["branches"] = list(spec.branches)
    else:
        bp.update(
            configuration=spec.configuration,
            input_modality=reg.params["student_modality"],
            target_lengths=dict(reg.params["data"]["lengths"]),
            proxy=spec.proxy,
        )
    return bp


def build_from_blueprint(bp: dict[str, Any]) -> nn.Module:
    cfg = ModelConfig.from_dict(bp["model"])
    dims = bp.get("feature_dims")  # absent only in checkpoints written when every width was MulT's MOSEI width
    if bp["role"] == "teacher":
        return build_teacher(cfg, tuple(bp["branches"]), dims)
    return build_student(cfg, bp["configuration"], bp["input_modality"], bp["target_lengths"], bp["proxy"], dims)


def save_model(path, model: nn.Module, bp: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"blueprint": bp, "state_dict": model.state_dict()}, tmp)


def load_model(path, device: torch.device | str = "cpu") -> nn.Module:
    ckpt = load_checkpoint(path, map_location=device)
    model = build_from_blueprint(ckpt["blueprint"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval()


# ---------------------------------------------------------------------- data
def load_data(reg: Registry) -> dict[str, SplitData]:
    path = reg.prepared()
    splits = {s: load_split(path, s) for s in ("train", "valid", "test")}
    want = reg.params["data"]["lengths"]
    got = splits["train"].lengths
    if got != dict(want):
        raise ValueError(f"{path} holds sequence lengths {got}, params.yaml asks for {dict(want)}: run `prepare` again")
    return splits


# ---------------------------------------------------------------------- training
def make_distillation(
    reg: Registry,
    run: Run,
    student: nn.Module,
    train_split: SplitData,
    valid_split: SplitData,
    batch_size: int,
    teacher: nn.Module | None = None,
) -> Distillation | None:
    """The run's distillation (None for teachers and no-KD students). The teacher is the
    trained checkpoint of the run's teacher run unless one is given."""
    spec = reg.spec(run)
    if run.role != "student" or not spec.distils:
        return None
    if teacher is None:
        teacher = load_model(reg.checkpoint(reg.teacher_run(run)))
    teacher.requires_grad_(False)
    example = next(train_split.batches(min(batch_size, len(train_split))))

    def probe(s_req: Request, t_req: Request):
        was_training = student.training
        student.eval()
        with torch.no_grad():
            s_out = student(example.inputs, s_req)
            t_out = teacher(example.inputs, t_req)
        student.train(was_training)
        return s_out, t_out

    ctx = DistillContext(
        level=spec.level,
        pairs=CONFIGURATIONS[spec.configuration].distilled_pairs,
        n_data=len(train_split),
        probe=probe,
        extra={
            "student": student,
            "teacher": teacher,
            "train_split": train_split,
            "valid_split": valid_split,
            "batch_size": batch_size,
        },
    )
    loss = build_loss(spec.method, ctx, dict(spec.options))
    return Distillation(teacher=teacher, loss=loss, alpha=spec.alpha, beta=spec.beta)


def train_run(reg: Registry, run: Run, progress: bool = True, timer: JobTimer = NULL_TIMER) -> dict[str, Any]:
    """Train one run and write its checkpoint, metrics and curves; return the metrics.

    ``timer`` collects the wall time of the job's phases; they are stored in the metrics
    under ``timing`` (:mod:`mmdistill.train.timing`)."""
    cfg = TrainConfig.from_dict(reg.params["train"])
    # the job's thread budget from the start: losses may run the teacher when they are built
    torch.set_num_threads(cfg.threads)
    run_params = reg.run_params(run)
    chash = params_hash(run_params)
    with timer.phase("data"):
        splits = load_data(reg)
        fraction = reg.spec(run).train_fraction if run.role == "student" else 1.0
        if fraction < 1:
            full = len(splits["train"])
            splits["train"] = splits["train"].subset(fraction)
            log.info("%s: training on %d of %d training samples (train_fraction)", run.id, len(splits["train"]), full)
    with timer.phase("model"):
        bp = blueprint(reg, run, splits["train"].feature_dims)  # the widths of the data just read
        torch.manual_seed(run.seed)  # model initialization
        model = build_from_blueprint(bp)
    with timer.phase("teacher"):
        kd = make_distillation(reg, run, model, splits["train"], splits["valid"], cfg.batch_size)
    result = train(
        model,
        splits["train"],
        splits["valid"],
        cfg,
        seed=run.seed,
        run_label=run.id,
        resume_path=reg.resume_checkpoint(run),
        config_hash=chash,
        kd=kd,
        progress=progress,
        timer=timer,
    )
    device = resolve_device(cfg.device)
    with timer.phase("test_eval"):
        test = evaluate(model, splits["test"], cfg.batch_size, device)
        # the best epoch's validation pass evaluated these very weights; a run resumed from
        # a checkpoint of an older version has not kept it
        valid = result.best_valid or evaluate(model, splits["valid"], cfg.batch_size, device)
    metrics = {
        "run": run.id,
        "role": run.role,
        "name": run.name,
        "seed": run.seed,
        "test": test,
        "valid": valid,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.train_seconds,
        "seconds_per_epoch": result.train_seconds / max(1, result.epochs_run),
        "resumed_from_epoch": result.resumed_from_epoch,
        "parameters": count_parameters(model),
        "n_train": len(splits["train"]),
        "device": str(device),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "config_hash": chash,
        "params": run_params,
    }
    with timer.phase("checkpoint"):
        save_model(reg.checkpoint(run), model.cpu(), bp)
    with timer.phase("logging"):
        write_curves(reg.curves(run), result.history)
    metrics["timing"] = timer.record()
    write_json(reg.metrics(run), metrics)
    reg.resume_checkpoint(run).unlink(missing_ok=True)
    return metrics


def write_curves(path, history: list[dict[str, float]]) -> None:
    """One CSV row per epoch, columns in order of first appearance (empty where a row lacks
    one), numbers as Python writes them -- the text pandas' ``DataFrame.to_csv`` gives for
    these rows, without importing pandas (0.3 s per job)."""
    import csv
    import io

    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if isinstance(v, float) and v != v else v for k, v in row.items()} for row in history)
    write_text(path, buf.getvalue())


# ---------------------------------------------------------------------- inference cost
def profile_models(reg: Registry, progress: bool = True) -> dict[str, Any]:
    """Parameters and inference latency of every teacher and every student architecture.

    Latency does not depend on the trained weights, so freshly initialized models with the
    run's architecture are timed, all in this one process, one after another, with
    ``profile.threads`` threads, on random inputs of the data set's shapes (the configured lengths
    and the feature widths of the prepared data file).
    """
    from mmdistill.train.latency import measure_latency, random_inputs

    prof = reg.params["profile"]
    device = resolve_device(reg.params["train"]["device"])
    torch.set_num_threads(prof["threads"])
    lengths = dict(reg.params["data"]["lengths"])
    feature_dims = read_feature_dims(reg.prepared())
    archs: dict[str, dict[str, Any]] = {}
    rows: dict[str, str] = {}
    for role, names in (("teacher", reg.teachers), ("student", reg.students)):
        for name in names:
            bp = blueprint(reg, Run(role, name, reg.seeds[0]), feature_dims)
            key = params_hash({k: v for k, v in bp.items()})
            archs.setdefault(key, bp)
            rows[f"{role}s/{name}"] = key
    measured: dict[str, dict[str, Any]] = {}
    for key, bp in archs.items():
        torch.manual_seed(0)
        model = build_from_blueprint(bp).to(device)
        entry: dict[str, Any] = {"blueprint": bp, "parameters": count_parameters(model), "latency": {}}
        for bs in prof["batch_sizes"]:
            inputs = random_inputs(lengths, feature_dims, bs)
            entry["latency"][str(bs)] = measure_latency(model, inputs, prof["warmup"], prof["repeats"])
        measured[key] = entry
        if progress:
            lat = ", ".join(f"b{bs} {v['median_ms']:.2f} ms" for bs, v in entry["latency"].items())
            log.info(
                "profiled %s: %d parameters, %s", bp.get("configuration", bp.get("branches")), entry["parameters"], lat
            )
    return {
        "device": str(device),
        "threads": prof["threads"],
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "lengths": lengths,
        "feature_dims": feature_dims,
        "architectures": measured,
        "rows": rows,
    }
