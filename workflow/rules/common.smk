# Shared helpers of the rules: how every rule calls the CLI with the same parameters.
import shlex

if workflow.config_settings.config:
    raise ValueError(
        "--config key=value passes nested values as strings; put overrides in a YAML file "
        "and pass it with --configfile (it is deep-merged over params.yaml)"
    )

# `snakemake --configfile extra.yaml` merges extra.yaml over params.yaml; the CLI repeats the
# same merge, so the jobs see exactly the configuration the workflow was built from.
_overrides = [
    f
    for f in workflow.overwrite_configfiles
    if Path(f).resolve() != Path("params.yaml").resolve()
]
CLI = "python -m mmdistill {step} --params params.yaml " + " ".join(
    f"--override {shlex.quote(str(f))}" for f in _overrides
)


def cli(step):
    return CLI.format(step=step)


def run_outputs(role):
    outs = REG.run_outputs(Run(role, "{name}", "{seed}"))
    return {k: str(v) for k, v in outs.items()}


wildcard_constraints:
    name=r"[A-Za-z0-9_]+",
    seed=r"\d+",
