"""The five student-teacher configurations of paper 002 (section 4.2), as data.

Transformer names follow :mod:`mmdistill.modalities`: ``'Y<-X'`` has its query from X and
keys/values from Y; ``'X*'`` is branch X's memory (temporal self-attention) transformer.
A distilled pair is one name present in both networks: the student's ``'V<-A'`` learns
from the teacher's ``'V<-A'``.

Students whose input is not video: the names stay those of the paper. The student's own
stream carries its input modality's letter and the two other letters are proxies made from
it. An audio student of configuration 5 thus runs ``'V<-V'`` (self-attention on its video
proxy), ``'V<-L'`` (query: language proxy, keys/values: video proxy) and ``'V<-A'`` (query:
its own audio stream), and still distils ``'V<-A'`` and ``'V<-L'`` from the teacher's
transformers of the same names, whose shapes its proxies match under ``proxy='down'``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmdistill.modalities import MODALITIES
from mmdistill.models.teacher import teacher_transformer_names

_COMPLETE = teacher_transformer_names(MODALITIES)  # six cross-modal, then 'V*', 'A*', 'L*'


@dataclass(frozen=True)
class Configuration:
    """
    key:                      registry key
    number:                   the configuration's number in paper 002, section 4.2
    title:                    its title there
    student_transformers:     the student's transformers, in the order of its head input
    distilled_pairs:          transformers whose internals are distilled, same name on both sides
    teacher_branches_needed:  branches a teacher must have to hold every distilled pair
                              (the paper's teacher for this configuration)
    """

    key: str
    number: int
    title: str
    student_transformers: tuple[str, ...]
    distilled_pairs: tuple[str, ...]
    teacher_branches_needed: tuple[str, ...]

    def __post_init__(self) -> None:
        missing = [p for p in self.distilled_pairs if p not in self.student_transformers]
        if missing:
            raise ValueError(f"configuration '{self.key}': distilled pairs {missing} are not student transformers")
        teacher = teacher_transformer_names(self.teacher_branches_needed)
        missing = [p for p in self.distilled_pairs if p not in teacher]
        if missing:
            raise ValueError(
                f"configuration '{self.key}': distilled pairs {missing} are not transformers of a teacher "
                f"with branches {self.teacher_branches_needed}"
            )

    @property
    def n_transformers(self) -> int:
        return len(self.student_transformers)


CONFIGURATIONS: dict[str, Configuration] = {
    c.key: c
    for c in (
        Configuration(
            "complete",
            1,
            "KD from the Complete Teacher Network",
            _COMPLETE,
            _COMPLETE,
            ("V", "A", "L"),
        ),
        Configuration(
            "video",
            2,
            "KD from Video Branch",
            ("V<-V", "A<-V", "L<-V"),
            ("A<-V", "L<-V"),
            ("V",),
        ),
        Configuration(
            "language",
            3,
            "KD from Language Branch",
            ("V<-V", "V<-L", "A<-L"),
            ("V<-L", "A<-L"),
            ("L",),
        ),
        Configuration(
            "audio",
            4,
            "KD from Audio Branch",
            ("V<-V", "V<-A", "L<-A"),
            ("V<-A", "L<-A"),
            ("A",),
        ),
        Configuration(
            "language_audio",
            5,
            "KD from Language and Audio Branches of Complete Teacher Network",
            ("V<-V", "V<-L", "V<-A"),
            ("V<-A", "V<-L"),
            ("V", "A", "L"),
        ),
    )
}


def get_configuration(key: str) -> Configuration:
    if key not in CONFIGURATIONS:
        raise KeyError(f"unknown student-teacher configuration '{key}'; known: {sorted(CONFIGURATIONS)}")
    return CONFIGURATIONS[key]
