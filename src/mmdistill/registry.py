"""The experiment registry: the one place that turns params.yaml into named experiments and
owns every output path.

Both pipelines are driven by it: the Snakefile builds its targets from
:meth:`Registry.targets`, dvc.yaml iterates over the same ``teachers`` / ``students`` /
``seeds`` entries of params.yaml, and a test checks that both produce the same outputs.
Library code never reads params.yaml; the CLI loads a :class:`Registry` and passes plain
objects and paths down.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the offending key."""


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    branches: tuple[str, ...]

    @property
    def transformers(self) -> tuple[str, ...]:
        """Names of the teacher's transformers: two cross-modal and one memory per branch."""
        from mmdistill.models.teacher import teacher_transformer_names

        return teacher_transformer_names(self.branches)


@dataclass(frozen=True)
class StudentSpec:
    name: str
    configuration: str
    teacher: str | None
    method: str
    level: str | None
    alpha: float
    beta: float
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def distils(self) -> bool:
        return self.method != "none"

    @property
    def proxy(self) -> str:
        """How the student builds its proxy streams: EDAM-T up-samples the teacher's maps, so
        its student keeps full-length proxies ('full'); every other student down-samples its
        proxies to the teacher's sequence lengths ('down', which EDAM-S relies on)."""
        return "full" if self.method == "edam" and self.options.get("variant", "S") == "T" else "down"


@dataclass(frozen=True)
class Run:
    """One training run: a teacher or a student trained with one seed."""

    role: str  # 'teacher' | 'student'
    name: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.role}s/{self.name}/seed{self.seed}"


