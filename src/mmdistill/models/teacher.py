"""The MulT-style cross-modal teacher of paper 002 (section 4.1), and the parts it shares
with the student: per-modality Conv1D projections, the named transformer stack and the head.

Derived from MulT (Tsai et al., ACL 2019; yaohungt/Multimodal-Transformer, ``src/models.py``):
per branch q (the query modality) two cross-modal transformers ``kv<-q`` for the two other
modalities kv, then a memory (self-attention) transformer ``q*`` of width 2d over their
concatenated outputs; the last time step of each memory transformer goes to the head
``proj2(dropout(relu(proj1(h)))) + h`` and the output layer. Differences from MulT: Conv1D
kernel 3 (paper 002), a branch subset in any order instead of the ``lonly/aonly/vonly``
flags, the order of branches (V, A, L instead of MulT's L, A, V) and access to every
transformer's attention internals on request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.modalities import FEATURE_DIM, MODALITIES, memory_name, pair_name, parse_pair
from mmdistill.models.config import ModelConfig
from mmdistill.models.dropout import Dropout
from mmdistill.models.outputs import NOTHING, ModelOutput, Request
from mmdistill.models.transformer import TransformerEncoder


def canonical_branches(branches: tuple[str, ...]) -> tuple[str, ...]:
    """Check a branch subset and put it in the order (V, A, L)."""
    branches = tuple(branches)
    bad = [b for b in branches if b not in MODALITIES]
    if bad or not branches or len(set(branches)) != len(branches):
        raise ValueError(f"branches must be a non-empty subset of {MODALITIES} without repeats, got {branches}")
    return tuple(m for m in MODALITIES if m in branches)


def branch_pairs(query: str) -> tuple[str, str]:
    """The two cross-modal transformers of branch ``query``: ``('A<-V', 'L<-V')`` for V."""
    return tuple(pair_name(kv, query) for kv in MODALITIES if kv != query)  # type: ignore[return-value]


def teacher_transformer_names(branches: tuple[str, ...]) -> tuple[str, ...]:
    """Transformer names of a teacher with these branches: all cross-modal ones (branch by
    branch, in V, A, L order), then the memory transformers."""
    branches = canonical_branches(branches)
    cross = tuple(name for q in branches for name in branch_pairs(q))
    return cross + tuple(memory_name(q) for q in branches)


def is_memory(name: str) -> bool:
    return name.endswith("*")


def memory_query(name: str) -> str:
    q = name[:-1]
    if not is_memory(name) or q not in MODALITIES:
        raise ValueError(f"not a memory transformer name ('V*', 'A*' or 'L*'): {name!r}")
    return q


class ModalityProjection(nn.Module):
    """Conv1D over time from a modality's features to width d (MulT's ``proj_x``).

    (B, T, D_m) -> (B, T, d), bias-free, kernel ``cfg.conv_kernel`` with same-length padding.
    Language features get embedding dropout first, as in MulT.
    """

    def __init__(self, modality: str, in_dim: int, cfg: ModelConfig):
        super().__init__()
        self.modality, self.in_dim = modality, in_dim
        self.input_dropout = Dropout(cfg.embed_dropout if modality == "L" else 0.0)
        k = cfg.conv_kernel
        self.conv = nn.Conv1d(in_dim, cfg.d_model, kernel_size=k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self.modality, x, self.in_dim)
        x = self.input_dropout(x).transpose(1, 2)  # (B, D_m, T)
        return self.conv(x).transpose(1, 2)  # (B, T, d)


def check_input(modality: str, x: torch.Tensor, in_dim: int) -> None:
    if x.dim() != 3 or x.shape[-1] != in_dim:
        raise ValueError(f"input '{modality}' must be (B, T, {in_dim}), got {tuple(x.shape)}")


class Head(nn.Module):
    """MulT's output block: penultimate = proj2(dropout(relu(proj1(h)))) + h; logits = out_layer(penultimate)."""

    def __init__(self, width: int, cfg: ModelConfig):
        super().__init__()
        self.proj1 = nn.Linear(width, width)
        self.proj2 = nn.Linear(width, width)
        self.out_dropout = Dropout(cfg.out_dropout)
        self.out_layer = nn.Linear(width, cfg.n_classes)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, P) -> penultimate (B, P), logits (B, n_classes)."""
        pen = self.proj2(self.out_dropout(F.relu(self.proj1(h)))) + h
        return pen, self.out_layer(pen)


class TransformerStack(nn.Module):
    """Named transformers over modality streams, their last time steps, and the head.

    ``names`` may hold cross-modal transformers ``'Y<-X'`` (query stream X, keys/values
    stream Y; ``'X<-X'`` is pure self-attention) of width d, and memory transformers
    ``'X*'`` of width 2d over ``cat(out['Y<-X'], out['Z<-X'])`` (Y, Z the two other
    modalities in V, A, L order), which must then be in ``names`` too. Head input: the last
    time step of every memory transformer and of every cross-modal transformer that no
    memory transformer consumes, concatenated in the order of ``names``.
    """

    def __init__(self, names: tuple[str, ...], cfg: ModelConfig):
        super().__init__()
        names = tuple(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"transformer names must be non-empty and distinct, got {names}")
        d = cfg.d_model
        self.names = names
        self.cross = tuple(n for n in names if not is_memory(n))
        self.memory = tuple(n for n in names if is_memory(n))
        for n in self.cross:
            parse_pair(n)
        consumed: set[str] = set()
        for n in self.memory:
            need = branch_pairs(memory_query(n))
            missing = [p for p in need if p not in self.cross]
            if missing:
                raise ValueError(f"memory transformer {n!r} needs the cross-modal transformers {missing}")
            consumed.update(need)
        self.pooled = tuple(n for n in names if is_memory(n) or n not in consumed)
        self.streams = tuple(m for m in MODALITIES if any(m in parse_pair(n) for n in self.cross))
        self.encoders = nn.ModuleDict({n: TransformerEncoder(2 * d if is_memory(n) else d, cfg) for n in names})
        width = sum(2 * d if is_memory(n) else d for n in self.pooled)
        self.head = Head(width, cfg)

    def check_request(self, request: Request) -> None:
        unknown = sorted(request.names - set(self.names))
        if unknown:
            raise KeyError(f"requested transformers {unknown} are not in this model; it has {list(self.names)}")

    def forward(self, streams: dict[str, torch.Tensor], request: Request) -> ModelOutput:
        """streams: modality letter -> (B, T_m, d)."""
        self.check_request(request)
        outs: dict[str, torch.Tensor] = {}
        attention: dict[str, list[torch.Tensor]] = {}
        maps: dict[str, list[torch.Tensor]] = {}
        post: dict[str, list[torch.Tensor]] = {}

        def run(name: str, x_q: torch.Tensor, x_kv: torch.Tensor | None) -> None:
            out, s, a, p = self.encoders[name](
                x_q,
                x_kv,
                want_scores=name in request.attention,
                want_maps=name in request.maps,
                want_post=name in request.post_attention,
                post_projection=request.post_projection,
            )
            outs[name] = out
            for store, value in ((attention, s), (maps, a), (post, p)):
                if value is not None:
                    store[name] = value

        needed = self.needed(request)
        for name in self.cross:
            if name in needed:
                kv, q = parse_pair(name)
                run(name, streams[q], None if kv == q else streams[kv])  # (B, T_q, d)
        for name in self.memory:
            if name in needed:
                h = torch.cat([outs[n] for n in branch_pairs(memory_query(name))], dim=-1)  # (B, T_q, 2d)
                run(name, h, None)
        if request.internals_only:
            return ModelOutput(None, None, attention, maps, post)
        last = torch.cat([outs[n][:, -1] for n in self.pooled], dim=-1)  # (B, P)
        pen, logits = self.head(last)
        return ModelOutput(logits, pen, attention, maps, post)

    def needed(self, request: Request) -> set[str]:
        """Transformers to run: all of them, or with ``internals_only`` the requested ones
        and the cross-modal transformers a requested memory transformer reads."""
        if not request.internals_only:
            return set(self.names)
        want = set(request.names)
        for n in list(want):
            if is_memory(n):
                want.update(branch_pairs(memory_query(n)))
        return want

    def needed_streams(self, request: Request) -> tuple[str, ...]:
        """Modality streams the needed transformers read."""
        needed = [n for n in self.needed(request) if not is_memory(n)]
        return tuple(m for m in self.streams if any(m in parse_pair(n) for n in needed))


class MulTTeacher(nn.Module):
    """Cross-modal teacher: all three modalities in, a subset of branches (paper 002, 4.1).

    ``branches=('V', 'A', 'L')`` is the Complete Teacher Network (head input 6d);
    ``('V',)`` the Video Branch (transformers 'A<-V', 'L<-V', 'V*'; head input 2d), etc.
    Branches are put in V, A, L order, so ``('A', 'V')`` and ``('V', 'A')`` build the same model.
    Every branch reads all three modalities (its two cross-modal transformers take keys and
    values from the other two), so each teacher projects V, A and L.
    """

    def __init__(self, cfg: ModelConfig, branches: tuple[str, ...], feature_dims: dict[str, int] = FEATURE_DIM):
        super().__init__()
        self.cfg = cfg
        self.branches = canonical_branches(branches)
        self.stack = TransformerStack(teacher_transformer_names(self.branches), cfg)
        self.proj = nn.ModuleDict({m: ModalityProjection(m, feature_dims[m], cfg) for m in self.stack.streams})

    @property
    def transformer_names(self) -> tuple[str, ...]:
        return self.stack.names

    @property
    def input_modalities(self) -> tuple[str, ...]:
        return self.stack.streams

    def forward(self, inputs: dict[str, torch.Tensor], request: Request | None = None) -> ModelOutput:
        """inputs: modality letter -> (B, T_m, D_m) for every modality in ``input_modalities``."""
        missing = [m for m in self.input_modalities if m not in inputs]
        if missing:
            raise KeyError(f"teacher inputs lack modalities {missing}; it needs {list(self.input_modalities)}")
        request = NOTHING if request is None else request
        streams = {m: self.proj[m](inputs[m]) for m in self.stack.needed_streams(request)}  # (B, T_m, d)
        return self.stack(streams, request)
