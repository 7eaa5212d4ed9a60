# Inference cost and Table 1.

localrules:
    profile,
    report,


rule profile:
    output:
        str(REG.profile()),
    params:
        architectures=REG.architecture_params(),
    log:
        "logs/profile.log",
    # all cores: timing runs alone, never beside a training job
    threads: workflow.cores
    shell:
        cli("profile") + " > {log} 2>&1"


rule report:
    input:
        metrics=[str(REG.metrics(r)) for r in REG.runs()],
        profile=str(REG.profile()),
    output:
        csv=str(REG.table("csv")),
        md=str(REG.table("md")),
    log:
        "logs/report.log",
    shell:
        cli("report") + " > {log} 2>&1"