class Registry:
    """Validated parameters, the experiments they name, and every output path.

    Paths are relative to ``root`` (the project directory, where both pipelines run).
    """

    def __init__(self, params: dict[str, Any], root: str | Path = "."):
        validate_schema(params)
        self.params = params
        self.root = Path(root)
        self.seeds: tuple[int, ...] = tuple(params["seeds"])
        self.teachers = {k: TeacherSpec(k, tuple(v["branches"])) for k, v in params["teachers"].items()}
        self.students = {k: self._student(k, v) for k, v in params["students"].items()}
        self._check_semantics()

    @classmethod
    def from_file(cls, path: str | Path = "params.yaml", overrides: list[str | Path] = ()) -> Registry:
        path = Path(path)
        if not path.exists():
            raise ParamsError(f"parameter file not found: {path}")
        params = yaml.safe_load(path.read_text())
        for extra in overrides:
            params = deep_merge(params, yaml.safe_load(Path(extra).read_text()) or {})
        return cls(params, root=path.parent)

    # ------------------------------------------------------------------ experiments
    def _student(self, name: str, entry: dict[str, Any]) -> StudentSpec:
        method = entry["method"]
        defaults = self.params["methods"].get(method)
        if defaults is None:
            raise ParamsError(f"students.{name}.method: no defaults for '{method}' under methods")
        options = {**defaults["options"], **entry.get("options", {})}
        return StudentSpec(
            name=name,
            configuration=entry["configuration"],
            teacher=entry["teacher"],
            method=method,
            level=entry["level"],
            alpha=float(entry.get("alpha", defaults["alpha"])),
            beta=float(entry.get("beta", defaults["beta"])),
            options=options,
        )

    def _check_semantics(self) -> None:
        from mmdistill.distill import LOSSES
        from mmdistill.models.configurations import CONFIGURATIONS

        model = self.params["model"]
        if model["d_model"] % model["n_heads"]:
            raise ParamsError(f"model.n_heads: {model['n_heads']} does not divide model.d_model {model['d_model']}")
        # Any student_modality works with any lengths: a proxy longer than the student's input
        # is up-sampled by a transposed convolution (mmdistill.models.student.ResampleConv).
        for name, s in self.students.items():
            key = f"students.{name}"
            conf = CONFIGURATIONS[s.configuration]
            if s.method == "none":
                if s.teacher is not None or s.level is not None:
                    raise ParamsError(f"{key}: method 'none' takes teacher: null and level: null")
                continue
            if s.teacher is None:
                raise ParamsError(f"{key}.teacher: method '{s.method}' needs a teacher")
            if s.teacher not in self.teachers:
                raise ParamsError(f"{key}.teacher: '{s.teacher}' is not a key of teachers ({sorted(self.teachers)})")
            if s.level is None:
                raise ParamsError(f"{key}.level: method '{s.method}' needs a level")
            levels = LOSSES[s.method].levels
            if s.level not in levels:
                raise ParamsError(f"{key}.level: method '{s.method}' applies at {list(levels)}, not '{s.level}'")
            if s.level in ("post_attention", "attention"):
                have = set(self.teachers[s.teacher].transformers)
                missing = [p for p in conf.distilled_pairs if p not in have]
                if missing:
                    raise ParamsError(
                        f"{key}.teacher: teacher '{s.teacher}' (branches {list(self.teachers[s.teacher].branches)}) "
                        f"lacks the transformers {missing} that configuration '{s.configuration}' distils"
                    )

    def runs(self, role: str | None = None) -> Iterator[Run]:
        if role in (None, "teacher"):
            for name in self.teachers:
                for seed in self.seeds:
                    yield Run("teacher", name, seed)
        if role in (None, "student"):
            for name in self.students:
                for seed in self.seeds:
                    yield Run("student", name, seed)

    def spec(self, run: Run) -> TeacherSpec | StudentSpec:
        table = self.teachers if run.role == "teacher" else self.students
        if run.name not in table:
            raise ParamsError(f"{run.role}s.{run.name}: no such {run.role} (known: {sorted(table)})")
        return table[run.name]

    def teacher_run(self, run: Run) -> Run | None:
        """The teacher run a student run distils from (same seed), or None."""
        if run.role != "student":
            return None
        spec = self.students[run.name]
        return Run("teacher", spec.teacher, run.seed) if spec.distils else None

    def run_params(self, run: Run) -> dict[str, Any]:
        """Everything that determines the result of ``run``, as plain built-in types.

        Used as Snakemake ``params:`` (its rerun trigger compares them) and hashed into the
        resume checkpoint so a run is never resumed under different settings.
        """
        p = self.params
        spec = self.spec(run)
        out = {
            "run": run.id,
            "seed": run.seed,
            "data": self.data_identity(),
            "model": copy.deepcopy(p["model"]),
            "train": copy.deepcopy(p["train"]),
        }
        if run.role == "teacher":
            out["teacher"] = {"branches": list(spec.branches)}
        else:
            out["student_modality"] = p["student_modality"]
            out["student"] = {
                "configuration": spec.configuration,
                "method": spec.method,
                "level": spec.level,
                "alpha": spec.alpha,
                "beta": spec.beta,
                "options": dict(spec.options),
                "teacher": spec.teacher,
            }
            if spec.distils:
                out["teacher"] = {"name": spec.teacher, "branches": list(self.teachers[spec.teacher].branches)}
        return out

    def architecture_params(self) -> dict[str, Any]:
        """Everything that determines the architectures (and so parameters and latency)."""
        p = self.params
        return {
            "model": copy.deepcopy(p["model"]),
            "lengths": dict(p["data"]["lengths"]),
            "student_modality": p["student_modality"],
            "profile": copy.deepcopy(p["profile"]),
            "teachers": {k: list(t.branches) for k, t in self.teachers.items()},
            "students": {k: [s.configuration, s.proxy] for k, s in self.students.items()},
        }

    def data_identity(self) -> dict[str, Any]:
        d = self.params["data"]
        return {
            "source": d["source"],
            "dataset": d["dataset"],
            "label_rule": d["label_rule"],
            "lengths": dict(d["lengths"]),
            d["source"]: copy.deepcopy(d[d["source"]]),
        }

    # ------------------------------------------------------------------ paths
    @property
    def source(self) -> str:
        return self.params["data"]["source"]

    def raw_dir(self) -> Path:
        return self.root / "data" / "raw" / self.source

    def raw_input(self) -> Path:
        """What `prepare` reads: the file or directory `download` leaves in ``raw_dir()``
        (a local copy named by ``path`` is linked there)."""
        if self.source == "synthetic":
            return self.raw_dir() / "mosei_synthetic.pkl"
        if self.source in ("mult_pkl", "mmsa_pkl"):
            from mmdistill.data.catalogue import raw_file_name

            return self.raw_dir() / raw_file_name(self.source, self.params["data"]["dataset"])
        return self.raw_dir()

    def prepared(self) -> Path:
        return self.root / "data" / "prepared" / f"{self.source}.h5"

    def data_summary(self) -> Path:
        return self.root / "data" / "prepared" / f"{self.source}.summary.json"

    def run_dir(self, run: Run) -> Path:
        return self.root / "results" / f"{run.role}s" / run.name / f"seed{run.seed}"

    def checkpoint(self, run: Run) -> Path:
        return self.run_dir(run) / "model.pt"

    def resume_checkpoint(self, run: Run) -> Path:
        return self.run_dir(run) / "last.pt"

    def metrics(self, run: Run) -> Path:
        return self.run_dir(run) / "metrics.json"

    def curves(self, run: Run) -> Path:
        return self.run_dir(run) / "curves.csv"

    def log(self, run: Run) -> Path:
        return self.root / "logs" / f"{run.role}s" / run.name / f"seed{run.seed}.log"

    def run_outputs(self, run: Run) -> dict[str, Path]:
        return {"checkpoint": self.checkpoint(run), "metrics": self.metrics(run), "curves": self.curves(run)}

    def profile(self) -> Path:
        return self.root / "results" / "profile.json"

    def table(self, ext: str = "csv") -> Path:
        return self.root / "results" / f"table1.{ext}"

    def figures_dir(self) -> Path:
        return self.root / "results" / "figures"

    def robustness(self, ext: str = "csv") -> Path:
        """The missing-modality robustness table (teachers with inputs missing, beside the students)."""
        return self.root / "results" / f"robustness.{ext}"

    def targets(self) -> list[Path]:
        """Every final output of the study (what a plain `snakemake` builds)."""
        out = [
            self.prepared(),
            self.data_summary(),
            self.profile(),
            self.table("csv"),
            self.table("md"),
            self.robustness("csv"),
            self.robustness("md"),
        ]
        for run in self.runs():
            out += list(self.run_outputs(run).values())
        return out


def validate_schema(params: Any) -> None:
    """Validate against the JSON schema; the error names the key path."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
            lines.append(f"  {where}: {e.message}")
        raise ParamsError("params.yaml is invalid:\n" + "\n".join(lines))


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def params_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
