import pytest

from mmdistill.bench import CASES, Setting, run_case, to_markdown

TINY = Setting("tiny", {"d_model": 8, "n_heads": 2, "n_layers": 1}, {"V": 10, "A": 10, "L": 5}, 4, 2)


def test_every_case_runs_and_counts_flops():
    for case in CASES:
        r = run_case(case, TINY, "cpu", 1)
        assert r["step_s"] > 0 and r["steps_timed"] == 2
        assert r["flops_per_step"] > 0 and r["parameters"] > 0


def test_attention_kd_counts_more_flops_than_nokd():
    nokd = run_case("student_nokd", TINY, "cpu", 1)
    attn = run_case("student_attention_kd", TINY, "cpu", 1)
    assert attn["flops_per_step"] > nokd["flops_per_step"]  # the teacher's forward pass is added


def test_markdown_has_a_row_per_case():
    case = {"step_s": 0.01, "gflops_per_s": 1.0, "fraction_of_matmul": 0.1, "peak_mem_mb": 5.0, "parameters": 10}
    inf = {
        "teacher": {"b1_ms": 2.0, "b32_ms": 9.0},
        "student": {"b1_ms": 1.0, "b32_ms": 3.0},
        "student_over_teacher_b1": 0.5,
    }
    r = {
        "device": "cpu",
        "processor": "x",
        "threads": 1,
        "torch": "t",
        "matmul_gflops": 10.0,
        "settings": {
            "default": {
                "train_step": {c: case for c in CASES},
                "inference": inf,
                "lengths": TINY.lengths,
                "batch_size": 4,
                "ratios": {"attention_kd_over_nokd_step": 1.2},
            }
        },
    }
    md = to_markdown(r)
    assert all(f"| default | {c} |" in md for c in CASES)


def test_flop_counter_counts_fused_attention_on_cpu():
    import torch
    import torch.nn.functional as F

    from mmdistill.bench import flop_counter

    B, H, Tq, Tk, dh = 2, 3, 7, 5, 4
    q = torch.randn(B, H, Tq, dh, requires_grad=True)
    k = torch.randn(B, H, Tk, dh, requires_grad=True)
    v = torch.randn(B, H, Tk, dh, requires_grad=True)
    counter = flop_counter()
    with counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    one_product = 2 * B * H * Tq * Tk * dh
    assert counter.get_total_flops() == (2 + 5) * one_product  # forward 2 products, backward 5


def test_row_costs_cover_every_student_row_against_a_same_architecture_baseline(params):
    from mmdistill.bench import row_costs, rows_markdown
    from mmdistill.registry import Registry

    reg = Registry(params)
    r = row_costs(reg, epochs=1, log=lambda *a: None)
    assert set(r["rows"]) == set(reg.students)
    for x in r["rows"].values():
        assert x["epoch_s"] > 0 and x["over_same_architecture_nokd"] > 0
        base = r["baselines"][x["architecture"]]
        assert base["parameters"] == x["parameters"]  # the baseline has the row's architecture
    assert r["rows"]["nokd"]["over_same_architecture_nokd"] == 1.0
    # the 9-transformer student of configuration 1 gets a no-KD baseline of its own size
    c1 = [n for n in reg.students if reg.students[n].configuration == "complete"]
    for n in c1:
        base = r["baselines"][r["rows"][n]["architecture"]]
        assert base["parameters"] == r["rows"][n]["parameters"]
        assert base["row"] is None or r["rows"][base["row"]]["method"] == "none"  # a timed extra or a no-KD row
    md = rows_markdown(r)
    assert all(f"| {n} |" in md for n in reg.students)


def test_job_split_runs_each_kind_and_its_phases_add_up_to_the_job_time(params, tmp_path):
    from mmdistill.bench import JOB_KINDS, job_split, jobs_markdown
    from mmdistill.registry import Registry

    reg = Registry(params, root=tmp_path / "project")  # no prepared data there: prepared in the scratch dir
    r = job_split(reg, keep=str(tmp_path / "jobs"), log=lambda *a: None)
    assert set(r["jobs"]) == set(JOB_KINDS)
    assert r["data_preparation_s"] > 0
    for kind, j in r["jobs"].items():
        ph = j["phases_s"]
        assert ph["startup"] > 0 and ph["steps"] > 0 and ph["data"] > 0, kind
        # the recorded phases cover the job: what none covers (process spawn, exit) is a small rest
        assert -0.05 < ph["other"] < 0.2 * j["wall_s"], (kind, ph["other"], j["wall_s"])
        assert abs(sum(ph.values()) - j["wall_s"]) < 1e-6
    assert r["jobs"]["teacher"]["phases_s"]["teacher"] < 0.01  # no teacher to load
    assert r["jobs"]["student_attention_kd"]["phases_s"]["teacher_cache"] > 0
    assert r["jobs"]["student_output_kd"]["run"] == "students/c5_hinton/seed0"
    md = jobs_markdown(r)
    assert all(f"| {k} |" in md for k in JOB_KINDS)


def _write_timed_metrics(reg, run, start: float, end: float, steps: float) -> None:
    from mmdistill.io import write_json

    seconds = {"startup": 1.0, "steps": steps}
    write_json(
        reg.metrics(run), {"epochs_run": 3, "timing": {"started_at": start, "ended_at": end, "seconds": seconds}}
    )


