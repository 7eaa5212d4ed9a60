# Knowledge distillation from a multimodal teacher to a unimodal student (paper 002).
#   snakemake --cores 4 results/table1.csv
# Every rule runs one step of the package CLI (`python -m mmdistill <step>`); the experiment
# registry (mmdistill.registry) names every run and owns every output path.
from snakemake.utils import min_version, validate

from mmdistill.registry import Registry, Run

min_version("9.0")


configfile: "params.yaml"


# `snakemake --cores 1 --report results/report.html`: tables, figures with captions, the parameters
report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/params.schema.yaml")
REG = Registry(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        [str(p) for p in REG.targets()],
