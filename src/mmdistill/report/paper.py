"""The published numbers of paper 002, Table 1 (CMU-MOSEI unaligned, 7 classes), so every
row of our table can show the paper's value beside ours. Accuracy and F1 in percent.

Keys: teachers by their branches; students by (configuration, method, variant, level);
the paper's single no-KD row is shown beside every student trained without distillation.
"""

from __future__ import annotations

PAPER_TEACHERS: dict[tuple[str, ...], tuple[float, float]] = {
    ("V", "A", "L"): (49.779, 48.817),
    ("V",): (49.621, 48.542),
    ("L",): (49.217, 47.250),
    ("A",): (49.217, 47.232),
}

PAPER_NO_KD = (41.296, 32.142)

PAPER_STUDENTS: dict[tuple[str, str, str | None, str], tuple[float, float]] = {
    ("complete", "edam", "S", "attention"): (44.137, 36.286),
    ("video", "crd", None, "final"): (43.711, 33.281),
    ("video", "crd", None, "penultimate"): (42.576, 35.565),
    ("video", "crd", None, "attention"): (43.837, 35.912),
    ("language", "crd", None, "final"): (43.154, 32.863),
    ("language", "crd", None, "penultimate"): (42.901, 34.467),
    ("audio", "crd", None, "final"): (43.584, 33.260),
    ("audio", "crd", None, "penultimate"): (43.232, 35.115),
    ("language_audio", "crd", None, "final"): (42.731, 32.513),
    ("language_audio", "crd", None, "penultimate"): (43.732, 35.632),
    ("language_audio", "crd", None, "post_attention"): (43.837, 35.711),
    ("language_audio", "crd", None, "attention"): (44.031, 36.110),
    ("language_audio", "edam", "S", "attention"): (44.231, 36.332),
    ("language_audio", "edam", "T", "attention"): (43.993, 36.189),
}

# Paper section 5: best student 0.675 M parameters vs complete teacher 1.802 M (2.5x fewer),
# inference 29 ms, 22% less than the complete teacher.
PAPER_PARAMS = {"best_student": 675_000, "complete_teacher": 1_802_000}
PAPER_LATENCY_REDUCTION = 0.22

GROUP_TITLES = {
    "complete": "KD from the Complete Teacher Network",
    "video": "KD from Video Branch",
    "language": "KD from Language Branch",
    "audio": "KD from Audio Branch",
    "language_audio": "KD from Language and Audio Branches",
}

LEVEL_TEXT = {
    "final": "final linear layer",
    "penultimate": "penultimate linear layer",
    "post_attention": "post-attention linear layers",
    "attention": "attention maps",
}


def method_text(method: str, options: dict) -> str:
    if method == "edam":
        return "EDAM-T\u2191" if options.get("variant", "S") == "T" else "EDAM-S\u2193"
    return {"crd": "CRD", "hinton": "Hinton KD", "none": "Without KD"}.get(method, method)


def paper_student(configuration: str, method: str, options: dict, level: str | None) -> tuple[float, float] | None:
    if method == "none":
        return PAPER_NO_KD
    variant = options.get("variant", "S") if method == "edam" else None
    return PAPER_STUDENTS.get((configuration, method, variant, level))
