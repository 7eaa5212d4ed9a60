"""Contrastive Representation Distillation (CRD) at the four levels of paper 002.

Tian, Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020; this module
reimplements the reference ``CRDLoss`` / ``ContrastMemory`` / ``ContrastLoss`` of
HobbitLong/RepDistiller with the same maths:

* an embedding head per side (``Linear -> L2 normalize`` to ``feat_dim``), both trained;
* a memory bank per side, ``(n_data, feat_dim)``, uniform init in ``[-stdv, stdv]`` with
  ``stdv = 1/sqrt(feat_dim/3)``; after each training step the rows of the batch's own indices
  move to ``momentum * row + (1 - momentum) * embedding`` and are renormalized;
* scores ``P = exp(bank[idx] . v / T) / Z`` for the positive (column 0 of ``idx``: the sample
  itself) and K negatives (samples of other classes, drawn by the data set); ``Z`` is estimated
  once, on the first batch, as ``mean(exp(.)) * n_data`` and then kept (a buffer, so it is
  checkpointed);
* the NCE loss with noise ``Pn = 1/n_data``::

      -(1/B) sum_i [ log(P_i0 / (P_i0 + K Pn + eps)) + sum_k log(K Pn / (P_ik + K Pn + eps)) ]

  once with the student embedding as anchor against the teacher bank and once with the teacher
  embedding as anchor against the student bank; the loss is their sum.

Levels (paper 002, sec. 4.3):

* ``final`` / ``penultimate``: one CRD between the logits / penultimate features (eq. 2).
* ``post_attention``: for each distilled transformer pair and each layer, one CRD between the
  flattened ``(Tq * d)`` attention outputs of student and teacher, with its own heads and
  banks; averaged over layers (eq. 7), then over pairs. The attention output is eq. 4's
  ``softmax(Q K^T / sqrt(d_k)) V`` (heads concatenated, before the output projection) by
  default; option ``post_output='projected'`` takes it after ``out_proj`` instead.
* ``attention``: CRD between matching rows of the attention maps (eq. 9); a map is
  ``softmax(scores)`` averaged over heads (``(B, Tq, Tk)``), each row a distribution over keys.
  Student and teacher rows may have different lengths ``Tk``: the heads project both to
  ``feat_dim``. Averaged over rows and layers, then over pairs.

Row bins (approximation at the attention level). Eq. 9 taken literally needs one pair of banks
per (pair, layer, row): on MOSEI (n_data 16326, 500 rows, 5 layers, 2 pairs, feat_dim 128) that
is 2 x 5000 banks of 8.4 MB, i.e. 84 GB. Instead the ``Tq`` rows are split into ``row_bins``
contiguous bins of (almost) equal size and the rows of a bin are averaged -- an average of
distributions is a distribution, the attention profile of that stretch of queries -- and each
(pair, layer, bin) gets its own heads and banks. With ``row_bins = None`` every row is its own
bin, which is eq. 9 exactly. When student and teacher have different numbers of rows, bin b
covers the same fraction of the sequence on both sides (rows ``floor(b Tq / nb)`` to
``floor((b+1) Tq / nb) - 1``). All (layer, bin) groups of a pair are processed as one batched
computation; ``max_bank_mb`` bounds the banks' total size and the constructor refuses larger
configurations with the estimate and the options that lower it.

Costs. The reference gathers ``B * (K+1)`` bank rows per step; when that exceeds ``n_data``
the scores are instead computed against the whole bank with one matrix product and the K+1
columns picked afterwards (same numbers, far less memory traffic).

Banks and ``Z`` change only in training mode (``loss.train()``), like batch-norm statistics;
in eval mode the loss is computed against the banks as they are.

Bank updates are applied in place, deferred: a step's update is kept aside and written at the
start of the next forward pass (or when the state is saved), after the step's backward pass
is done with the bank it saved. Every scoring sees exactly the banks of the reference's
order (update right after the step's scores); no per-step copy of a whole bank is made. A
second forward pass before the first one's backward would modify a saved bank, which
autograd reports as an error rather than computing wrong gradients.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.data.dataset import Batch
from mmdistill.distill.base import DistillContext, DistillLoss, Option, register
from mmdistill.models.outputs import NOTHING, ModelOutput, Request
from mmdistill.precision import float32_region

log = logging.getLogger(__name__)

EPS = 1e-7  # as in the reference ContrastLoss
POST_OUTPUTS = ("attention", "projected")  # option post_output: before / after the output projection
BYTES_PER_FLOAT = 4


class Embed(nn.Module):
    """``G`` independent heads ``Linear(dim_in -> feat_dim)`` followed by L2 normalization.

    (G, B, dim_in) -> (G, B, feat_dim). Initialized like ``nn.Linear``.
    """

    def __init__(self, groups: int, dim_in: int, feat_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(dim_in)
        self.weight = nn.Parameter(torch.empty(groups, dim_in, feat_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, 1, feat_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.baddbmm(self.bias, x, self.weight), dim=-1)  # (G, B, F)


class ContrastMemory(nn.Module):
    """Two momentum memory banks per group and the normalized scores against them.

    bank_s, bank_t: (G, n_data, feat_dim) student and teacher banks
    z:              (2, G) normalization constants (student anchor, teacher anchor); < 0 = unset
    """

    def __init__(self, groups: int, n_data: int, feat_dim: int, nce_t: float, momentum: float):
        super().__init__()
        self.n_data, self.nce_t, self.momentum = n_data, nce_t, momentum
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("bank_s", torch.rand(groups, n_data, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("bank_t", torch.rand(groups, n_data, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("z", torch.full((2, groups), -1.0))
        self._z_ready = False  # cache of (z >= 0).all(), so that set Z costs no device sync
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # deferred update

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v_s, v_t: (G, B, F) embeddings; idx: (B, K+1), column 0 the samples themselves.

        Returns P for the student anchor (against the teacher bank) and for the teacher anchor
        (against the student bank), each (G, B, K+1). Updates Z (first call) and, in training
        mode, the banks.
        """
        self.flush()  # the previous step's update; its backward pass is done
        out_s = torch.exp(bank_scores(self.bank_t, v_s, idx) / self.nce_t)  # (G, B, K+1)
        out_t = torch.exp(bank_scores(self.bank_s, v_t, idx) / self.nce_t)
        if not self._z_ready:
            self._set_z(out_s, out_t)
        p_s = out_s / self.z[0][:, None, None]
        p_t = out_t / self.z[1][:, None, None]
        if self.training:
            self._pending = (v_s.detach(), v_t.detach(), idx[:, 0])
        return p_s, p_t

    def flush(self) -> None:
        """Apply the deferred bank update, if any."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.update(*pending)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.flush()  # a checkpoint holds the banks as of the last step
        super()._save_to_state_dict(destination, prefix, keep_vars)

    @torch.no_grad()
    def _set_z(self, out_s: torch.Tensor, out_t: torch.Tensor) -> None:
        """Z = mean(out) * n_data for every group whose Z is unset (< 0); others are kept."""
        for side, out in enumerate((out_s, out_t)):
            unset = self.z[side] < 0  # (G,)
            if unset.any():
                z = out.mean(dim=(1, 2)) * self.n_data  # (G,)
                self.z[side] = torch.where(unset, z, self.z[side])
                log.info(
                    "CRD normalization constant Z (%s anchor) set to %s",
                    ("student", "teacher")[side],
                    [round(x, 1) for x in z.tolist()[:8]],
                )
        self._z_ready = bool((self.z >= 0).all())

    @torch.no_grad()
    def update(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor) -> None:
        """Move the rows ``index`` (B,) of each bank toward the new embeddings, renormalized,
        in place (see the module docstring for when this runs)."""
        m = self.momentum
        for bank, v in ((self.bank_s, v_s), (self.bank_t, v_t)):
            rows = bank.index_select(1, index) * m + v.detach().to(bank.dtype) * (1 - m)  # (G, B, F)
            bank.index_copy_(1, index, F.normalize(rows, dim=-1))


def bank_scores(bank: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Dot products ``bank[g, idx[b, k]] . v[g, b]``: (G, N, F), (G, B, F), (B, K1) -> (G, B, K1).

    The bank is constant here (no gradient); gradients flow to ``v``.
    """
    bank = bank.detach()
    G, B, Fd = v.shape
    K1 = idx.shape[1]
    if B * K1 > bank.shape[1]:
        # one product against the whole bank, then pick the columns: reads the bank once
        full = torch.bmm(v, bank.transpose(1, 2))  # (G, B, N)
        return full.gather(2, idx.unsqueeze(0).expand(G, B, K1))
    rows = bank.index_select(1, idx.reshape(-1)).view(G, B, K1, Fd)  # (G, B, K1, F)
    return torch.einsum("gbkf,gbf->gbk", rows, v)


