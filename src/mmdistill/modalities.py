"""Modality names shared by data, models and distillation.

The paper writes modalities as letters (V video, A audio, L language) and names a
transformer ``Y<-X`` when its query comes from X and its keys/values from Y
(paper 002, eq. 4: DisLvl(Y <- X) = Attention(Q_X, K_Y, V_Y)). MOSEI files name the
same streams ``vision``, ``audio`` and ``text``.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("V", "A", "L")
FILE_KEY = {"V": "vision", "A": "audio", "L": "text"}
FEATURE_DIM = {"V": 35, "A": 74, "L": 300}  # Facet 4.2, COVAREP, GloVe 840B.300d


def pair_name(kv: str, query: str) -> str:
    """Name of the transformer whose query is ``query`` and keys/values ``kv``: ``'kv<-query'``."""
    return f"{kv}<-{query}"


def parse_pair(name: str) -> tuple[str, str]:
    """Inverse of :func:`pair_name`: ``'A<-V'`` -> ``('A', 'V')`` (kv, query)."""
    kv, sep, query = name.partition("<-")
    if not sep or kv not in MODALITIES or query not in MODALITIES:
        raise ValueError(f"not a transformer name of the form 'Y<-X' with Y, X in V/A/L: {name!r}")
    return kv, query


def memory_name(query: str) -> str:
    """Name of the temporal (self-attention) transformer of branch ``query``: ``'V*'``."""
    return f"{query}*"
