# Data stage: download (or generate) -> prepare.
# No `conda:` or `container:` per rule: see the note on `snakemake --lint` in the Snakefile.
import sys


localrules:
    download,  # compute nodes of a cluster often have no internet access


rule download:
    output:
        directory(str(REG.raw_input()))
        if REG.source == "sdk_csd"
        else str(REG.raw_input()),
    log:
        str(REG.step_log("data/download")),
    params:
        data=REG.data_identity(),
    shell:
        cli("download") + " > {log} 2>&1"


if REG.hash_split():
    print(
        "WARNING: data.sdk_csd.hash_split is set: videos are split by a hash of their id, which is "
        "NOT the standard split; results cannot be compared with the paper's (Table 1 says so)",
        file=sys.stderr,
    )


rule prepare:
    input:
        raw=str(REG.raw_input()),
        folds=[str(p) for p in REG.folds_files()],  # given or shipped: a changed file re-runs prepare
    output:
        h5=str(REG.prepared()),
        summary=str(REG.data_summary()),
    log:
        str(REG.step_log("data/prepare")),
    params:
        data=REG.data_identity(),
    shell:
        cli("prepare") + " > {log} 2>&1"
