# Data stage: download (or generate) -> prepare.
# No `conda:` or `container:` per rule: see the note on `snakemake --lint` in the Snakefile.


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


rule prepare:
    input:
        str(REG.raw_input()),
    output:
        h5=str(REG.prepared()),
        summary=str(REG.data_summary()),
    log:
        str(REG.step_log("data/prepare")),
    params:
        data=REG.data_identity(),
    shell:
        cli("prepare") + " > {log} 2>&1"
