"""Command line: ``python -m mmdistill <step> [--params params.yaml] [--override more.yaml] ...``

The single entry point of both pipelines: every Snakemake rule and every DVC stage runs
one of these steps. Each step loads and validates the parameters, then calls one library
function with plain objects and paths.

Steps:
    validate   check params.yaml (schema and cross-references) and list the experiments
    download   produce the raw data of data.source (generate it for `synthetic`)
    prepare    raw data -> one HDF5 file + JSON summary
    train      train one teacher or student run (--role, --name, --seed)
    run-params what each student run uses (its parameters, its teacher checkpoint's checksum),
               one file per run under results/run_params/ (DVC tracks each student by its file)
    profile    parameters and inference latency of every architecture
    report     Table 1 (CSV + Markdown, paired tests against the no-KD student) and figures
    robustness teachers with modalities missing (zeroed or mean-filled) beside the students
    bench      training-step and inference cost, side by side, and every row's training cost
               (results/bench.json, .md)
    event-attention  on known_answer data: attention mass on the planted events (not a pipeline step)

Errors the user can fix (bad parameters, bad data, a failed download, a non-finite loss, a step
run before the one it needs) print one message and exit with 2 (parameters, command line) or 1
(everything else); ``--debug`` shows the traceback too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from mmdistill.allocator import keep_freed_memory
from mmdistill.registry import MissingInputError, ParamsError, Registry, Run

log = logging.getLogger("mmdistill")

# Set by the Snakefile for its jobs: the configuration Snakemake built (params.yaml merged with
# every --configfile), so that no rule's command names override files or absolute paths.
SNAKEMAKE_CONFIG = "MMDISTILL_SNAKEMAKE_CONFIG"


def _registry(args) -> Registry:
    env = os.environ.get(SNAKEMAKE_CONFIG)
    if env and args.params is None and not args.override:
        given = json.loads(env)
        source = " + ".join(given["sources"])
        log.info("parameters: %s (merged by Snakemake)", source)
        return Registry(given["params"], source=source)
    return Registry.from_file(args.params or "params.yaml", overrides=args.override or [])


# One example per step, in pipeline order: the epilog of `python -m mmdistill --help`.
EXAMPLES = [
    ("validate", "validate --override params-paper.yaml"),
    ("download", "download"),
    ("prepare", "prepare"),
    ("train", "train --role student --name c5_crd_final --seed 0"),
    ("run-params", "run-params"),
    ("profile", "profile"),
    ("report", "report"),
    ("robustness", "robustness"),
    ("bench", "bench --what rows"),
    ("event-attention", "event-attention --override workflow/configs/known-answer.yaml --students c5_edam_s_attn"),
]


def _examples_epilog() -> str:
    width = max(len(step) for step, _ in EXAMPLES)
    lines = [f"  {step:<{width}}  python -m mmdistill {example}" for step, example in EXAMPLES]
    return (
        "examples, in pipeline order (each Snakemake rule and DVC stage runs one of these steps;\n"
        "a step reads params.yaml unless --params names another file):\n"
        + "\n".join(lines)
        + "\n\n`python -m mmdistill <step> --help` lists a step's options."
    )


def cmd_validate(args) -> int:
    reg = _registry(args)
    print(
        f"params OK: data {reg.source}, seeds {list(reg.seeds)}, "
        f"{len(reg.teachers)} teachers, {len(reg.students)} students, {len(list(reg.runs()))} runs"
    )
    for run in reg.runs():
        print(f"  {run.id}")
    return 0


def cmd_download(args) -> int:
    from mmdistill.data.acquire import acquire

    reg = _registry(args)
    path = acquire(reg.params["data"], reg.raw_dir(), progress=not args.quiet)
    log.info("raw data ready at %s", path)
    return 0


def cmd_prepare(args) -> int:
    from mmdistill.data.acquire import prepare_dataset

    reg = _registry(args)
    reg.require([(reg.raw_input(), "download")])
    summary = prepare_dataset(reg.params["data"], reg.raw_input(), reg.prepared(), reg.data_summary())
    log.info("prepared %s from %s: %s samples per split", reg.prepared(), reg.raw_input(), summary["n"])
    return 0


def cmd_train(args) -> int:
    from mmdistill.experiment import train_run
    from mmdistill.train.timing import JobTimer, process_started_at

    timer = JobTimer(process_started_at())
    reg = _registry(args)
    run = Run(args.role, args.name, args.seed)
    reg.spec(run)  # unknown names fail here, naming the key
    if args.seed not in reg.seeds:
        raise ParamsError(f"seed {args.seed} is not in seeds {list(reg.seeds)}")
    teacher = reg.teacher_run(run)
    reg.require([(reg.prepared(), "prepare")] + ([(reg.checkpoint(teacher), reg.run_step(teacher))] if teacher else []))
    timer.add("startup", time.time() - timer.started_at)  # interpreter, imports, parameters
    t0 = time.perf_counter()
    m = train_run(reg, run, progress=not args.quiet, timer=timer)
    log.info(
        "%s: test acc7 %.4f, weighted F1 %.4f (%d epochs, %.1f s)",
        run.id,
        m["test"]["acc7"],
        m["test"]["f1_weighted"],
        m["epochs_run"],
        time.perf_counter() - t0,
    )
    return 0


def cmd_run_params(args) -> int:
    from mmdistill.io import write_json

    reg = _registry(args)
    reg.require([(reg.checkpoint(r), reg.run_step(r)) for r in reg.runs("teacher")])
    runs = list(reg.runs("student"))
    for run in runs:
        write_json(reg.run_params_file(run), reg.student_inputs(run))
    log.info("wrote the inputs of %d student runs under %s", len(runs), reg.run_params_file(runs[0]).parents[2])
    return 0


def cmd_profile(args) -> int:
    from mmdistill.experiment import profile_models
    from mmdistill.io import write_json

    reg = _registry(args)
    write_json(reg.profile(), profile_models(reg, progress=not args.quiet))
    log.info("wrote %s", reg.profile())
    return 0


def cmd_report(args) -> int:
    from mmdistill.io import clean_temporaries, read_json, write_text
    from mmdistill.report import curve
    from mmdistill.report.figures import make_figures
    from mmdistill.report.stats import add_paired_stats
    from mmdistill.report.table import collect_runs, cost_ratios, split_note, table1, to_markdown

    reg = _registry(args)
    clean_temporaries(reg.figures_dir())  # left by a report killed while writing a figure
    reg.require(
        [(reg.prepared(), "prepare"), (reg.profile(), "profile")]
        + [(p, reg.run_step(r)) for r in reg.runs() for p in (reg.metrics(r), reg.checkpoint(r))]
    )
    profile = read_json(reg.profile())
    runs = collect_runs(reg)
    table = add_paired_stats(table1(reg, runs, profile), reg, runs)
    ratios = cost_ratios(table, reg, runs)
    write_text(reg.table("csv"), table.to_csv(index=False, float_format="%.4f"))
    split = split_note(read_json(reg.data_summary())) if reg.data_summary().exists() else None
    lc = curve.learning_curve(reg, table, runs)
    md = to_markdown(table, ratios, profile, reg.source, reg.params["data"]["label_rule"], split=split)
    write_text(reg.table("md"), md + (curve.to_markdown(lc) if lc is not None else ""))
    log.info("wrote %s and %s", reg.table("csv"), reg.table("md"))
    t0 = time.perf_counter()
    figures = make_figures(reg, table, runs, profile, reg.figures_dir())
    log.info("wrote %d figures to %s in %.1f s", len(figures), reg.figures_dir(), time.perf_counter() - t0)
    return 0


def cmd_robustness(args) -> int:
    import torch

    from mmdistill.io import write_text
    from mmdistill.report.robustness import robustness_runs, summarize, to_markdown

    reg = _registry(args)
    reg.require(
        [(reg.prepared(), "prepare")]
        + [(reg.checkpoint(r), reg.run_step(r)) for r in reg.runs("teacher")]
        + [(reg.metrics(r), reg.run_step(r)) for r in reg.runs("student")]
    )
    torch.set_num_threads(reg.params["train"]["threads"])
    summary = summarize(robustness_runs(reg, progress=not args.quiet), reg)
    write_text(reg.robustness("csv"), summary.to_csv(index=False, float_format="%.4f"))
    write_text(reg.robustness("md"), to_markdown(summary, reg.params["student_modality"], reg.source))
    log.info("wrote %s and %s", reg.robustness("csv"), reg.robustness("md"))
    return 0


def cmd_bench(args) -> int:
    from mmdistill.bench import bench, job_split, row_costs, run_timeline, to_markdown
    from mmdistill.io import write_json, write_text

    reg = _registry(args)
    # a finished run's timeline needs no model: it reads no prepared data (an older version's
    # run may have a prepared file this version cannot read)
    dims = _bench_feature_dims(reg) if args.what != "run" else None
    r: dict = {}
    if args.what == "gpu":
        from mmdistill.gpu_bench import gpu_bench

        r = gpu_bench(
            reg.params["model"],
            dict(reg.params["data"]["lengths"]),
            reg.params["train"]["batch_size"],
            device_name=args.device or "cuda",
            precisions=tuple(args.precisions.split(",")),
            compile_modes=tuple(m for m in args.compile_modes.split(",") if m),
            steps=args.gpu_steps,
            budget_s=args.budget_s,
            log=log.info,
            checkpoint=lambda partial: write_json(Path(args.out).with_suffix(".json"), partial),
            feature_dims=dims,
        )
        from mmdistill.gpu_cost import project, to_text

        try:  # the projected GPU-hours of this study from the figures just measured
            r["projection"] = project(r, reg)
            log.info("%s", to_text(r["projection"]))
        except (KeyError, ValueError) as exc:
            r["projection"] = {"error": f"{type(exc).__name__}: {exc}"}
            log.warning("no projection: %s", exc)
        write_json(Path(args.out).with_suffix(".json"), r)
        log.info("wrote %s", Path(args.out).with_suffix(".json"))
        return 0
    if args.what in ("steps", "all"):
        r = bench(
            reg.params["model"],
            dict(reg.params["data"]["lengths"]),
            reg.params["train"]["batch_size"],
            device_name=args.device or reg.params["train"]["device"],
            threads=args.threads,
            full=not args.no_full,
            full_steps=args.full_steps,
            teacher_cache_mb=reg.params["train"]["teacher_cache_mb"],
            feature_dims=dims,
            log=log.info,
        )
    if args.what in ("rows", "all"):
        r["row_costs"] = row_costs(reg, epochs=args.row_epochs, log=log.info, feature_dims=dims)
    if args.what == "jobs":
        r["job_split"] = job_split(reg, keep=args.keep, log=log.info)
    if args.what == "run":
        r["timeline"] = run_timeline(reg, cores=args.cores)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), r)
    write_text(out.with_suffix(".md"), to_markdown(r))
    log.info("wrote %s and %s", out.with_suffix(".json"), out.with_suffix(".md"))
    return 0


def _bench_feature_dims(reg: Registry) -> dict[str, int]:
    """Input widths for bench: the prepared data's, else (no prepared file yet) the synthetic ones, logged."""
    from mmdistill.data.dataset import read_feature_dims
    from mmdistill.modalities import FEATURE_DIM

    if reg.prepared().is_file():
        dims = read_feature_dims(reg.prepared())
        log.info("bench: feature widths %s from %s", dims, reg.prepared())
        return dims
    log.warning("bench: no prepared data at %s; using the synthetic data's widths %s", reg.prepared(), FEATURE_DIM)
    return dict(FEATURE_DIM)


