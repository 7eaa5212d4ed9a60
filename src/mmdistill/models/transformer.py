"""Transformer blocks of the MulT family, able to hand out their attention internals.

Follows the encoder of MulT (Tsai et al., ACL 2019; yaohungt/Multimodal-Transformer,
``modules/transformer.py``), itself adapted from fairseq: inputs scaled by sqrt(d),
sinusoidal positions, embedding dropout, pre-LayerNorm layers, a final LayerNorm. Two
changes serve distillation (paper 002, eqs. 3, 8 and 10):

* attention runs through PyTorch's fused ``scaled_dot_product_attention`` unless the caller
  asks for the scores or the maps, in which case the explicit ``softmax(Q K^T / sqrt(d_k)) V``
  is computed once for all uses and the per-head, pre-softmax scores ``(B, H, Tq, Tk)``
  and/or the maps ``softmax(scores)`` (before attention dropout) are returned, the maps as
  the very tensor the layer multiplies with ``V`` (MulT returns post-softmax weights
  averaged over heads and its layer discards them). A loss that reads the maps then adds
  no softmax of its own, and its gradient joins the layer's one softmax backward. The
  scale goes on ``Q`` rather than on the ``Tq x Tk`` scores (one pass less over the map,
  forward and backward). Measured against the fused kernel plus a separate ``Q K^T`` for
  the scores: no faster at MOSEI's 500 x 500 maps and slower at smaller ones with one
  thread, so the map is materialized once;
* each layer can return its attention module's output, the "post-attention" features of
  paper 002's eq. 4: by default ``softmax(Q K^T / sqrt(d_k)) V`` with the heads
  concatenated, *before* the output projection, as eqs. 3-4 write it; with
  ``post_projection`` the module's output after ``out_proj`` (what the layer adds to its
  residual stream).

No attention mask is applied. MulT's default ``attn_mask`` is a causal-style band
``triu(-inf, 1 + |Tk - Tq|)`` meant for its aligned experiments; on unaligned sequences of
different lengths it has no temporal meaning, and padding is left to the data (sequences
are zero left-padded, as in MulT's data, and padded steps are attended like any other).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.models.config import ModelConfig
from mmdistill.models.dropout import Dropout, dropout


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal position table ``(length, dim)`` for positions 1..length.

    The fairseq/tensor2tensor form MulT uses: the first half of the channels holds
    ``sin(p * w_i)``, the second half ``cos(p * w_i)`` with ``w_i = 10000^(-i / (dim/2 - 1))``,
    and an odd ``dim`` gets a zero last channel. Positions start at 1 as in MulT (position 0
    is its padding index). Unlike MulT, every step gets its position: MulT skips steps
    whose first projected channel is exactly 0 (its zero padding under kernel-1, bias-free
    projections), a data-dependent rule that a kernel-3 projection no longer honours.
    Built with ``torch.cat`` and ``reshape`` only, so no ``view`` of a non-contiguous tensor.
    """
    half = dim // 2
    step = math.log(10000.0) / max(half - 1, 1)
    freq = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -step)  # (half,)
    pos = torch.arange(1, length + 1, device=device, dtype=torch.float32)  # (T,)
    angle = pos[:, None] * freq[None, :]  # (T, half)
    table = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)  # (T, 2*half)
    if dim % 2:
        table = torch.cat([table, torch.zeros(length, 1, device=device)], dim=1)
    return table.to(dtype)  # (T, dim)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) v through PyTorch's fused kernel; no map is materialized.

    q (B, H, Tq, dh), k and v (B, H, Tk, dh) -> (B, H, Tq, dh)
    """
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


_EXPLICIT = False  # set by explicit_attention(); read by MultiHeadAttention.forward


@contextlib.contextmanager
def explicit_attention() -> Iterator[None]:
    """Within this context every attention is computed step by step, ``softmax(scores) V``.

    Each of those operations has a double backward; PyTorch's fused CPU attention kernel has
    none. For callers that differentiate through a gradient of the model (the meta-learned
    weighting of MSD takes a virtual training step and differentiates through it).
    """
    global _EXPLICIT
    before, _EXPLICIT = _EXPLICIT, True
    try:
        yield
    finally:
        _EXPLICIT = before


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The pre-softmax scores ``Q K^T / sqrt(d_k)`` of the same attention.

    q (B, H, Tq, dh), k (B, H, Tk, dh) -> (B, H, Tq, Tk). The scale is applied to the small
    ``q`` rather than to the ``Tq x Tk`` result (one pass less over the map, forward and back).
    """
    return (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with query from one sequence and keys/values from another.

    Parameters as in MulT's attention (a 3d x d input projection with bias, a d x d output
    projection with bias), stored as ``q_proj`` (d -> d) and ``kv_proj`` (d -> 2d). The key
    part of ``kv_proj.bias`` receives no gradient (softmax is shift-invariant per row); it is
    kept so that parameter counts equal MulT's.
    """

    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        if width % n_heads:
            raise ValueError(f"n_heads={n_heads} does not divide the attention width {width}")
        self.width, self.n_heads, self.dropout = width, n_heads, dropout
        self.q_proj = nn.Linear(width, width)
        self.kv_proj = nn.Linear(width, 2 * width)
        self.out_proj = nn.Linear(width, width)
        for lin in (self.q_proj, self.kv_proj, self.out_proj):  # MulT: xavier weights, zero biases
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.reshape(B, T, self.n_heads, self.width // self.n_heads).transpose(1, 2)  # (B, H, T, dh)

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor,
        want_scores: bool = False,
        want_maps: bool = False,
        want_heads: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """x_q (B, Tq, d), x_kv (B, Tk, d) ->
        out (B, Tq, d), scores (B, H, Tq, Tk) or None, maps softmax(scores) (B, H, Tq, Tk) or None,
        and with ``want_heads`` the attention ``softmax(scores) V`` before ``out_proj``, heads
        concatenated (B, Tq, d) (paper 002, eqs. 3-4), else None.
        """
        B, Tq, _ = x_q.shape
        q = self._heads(self.q_proj(x_q))  # (B, H, Tq, dh)
        k, v = self.kv_proj(x_kv).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)  # (B, H, Tk, dh)
        p = self.dropout if self.training else 0.0
        scores = maps = None
        if want_scores or want_maps or _EXPLICIT:
            s = attention_scores(q, k)  # (B, H, Tq, Tk)
            a = s.softmax(dim=-1)
            y = dropout(a, p, training=p > 0) @ v  # (B, H, Tq, dh)
            scores, maps = (s if want_scores else None), (a if want_maps else None)
        else:
            y = fused_attention(q, k, v, p)
        y = y.transpose(1, 2).reshape(B, Tq, self.width)  # (B, Tq, d)
        return self.out_proj(y), scores, maps, (y if want_heads else None)


class EncoderLayer(nn.Module):
    """Pre-LayerNorm layer of MulT.

    x = x + drop_res(attn(LN0(x), LN0(x_kv)))           (LN0 shared by query and keys/values)
    x = x + drop_res(fc2(drop_relu(relu(fc1(LN1(x))))))  (fc1: d -> 4d, fc2: 4d -> d)
    """

    def __init__(self, width: int, cfg: ModelConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, cfg.n_heads, cfg.attn_dropout)
        self.ln_ff = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.relu_dropout = Dropout(cfg.relu_dropout)
        self.res_dropout = Dropout(cfg.res_dropout)

    def forward(
        self,
        x: torch.Tensor,
        x_kv: torch.Tensor | None,
        want_scores: bool = False,
        want_maps: bool = False,
        post_projection: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """x (B, Tq, d), x_kv (B, Tk, d) or None ->
        x (B, Tq, d), scores or None, maps or None, post (B, Tq, d): the attention before the
        output projection (eq. 4), or after it with ``post_projection``."""
        q = self.ln_attn(x)
        kv = q if x_kv is None else self.ln_attn(x_kv)
        out, scores, maps, heads = self.attn(q, kv, want_scores, want_maps, want_heads=not post_projection)
        post = out if post_projection else heads
        x = x + self.res_dropout(out)
        h = self.relu_dropout(F.relu(self.fc1(self.ln_ff(x))))  # (B, Tq, 4d)
        x = x + self.res_dropout(self.fc2(h))
        return x, scores, maps, post


class TransformerEncoder(nn.Module):
    """A stack of :class:`EncoderLayer`; cross-modal when given ``x_kv``, self-attention otherwise.

    Query and key/value inputs are each scaled by sqrt(width), given sinusoidal positions
    and embedding dropout (one dropout mask for keys and values, which MulT draws twice for
    the same tensor); the keys/values enter every layer unchanged, as in MulT.
    """

    def __init__(self, width: int, cfg: ModelConfig):
        super().__init__()
        self.width = width
        self.scale = math.sqrt(width)
        self.embed_dropout = Dropout(cfg.embed_dropout)
        self.layers = nn.ModuleList([EncoderLayer(width, cfg) for _ in range(cfg.n_layers)])
        self.ln_out = nn.LayerNorm(width)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        pos = sinusoidal_positions(x.shape[1], self.width, x.device, x.dtype)  # (T, d)
        return self.embed_dropout(self.scale * x + pos)

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor | None = None,
        want_scores: bool = False,
        want_maps: bool = False,
        want_post: bool = False,
        post_projection: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """x_q (B, Tq, d), x_kv (B, Tk, d) or None -> out (B, Tq, d) and, each a list over
        layers or None when not wanted: scores [(B, H, Tq, Tk)], maps [(B, H, Tq, Tk)], post [(B, Tq, d)]
        (before the output projection, eq. 4; after it with ``post_projection``).
        """
        for name, t in (("x_q", x_q), ("x_kv", x_kv)):
            if t is not None and (t.dim() != 3 or t.shape[-1] != self.width):
                raise ValueError(f"{name} must be (B, T, {self.width}), got {tuple(t.shape)}")
        if x_kv is not None and x_kv.shape[0] != x_q.shape[0]:
            raise ValueError(f"batch sizes differ: x_q {x_q.shape[0]}, x_kv {x_kv.shape[0]}")
        x = self._embed(x_q)
        kv = None if x_kv is None else self._embed(x_kv)
        scores: list[torch.Tensor] | None = [] if want_scores else None
        maps: list[torch.Tensor] | None = [] if want_maps else None
        posts: list[torch.Tensor] | None = [] if want_post else None
        for layer in self.layers:
            x, s, a, post = layer(x, kv, want_scores, want_maps, post_projection)
            for store, t in ((scores, s), (maps, a), (posts, post)):
                if store is not None:
                    store.append(t)
        return self.ln_out(x), scores, maps, posts
