"""A prepared split held in memory, and its batches.

Batches are cut from in-memory tensors by index (no per-sample collate), which on a CPU is
several times faster than a DataLoader over single items and is deterministic for a given
``torch.Generator``. For contrastive distillation (CRD) each batch carries the samples'
dataset indices and, on request, K negative indices drawn from samples of other classes,
as the reference implementation's dataset does (Tian et al., RepDistiller,
``CIFAR100InstanceSample`` with ``mode='exact'``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import torch

from mmdistill.data import N_CLASSES, SPLITS
from mmdistill.modalities import FILE_KEY, MODALITIES


class DataError(ValueError):
    """A prepared data file is missing something or holds values that cannot be right."""


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # modality letter -> (B, T, D)
    label: torch.Tensor  # (B,) int64 class index 0..6
    score: torch.Tensor  # (B,) float32 continuous label
    index: torch.Tensor  # (B,) int64 position of each sample in its split
    negatives: torch.Tensor | None = None  # (B, K) int64 indices of samples of other classes

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            {m: mv(x) for m, x in self.inputs.items()},
            mv(self.label),
            mv(self.score),
            mv(self.index),
            mv(self.negatives),
        )

    def __len__(self) -> int:
        return int(self.label.shape[0])


@dataclass
class SplitData:
    """One split of a prepared data set, as tensors."""

    name: str
    inputs: dict[str, torch.Tensor]  # modality -> (N, T, D) float32
    length: torch.Tensor  # (N, 3) int32, columns V, A, L
    label: torch.Tensor  # (N,) int64
    score: torch.Tensor  # (N,) float32
    segment_id: list[str]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def lengths(self) -> dict[str, int]:
        """Padded sequence length per modality."""
        return {m: int(x.shape[1]) for m, x in self.inputs.items()}

    @property
    def feature_dims(self) -> dict[str, int]:
        """Feature width per modality."""
        return {m: int(x.shape[2]) for m, x in self.inputs.items()}

    def subset(self, fraction: float, seed: int = 0) -> SplitData:
        """The first ``round(fraction * N)`` samples (at least 2) of one fixed permutation drawn
        with ``seed``: nested (a smaller fraction is part of a larger one) and the same for every
        run, so rows and seeds of a learning curve see the same samples. Positions are renumbered
        0..n-1 (memory banks and the teacher cache index by them)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
        n = max(2, round(fraction * len(self)))
        if n >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return replace(
            self,
            inputs={m: x[keep] for m, x in self.inputs.items()},
            length=self.length[keep],
            label=self.label[keep],
            score=self.score[keep],
            segment_id=[self.segment_id[i] for i in keep.tolist()],
        )

    def to(self, device: torch.device | str) -> SplitData:
        """The split with every tensor on ``device`` (batches are then cut on the device)."""
        return replace(
            self,
            inputs={m: x.to(device) for m, x in self.inputs.items()},
            length=self.length.to(device),
            label=self.label.to(device),
            score=self.score.to(device),
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        n_negatives: int = 0,
        modalities: tuple[str, ...] = MODALITIES,
    ) -> Iterator[Batch]:
        """Yield batches in order, or in a permutation drawn from ``generator``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        sampler = NegativeSampler(self.label, n_negatives) if n_negatives > 0 else None
        device = self.label.device
        order_d = order.to(device)  # one host-to-device copy per pass, not one per batch
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            negatives = sampler.sample(idx, generator) if sampler else None
            idx_d = order_d[start : start + batch_size]
            yield Batch(
                {m: self.inputs[m][idx_d] for m in modalities},
                self.label[idx_d],
                self.score[idx_d],
                idx_d,
                None if negatives is None else negatives.to(device, non_blocking=True),
            )

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


def mask_inputs(
    inputs: dict[str, torch.Tensor],
    keep: tuple[str, ...],
    fill: str = "zero",
    means: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Inputs with every modality not in ``keep`` replaced: by zeros (``fill='zero'``, which is
    also what padding looks like) or by a per-feature mean (``fill='mean'``, ``means[m]`` of
    shape (D,), e.g. the training-split mean over real time steps)."""
    out = {}
    for m, x in inputs.items():
        if m in keep:
            out[m] = x
        elif fill == "zero":
            out[m] = torch.zeros_like(x)
        elif fill == "mean":
            if means is None or m not in means:
                raise ValueError(f"fill='mean' needs the mean features of modality {m}")
            out[m] = means[m].to(x).expand_as(x).clone()
        else:
            raise ValueError(f"unknown fill {fill!r}; expected 'zero' or 'mean'")
    return out