def cmd_event_attention(args) -> int:
    from mmdistill.io import write_text
    from mmdistill.report.event_attention import event_attention, to_markdown

    reg = _registry(args)
    df = event_attention(reg, args.students)
    out = reg.results_root / "event_attention"
    write_text(out.with_suffix(".csv"), df.to_csv(index=False, float_format="%.5f"))
    write_text(out.with_suffix(".md"), to_markdown(df))
    log.info("wrote %s.csv and .md", out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmdistill",
        description=__doc__.split("\n")[0],
        epilog=_examples_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--params",
        default=None,
        help="parameter file (default: params.yaml; in a Snakemake job: the configuration Snakemake was given)",
    )
    common.add_argument(
        "--override",
        action="append",
        metavar="YAML",
        help="YAML file deep-merged over the parameters (repeatable; like snakemake --configfile)",
    )
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error, not only its message")
    sub = p.add_subparsers(dest="step", required=True)
    sub.add_parser("validate", parents=[common], help="check the parameters").set_defaults(func=cmd_validate)
    sub.add_parser("download", parents=[common], help="acquire the raw data").set_defaults(func=cmd_download)
    sub.add_parser("prepare", parents=[common], help="raw data -> HDF5").set_defaults(func=cmd_prepare)
    t = sub.add_parser("train", parents=[common], help="train one run")
    t.add_argument(
        "--role",
        choices=["teacher", "student"],
        required=True,
        help="teacher: --name is a key of `teachers:`; student: a key of `students:` (a Table 1 row)",
    )
    t.add_argument(
        "--name",
        required=True,
        help="the run's key in params.yaml under `teachers:` or `students:`, e.g. complete or c5_crd_final",
    )
    t.add_argument(
        "--seed",
        type=int,
        required=True,
        help="one of params.yaml's `seeds:`; a student with seed k distils from teacher seed k",
    )
    t.set_defaults(func=cmd_train)
    sub.add_parser(
        "run-params", parents=[common], help="what each student run uses, one file per run (for DVC)"
    ).set_defaults(func=cmd_run_params)
    sub.add_parser("profile", parents=[common], help="parameters and latency").set_defaults(func=cmd_profile)
    sub.add_parser("report", parents=[common], help="Table 1 and figures").set_defaults(func=cmd_report)
    sub.add_parser(
        "robustness", parents=[common], help="teachers with missing modalities beside the students"
    ).set_defaults(func=cmd_robustness)
    b = sub.add_parser("bench", parents=[common], help="where the time goes (not part of the pipelines)")
    b.add_argument("--out", default="results/bench", help="output path without suffix (.json and .md are written)")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    b.add_argument("--no-full", action="store_true", help="skip MOSEI's full lengths")
    b.add_argument("--full-steps", type=int, default=4, help="timed steps at full length (median)")
    b.add_argument(
        "--what",
        choices=["steps", "rows", "all", "jobs", "run", "gpu"],
        default="all",
        help="steps: step cost and latency cases; rows: every student row's training cost; all: both; "
        "jobs: one whole pipeline job of each kind, split by phase; run: the schedule of a finished run; "
        "gpu: the training step on a GPU at the parameters' sizes (mmdistill.gpu_bench; JSON only)",
    )
    b.add_argument("--row-epochs", type=int, default=3, help="epochs timed per row (median reported)")
    b.add_argument(
        "--keep", metavar="DIR", help="jobs: run the jobs in DIR and keep their outputs (default: a temp dir)"
    )
    b.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count(),
        help="run: the machine's cores (idle = fewer jobs running than cores; default: this machine's)",
    )
    b.add_argument("--device", default=None, help="cpu | cuda | auto (default: train.device of the parameters)")
    b.add_argument("--precisions", default="fp32,bf16", help="--what gpu: precisions timed (comma-separated)")
    b.add_argument(
        "--compile-modes",
        default="reduce-overhead",
        help="--what gpu: torch.compile modes timed against eager (comma-separated; empty: none)",
    )
    b.add_argument("--gpu-steps", type=int, default=10, help="--what gpu: steps per timed block (3 blocks, median)")
    b.add_argument("--budget-s", type=float, default=300.0, help="--what gpu: time budget; later sections are skipped")
    b.set_defaults(func=cmd_bench)
    e = sub.add_parser(
        "event-attention",
        parents=[common],
        help="known_answer data: attention mass on the planted video events, teacher vs students",
    )
    e.add_argument("--students", nargs="+", required=True, help="student rows to measure (with their teacher)")
    e.set_defaults(func=cmd_event_attention)
    return p


