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
        # the attention figure runs checkpoints on a test sample
        checkpoints=[str(REG.checkpoint(r)) for r in REG.runs()],
        data=str(REG.prepared()),
        profile=str(REG.profile()),
    output:
        # report(): shown with captions in `snakemake --report results/report.html`
        csv=report(str(REG.table("csv")), caption="../report/table1.rst", category="Table 1"),
        md=report(str(REG.table("md")), caption="../report/table1.rst", category="Table 1"),
        # a figure whose rows params.yaml lacks is skipped, so the folder is the output
        figures=report(
            directory(str(REG.figures_dir())),
            patterns=["{figure}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{figure}"},
        ),
    log:
        "logs/report.log",
    shell:
        cli("report") + " > {log} 2>&1"
