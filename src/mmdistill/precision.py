"""Where bf16 mixed precision stops: the computations kept in float32.

With ``train.precision: bf16`` the training step runs under ``torch.autocast(device, bfloat16)``
(CUDA or CPU): matrix products, the models' attention and feed-forward blocks run in bfloat16
(8 significant bits), parameters, gradients and the optimizer state stay float32. Some
quantities lose too much at 8 bits and are computed in float32 whatever the autocast state:

* CRD (:mod:`mmdistill.distill.crd`): the embedding heads, the scores against the memory
  banks, ``exp(score / 0.07)``, the normalization constant ``Z`` and the NCE logarithms; the
  banks themselves are float32 buffers and are updated in float32. A score of 1/0.07 = 14.3
  in bfloat16 is off by up to 0.03, i.e. 3 % after the exponential, and ``Z`` sums 16,326 of them.
* EDAM (:mod:`mmdistill.distill.edam`): the log-probabilities of the student's maps and the
  row cross-entropies. Its loss is a difference of two sums over ``B * H * Tq * Tk`` entries
  (``a . b - rowsum(a) . lse``) which cancel to ``rows * entropy``: in bfloat16 that
  difference is lost.
* Cross-entropy of the labels: autocast itself runs ``cross_entropy`` (and ``log_softmax``)
  in float32, and so the Hinton-style losses on logits.
* Metrics: validation and test passes run without autocast (float32 logits, predictions
  and losses), so a bf16 run's model is evaluated as an fp32 one would be; epoch sums of
  the training losses are float32.

The teacher's once-per-data-set cache (:class:`mmdistill.train.loop.TeacherCache`) is built
outside autocast and holds float32 outputs.
"""

from __future__ import annotations

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a training step at ``precision`` ('fp32': disabled)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def float32_region(*tensors: torch.Tensor) -> tuple[torch.autocast, list[torch.Tensor | None]]:
    """An autocast-disabled context for the device of ``tensors`` and the tensors as float32
    (``None`` passes through; float32 tensors are returned as they are, no copy)."""
    device = next(t.device.type for t in tensors if t is not None)
    return torch.autocast(device, enabled=False), [None if t is None else t.float() for t in tensors]
