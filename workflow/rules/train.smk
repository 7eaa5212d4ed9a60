# Training: every teacher and every student row, once per seed.
# No `conda:` or `container:` per rule: see the note on `snakemake --lint` in the Snakefile.


rule train_teacher:
    input:
        data=str(REG.prepared()),
    output:
        **run_outputs("teacher"),
    log:
        str(REG.log(Run("teacher", "{name}", "{seed}"))),
    priority: _priority("teacher")
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        run=run_params("teacher"),
    shell:
        cli("train")
        + " --role teacher --name {wildcards.name} --seed {wildcards.seed} > {log} 2>&1"


rule train_student:
    input:
        data=str(REG.prepared()),
        teacher=teacher_checkpoint,
    output:
        **run_outputs("student"),
    log:
        str(REG.log(Run("student", "{name}", "{seed}"))),
    priority: _priority("student")
    threads: config["train"]["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        run=run_params("student"),
    shell:
        cli("train")
        + " --role student --name {wildcards.name} --seed {wildcards.seed} > {log} 2>&1"
