# Inference cost and Table 1.
# No `conda:` or `container:` per rule: see the note on `snakemake --lint` in the Snakefile.


localrules:
    profile,
    report,


rule profile:
    input:
        # the models are built for the feature widths the prepared data records
        data=str(REG.prepared()),
    output:
        str(REG.profile()),
    log:
        str(REG.step_log("profile")),
    # more threads than any machine's --cores: Snakemake caps it at --cores, so locally the
    # timing job runs alone, never beside a training job (it sets its own torch threads)
    threads: 256
    params:
        architectures=REG.architecture_params(),
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
        csv=report(
            str(REG.table("csv")), caption="../report/table1.rst", category="Table 1"
        ),
        md=report(
            str(REG.table("md")), caption="../report/table1.rst", category="Table 1"
        ),
        # a figure whose rows params.yaml lacks is skipped, so the folder is the output
        figures=report(
            directory(str(REG.figures_dir())),
            patterns=["{figure}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{figure}"},
        ),
    log:
        str(REG.step_log("report")),
    shell:
        cli("report") + " > {log} 2>&1"


# Teachers with modalities missing, beside the students. Not a local rule: at MOSEI's full
# lengths it runs every teacher checkpoint over the test split 7 times (hours on a CPU), so
# on a cluster it is submitted like a training job.
rule robustness:
    input:
        data=str(REG.prepared()),
        teachers=[str(REG.checkpoint(r)) for r in REG.runs("teacher")],
        students=[str(REG.metrics(r)) for r in REG.runs("student")],
    output:
        csv=str(REG.robustness("csv")),
        md=str(REG.robustness("md")),
    log:
        str(REG.step_log("robustness")),
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        seeds=list(REG.seeds),
        student_modality=config["student_modality"],
        train={k: config["train"][k] for k in ("batch_size", "device")},
    shell:
        cli("robustness") + " --quiet > {log} 2>&1"
