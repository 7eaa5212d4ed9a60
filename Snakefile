# Knowledge distillation from a multimodal teacher to a unimodal student (paper 002).
#   snakemake --cores all  (rule all: every run, Table 1 and figures, the robustness table)
# Every rule runs one step of the package CLI (`python -m mmdistill <step>`); the experiment
# registry (mmdistill.registry) names every run and owns every output path.
#
# `snakemake --lint` finds one thing, left as is on purpose: "Specify a conda environment or
# container for each rule". Every rule runs this project's own package, installed with its
# dependencies (pyproject.toml) in the environment Snakemake itself runs in (the README's
# first command); a per-rule environment would install the same package once more per rule.
from pathlib import Path

from snakemake.utils import min_version

from mmdistill.cli import SNAKEMAKE_CONFIG
from mmdistill.registry import Registry, Run, load_params

min_version("9.0")


configfile: "params.yaml"


# `snakemake --cores 1 --report results/report.html`: tables, figures with captions, the parameters
report: "workflow/report/workflow.rst"


# `snakemake --configfile extra.yaml`: extra.yaml deep-merged over params.yaml, merged here the
# way the CLI merges (same key order, so Table 1 keeps its row order), and an override that
# would change nothing by mistake (`students: {}`) is refused. Registry() validates against
# workflow/schemas/params.schema.yaml and checks every method's options, so `snakemake -n`
# reports a bad parameter before any job runs.
_overrides = [
    f
    for f in workflow.overwrite_configfiles
    if Path(f).resolve() != Path("params.yaml").resolve()
]
PARAMS = load_params("params.yaml", _overrides)
REG = Registry(PARAMS, source=" + ".join(["params.yaml", *map(str, _overrides)]))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        [str(p) for p in REG.targets()],