def test_run_timeline_reads_span_tail_idle_and_critical_path(params, tmp_path):
    from mmdistill.bench import run_timeline, timeline_markdown
    from mmdistill.registry import Registry, Run

    params["seeds"] = [0]
    params["teachers"] = {"complete": params["teachers"]["complete"]}
    params["students"] = {n: params["students"][n] for n in ("nokd", "c5_hinton", "c1_edam_s_attn")}
    reg = Registry(params, root=tmp_path)
    t = 1000.0
    _write_timed_metrics(reg, Run("teacher", "complete", 0), t, t + 10, 8)
    _write_timed_metrics(reg, Run("student", "nokd", 0), t, t + 4, 3)
    _write_timed_metrics(reg, Run("student", "c5_hinton", 0), t + 11, t + 14, 3)
    _write_timed_metrics(reg, Run("student", "c1_edam_s_attn", 0), t + 10, t + 30, 18)
    r = run_timeline(reg, cores=2)
    assert r["jobs"] == 4 and r["missing"] == []
    assert r["span_s"] == 30 and r["job_seconds"] == 10 + 4 + 3 + 20
    # two jobs ran until t+4 and again from t+11 to t+14; then one job alone for 16 s
    assert r["tail_s"] == 16 and r["idle_core_s_in_tail"] == 16
    assert r["critical_path"] == {"runs": ["teachers/complete/seed0", "students/c1_edam_s_attn/seed0"], "seconds": 30}
    assert r["lower_bound_s"] == 30
    assert r["phases_s"]["steps"] == 8 + 3 + 3 + 18 and r["phases_s"]["other"] == 37 - 4 - 32
    assert r["longest"][0] == {
        "run": "students/c1_edam_s_attn/seed0",
        "duration_s": 20,
        "started_at_s": 10,
        "start_rank": 3,
    }
    # per row: (job - steps) / job and startup / job, rows by their share outside the steps
    rows = [w["row"] for w in r["rows"]]
    assert rows == ["students/c5_hinton", "students/c1_edam_s_attn", "teachers/complete", "students/nokd"]
    assert r["rows"][2] == {
        "row": "teachers/complete",
        "jobs": 1,
        "mean_job_s": 10,
        "outside_steps": pytest.approx(0.2),
        "startup": pytest.approx(0.1),
    }
    assert r["rows"][0]["outside_steps"] == 0 and r["rows"][3]["outside_steps"] == 0.25
    md = timeline_markdown(r)
    assert "Critical path" in md and "| teachers/complete | 1 | 10.0 | 20.0% | 10.0% |" in md
    reg.metrics(Run("student", "nokd", 0)).unlink()
    assert run_timeline(reg, cores=2)["missing"] == ["students/nokd/seed0"]


SNAKEMAKE_LOG = """Building DAG of jobs...
[Wed Dec  2 07:00:17 2026]
localrule prepare:
    output: data/prepared/synthetic.h5
    jobid: 2
    resources: tmpdir=/tmp
[Wed Dec  2 07:00:27 2026]
Finished jobid: 2 (Rule: prepare)
1 of 3 steps (33%) done
[Wed Dec  2 07:00:27 2026]
localrule train_student:
    jobid: 13
    wildcards: name=nokd, seed=0
    priority: 3
[Wed Dec  2 07:00:28 2026]
rule train_teacher:
    jobid: 4
    wildcards: name=complete, seed=0
[Wed Dec  2 07:01:05 2026]
Finished jobid: 13 (Rule: train_student)
[Wed Dec  2 07:01:30 2026]
Error in rule train_teacher:
"""


def older_run(params, tmp_path):
    """A project in ``tmp_path`` as an older version leaves it: the Snakemake log and one
    student's metrics without ``timing`` (one seed); returns its registry."""
    from mmdistill.registry import Registry, Run

    log = tmp_path / ".snakemake" / "log" / "2026-12-02T070008.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text(SNAKEMAKE_LOG)
    params["seeds"] = [0]
    reg = Registry(params, root=tmp_path)
    reg.metrics(Run("student", "nokd", 0)).parent.mkdir(parents=True)
    reg.metrics(Run("student", "nokd", 0)).write_text('{"test": {}}')
    return reg


def test_snakemake_log_gives_the_jobs_that_recorded_no_timing(params, tmp_path):
    from datetime import datetime

    from mmdistill.bench import run_timeline, snakemake_jobs

    reg = older_run(params, tmp_path)
    jobs = snakemake_jobs(next((tmp_path / ".snakemake" / "log").iterdir()))
    t = datetime(2026, 12, 2, 7, 0, 17).timestamp()
    assert jobs[0] == {"rule": "prepare", "wildcards": {}, "start": t, "end": t + 10}
    assert jobs[1] == {
        "rule": "train_student",
        "wildcards": {"name": "nokd", "seed": "0"},
        "start": t + 10,
        "end": t + 48,
    }
    assert jobs[2]["rule"] == "train_teacher" and jobs[2]["end"] is None  # failed: never finished
    r = run_timeline(reg, cores=2)  # finds the newest log under .snakemake/log
    assert r["jobs"] == 1 and r["timed_by_the_jobs"] == 0 and r["span_s"] == 38
    assert r["workflow"]["span_s"] == 48 and r["workflow"]["rule_seconds"] == {"prepare": 10, "train_student": 38}


def test_timeline_of_an_older_run_reads_no_prepared_data(params, tmp_path):
    # an older version's run: its prepared file is one this version cannot read, and the
    # timeline needs no data, only the metrics and the Snakemake log
    import yaml

    from mmdistill.cli import main

    reg = older_run(params, tmp_path)
    (tmp_path / "params-now.yaml").write_text(yaml.safe_dump(params))
    reg.prepared().parent.mkdir(parents=True, exist_ok=True)
    reg.prepared().write_text("not an HDF5 file of this version")
    out = tmp_path / "timeline"
    assert main(["bench", "--params", str(tmp_path / "params-now.yaml"), "--what", "run", "--out", str(out)]) == 0
    assert "Training jobs of the run: 1 (0 timed by the jobs themselves, 1 from the Snakemake log" in (
        out.with_suffix(".md").read_text()
    )
