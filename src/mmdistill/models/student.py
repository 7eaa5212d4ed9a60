"""The unimodal student of paper 002 (section 4.1): one modality in, three streams out.

The input x (video in the paper) goes in parallel through three Conv1D layers: one keeps x
as its own stream (kernel ``cfg.conv_kernel``, stride 1, like the teacher's projection) and
two make proxies of the missing modalities (the paper's A_S and L_S). The streams are then
fed to transformers named as in the teacher, so ``'A<-V'`` has query V_S and keys/values
A_S, ``'V<-V'`` is self-attention on V_S and ``'V*'`` is a memory transformer of width 2d.

Proxy lengths (``proxy``):
  * ``'down'`` (EDAM-S, paper section 4.3): each proxy has the teacher's length of its
    modality, so every student attention map has the shape of the teacher's map of the same
    name. Stride ``s = T_x // T_m``, kernel ``s + 2`` (a window of s steps plus one on each
    side), padding 1: the output has ``T_x // s >= T_m`` steps, of which the last ``T_m`` are
    kept (sequences are left-padded, so the end is where the data is). When the teacher's
    stream is longer than x (e.g. a language student's video proxy, 50 -> 500) the same
    rule runs as a transposed convolution with stride ``ceil(T_m / T_x)``, an up-sampling.
  * ``'full'``: proxies keep x's length (kernel ``cfg.conv_kernel``, stride 1); used by
    EDAM-T, which up-samples the teacher's maps instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmdistill.modalities import FEATURE_DIM, MODALITIES
from mmdistill.models.config import ModelConfig
from mmdistill.models.dropout import Dropout
from mmdistill.models.outputs import NOTHING, ModelOutput, Request
from mmdistill.models.teacher import TransformerStack, check_input

PROXIES = ("down", "full")


class ResampleConv(nn.Module):
    """Conv1D from (B, T_in, D) to exactly (B, T_out, d), bias-free (see module docstring).

    Strided ``Conv1d`` when T_out <= T_in, strided ``ConvTranspose1d`` when T_out > T_in;
    kernel = stride + 2, padding 1; keeps the last T_out steps.
    """

    def __init__(self, in_dim: int, out_dim: int, t_in: int, t_out: int):
        super().__init__()
        if t_in < 1 or t_out < 1:
            raise ValueError(f"sequence lengths must be positive, got T_in={t_in}, T_out={t_out}")
        self.t_in, self.t_out = t_in, t_out
        self.upsample = t_out > t_in
        self.stride = math.ceil(t_out / t_in) if self.upsample else t_in // t_out
        conv = nn.ConvTranspose1d if self.upsample else nn.Conv1d
        self.conv = conv(in_dim, out_dim, kernel_size=self.stride + 2, stride=self.stride, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T_in, D) -> (B, T_out, d)."""
        y = self.conv(x.transpose(1, 2))  # (B, d, T')
        if y.shape[-1] < self.t_out:
            raise AssertionError(
                f"proxy convolution gave {y.shape[-1]} steps from {x.shape[1]}, fewer than the {self.t_out} wanted"
            )
        return y[..., -self.t_out :].transpose(1, 2)  # (B, T_out, d)


class UnimodalStudent(nn.Module):
    """Student with one input modality and the transformers ``transformers``.

    transformers:    names as in the teacher; the 3-transformer students of paper 002 have
                     no memory transformer (head input: last steps of the three, 3d), the
                     9-transformer student is the complete teacher's list (head input 6d)
    input_modality:  the student's only input (V in the paper; A or L work the same way)
    target_lengths:  teacher's padded length per modality; required for ``proxy='down'``,
                     where the input must have length ``target_lengths[input_modality]``
    proxy:           'down' or 'full' (see the module docstring)

    Only the streams some transformer reads get a Conv1D. Language input gets embedding
    dropout before its Conv1Ds, as in the teacher.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        transformers: tuple[str, ...],
        input_modality: str = "V",
        target_lengths: dict[str, int] | None = None,
        proxy: str = "down",
        feature_dims: dict[str, int] = FEATURE_DIM,
    ):
        super().__init__()
        if input_modality not in MODALITIES:
            raise ValueError(f"input_modality must be one of {MODALITIES}, got {input_modality!r}")
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")
        self.cfg, self.input_modality, self.proxy = cfg, input_modality, proxy
        self.in_dim = feature_dims[input_modality]
        self.stack = TransformerStack(tuple(transformers), cfg)
        self.input_length: int | None = None
        if proxy == "down":
            if target_lengths is None:
                raise ValueError("proxy='down' needs target_lengths (the teacher's length per modality)")
            missing = [m for m in self.stack.streams + (input_modality,) if m not in target_lengths]
            if missing:
                raise ValueError(f"target_lengths lacks modalities {sorted(set(missing))}: {target_lengths}")
            self.input_length = int(target_lengths[input_modality])
        self.input_dropout = Dropout(cfg.embed_dropout if input_modality == "L" else 0.0)
        convs: dict[str, nn.Module] = {}
        for m in self.stack.streams:
            if m == input_modality or proxy == "full":  # same length as x, like the teacher's projection
                k = cfg.conv_kernel
                convs[m] = nn.Conv1d(self.in_dim, cfg.d_model, kernel_size=k, padding=k // 2, bias=False)
            else:
                convs[m] = ResampleConv(self.in_dim, cfg.d_model, self.input_length, int(target_lengths[m]))
        self.convs = nn.ModuleDict(convs)

    @property
    def transformer_names(self) -> tuple[str, ...]:
        return self.stack.names

    @property
    def input_modalities(self) -> tuple[str, ...]:
        return (self.input_modality,)

    def streams(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, T_x, D_x) -> modality letter -> (B, T_m, d) (own stream and proxies)."""
        check_input(self.input_modality, x, self.in_dim)
        if self.input_length is not None and x.shape[1] != self.input_length:
            raise ValueError(
                f"student was built for '{self.input_modality}' sequences of length {self.input_length} "
                f"(target_lengths), got {x.shape[1]}"
            )
        x = self.input_dropout(x)
        out = {}
        for m, conv in self.convs.items():
            if isinstance(conv, ResampleConv):
                out[m] = conv(x)
            else:
                out[m] = conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T_x, d)
        return out

    def forward(self, inputs: dict[str, torch.Tensor], request: Request | None = None) -> ModelOutput:
        """inputs: modality letter -> (B, T, D); only ``input_modality`` is read, others are ignored."""
        if self.input_modality not in inputs:
            raise KeyError(f"student inputs lack its input modality '{self.input_modality}' (got {sorted(inputs)})")
        return self.stack(self.streams(inputs[self.input_modality]), NOTHING if request is None else request)
