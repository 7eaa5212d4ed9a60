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
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).with_name("params.schema.yaml")
log = logging.getLogger(__name__)
DEFAULT_PATHS = {"results": "results", "data": "data", "logs": "logs"}  # the optional `paths` section


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the offending key."""


class MissingInputError(FileNotFoundError):
    """A step's input is not there yet: the step that makes it has not run (or failed)."""


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
    proxy_choice: str | None = None  # the entry's `proxy`, if given
    train_fraction: float = 1.0  # share of the training split this student trains on

    @property
    def distils(self) -> bool:
        return self.method != "none"

    @property
    def proxy(self) -> str:
        """How the student builds its proxy streams: the entry's ``proxy`` if given; else EDAM-T
        up-samples the teacher's maps, so its student keeps full-length proxies ('full'), and
        every other student down-samples its proxies to the teacher's sequence lengths ('down',
        which EDAM-S relies on)."""
        if self.proxy_choice is not None:
            return self.proxy_choice
        return "full" if self.method == "edam" and self.options.get("variant", "S") == "T" else "down"

    @property
    def architecture(self) -> tuple[str, str]:
        """What fixes the student's network: its configuration and its proxies."""
        return (self.configuration, self.proxy)


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

    Paths are relative to ``root`` (the project directory, where both pipelines run); the
    optional ``paths`` section of the parameters moves the data, results and logs of a study
    to folders of its own (e.g. ``results/known-answer``), so that a second study does not
    overwrite the default one. dvc.yaml writes to the default folders only.
    """

    def __init__(self, params: dict[str, Any], root: str | Path = ".", source: str = "params.yaml"):
        validate_schema(params, source)
        params = apply_subset(params)
        self.params = params
        self.root = Path(root)
        where = {**DEFAULT_PATHS, **(params.get("paths") or {})}
        self.results_root, self.data_root, self.logs_root = (self.root / where[k] for k in ("results", "data", "logs"))
        self.seeds: tuple[int, ...] = tuple(params["seeds"])
        self.teachers = {k: TeacherSpec(k, tuple(v["branches"])) for k, v in params["teachers"].items()}
        self.students = {k: self._student(k, v) for k, v in params["students"].items()}
        self._check_semantics()

    @classmethod
    def from_file(cls, path: str | Path = "params.yaml", overrides: list[str | Path] = ()) -> Registry:
        path = Path(path)
        params = load_params(path, overrides)
        return cls(params, root=path.parent, source=" + ".join(str(p) for p in [path, *overrides]))

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
            proxy_choice=entry.get("proxy"),
            train_fraction=float(entry.get("train_fraction", 1.0)),
        )

    def _check_semantics(self) -> None:
        from mmdistill.distill import LOSSES
        from mmdistill.models.configurations import CONFIGURATIONS

        model = self.params["model"]
        if model["d_model"] % model["n_heads"]:
            raise ParamsError(f"model.n_heads: {model['n_heads']} does not divide model.d_model {model['d_model']}")
        regression = self.regression
        # Any student_modality works with any lengths: a proxy longer than the student's input
        # is up-sampled by a transposed convolution (mmdistill.models.student.ResampleConv).
        self._check_method_defaults()
        for name, s in self.students.items():
            key = f"students.{name}"
            conf = CONFIGURATIONS[s.configuration]
            if s.method == "edam" and s.proxy_choice is not None:
                need = "full" if s.options.get("variant", "S") == "T" else "down"
                if s.proxy_choice != need:
                    raise ParamsError(
                        f"{key}.proxy: EDAM variant {s.options.get('variant', 'S')} needs proxy '{need}' "
                        f"(EDAM-S: the teacher's lengths; EDAM-T: full-length proxies), not '{s.proxy_choice}'"
                    )
            if s.method == "none":
                if s.teacher is not None or s.level is not None:
                    raise ParamsError(f"{key}: method 'none' takes teacher: null and level: null")
                self._check_options(s)
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
            if regression and (s.level == "final" or s.method in ("hinton", "msd", "distillvlm")):
                raise ParamsError(
                    f"{key}: train.objective 'regression' gives teacher and student one output, the predicted "
                    f"label; '{s.method}' at level '{s.level}' compares output distributions (a softmax over one "
                    "output is 1; a contrastive embedding of one number keeps only its sign) and has no meaning "
                    "there. Penultimate, post-attention and attention levels (crd, edam) are unchanged; "
                    "use one of them or train.objective: classification"
                )
            if s.level in ("post_attention", "attention"):
                have = set(self.teachers[s.teacher].transformers)
                missing = [p for p in conf.distilled_pairs if p not in have]
                if missing:
                    raise ParamsError(
                        f"{key}.teacher: teacher '{s.teacher}' (branches {list(self.teachers[s.teacher].branches)}) "
                        f"lacks the transformers {missing} that configuration '{s.configuration}' distils"
                    )
            self._check_options(s)

    def _check_method_defaults(self) -> None:
        """Every entry of ``methods`` names a method, and its options are ones the method takes."""
        from mmdistill.distill import LOSSES
        from mmdistill.distill.base import option_problems

        for method, entry in self.params["methods"].items():
            if method != "none" and method not in LOSSES:
                raise ParamsError(f"methods.{method}: no such distillation method (known: {['none', *sorted(LOSSES)]})")
            problems = option_problems(method, entry["options"], None, None)
            if problems:
                raise ParamsError(_listing(f"methods.{method}.options", problems))

    def _check_options(self, s: StudentSpec) -> None:
        """The student's options (its own over the method's defaults), checked against what the
        method declares, including the attention-map sizes its level and lengths give."""
        from mmdistill.distill.base import map_shapes, option_problems
        from mmdistill.models.configurations import CONFIGURATIONS

        pairs = CONFIGURATIONS[s.configuration].distilled_pairs if s.level in ("attention", "post_attention") else ()
        shapes = map_shapes(pairs, dict(self.params["data"]["lengths"]), self.params["student_modality"], s.proxy)
        problems = option_problems(s.method, dict(s.options), s.level, shapes)
        if problems:
            own = self.params["students"][s.name].get("options", {})
            where = [
                f"students.{s.name}.options" if p.split(":")[0] in own else f"methods.{s.method}.options"
                for p in problems
            ]
            lines = [f"  {w}.{p}" for w, p in zip(where, problems)]
            raise ParamsError(f"students.{s.name} (method '{s.method}', level '{s.level}'):\n" + "\n".join(lines))

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
            if spec.train_fraction < 1:
                out["student"]["train_fraction"] = spec.train_fraction
            if spec.distils:
                out["teacher"] = {"name": spec.teacher, "branches": list(self.teachers[spec.teacher].branches)}
        return out

    def student_inputs(self, run: Run) -> dict[str, Any]:
        """What a student run's result depends on besides code and data: its parameters and the
        checksum of its teacher's checkpoint. DVC tracks each student run by this, written to
        :meth:`run_params_file`, so that a change to one method's defaults or one teacher
        reruns only the runs that use it."""
        teacher = self.teacher_run(run)
        checkpoint = None
        if teacher is not None:
            path = self.checkpoint(teacher)
            checkpoint = {"path": str(path.relative_to(self.root)), "md5": file_md5(path)}
        return {"params": self.run_params(run), "teacher_checkpoint": checkpoint}

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

    @property
    def regression(self) -> bool:
        """``train.objective: regression``: teacher and students predict the continuous label."""
        return self.params["train"].get("objective", "classification") == "regression"

    # ------------------------------------------------------------------ paths
    @property
    def source(self) -> str:
        return self.params["data"]["source"]

    def raw_dir(self) -> Path:
        return self.data_root / "raw" / self.source

    def raw_input(self) -> Path:
        """What `prepare` reads: the file or directory `download` leaves in ``raw_dir()``
        (a local copy named by ``path`` is linked there)."""
        if self.source == "synthetic":
            return self.raw_dir() / "mosei_synthetic.pkl"
        if self.source in ("mult_pkl", "mmsa_pkl"):
            from mmdistill.data.catalogue import raw_file_name

            return self.raw_dir() / raw_file_name(self.source, self.params["data"]["dataset"])
        return self.raw_dir()

    def folds_files(self) -> list[Path]:
        """The folds file `prepare` reads, an input of it in both pipelines: one for ``sdk_csd``
        (``data.sdk_csd.folds``), none for the other sources and for the hash split."""
        if self.source != "sdk_csd" or self.hash_split():
            return []
        return [self.root / Path(self.params["data"]["sdk_csd"]["folds"]).expanduser()]  # as split.folds_file

    def hash_split(self) -> bool:
        """Whether the data are split by a hash of the video id instead of folds (not the standard split)."""
        return self.source == "sdk_csd" and bool(self.params["data"]["sdk_csd"].get("hash_split"))

    def prepared(self) -> Path:
        return self.data_root / "prepared" / f"{self.source}.h5"

    def data_summary(self) -> Path:
        return self.data_root / "prepared" / f"{self.source}.summary.json"

    def run_dir(self, run: Run) -> Path:
        return self.results_root / f"{run.role}s" / run.name / f"seed{run.seed}"

    def checkpoint(self, run: Run) -> Path:
        return self.run_dir(run) / "model.pt"

    def resume_checkpoint(self, run: Run) -> Path:
        return self.run_dir(run) / "last.pt"

    def metrics(self, run: Run) -> Path:
        return self.run_dir(run) / "metrics.json"

    def curves(self, run: Run) -> Path:
        return self.run_dir(run) / "curves.csv"

    def run_params_file(self, run: Run) -> Path:
        """Where ``run-params`` writes :meth:`student_inputs` (a dependency of the run's DVC stage)."""
        return self.results_root / "run_params" / f"{run.role}s" / run.name / f"seed{run.seed}.json"

    def log(self, run: Run) -> Path:
        return self.logs_root / f"{run.role}s" / run.name / f"seed{run.seed}.log"

    def step_log(self, step: str) -> Path:
        """Log of a pipeline step that is not a training run (download, prepare, profile, ...)."""
        return self.logs_root / f"{step}.log"

    def run_outputs(self, run: Run) -> dict[str, Path]:
        return {"checkpoint": self.checkpoint(run), "metrics": self.metrics(run), "curves": self.curves(run)}

    def profile(self) -> Path:
        return self.results_root / "profile.json"

    def table(self, ext: str = "csv") -> Path:
        return self.results_root / f"table1.{ext}"

    def figures_dir(self) -> Path:
        return self.results_root / "figures"

    def robustness(self, ext: str = "csv") -> Path:
        """The missing-modality robustness table (teachers with inputs missing, beside the students)."""
        return self.results_root / f"robustness.{ext}"

    def require(self, inputs: list[tuple[Path, str]]) -> None:
        """Raise :class:`MissingInputError` unless every path of ``(path, step that makes it)`` exists."""
        missing = [(p, step) for p, step in inputs if not Path(p).exists()]
        if missing:
            shown = "\n".join(f"  {p}  (made by `python -m mmdistill {step}`)" for p, step in missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise MissingInputError(
                f"{len(missing)} input(s) of this step are missing:\n{shown}{more}\n"
                "Run the steps in order: `snakemake` or `dvc repro` does."
            )

    def run_step(self, run: Run) -> str:
        """The CLI step that trains ``run``."""
        return f"train --role {run.role} --name {run.name} --seed {run.seed}"

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


def read_yaml(path: str | Path, what: str = "parameter file") -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file, malformed YAML or a top level that is not a
    mapping is a :class:`ParamsError` naming the file (and the line, for malformed YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{what} not found: {path}")
    try:
        with path.open() as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if data is None and what != "parameter file":
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_params(path: str | Path, overrides: list[str | Path] = ()) -> dict[str, Any]:
    """params.yaml with the override files deep-merged over it in order (as `snakemake
    --configfile` does); an override that would change nothing by mistake is refused."""
    params = read_yaml(path)
    for extra in overrides:
        override = read_yaml(extra, "override file")
        check_override(params, override, str(extra))
        params = deep_merge(params, override)
    return params


def check_override(base: dict[str, Any], override: dict[str, Any], source: str, where: str = "") -> None:
    """Refuse an empty mapping over a non-empty one (e.g. ``students: {}``): merged key by key
    it keeps every entry, so the override would be silently ignored."""
    for key, value in override.items():
        path = f"{where}{key}"
        old = base.get(key) if isinstance(base, dict) else None
        if isinstance(value, dict) and isinstance(old, dict):
            if not value and old:
                raise ParamsError(
                    f"{source}: '{path}: {{}}' changes nothing: an override file is merged key by key into "
                    f"params.yaml, so an empty mapping keeps every entry of '{path}'. To run part of the study, "
                    "name the rows under subset (subset: {students: [...]}; see docs/reliability.md)"
                )
            check_override(old, value, source, f"{path}.")


def apply_subset(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters restricted to ``subset`` (if any): the students and teachers it names.

    ``subset.students`` alone keeps those rows and the teachers they distil from;
    ``subset.teachers`` alone keeps those teachers, the students distilling from them and the
    students without a teacher; both keep exactly what they name.
    """
    subset = params.get("subset")
    if not subset:
        return params
    out = copy.deepcopy(params)
    students, teachers = subset.get("students"), subset.get("teachers")
    for section, names in (("students", students), ("teachers", teachers)):
        unknown = [n for n in names or () if n not in params[section]]
        if unknown:
            raise ParamsError(f"subset.{section}: {unknown} not among {section} ({sorted(params[section])})")
    if students is not None:
        out["students"] = {k: v for k, v in params["students"].items() if k in students}
    if teachers is not None:
        out["teachers"] = {k: v for k, v in params["teachers"].items() if k in teachers}
    if students is None:
        out["students"] = {k: v for k, v in out["students"].items() if v.get("teacher") in (None, *out["teachers"])}
    elif teachers is None:
        used = {v.get("teacher") for v in out["students"].values()}
        out["teachers"] = {k: v for k, v in params["teachers"].items() if k in used}
    orphans = sorted(k for k, v in out["students"].items() if v.get("teacher") not in (None, *out["teachers"]))
    if orphans:
        raise ParamsError(f"subset: students {orphans} distil from teachers that subset.teachers leaves out")
    if not out["students"]:
        raise ParamsError("subset leaves no students")
    if not out["teachers"]:
        raise ParamsError("subset leaves no teachers (its students distil from none): name one under subset.teachers")
    return out


def validate_schema(params: Any, source: str = "params.yaml") -> None:
    """Validate against the JSON schema; the error names the key path.

    Without the jsonschema package (a bare GPU node may lack it) the schema check is skipped
    with a warning; the registry's own cross-reference checks still run.
    """
    try:
        import jsonschema
    except ImportError:
        log.warning("jsonschema is not installed: the parameters are not checked against %s", SCHEMA_PATH)
        return

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors[:10]:
            where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
            hint = (
                string_number_hint(e.instance) if e.validator == "type" and "number" in str(e.validator_value) else ""
            )
            lines.append(f"  {where}: {e.message}{hint}")
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(lines))


def _listing(prefix: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{prefix}.{problems[0]}"
    return f"{prefix}:\n" + "\n".join(f"  {p}" for p in problems)


def string_number_hint(value: Any) -> str:
    """A hint for a number YAML read as a string (PyYAML reads ``1e-3`` as text: YAML 1.1
    floats need a decimal point and a signed exponent), or ''."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return f"; YAML reads {value} as a string: write a decimal point and a signed exponent, e.g. 1.0e-3"


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def params_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