def exit_without_teardown(step: str, rc: int) -> None:
    """End a finished training process at once, skipping the interpreter's teardown.

    Tearing down an interpreter that has imported torch (and torch._dynamo, which torch.optim
    imports) costs 1.0-1.2 s of CPU -- a third as much as importing them -- in each of the
    study's training jobs. Every output is already written (atomically) and closed by then;
    the log streams are flushed here. Only for ``train`` and only after success: a failing
    job exits the ordinary way, with its traceback.
    """
    if step != "train" or rc != 0:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    keep_freed_memory()  # speed only: tensors land on pages already faulted in (see mmdistill.allocator)
    known = _known_errors()
    try:
        return args.func(args)
    except known as exc:
        if args.debug:
            raise
        log.error("%s  [--debug shows the traceback]", exc)
        return 2 if isinstance(exc, ParamsError) else 1


def _known_errors() -> tuple[type[Exception], ...]:
    """Failures with a message that says what to fix; anything else is a bug and shows its traceback."""
    from mmdistill.data.dataset import DataError
    from mmdistill.data.download import DownloadError
    from mmdistill.io import CheckpointError
    from mmdistill.train.loop import NonFiniteLossError

    return (ParamsError, MissingInputError, DataError, DownloadError, NonFiniteLossError, CheckpointError)


if __name__ == "__main__":
    raise SystemExit(main())
