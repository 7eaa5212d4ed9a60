"""Which training job to start first: longest chain of work first.

With more ready jobs than cores, Snakemake starts the ones of highest ``priority``. A run
that starts late and runs long leaves the other cores idle at the end of the study, so
each training job's priority is the work on the longest chain of training jobs that
begins with it (the "upward rank" of list scheduling; Topcuoglu, Hariri and Wu, "HEFT",
IEEE TPDS 2002): its own work plus, for a teacher, the most work of any student that
distils from it. Work is counted in transformers trained, which orders the jobs of the
default study as their measured times do (``bench --what rows``): a teacher has three per
branch (two cross-modal, one memory; the complete teacher nine, its memory transformers
twice as wide), the 9-transformer student of configuration 1 nine, every other student
three. The complete teachers thus start first, the configuration-1 students as soon as
their teacher is done, and the short students fill the cores at the end.

Torch-free: the workflow reads it while it builds the job graph.
"""

from __future__ import annotations

from mmdistill.registry import Registry, Run

TRANSFORMERS_PER_BRANCH = 3  # mmdistill.models.teacher.teacher_transformer_names
STUDENT_TRANSFORMERS = {"complete": 9}  # mmdistill.models.configurations; every other configuration: 3
DEFAULT_STUDENT_TRANSFORMERS = 3


def work(reg: Registry, run: Run) -> int:
    """Transformers the run trains (a proxy of its training time)."""
    spec = reg.spec(run)
    if run.role == "teacher":
        return TRANSFORMERS_PER_BRANCH * len(spec.branches)
    return STUDENT_TRANSFORMERS.get(spec.configuration, DEFAULT_STUDENT_TRANSFORMERS)


def priority(reg: Registry, run: Run) -> int:
    """The run's own work plus the most work of a student that waits for it."""
    waiting = [work(reg, s) for s in reg.runs("student") if s.seed == run.seed and reg.teacher_run(s) == run]
    return work(reg, run) + max(waiting, default=0)