def contrast_loss(p: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE loss of the reference ``ContrastLoss`` per group: (G, B, K+1) -> (G,)."""
    B, K = p.shape[1], p.shape[2] - 1
    kpn = K / n_data  # K * Pn
    p_pos, p_neg = p[..., 0], p[..., 1:]  # (G, B), (G, B, K)
    log_d1 = torch.log(p_pos / (p_pos + kpn + EPS))
    log_d0 = torch.log(kpn / (p_neg + kpn + EPS))
    return -(log_d1.sum(1) + log_d0.sum(dim=(1, 2))) / B


class CRDUnit(nn.Module):
    """CRD for ``G`` independent (student, teacher) feature pairs, computed as one batch.

    Each group has its own two heads and two banks. forward: (G, B, dim_s), (G, B, dim_t),
    idx (B, K+1) -> (G,) loss per group (student-anchor + teacher-anchor terms).
    """

    def __init__(self, groups: int, dim_s: int, dim_t: int, n_data: int, feat_dim: int, nce_t: float, momentum: float):
        super().__init__()
        self.n_data = n_data
        self.embed_s = Embed(groups, dim_s, feat_dim)
        self.embed_t = Embed(groups, dim_t, feat_dim)
        self.memory = ContrastMemory(groups, n_data, feat_dim, nce_t, momentum)

    def forward(self, x_s: torch.Tensor, x_t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # float32 whatever the autocast state: heads, bank scores, exp(./T), Z and the NCE
        # logs (see mmdistill.precision); the banks are float32 buffers
        region, (x_s, x_t) = float32_region(x_s, x_t)
        with region:
            v_s = self.embed_s(x_s)
            v_t = self.embed_t(x_t.detach())
            p_s, p_t = self.memory(v_s, v_t, idx)
            return contrast_loss(p_s, self.n_data) + contrast_loss(p_t, self.n_data)


def bin_matrix(n_rows: int, n_bins: int) -> torch.Tensor:
    """(n_bins, n_rows) averaging matrix of ``n_bins`` contiguous, non-empty bins of rows."""
    edges = [(b * n_rows) // n_bins for b in range(n_bins + 1)]
    A = torch.zeros(n_bins, n_rows)
    for b in range(n_bins):
        A[b, edges[b] : edges[b + 1]] = 1.0 / (edges[b + 1] - edges[b])
    return A


def attention_rows(maps: list[torch.Tensor], bins: torch.Tensor) -> torch.Tensor:
    """Per-layer maps softmax(scores) (B, H, Tq, Tk) -> binned head-averaged maps as groups (L * nb, B, Tk)."""
    # bin rows first (a broadcast matmul over B and H reads each map once), then average the
    # small (B, H, nb, Tk) result over heads
    rows = [(bins @ a).mean(1).transpose(0, 1) for a in maps]  # (nb, B, Tk) each
    return torch.cat(rows, dim=0)


@register
class CRD(DistillLoss):
    """Contrastive representation distillation (see the module docstring for the maths).

    Options:
        feat_dim:    embedding size of the heads and banks (default 128, the reference's).
        nce_k:       negatives per sample (default 16384, the reference's); clipped to
                     n_data - 1 with a warning. Memory is unaffected; per-step cost grows with it.
        nce_t:       temperature of the scores (default 0.07).
        momentum:    bank update momentum (default 0.5).
        row_bins:    attention level only: contiguous bins of query rows per layer, each with
                     its own heads and banks (default 4); None = one bin per row (eq. 9 exactly;
                     needs equal row counts). Must not exceed the rows of any distilled map.
        max_bank_mb: refuse configurations whose banks (both sides, all groups, float32) would
                     exceed this many MB (10^6 bytes; default 2048). The default row_bins=4 on
                     MOSEI (2 pairs, 5 layers, feat_dim 128) needs 669 MB.
        post_output: post_attention level only: 'attention' (default; eq. 4, softmax(QK^T /
                     sqrt(d_k)) V before the output projection) or 'projected' (after out_proj).
    """

    name = "crd"
    OPTIONS = {
        "feat_dim": Option(int, 128, minimum=1),
        "nce_k": Option(int, 16384, minimum=1),
        "nce_t": Option(float, 0.07, above=0),
        "momentum": Option(float, 0.5, minimum=0, below=1),
        "row_bins": Option(int, 4, minimum=1, nullable=True),
        "max_bank_mb": Option(float, 2048, above=0),
        "post_output": Option(str, "attention", choices=POST_OUTPUTS),
    }

    @classmethod
    def check_options(cls, options, level, shapes):
        if level != "attention":
            return []
        problems = []
        bins = options["row_bins"]
        few = {p: min(s[0], t[0]) for p, (s, t) in shapes.items() if bins is not None and bins > min(s[0], t[0])}
        if few:
            problems.append(
                f"row_bins: {bins} bins of query rows, but the maps of {few} (pair: fewest rows) have fewer rows; "
                "lower row_bins or lengthen data.lengths"
            )
        flat = [p for p, (s, t) in shapes.items() if s[1] == 1 or t[1] == 1]
        if flat:
            problems.append(
                f"row_bins: the attention maps of {flat} have one key per row (every row is 1), so attention-level "
                "CRD compares constants; lengthen data.lengths"
            )
        return problems

    def __init__(
        self,
        ctx: DistillContext,
        *,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        momentum: float = 0.5,
        row_bins: int | None = 4,
        max_bank_mb: float = 2048,
        post_output: str = "attention",
    ):
        super().__init__(ctx)
        self._check_options(ctx, feat_dim, nce_k, nce_t, momentum, row_bins, max_bank_mb)
        if post_output not in POST_OUTPUTS:
            raise ValueError(f"crd: post_output must be one of {POST_OUTPUTS}, got {post_output!r}")
        self.post_projection = post_output == "projected"
        self.n_data = ctx.n_data
        self.nce_k = min(nce_k, ctx.n_data - 1)
        if self.nce_k < nce_k:
            log.warning("crd: nce_k=%d exceeds n_data - 1 = %d; using %d negatives", nce_k, ctx.n_data - 1, self.nce_k)
        self.row_bins = row_bins
        s_out, t_out = ctx.probe(self.student_request(), self.teacher_request())
        shapes = self._group_shapes(s_out, t_out)  # key -> (groups, dim_s, dim_t)
        n_groups = sum(g for g, _, _ in shapes.values())
        mb = 2 * n_groups * ctx.n_data * feat_dim * BYTES_PER_FLOAT / 1e6
        self.bank_mb = mb
        if mb > max_bank_mb:
            lower = f"row_bins (now {row_bins}) or feat_dim" if self.level == "attention" else "feat_dim"
            raise ValueError(
                f"crd at level '{self.level}' would hold {mb:.0f} MB of memory banks "
                f"(2 sides x {n_groups} banks of {ctx.n_data} x {feat_dim} float32, groups per pair: "
                f"{ {k: g for k, (g, _, _) in shapes.items()} }), above max_bank_mb={max_bank_mb}; "
                f"lower {lower}, distill fewer pairs, or raise max_bank_mb"
            )
        self.units = nn.ModuleDict(
            {key: CRDUnit(g, ds, dt, ctx.n_data, feat_dim, nce_t, momentum) for key, (g, ds, dt) in shapes.items()}
        )
        if self.level == "attention":
            # (nb, Tq) row-averaging matrices per pair and side, named by the pair's position
            for i, key in enumerate(self.pairs):
                qs, qt = s_out.maps[key][0].shape[2], t_out.maps[key][0].shape[2]
                nb = qs if row_bins is None else row_bins
                self.register_buffer(f"bins_student_{i}", bin_matrix(qs, nb), persistent=False)
                self.register_buffer(f"bins_teacher_{i}", bin_matrix(qt, nb), persistent=False)

    @staticmethod
    def _check_options(ctx, feat_dim, nce_k, nce_t, momentum, row_bins, max_bank_mb) -> None:
        if ctx.n_data < 2:
            raise ValueError(f"crd needs at least 2 training samples (n_data={ctx.n_data})")
        if not (isinstance(feat_dim, int) and feat_dim > 0):
            raise ValueError(f"crd: feat_dim must be a positive integer, got {feat_dim!r}")
        if not (isinstance(nce_k, int) and nce_k > 0):
            raise ValueError(f"crd: nce_k must be a positive integer, got {nce_k!r}")
        if not nce_t > 0:
            raise ValueError(f"crd: nce_t must be > 0, got {nce_t}")
        if not 0 <= momentum < 1:
            raise ValueError(f"crd: momentum must be in [0, 1), got {momentum}")
        if row_bins is not None and not (isinstance(row_bins, int) and row_bins > 0):
            raise ValueError(f"crd: row_bins must be a positive integer or None, got {row_bins!r}")
        if not max_bank_mb > 0:
            raise ValueError(f"crd: max_bank_mb must be > 0, got {max_bank_mb}")
        if ctx.level in ("attention", "post_attention") and not ctx.pairs:
            raise ValueError(f"crd at level '{ctx.level}' needs at least one distilled pair")

    # -- contract -------------------------------------------------------------------------

    def student_request(self) -> Request:
        return self._request()

    def teacher_request(self) -> Request:
        return self._request()

    def _request(self) -> Request:
        if self.level == "attention":  # the models' own maps: no softmax of the loss's own
            return Request(maps=frozenset(self.pairs))
        if self.level == "post_attention":
            return Request(post_attention=frozenset(self.pairs), post_projection=self.post_projection)
        return NOTHING

    @property
    def needs_negatives(self) -> int:
        return self.nce_k

    # -- shapes and features --------------------------------------------------------------

    def _group_shapes(self, s: ModelOutput, t: ModelOutput) -> dict[str, tuple[int, int, int]]:
        """Groups and input sizes per unit, read from one probed output of each side."""
        if self.level == "final":
            return {"final": (1, s.logits.shape[1], t.logits.shape[1])}
        if self.level == "penultimate":
            return {"penultimate": (1, s.penultimate.shape[1], t.penultimate.shape[1])}
        shapes = {}
        for key in self.pairs:
            ls, lt = self._layers(s, key, "student"), self._layers(t, key, "teacher")
            if len(ls) != len(lt):
                raise ValueError(f"crd: pair '{key}' has {len(ls)} student layers but {len(lt)} teacher layers")
            if self.level == "post_attention":
                shapes[key] = (len(ls), ls[0][0].numel(), lt[0][0].numel())
                continue
            (_, _, qs, ks), (_, _, qt, kt) = ls[0].shape, lt[0].shape
            if self.row_bins is None and qs != qt:
                raise ValueError(
                    f"crd: pair '{key}' has {qs} student rows and {qt} teacher rows; row_bins=None "
                    f"(one bin per row) needs equal counts: set row_bins to at most {min(qs, qt)}"
                )
            nb = qs if self.row_bins is None else self.row_bins
            if nb > min(qs, qt):
                raise ValueError(f"crd: row_bins={nb} exceeds the rows of pair '{key}' (student {qs}, teacher {qt})")
            shapes[key] = (len(ls) * nb, ks, kt)
        return shapes

    def _layers(self, out: ModelOutput, key: str, side: str) -> list[torch.Tensor]:
        store = out.maps if self.level == "attention" else out.post_attention
        if key not in store:
            raise KeyError(f"crd: the {side} output lacks {self.level} of pair '{key}' (has {sorted(store)})")
        return store[key]

    def _features(self, out: ModelOutput, key: str, side: str) -> torch.Tensor:
        """The inputs of unit ``key`` as (G, B, dim)."""
        if self.level == "final":
            return out.logits.unsqueeze(0)
        if self.level == "penultimate":
            return out.penultimate.unsqueeze(0)
        layers = self._layers(out, key, side)
        if self.level == "post_attention":
            x = torch.stack(layers)  # (L, B, Tq, d)
            return x.flatten(2)  # (L, B, Tq * d)
        bins = getattr(self, f"bins_{side}_{self.pairs.index(key)}")
        return attention_rows(layers, bins)  # (L * nb, B, Tk)

    # -- loss -----------------------------------------------------------------------------

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> torch.Tensor:
        idx = self._indices(batch)  # (B, K+1)
        losses = []
        for key, unit in self.units.items():
            x_s = self._features(student, key, "student")
            with torch.no_grad():
                x_t = self._features(teacher, key, "teacher")
            losses.append(unit(x_s, x_t, idx).mean())  # mean over layers (and row bins)
        return torch.stack(losses).mean()  # mean over pairs

    def _indices(self, batch: Batch) -> torch.Tensor:
        neg = batch.negatives
        B = batch.index.shape[0]
        if neg is None:
            raise ValueError(
                f"crd needs batch.negatives of shape (B, {self.nce_k}); build batches with "
                f"n_negatives=loss.needs_negatives"
            )
        if tuple(neg.shape) != (B, self.nce_k):
            raise ValueError(f"crd: batch.negatives has shape {tuple(neg.shape)}, expected ({B}, {self.nce_k})")
        return torch.cat([batch.index.view(B, 1), neg], dim=1).long()  # (B, K+1)
