"""DistillVLM-style distillation: attention distributions, contrastive token states, logits.

Fang, Wang, Hu, Wang, Yang and Liu, "Compressing Visual-linguistic Model via Knowledge
Distillation" (DistillVLM, ICCV 2021, arXiv 2104.02096). Only the abstract is used; what it
states: with aligned teacher/student inputs, knowledge is transferred through intermediate
representations, "the mean square error loss to mimic the attention distribution inside the
transformer block" and "a token-wise noise contrastive loss to align the hidden state by
contrasting with negative representations stored in a sample queue".

This project's reconstruction (the details are ours):

    L_KD = attn_weight * L_attn + hidden_weight * L_nce + logit_weight * L_logit

* Layer mapping (as TinyBERT's uniform strategy): with ``L_S`` student and ``L_T`` teacher
  layers in a distilled pair, ``k = L_T / L_S`` must be an integer and student layer ``i``
  learns from teacher layer ``(i + 1) k - 1`` (the last of each block of k; i, i when equal).
* ``L_attn``: attention distributions ``softmax(scores)`` (the models' own maps) of every
  mapped layer of every distilled pair, compared row by row with the squared Euclidean distance
  ``sum_k (a_s - a_t)^2`` (i.e. Tk times the element-wise MSE, so the term does not shrink
  with the key length), averaged over rows, heads and batch, then layers, then pairs. Head h
  is compared with head h; with different head counts both maps are first averaged over heads.
* ``L_nce``: token-wise InfoNCE on hidden states. The token states are the attention
  modules' outputs ``(B, Tq, d)`` of the mapped layers after their output projection (what
  each layer adds to its residual stream; ``Request.post_projection``). Each student
  token goes through a learned projection ``Linear(d_S -> d_T)`` (one per distilled pair,
  shared by its layers, as TinyBERT's ``W_h``) and L2 normalization; its positive is the
  detached, L2-normalized teacher token at the same position (same sample, layer and time
  step), its negatives are the ``queue_size`` teacher tokens of a FIFO queue (one per pair and
  mapped layer). ``L = -log(exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.n_j/t)))`` averaged over
  tokens, layers, then pairs (MoCo, He et al. CVPR 2020; temperature 0.07).
  Token sample (option ``tokens``): in training mode each step uses ``tokens`` token
  positions per pair, drawn at random without replacement from the batch's B x Tq
  (global torch RNG; the same positions in every layer of the pair) as anchors; their
  teacher tokens are the positives and, after the step, are enqueued, the oldest entries
  being overwritten first (MoCo enqueues the current keys the same way; when more arrive
  than the queue holds, the last ``queue_size`` are kept). In eval mode every token is an
  anchor and nothing is enqueued. Why a sample: a batch holds B x Tq tokens per layer (1600
  at B = 32, Tq = 50; 12000 at MOSEI's B = 24, Tq = 500), so all anchors against all
  negatives is B x Tq x queue_size scores per layer, and enqueuing all tokens would replace
  the whole queue every step, leaving it only the previous batch; with a sample the queue
  spans ``queue_size / tokens`` steps. Queues start as random unit vectors, as MoCo's, and
  are buffers (checkpointed). Padded time steps count as tokens like any other (the models
  attend to them too).
* ``L_logit``: Hinton KD, ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``, ``T = kd_temperature``.

Token counts: student and teacher must hold the same tokens (DistillVLM aligns the two
networks' inputs for this reason). Students with ``proxy='down'`` have the teacher's sequence
lengths in every distilled pair; any other shape is refused with the pair named.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.data.dataset import Batch
from mmdistill.distill.base import DistillContext, DistillLoss, Option, register
from mmdistill.models.outputs import ModelOutput, Request


def layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Pairs (student layer, teacher layer): i <- (i + 1) k - 1 with k = n_teacher / n_student."""
    if n_student < 1 or n_teacher % n_student:
        raise ValueError(f"distillvlm: {n_teacher} teacher layers are not a multiple of {n_student} student layers")
    k = n_teacher // n_student
    return [(i, (i + 1) * k - 1) for i in range(n_student)]