class NegativeSampler:
    """Draws, for each anchor, ``k`` indices of samples whose class differs from the anchor's.

    ``k`` is clipped by the caller to what the data allows; sampling is with replacement
    within the other classes (as the reference does when K exceeds a class pool).
    """

    def __init__(self, labels: torch.Tensor, k: int):
        self.k = k
        labels = labels.cpu()  # sampling runs on the CPU generator, whatever the data's device
        self.pools = {}
        for c in range(N_CLASSES):
            pool = torch.nonzero(labels != c).flatten()
            self.pools[c] = pool
        self.labels = labels

    def sample(self, idx: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        out = torch.empty(len(idx), self.k, dtype=torch.long)
        cls = self.labels[idx]
        for c in torch.unique(cls).tolist():
            rows = torch.nonzero(cls == c).flatten()
            pool = self.pools[c]
            if len(pool) == 0:
                raise DataError("every sample of the split has the same class: no negatives exist")
            pick = torch.randint(len(pool), (len(rows), self.k), generator=generator)
            out[rows] = pool[pick]
        return out


def load_split(path: str | Path, split: str) -> SplitData:
    """Read one split of a prepared HDF5 file, checking the layout of :mod:`mmdistill.data`."""
    path = Path(path)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    with _open_hdf5(path) as f:
        if split not in f:
            raise DataError(f"{path}: split '{split}' is missing (has: {sorted(f.keys())})")
        g = f[split]
        need = [FILE_KEY[m] for m in MODALITIES] + ["length", "label", "label7", "segment_id"]
        missing = [k for k in need if k not in g]
        if missing:
            raise DataError(f"{path}: split '{split}' lacks datasets {missing}")
        n = g["label"].shape[0]
        if n == 0:
            raise DataError(f"{path}: split '{split}' is empty")
        dims = _feature_dims(f, path)
        inputs = {}
        for m in MODALITIES:
            arr = g[FILE_KEY[m]][...]
            if arr.ndim != 3 or arr.shape[0] != n or arr.shape[2] != dims[m]:
                raise DataError(f"{path}: {split}/{FILE_KEY[m]} has shape {arr.shape}; expected ({n}, T, {dims[m]})")
            if not np.isfinite(arr).all():
                raise DataError(f"{path}: {split}/{FILE_KEY[m]} holds NaN or inf (prepare cleans them)")
            inputs[m] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        label7 = g["label7"][...].astype(np.int64)
        if label7.shape != (n,) or label7.min() < 0 or label7.max() >= N_CLASSES:
            raise DataError(f"{path}: {split}/label7 must be {n} class indices in 0..{N_CLASSES - 1}")
        score = g["label"][...].astype(np.float32)
        if score.shape != (n,) or not np.isfinite(score).all() or np.abs(score).max() > 3:
            raise DataError(f"{path}: {split}/label must be {n} finite values in [-3, 3]")
        length = g["length"][...].astype(np.int32)
        seg = [s.decode() if isinstance(s, bytes) else str(s) for s in g["segment_id"][...]]
    return SplitData(
        split,
        inputs,
        torch.from_numpy(length),
        torch.from_numpy(label7),
        torch.from_numpy(score),
        seg,
    )


def read_feature_dims(path: str | Path) -> dict[str, int]:
    """Feature width of each modality recorded in a prepared HDF5 file: letter -> width."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no prepared data file (run the `prepare` step first)")
    with _open_hdf5(path) as f:
        return _feature_dims(f, path)


def _open_hdf5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: cannot be opened as HDF5 ({exc})") from exc


def _feature_dims(f: h5py.File, path: Path) -> dict[str, int]:
    raw = f.attrs.get("feature_dims")
    if raw is None:
        raise DataError(
            f"{path}: records no feature widths (format_version {f.attrs.get('format_version')}; "
            "written before widths came from the data): run the `prepare` step again"
        )
    try:
        dims = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: attribute feature_dims is not JSON ({exc})") from exc
    if not isinstance(dims, dict) or any(not isinstance(dims.get(m), int) or dims[m] < 1 for m in MODALITIES):
        raise DataError(f"{path}: attribute feature_dims must give a positive width for {MODALITIES}, got {dims!r}")
    return {m: dims[m] for m in MODALITIES}
