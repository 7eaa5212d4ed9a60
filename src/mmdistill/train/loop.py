"""The training loop shared by teachers and students (with or without distillation).

Objective (paper 002, eq. 1): ``alpha * L_c + beta * L_KD`` with L_c the cross-entropy on
the 7 classes and L_KD the distillation loss of the run's method; a run without
distillation has no L_KD. A model with a single output (``train.objective: regression``)
is trained instead with the L1 loss on the continuous label and its class is the rounded,
clipped prediction (MulT's and MMSA's MOSEI recipe; :func:`task_loss`, :func:`to_classes`).
Optimization follows MulT's MOSEI recipe (Tsai et al. 2019): Adam, gradient-norm clipping,
ReduceLROnPlateau on the validation loss, the best-validation-loss weights kept and evaluated
on test; plus early stopping.

Nothing is lost on a crash: after every epoch the complete state (model, optimizer,
scheduler, distillation modules with their memory banks, RNG states, history) is written
atomically to a resume checkpoint; a run started again with the same settings continues
from it and ends with the same numbers as an uninterrupted run. A non-finite loss stops
the run with an error naming the run, epoch and step, and leaves the last good
checkpoint in place.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.data.dataset import Batch, SplitData, mask_inputs
from mmdistill.distill.base import DistillLoss
from mmdistill.io import atomic_path, load_checkpoint
from mmdistill.models.outputs import NOTHING, ModelOutput, Request
from mmdistill.precision import autocast
from mmdistill.progress import progress as tqdm
from mmdistill.train.accel import compile_model
from mmdistill.train.metrics import classification_metrics
from mmdistill.train.timing import NULL_TIMER, JobTimer

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    grad_clip: float
    lr_patience: int
    lr_factor: float
    early_stop: int
    threads: int = 1
    device: str = "auto"
    precision: str = "fp32"  # 'bf16': autocast forward passes to bfloat16 (see mmdistill.precision)
    teacher_cache_mb: float = 1024.0  # cache the teacher's distilled internals when they fit
    compile: str = "none"  # torch.compile mode of the model's forward (see mmdistill.train.accel)
    objective: str = "classification"  # or 'regression' (one output, L1 on the continuous label)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)


@dataclass
class Distillation:
    """A frozen teacher, the loss that distils it, and the weights of eq. 1."""

    teacher: nn.Module
    loss: DistillLoss
    alpha: float
    beta: float


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_valid_loss: float
    epochs_run: int
    train_seconds: float
    resumed_from_epoch: int = 0
    best_valid: dict[str, Any] | None = None  # validation metrics of the best epoch (None: not kept)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def set_determinism(seed: int, threads: int, device: torch.device) -> None:
    """Seed torch's global RNG (dropout) and make CPU kernels deterministic.

    Results are bit-identical for a given seed, thread count and machine type; the thread
    count is recorded in the metrics because reductions may be split differently.
    """
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)


INTERNALS = ("attention", "maps", "post_attention")  # ModelOutput fields a Request may ask for


class TeacherCache:
    """Teacher outputs for a whole split, computed once.

    A frozen, eval-mode teacher gives the same outputs for a sample at every epoch, so
    distillation runs the teacher once per data set instead of once per step: its logits and
    penultimate features, the masked-modality views some losses ask for
    (:meth:`DistillLoss.teacher_views`), and -- when they fit in ``budget_mb`` (MB of the
    cache's device memory) -- the attention scores, maps and post-attention outputs of the
    distilled transformers (``internals``). Internals that do not fit (MOSEI's full lengths:
    several MB per sample) are left to a per-step pass of the teacher's distilled
    transformers; :attr:`has_internals` tells which.
    """

    def __init__(
        self,
        teacher: nn.Module,
        split: SplitData,
        batch_size: int,
        device: torch.device,
        views: dict[str, tuple[str, ...]],
        internals: Request = NOTHING,
        budget_mb: float = 0.0,
    ):
        names = ["main"] + list(views)
        keep = {"main": tuple(split.inputs), **views}
        parts: dict[str, tuple[list, list]] = {n: ([], []) for n in names}
        # field -> transformer -> per-layer (N, ...) tensor of the whole split, filled batch by
        # batch in place (no per-batch list and no concatenation: the split's internals exist once)
        store: dict[str, dict[str, list[torch.Tensor]]] | None = None
        want_inner = not internals.empty
        with torch.no_grad():
            for b in split.batches(batch_size):
                b = b.to(device)
                inputs = b.inputs
                for n in names:
                    with_inner = n == "main" and want_inner
                    out = teacher(
                        mask_inputs(inputs, keep[n]),
                        replace(internals, internals_only=False) if with_inner else NOTHING,
                    )
                    parts[n][0].append(out.logits)
                    parts[n][1].append(out.penultimate)
                    if with_inner:
                        if store is None:  # first batch: decide for the whole split
                            want_inner = self._fits(out, len(b), len(split), budget_mb)
                            store = _allocate(out, len(split)) if want_inner else None
                        if want_inner:
                            for f, name, i, t in _internals(out):
                                store[f][name][i][b.index] = t
        self.outputs = {n: (torch.cat(lg), torch.cat(pen)) for n, (lg, pen) in parts.items()}
        self.views = list(views)
        self.internals = store

    @staticmethod
    def _fits(out: ModelOutput, batch: int, n: int, budget_mb: float) -> bool:
        need_mb = _internal_bytes(out) / batch * n / 1e6
        fits = need_mb <= budget_mb
        log.info(
            "teacher internals of the distilled transformers: %.0f MB for the split, teacher_cache_mb=%g: %s",
            need_mb,
            budget_mb,
            "cached once" if fits else "computed per step",
        )
        return fits

    @property
    def has_internals(self) -> bool:
        return self.internals is not None

    def __call__(self, batch: Batch, live: ModelOutput | None = None) -> ModelOutput:
        """The cached outputs of ``batch``; internals from the cache or, with ``live`` (a
        per-batch pass of the teacher's requested transformers only), from that pass."""
        idx = batch.index.to(self.outputs["main"][0].device)
        pick = lambda n: ModelOutput(self.outputs[n][0][idx], self.outputs[n][1][idx])  # noqa: E731
        out = pick("main")
        for f in INTERNALS:
            if self.has_internals:
                setattr(out, f, _rows(self.internals[f], idx))
            elif live is not None:
                setattr(out, f, getattr(live, f))
        out.views = {n: pick(n) for n in self.views}
        return out


def _internals(out: ModelOutput) -> Iterator[tuple[str, str, int, torch.Tensor]]:
    """(field, transformer, layer, tensor) of every internal ``out`` holds."""
    for f in INTERNALS:
        for name, layers in getattr(out, f).items():
            for i, t in enumerate(layers):
                yield f, name, i, t


def _allocate(out: ModelOutput, n: int) -> dict[str, dict[str, list[torch.Tensor]]]:
    """Empty tensors for ``n`` samples shaped like the internals of one batch's output."""
    store: dict[str, dict[str, list[torch.Tensor]]] = {f: {} for f in INTERNALS}
    for f, name, _, t in _internals(out):
        store[f].setdefault(name, []).append(t.new_empty((n, *t.shape[1:])))
    return store


def _rows(store: dict[str, list[torch.Tensor]], idx: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    return {k: [t[idx] for t in layers] for k, layers in store.items()}


def _internal_bytes(out: ModelOutput) -> int:
    return sum(t.numel() * t.element_size() for *_, t in _internals(out))


def is_regression(logits: torch.Tensor) -> bool:
    """A model with one output predicts the continuous label (``train.objective: regression``)."""
    return logits.shape[-1] == 1


def task_loss(logits: torch.Tensor, batch: Batch, reduction: str = "mean") -> torch.Tensor:
    """L_c: cross-entropy on the 7 classes, or for a single output the L1 distance to the
    continuous label in [-3, 3] (MulT / MMSA train MOSEI this way)."""
    if is_regression(logits):
        return F.l1_loss(logits.squeeze(-1).float(), batch.score, reduction=reduction)
    return F.cross_entropy(logits, batch.label, reduction=reduction)


def to_classes(logits: torch.Tensor) -> torch.Tensor:
    """Class indices 0..6: argmax, or for a single output ``round(clip(y, -3, 3)) + 3`` (the
    rule of data preparation, numpy's round half to even, as torch.round)."""
    if is_regression(logits):
        return (torch.round(logits.squeeze(-1).clamp(-3.0, 3.0)) + 3).long()
    return logits.argmax(-1)


class Objective:
    """Computes the training loss of one batch: L_c alone or eq. 1."""

    def __init__(
        self,
        model: nn.Module,
        kd: Distillation | None,
        train_split: SplitData,
        batch_size: int,
        device: torch.device,
        teacher_cache_mb: float = 0.0,
    ):
        self.model = model
        self.kd = kd
        self.cache = None
        self.student_request = NOTHING
        if kd is not None:
            kd.teacher.eval().requires_grad_(False)
            self.student_request = kd.loss.student_request()
            # logits, penultimate features, masked-modality views and (when they fit) the
            # internals the loss reads come from a once-per-data-set cache; otherwise, per
            # step, the teacher runs only the transformers the loss reads
            self.teacher_request = replace(kd.loss.teacher_request(), internals_only=True)
            self.cache = TeacherCache(
                kd.teacher,
                train_split,
                batch_size,
                device,
                kd.loss.teacher_views(),
                internals=self.teacher_request,
                budget_mb=teacher_cache_mb,
            )

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(batch.inputs, self.student_request)
        ce = task_loss(out.logits, batch)
        if self.kd is None:
            return ce, {"ce": ce.detach()}
        live = None
        if not self.teacher_request.empty and not self.cache.has_internals:
            with torch.no_grad():
                live = self.kd.teacher(batch.inputs, self.teacher_request).detach()
        t_out = self.cache(batch, live)
        kd = self.kd.loss(out, t_out, batch)
        total = self.kd.alpha * ce + self.kd.beta * kd
        return total, {"ce": ce.detach(), "kd": kd.detach()}


@torch.no_grad()
def predict(model: nn.Module, split: SplitData, batch_size: int, device: torch.device) -> tuple[np.ndarray, float]:
    """Class predictions for a split and the mean task loss (cross-entropy, or L1 for a
    single-output model)."""
    model.eval()
    preds, loss_sum = [], torch.zeros((), dtype=torch.float64, device=device)
    for b in split.batches(batch_size):
        b = b.to(device)
        logits = model(b.inputs, NOTHING).logits.float()
        loss_sum += task_loss(logits, b, reduction="sum")
        preds.append(to_classes(logits))
    # one device-to-host copy per pass, not one per batch
    return torch.cat(preds).cpu().numpy(), float(loss_sum) / len(split)


def evaluate(model: nn.Module, split: SplitData, batch_size: int, device: torch.device) -> dict[str, Any]:
    pred, loss = predict(model, split, batch_size, device)
    metrics = classification_metrics(split.label.numpy(), pred)
    metrics["loss"] = loss
    return metrics


def train(
    model: nn.Module,
    train_split: SplitData,
    valid_split: SplitData,
    cfg: TrainConfig,
    *,
    seed: int,
    run_label: str,
    resume_path: Path,
    config_hash: str,
    kd: Distillation | None = None,
    progress: bool = True,
    timer: JobTimer = NULL_TIMER,
) -> TrainResult:
    """Train ``model`` in place; on return it holds the best-validation weights.

    ``timer`` collects the wall time of the phases (:mod:`mmdistill.train.timing`)."""
    device = resolve_device(cfg.device)
    with timer.phase("startup"):  # use_deterministic_algorithms imports torch's compiler (as long as torch)
        set_determinism(seed, cfg.threads, device)
    model.to(device)
    if kd is not None:
        kd.teacher.to(device)
        kd.loss.to(device)
    if device.type == "cuda":  # the whole data set on the GPU: no host-to-device copy per step
        train_split, valid_split = train_split.to(device), valid_split.to(device)
    compile_model(model, cfg.compile)
    with timer.phase("teacher_cache"):
        objective = Objective(model, kd, train_split, cfg.batch_size, device, cfg.teacher_cache_mb)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if kd is not None:
        trainable += [p for p in kd.loss.parameters() if p.requires_grad]
    # foreach: one call per step over all parameters instead of a Python loop over them (the
    # same element-wise operations in the same order: bit-identical weights, tested)
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr, foreach=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    gen = torch.Generator().manual_seed(seed)
    n_neg = kd.loss.needs_negatives if kd is not None else 0

    state = {
        "epoch": 0,
        "best_loss": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "best_state": None,
        "best_valid": None,
        "train_seconds": 0.0,
    }
    resumed_from = 0
    if resume_path.exists():
        with timer.phase("checkpoint"):
            ckpt = load_checkpoint(resume_path, map_location=device)
        if ckpt.get("config_hash") == config_hash:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if kd is not None:
                kd.loss.load_state_dict(ckpt["kd_loss"])
            gen.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
            if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            state = ckpt["state"]
            resumed_from = state["epoch"]
            log.info("%s: resuming after epoch %d from %s", run_label, resumed_from, resume_path)
        else:
            log.warning("%s: %s was written under other settings; starting afresh", run_label, resume_path)

    n_steps = train_split.n_batches(cfg.batch_size)
    check_every = 1 if device.type == "cpu" else 50
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.early_stop:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        batches = train_split.batches(cfg.batch_size, shuffle=True, generator=gen, n_negatives=n_neg)
        bar = tqdm(
            timer.timed_iter("batches", batches),
            total=n_steps,
            desc=f"{run_label} epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=not progress,
            file=sys.stderr,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        first_bad = torch.zeros((), dtype=torch.long, device=device)  # first non-finite step, 0 = none
        t_steps, batches_before = time.perf_counter(), timer.seconds["batches"]
        for step, batch in enumerate(bar, start=1):
            batch = batch.to(device, non_blocking=True)
            with autocast(device, cfg.precision):
                loss, parts = objective(batch)
            # On a GPU the check is deferred (no host-device sync per step): the step is
            # recorded on the device and the run stops at the next check, before any
            # checkpoint is written, so the last good checkpoint is the one on disk.
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)
            if step % check_every == 0 or step == n_steps:
                if (bad := int(first_bad)) > 0:
                    kept = (
                        f"the last good checkpoint (after epoch {state['epoch']}) is kept at {resume_path}"
                        if state["epoch"] > 0 and resume_path.exists()
                        else "no checkpoint of this run was written yet (its first epoch did not finish)"
                    )
                    raise NonFiniteLossError(
                        f"{run_label}: training loss is non-finite at epoch {epoch}, step {bad}/{n_steps}"
                        f" (last value {loss.item()}, parts: { {k: float(v) for k, v in parts.items()} }); {kept}."
                        " Lower train.lr, or the method's beta or temperature, and run again"
                    )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            n = len(batch)
            sums["loss"] = sums.get("loss", 0.0) + loss.detach() * n
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * n
        train_means = {f"train_{k}": float(v) / len(train_split) for k, v in sums.items()}
        t_valid = time.perf_counter()
        timer.add("steps", t_valid - t_steps - (timer.seconds["batches"] - batches_before))
        valid = evaluate(model, valid_split, cfg.batch_size, device)
        scheduler.step(valid["loss"])
        seconds = time.perf_counter() - t0
        timer.add("validation", t0 + seconds - t_valid)
        timer.add("logging", t_steps - t0)  # the progress bar's set-up
        state["train_seconds"] += seconds
        row = {
            "epoch": epoch,
            **train_means,
            "valid_loss": valid["loss"],
            "valid_acc7": valid["acc7"],
            "valid_f1_weighted": valid["f1_weighted"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
        }
        if kd is not None:
            row.update({f"kd_{k}": v for k, v in kd.loss.epoch_log().items()})
        state["history"].append(row)
        t_best = time.perf_counter()
        if valid["loss"] < state["best_loss"]:
            state.update(
                best_loss=valid["loss"],
                best_epoch=epoch,
                bad_epochs=0,
                best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                # the same weights evaluated again would give these numbers exactly
                best_valid=valid,
            )
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        t_log = time.perf_counter()
        log.info(
            "%s epoch %d: train loss %.4f, valid loss %.4f acc7 %.4f f1 %.4f (%.1fs)",
            run_label,
            epoch,
            train_means["train_loss"],
            valid["loss"],
            valid["acc7"],
            valid["f1_weighted"],
            seconds,
        )
        t_save = time.perf_counter()
        timer.add("logging", (t_best - t0 - seconds) + (t_save - t_log))  # history row and log line
        save_resume(resume_path, config_hash, model, optimizer, scheduler, kd, gen, state, device)
        timer.add("checkpoint", time.perf_counter() - t_save + (t_log - t_best))  # with the best-weights copy

    model.load_state_dict(state["best_state"])
    return TrainResult(
        history=state["history"],
        best_epoch=state["best_epoch"],
        best_valid_loss=state["best_loss"],
        epochs_run=state["epoch"],
        train_seconds=state["train_seconds"],
        resumed_from_epoch=resumed_from,
        best_valid=state.get("best_valid"),  # absent in a resume checkpoint of an older version
    )


def save_resume(path: Path, config_hash: str, model, optimizer, scheduler, kd, gen, state, device) -> None:
    ckpt = {
        "config_hash": config_hash,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "kd_loss": kd.loss.state_dict() if kd is not None else None,
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
        "state": state,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
