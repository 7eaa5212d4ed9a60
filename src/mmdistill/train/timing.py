"""Where a training job's wall time goes: start-up, data, teacher, steps, evaluation, writing.

Every training job records, in its ``metrics.json`` under ``timing``, the wall seconds of
its phases and the absolute times at which its process started and ended, so that the split
of one job and the schedule of a whole run can be read back from a finished run
(``python -m mmdistill bench --what run``). The phases (:data:`PHASES`):

``startup``     process start to the first line of the job: Python, torch and the package imports
``data``        reading the prepared splits
``model``       building the model (and seeding it)
``teacher``     loading the teacher checkpoint and building the distillation loss
``teacher_cache`` the teacher's once-per-data-set outputs (:class:`~mmdistill.train.loop.TeacherCache`)
``batches``     cutting the training batches (waiting on the batch iterator)
``steps``       forward, loss, backward, gradient clipping and optimizer step
``validation``  the per-epoch validation pass and the scheduler step
``test_eval``   the final test (and validation) evaluation of the best weights
``checkpoint``  per-epoch resume checkpoints, the best-weights copy, the final model file
``logging``     epoch log lines and history, curves and metrics files

What no phase covers (interpreter shutdown, argument parsing, the gaps between phases) is the
difference between the job's wall time and the phases' sum; ``bench --what jobs`` reports it
as ``other``. A resumed job records the phases of its own process only.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

PHASES = (
    "startup",
    "data",
    "model",
    "teacher",
    "teacher_cache",
    "batches",
    "steps",
    "validation",
    "test_eval",
    "checkpoint",
    "logging",
)
OUTSIDE_STEPS = tuple(p for p in PHASES if p != "steps")


def process_started_at() -> float | None:
    """The Unix time at which this process started (Linux, 10 ms resolution), or None.

    Read from ``/proc/self/stat`` (start time in clock ticks since boot) against
    ``CLOCK_BOOTTIME``, so the interpreter's and the imports' time before any of our code ran
    is counted. Without ``/proc`` (macOS) it is None, and a job's ``startup`` then counts
    from the command's first line only.
    """
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5); fields[0] is field 3
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


class JobTimer:
    """Accumulates the wall seconds of a job's phases (:data:`PHASES`)."""

    def __init__(self, started_at: float | None = None):
        self.started_at = time.time() if started_at is None else started_at
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise KeyError(f"unknown phase {name!r}; known: {PHASES}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        if name not in self.seconds:
            raise KeyError(f"unknown phase {name!r}; known: {PHASES}")
        self.seconds[name] += seconds

    def timed_iter(self, name: str, it):
        """Yield from ``it``, counting the time spent waiting on it as phase ``name``."""
        it = iter(it)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds[name] += time.perf_counter() - t0
                return
            self.seconds[name] += time.perf_counter() - t0
            yield item

    def record(self) -> dict:
        """The JSON form stored in metrics.json (``ended_at``: now)."""
        return {
            "started_at": self.started_at,
            "ended_at": time.time(),
            "seconds": dict(self.seconds),
        }


class _NullTimer(JobTimer):
    """A timer that keeps nothing (the default of library calls outside a job)."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield

    def add(self, name: str, seconds: float) -> None:
        pass

    def timed_iter(self, name: str, it):
        return iter(it)


NULL_TIMER = _NullTimer()
