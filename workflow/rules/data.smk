# Data stage: download (or generate) -> prepare.

localrules:
    download,  # compute nodes of a cluster often have no internet access


rule download:
    output:
        directory(str(REG.raw_input())) if REG.source == "sdk_csd" else str(REG.raw_input()),
    params:
        data=REG.data_identity(),
    log:
        "logs/data/download.log",
    shell:
        cli("download") + " > {log} 2>&1"


rule prepare:
    input:
        str(REG.raw_input()),
    output:
        h5=str(REG.prepared()),
        summary=str(REG.data_summary()),
    params:
        data=REG.data_identity(),
    log:
        "logs/data/prepare.log",
    shell:
        cli("prepare") + " > {log} 2>&1"
