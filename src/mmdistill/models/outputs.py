"""What a model returns, and what a caller may ask it to return.

Every model (teacher or student) is called as ``model(inputs, request)`` where ``inputs``
maps modality letters to ``(B, T, D)`` float tensors and ``request`` names the
transformers whose internals are wanted. Nothing that is not requested is materialized:
with an empty request, attention runs through the fused kernel and no map exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Request:
    """Which internals to return.

    attention:       transformer names whose per-layer pre-softmax attention scores are wanted
    maps:            transformer names whose per-layer attention maps ``softmax(scores)`` are wanted
    post_attention:  transformer names whose per-layer attention-module outputs are wanted
    post_projection: what the post-attention outputs are: False (default) ``softmax(Q K^T /
                     sqrt(d_k)) V`` before the output projection (paper 002, eqs. 3-4), True
                     the module's output after ``out_proj``
    internals_only:  run only the requested transformers (and those they read from); the
                     output then has no logits or penultimate features (both ``None``). A
                     frozen teacher's logits come from a cache, so attention-level
                     distillation need not run the teacher's other transformers or its head.
    """

    attention: frozenset[str] = frozenset()
    maps: frozenset[str] = frozenset()
    post_attention: frozenset[str] = frozenset()
    post_projection: bool = False
    internals_only: bool = False

    @property
    def names(self) -> frozenset[str]:
        """Every transformer some internal is requested of."""
        return self.attention | self.maps | self.post_attention

    @property
    def empty(self) -> bool:
        return not self.names


NOTHING = Request()


@dataclass
class ModelOutput:
    """Outputs of one forward pass.

    logits:          (B, n_classes)  output of the final linear layer
    penultimate:     (B, P)          input of the final linear layer (the penultimate linear
                                     layer's output, after its residual connection)
    attention:       name -> list over layers of (B, H, Tq, Tk) scaled scores Q K^T / sqrt(d_k),
                     before softmax (paper eqs. 8 and 10)
    maps:            name -> list over layers of (B, H, Tq, Tk) attention maps ``softmax(scores)``
                     before attention dropout: the tensor the layer multiplies with V, so
                     gradients through a student's maps join its own softmax backward
    post_attention:  name -> list over layers of (B, Tq, d): softmax(QK^T/sqrt(d_k)) V with the
                     heads concatenated, before the output projection (paper eqs. 3-4), or
                     after it when the request's ``post_projection`` is set
    views:           view name -> output of the same model on a modified input (e.g. the
                     teacher with some modalities masked, for modality-specific distillation);
                     filled by the training loop for the views a loss asks for
    """

    logits: torch.Tensor
    penultimate: torch.Tensor
    attention: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    post_attention: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    views: dict[str, ModelOutput] = field(default_factory=dict)

    def detach(self) -> ModelOutput:
        return ModelOutput(
            None if self.logits is None else self.logits.detach(),
            None if self.penultimate is None else self.penultimate.detach(),
            {k: [t.detach() for t in v] for k, v in self.attention.items()},
            {k: [t.detach() for t in v] for k, v in self.maps.items()},
            {k: [t.detach() for t in v] for k, v in self.post_attention.items()},
            {k: v.detach() for k, v in self.views.items()},
        )