def attention_distance(a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``sum_k (a_s - a_t)^2`` for maps (softmax of the scores, the models' own):
    (B, H_s, Tq, Tk), (B, H_t, Tq, Tk) -> scalar; the teacher's map is detached."""
    a_t = a_t.detach()
    if a_s.shape[1] != a_t.shape[1]:  # different head counts: compare head-averaged maps
        a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
    return (a_s - a_t).pow(2).sum(-1).mean()


def logit_kd(z_s: torch.Tensor, z_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))``, batch mean: (B, C), (B, C) -> scalar."""
    if z_s.shape != z_t.shape:
        raise ValueError(f"distillvlm: student logits {tuple(z_s.shape)} and teacher logits {tuple(z_t.shape)} differ")
    T = temperature
    log_p_s, log_p_t = F.log_softmax(z_s / T, dim=-1), F.log_softmax(z_t.detach() / T, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-place positives and queued negatives, mean over groups and tokens.

    q, k: (G, N, D) unit-norm anchors and positives; queue: (G, K, D) unit-norm negatives.
    """
    l_pos = (q * k).sum(-1, keepdim=True)  # (G, N, 1)
    l_neg = torch.bmm(q, queue.detach().transpose(1, 2))  # (G, N, K)
    logits = torch.cat([l_pos, l_neg], dim=-1) / temperature  # (G, N, 1 + K)
    return -F.log_softmax(logits, dim=-1)[..., 0].mean()


class TokenQueue(nn.Module):
    """FIFO queues of unit-norm token states: ``queue`` (G, K, D) and write position ``ptr``."""

    def __init__(self, groups: int, size: int, dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("queue", F.normalize(torch.randn(groups, size, dim), dim=-1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        """Enqueue k (G, N, D), overwriting the oldest entries.

        Out of place: this step's scores may still need the old queue for their backward pass.
        """
        n = k.shape[1]
        if n > self.size:
            k, n = k[:, n - self.size :], self.size
        pos = (self.ptr + torch.arange(n, device=k.device)) % self.size  # (n,)
        self.queue = self.queue.index_copy(1, pos, k.to(self.queue.dtype))
        self.ptr.copy_((self.ptr + n) % self.size)


@register
class DistillVLM(DistillLoss):
    """Attention-distribution MSE + token-wise InfoNCE against a queue + logit KD.

    Options:
        queue_size:     negatives per token queue (default 4096); memory is
                        pairs x layers x queue_size x d floats; per-step cost grows linearly.
        tokens:         token positions per pair sampled as anchors (and then enqueued) per
                        training step (default 256); None uses (and enqueues) every token.
        temperature:    InfoNCE temperature (> 0; default 0.07, MoCo's).
        kd_temperature: Hinton KD temperature of the logit term (> 0; default 4.0).
        attn_weight, hidden_weight, logit_weight: weights of the three terms (>= 0; default 1).
    """

    name = "distillvlm"
    levels = ("attention",)
    OPTIONS = {
        "queue_size": Option(int, 4096, minimum=1),
        "tokens": Option(int, 256, minimum=1, nullable=True),
        "temperature": Option(float, 0.07, above=0),
        "kd_temperature": Option(float, 4.0, above=0),
        "attn_weight": Option(float, 1.0, minimum=0),
        "hidden_weight": Option(float, 1.0, minimum=0),
        "logit_weight": Option(float, 1.0, minimum=0),
    }

    def __init__(
        self,
        ctx: DistillContext,
        *,
        queue_size: int = 4096,
        tokens: int | None = 256,
        temperature: float = 0.07,
        kd_temperature: float = 4.0,
        attn_weight: float = 1.0,
        hidden_weight: float = 1.0,
        logit_weight: float = 1.0,
    ):
        super().__init__(ctx)
        if not (isinstance(queue_size, int) and queue_size > 0):
            raise ValueError(f"distillvlm: queue_size must be a positive integer, got {queue_size!r}")
        if tokens is not None and not (isinstance(tokens, int) and tokens > 0):
            raise ValueError(f"distillvlm: tokens must be a positive integer or None, got {tokens!r}")
        for key, value in (("temperature", temperature), ("kd_temperature", kd_temperature)):
            if not value > 0:
                raise ValueError(f"distillvlm: {key} must be > 0, got {value}")
        for key, value in (
            ("attn_weight", attn_weight),
            ("hidden_weight", hidden_weight),
            ("logit_weight", logit_weight),
        ):
            if not value >= 0:
                raise ValueError(f"distillvlm: {key} must be >= 0, got {value}")
        if not self.pairs:
            raise ValueError("distillvlm needs at least one distilled pair")
        self.temperature, self.kd_temperature = float(temperature), float(kd_temperature)
        self.tokens = tokens
        self.term_weights = {"attn": float(attn_weight), "hidden": float(hidden_weight), "logit": float(logit_weight)}
        s_out, t_out = ctx.probe(self.student_request(), self.teacher_request())
        self.layer_maps: dict[str, list[tuple[int, int]]] = {}
        self.proj = nn.ModuleDict()
        self.queues = nn.ModuleList()
        for key in self.pairs:
            d_s, d_t = self._check_pair(s_out, t_out, key)
            self.layer_maps[key] = layer_map(len(s_out.maps[key]), len(t_out.maps[key]))
            self.proj[key] = nn.Linear(d_s, d_t)
            self.queues.append(TokenQueue(len(self.layer_maps[key]), queue_size, d_t))
        self._sums: dict[str, torch.Tensor] = {}
        self._n = 0

    @staticmethod
    def _check_pair(s: ModelOutput, t: ModelOutput, key: str) -> tuple[int, int]:
        """Check that both sides hold pair ``key`` with the same tokens; return the widths."""
        for side, out in (("student", s), ("teacher", t)):
            if key not in out.maps or key not in out.post_attention:
                raise KeyError(
                    f"distillvlm: the {side} output lacks attention maps or post-attention outputs of pair '{key}'"
                )
        a_s, a_t = s.maps[key][0].shape, t.maps[key][0].shape  # (B, H, Tq, Tk)
        h_s, h_t = s.post_attention[key][0].shape, t.post_attention[key][0].shape  # (B, Tq, d)
        if a_s[2:] != a_t[2:] or h_s[1] != h_t[1]:
            raise ValueError(
                f"distillvlm: pair '{key}' has student maps (Tq, Tk) = {tuple(a_s[2:])} and teacher maps "
                f"{tuple(a_t[2:])}; token-wise distillation needs the same tokens on both sides: build the "
                f"student with proxy 'down' (the teacher's sequence lengths)"
            )
        return h_s[-1], h_t[-1]

    def student_request(self) -> Request:
        return Request(maps=frozenset(self.pairs), post_attention=frozenset(self.pairs), post_projection=True)

    def teacher_request(self) -> Request:
        return self.student_request()

    def forward(self, student: ModelOutput, teacher: ModelOutput, batch: Batch) -> torch.Tensor:
        attn, nce = [], []
        for key, queue in zip(self.pairs, self.queues):
            lmap = self.layer_maps[key]
            s_att, t_att = student.maps[key], teacher.maps[key]
            s_post, t_post = student.post_attention[key], teacher.post_attention[key]
            need_s, need_t = lmap[-1][0] + 1, lmap[-1][1] + 1
            if len(s_att) < need_s or len(t_att) < need_t or len(s_post) < need_s or len(t_post) < need_t:
                raise ValueError(
                    f"distillvlm: pair '{key}' got {len(s_att)} student and {len(t_att)} teacher "
                    f"layers, the layer map {lmap} needs {need_s} and {need_t}"
                )
            attn.append(torch.stack([attention_distance(s_att[i], t_att[j]) for i, j in lmap]).mean())
            s_tok = torch.stack([s_post[i] for i, _ in lmap]).flatten(1, 2)  # (G, N, d_s), N = B * Tq
            with torch.no_grad():
                t_tok = F.normalize(torch.stack([t_post[j] for _, j in lmap]).detach(), dim=-1).flatten(
                    1, 2
                )  # (G, N, d_t)
            if s_tok.shape[:2] != t_tok.shape[:2]:
                raise ValueError(
                    f"distillvlm: pair '{key}': student tokens {tuple(s_tok.shape)} and teacher tokens "
                    f"{tuple(t_tok.shape)} differ in number"
                )
            if self.training and self.tokens is not None and self.tokens < s_tok.shape[1]:
                pos = torch.randperm(s_tok.shape[1], device=s_tok.device)[: self.tokens]
                s_tok, t_tok = s_tok[:, pos], t_tok[:, pos]  # (G, tokens, d)
            q = F.normalize(self.proj[key](s_tok), dim=-1)  # (G, n, d_t)
            nce.append(info_nce(q, t_tok, queue.queue, self.temperature))
            if self.training:
                queue.push(t_tok)
        terms = {
            "attn": torch.stack(attn).mean(),
            "hidden": torch.stack(nce).mean(),
            "logit": logit_kd(student.logits, teacher.logits, self.kd_temperature),
        }
        self._accumulate(terms, len(batch))
        return sum(self.term_weights[name] * value for name, value in terms.items())

    def _accumulate(self, terms: dict[str, torch.Tensor], n: int) -> None:
        for name, value in terms.items():
            v = value.detach() * n
            self._sums[name] = v if name not in self._sums else self._sums[name] + v
        self._n += n

    def epoch_log(self) -> dict[str, float]:
        """Mean of each (unweighted) term since the last call: ``attn``, ``hidden``, ``logit``."""
        if self._n == 0:
            return {}
        out = {name: float(v) / self._n for name, v in self._sums.items()}
        self._sums, self._n = {}, 0
        return out
