# Shared helpers of the rules: how every rule calls the CLI with the same parameters.
import json
import os

from mmdistill.schedule import priority as job_priority

if workflow.config_settings.config:
    raise ValueError(
        "--config key=value passes nested values as strings; put overrides in a YAML file "
        "and pass it with --configfile (it is deep-merged over params.yaml)"
    )

# `snakemake --configfile extra.yaml` merges extra.yaml over params.yaml. The jobs read the
# merged configuration from the environment Snakemake hands them (a cluster job's Snakemake
# parses this file again with the same --configfile), so they see exactly the configuration
# the workflow was built from, and no command names an override file or an absolute path:
# moving the project or adding an override changes no rule's code, and the per-run `params:`
# alone decide what reruns.
os.environ[SNAKEMAKE_CONFIG] = json.dumps(
    {"sources": ["params.yaml", *map(str, _overrides)], "params": PARAMS}
)
CLI = "python -m mmdistill {step}"


def cli(step):
    return CLI.format(step=step)


def run_outputs(role):
    outs = REG.run_outputs(Run(role, "{name}", "{seed}"))
    return {k: str(v) for k, v in outs.items()}


def run_params(role):
    """A training job's params: everything that determines its result (the rerun trigger)."""
    return lambda w: REG.run_params(Run(role, w.name, int(w.seed)))


def teacher_checkpoint(w):
    teacher = REG.teacher_run(Run("student", w.name, int(w.seed)))
    return [str(REG.checkpoint(teacher))] if teacher else []


def _priority(role):
    # longest chain of work first (mmdistill.schedule): no core idles at the end on a late long job
    return lambda w: job_priority(REG, Run(role, w.name, int(w.seed)))


wildcard_constraints:
    name=r"[A-Za-z0-9_]+",
    seed=r"\d+",
