"""Table 1's text and edge cases, and the paired statistics' less common paths, on hand-made
numbers (no pipeline run)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mmdistill.io import read_json
from mmdistill.registry import Registry
from mmdistill.report import stats
from mmdistill.report.stats import PAIRED_NOTE, add_paired_stats, format_difference, paired_test, sign_flip_p
from mmdistill.report.table import cost_ratios, student_description, to_markdown

PROFILE = {"device": "cpu", "threads": 2}


def row(network, name, **kw) -> dict:
    base = {
        "group": "",
        "network": network,
        "name": name,
        "description": f"{network} {name}",
        "method": "none" if network == "Student" else "",
        "n_seeds": 2,
        "acc_mean": 40.0,
        "acc_std": 1.0,
        "f1_mean": 30.0,
        "f1_std": 2.0,
        "paper_acc": math.nan,
        "paper_f1": math.nan,
        "parameters": 1000,
        "latency_b1_ms": 1.0,
    }
    return {**base, **kw}


def test_student_descriptions(params):
    params["students"]["uni"] = {**params["students"]["c5_msd_meta"], "options": {"weighting": "uniform"}}
    reg = Registry(params)
    d = {n: student_description(s) for n, s in reg.students.items() if s.distils}
    assert d["c5_crd_attn"] == "CRD on attention maps"
    assert d["c2_crd_penult"] == "CRD on penultimate linear layer"
    assert d["c5_crd_post"] == "CRD on post-attention linear layers"
    assert d["c5_crd_final"] == "CRD on final linear layer"
    assert d["c5_edam_s_attn"] == "EDAM-S↓ on attention maps"
    assert d["c5_edam_t_attn"] == "EDAM-T↑ on attention maps"
    assert d["c5_hinton"] == "Hinton KD on final linear layer"
    assert d["c5_msd_population"] == "MSD (population modality weights; beyond the paper) on final linear layer"
    assert d["c5_msd_instance"] == "MSD (instance-wise modality weights; beyond the paper) on final linear layer"
    assert d["c5_msd_meta"] == "MSD (meta-learned modality weights; beyond the paper) on final linear layer"
    assert d["uni"] == "MSD (uniform modality weights; beyond the paper) on final linear layer"
    assert d["c5_distillvlm"] == (
        "DistillVLM (attention MSE, token InfoNCE, logit KD; beyond the paper) on attention maps"
    )


def test_markdown_groups_single_seed_and_missing_values():
    table = pd.DataFrame(
        [
            row("Student", "nokd", n_seeds=1, acc_std=math.nan, f1_std=math.nan, paper_acc=41.296, paper_f1=32.142),
            row("Teacher", "t", group="G one", acc_mean=math.nan, parameters=1234567, latency_b1_ms=math.nan),
            row("Student", "s", group="G one", method="crd"),
            row("Teacher", "u", group="G two", latency_b1_ms=12.345),
        ]
    )
    md = to_markdown(table, None, PROFILE, "synthetic")
    lines = md.splitlines()
    assert lines[0].startswith("# Table 1 — data: `synthetic`")
    assert "on cpu with 2 thread(s)" in md
    body = [line for line in lines if line.startswith("| ") and not line.startswith("| Network")]
    assert body == [
        "| Student | Student nokd | 1 | 40.00 | 41.296 | 30.00 | 32.142 | 1,000 | 1.00 |",
        "| **G one** | | | | | | | | |",
        "| Teacher | Teacher t | 2 | n/a | – | 30.00 ± 2.00 | – | 1,234,567 | – |",
        "| Student | Student s | 2 | 40.00 ± 1.00 | – | 30.00 ± 2.00 | – | 1,000 | 1.00 |",
        "| **G two** | | | | | | | | |",
        "| Teacher | Teacher u | 2 | 40.00 ± 1.00 | – | 30.00 ± 2.00 | – | 1,000 | 12.35 |",
    ]
    assert PAIRED_NOTE not in md and "Best distilled student" not in md
    assert md.endswith("\n") and not md.endswith("\n\n")
    header = next(line for line in lines if line.startswith("| Network"))
    assert header.count("|") == 10 and "Δ" not in header


def test_markdown_with_paired_columns(params):
    params["seeds"] = [0, 1, 2]
    reg = Registry(params)
    runs = pd.DataFrame(
        [{"role": "student", "name": "nokd", "seed": k, "acc": 40.0 + k, "f1": 30.0} for k in range(3)]
        + [{"role": "student", "name": "c5_hinton", "seed": k, "acc": 43.0 + 2 * k, "f1": 31.0} for k in range(3)]
    )
    table = pd.DataFrame([row("Student", "nokd"), row("Student", "c5_hinton", group="G", method="hinton")])
    out = add_paired_stats(table, reg, runs)
    assert list(out.baseline) == ["", "nokd"] and out.n_pairs.isna()[0] and out.n_pairs[1] == 3
    md = to_markdown(out, None, PROFILE, "synthetic")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Network"))
    assert header.endswith("| Latency b1 (ms) | Δ acc. vs no KD | Δ F1 vs no KD | no-KD row compared |")
    assert (
        next(line for line in lines if line.startswith("|---")) == "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    assert "| **G** | | | | | | | | | | | |" in lines
    hinton = next(line for line in lines if "c5_hinton" in line)
    assert hinton.endswith(f"| {format_difference(out.iloc[1], 'acc')} | +1.00 (sd 0) | `nokd` |")
    assert format_difference(out.iloc[1], "acc").startswith("+4.00 [")
    nokd = next(line for line in lines if "Student nokd" in line)
    assert nokd.endswith("| – | – | – |")
    assert lines[-1] == PAIRED_NOTE and lines[-2] == ""


def test_cost_line_text():
    ratios = {
        "best_student": "s",
        "teacher": "t",
        "student_parameters": 675000,
        "teacher_parameters": 1802000,
        "parameter_ratio": 1802000 / 675000,
        "student_latency_ms": 29.0,
        "teacher_latency_ms": 37.2,
        "latency_reduction": 1 - 29.0 / 37.2,
    }
    md = to_markdown(pd.DataFrame([row("Student", "s")]), ratios, PROFILE, "x")
    assert md.endswith(
        "\n\nBest distilled student (mean validation accuracy) `s`: 675,000 parameters vs 1,802,000 for the "
        "complete teacher `t` (2.67x fewer; paper: 2.5x), batch-1 latency 29.00 ms vs 37.20 ms "
        "(22% less; paper: 22% less).\n"
    )


def test_cost_line_edge_cases(params):
    reg = Registry(params)
    runs = pd.DataFrame(
        [
            {"role": "student", "name": "nokd", "seed": 0, "valid_acc": 30.0},
            {"role": "student", "name": "other", "seed": 0, "valid_acc": 50.0},
            {"role": "teacher", "name": "complete", "seed": 0, "valid_acc": 99.0},
        ]
    )
    teacher = row("Teacher", "complete", parameters=4000, latency_b1_ms=4.0)
    only_nokd = pd.DataFrame([row("Student", "nokd", parameters=1000, latency_b1_ms=1.0), teacher])
    r = cost_ratios(only_nokd, reg, runs)  # no distilled student: the students without KD compete
    assert r["best_student"] == "nokd" and r["teacher"] == "complete"
    assert r["parameter_ratio"] == 4.0 and r["latency_reduction"] == 0.75
    assert isinstance(r["student_parameters"], int) and isinstance(r["teacher_latency_ms"], float)
    both = pd.DataFrame([row("Student", "nokd"), row("Student", "other", method="crd", parameters=2000), teacher])
    assert cost_ratios(both, reg, runs)["best_student"] == "other"
    assert cost_ratios(both[both.network == "Student"], reg, runs) is None  # no complete teacher row
    assert cost_ratios(both[both.network == "Teacher"], reg, runs) is None  # no student row
    video = pd.DataFrame([row("Student", "other", method="crd"), row("Teacher", "video")])
    assert cost_ratios(video, reg, runs) is None  # the video teacher is not the complete one
    assert cost_ratios(both.drop(columns="latency_b1_ms"), reg, runs) is None


def test_format_difference_cells():
    r = pd.Series({"d_acc": 1.234, "d_acc_ci_low": -0.5, "d_acc_ci_high": 2.0, "n_pairs": 3})
    assert format_difference(r, "acc") == "+1.23 [-0.50, +2.00]"
    r = pd.Series({"d_acc": 0.1, "d_acc_ci_low": -0.3, "d_acc_ci_high": 0.5, "n_pairs": 3})
    assert format_difference(r, "acc") == "+0.10 [-0.30, +0.50]"  # the interval holds 0: no mark
    r = pd.Series({"d_acc": -2.0, "d_acc_ci_low": -3.0, "d_acc_ci_high": -1.0, "n_pairs": 3})
    assert format_difference(r, "acc") == "-2.00 [-3.00, -1.00] ✓"
    r = pd.Series({"d_acc": 2.0, "d_acc_ci_low": math.nan, "d_acc_ci_high": math.nan, "n_pairs": 1})
    assert format_difference(r, "acc") == "+2.00"  # one seed: the difference alone
    r = pd.Series({"d_acc": 2.0, "d_acc_ci_low": math.nan, "d_acc_ci_high": math.nan, "n_pairs": 2})
    assert format_difference(r, "acc") == "+2.00 (sd 0)"
    assert format_difference(pd.Series({"d_acc": math.nan}), "acc") == "–"
    assert format_difference(pd.Series({"x": 1}), "acc") == "–"


def test_paired_test_confidence_and_empty():
    a, b = np.array([45.0, 44.0, 46.0, 50.0]), np.array([44.0, 42.0, 43.0, 44.0])
    r95, r80 = paired_test(a, b), paired_test(a, b, confidence=0.8)
    assert r80.ci_low > r95.ci_low and r80.ci_high < r95.ci_high and r80.p_t == r95.p_t
    assert r80.ci_high - r80.mean == pytest.approx(1.6377443536962102 * math.sqrt(14 / 3) / 2)  # t_{0.9, 3}
    empty = paired_test(np.array([]), np.array([]))
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.mean, empty.ci_low, empty.p_t, empty.p_perm))
    with pytest.raises(ValueError, match="1-D"):
        paired_test(np.ones((2, 2)), np.ones((2, 2)))
    neg = paired_test(np.array([1.0, 1.5, 2.0]), np.array([3.0, 4.0, 5.0]))
    assert neg.ci_high < 0 and neg.holds
    assert not paired_test(np.array([1.0, 2.0]), np.array([2.0, 1.0])).holds


def test_sign_flip_above_the_exact_limit_is_a_seeded_monte_carlo():
    d = np.random.default_rng(2).standard_normal(stats.MAX_EXACT_PAIRS + 4) + 0.2  # p near 0.47
    p1, p2 = sign_flip_p(d), sign_flip_p(d)
    assert p1 == p2  # a fixed seed when no generator is given
    p3 = sign_flip_p(d, np.random.default_rng(1))
    # the exact p-value (2^20 patterns, counted here in chunks) lies within Monte-Carlo error of both
    n = len(d)
    hits = 0
    for lo in range(0, 2**n, 2**16):
        codes = np.arange(lo, lo + 2**16)[:, None]
        signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)
        hits += int(np.sum(np.abs(signs @ d) / n >= abs(d.mean()) - 1e-12))
    exact = hits / 2**n
    se = math.sqrt(exact * (1 - exact) / stats.N_RANDOM_FLIPS)
    for p in (p1, p3):
        assert abs(p - exact) < 5 * se + 1 / stats.N_RANDOM_FLIPS
        assert 0.3 < p < 0.6
    assert stats.MAX_EXACT_PAIRS == 16
    # at the limit the count is exact: 2 of 2^16 patterns reach |mean| of all-equal differences
    assert sign_flip_p(np.ones(stats.MAX_EXACT_PAIRS)) == 2 / 2**16


def test_no_baseline_gives_an_empty_frame_and_a_message(params, caplog):
    params["students"] = {k: v for k, v in params["students"].items() if v["method"] != "none"}
    reg = Registry(params)
    runs = pd.DataFrame([{"role": "student", "name": "c5_hinton", "seed": 0, "acc": 1.0, "f1": 1.0}])
    caplog.set_level("INFO", logger="mmdistill.report.stats")
    diffs = stats.paired_differences(reg, runs)
    assert diffs.empty and list(diffs.columns[:3]) == ["name", "baseline", "n_pairs"]
    assert len(diffs.columns) == 3 + 2 * 5
    assert "no student without distillation" in caplog.text


def test_baseline_is_the_no_kd_student_of_the_same_architecture_else_the_papers(params):
    reg = Registry(params)
    pairs = stats.baselines(reg)
    # the 9-transformer student and EDAM-T's full-length proxies have no-KD rows of their own;
    # the 3-transformer students of every configuration share the paper's no-KD row
    assert pairs["c1_edam_s_attn"] == "nokd_c1" and pairs["c5_edam_t_attn"] == "nokd_c5_full"
    assert pairs["c2_crd_final"] == pairs["c5_hinton"] == "nokd"
    assert set(pairs) == {n for n, s in reg.students.items() if s.distils}


def test_paired_differences_use_the_confidence_given(params):
    params["seeds"] = [0, 1, 2]
    reg = Registry(params)
    runs = pd.DataFrame(
        [{"role": "student", "name": "nokd", "seed": k, "acc": 40.0 + k, "f1": 30.0 + k * k} for k in range(3)]
        + [{"role": "student", "name": "c5_hinton", "seed": k, "acc": 43.0 + 2 * k, "f1": 31.0} for k in range(3)]
    )
    wide = stats.paired_differences(reg, runs).set_index("name").loc["c5_hinton"]
    narrow = stats.paired_differences(reg, runs, confidence=0.5).set_index("name").loc["c5_hinton"]
    assert narrow.d_acc_ci_low > wide.d_acc_ci_low and narrow.d_acc_ci_high < wide.d_acc_ci_high
    assert narrow.d_acc == wide.d_acc == 4.0


def test_table_rows_columns_and_teachers_without_students(params, tmp_path):
    from mmdistill.registry import Run
    from mmdistill.report.table import collect_runs, table1
    from tests.test_table_numbers import write_results

    params["students"] = {k: v for k, v in params["students"].items() if v["teacher"] in (None, "video")}
    reg = Registry(params, root=tmp_path)
    write_results(reg, np.random.default_rng(3))
    runs = collect_runs(reg)
    m = read_json(reg.metrics(Run("teacher", "audio", reg.seeds[0])))
    row = runs[(runs.role == "teacher") & (runs.name == "audio") & (runs.seed == reg.seeds[0])].iloc[0]
    for col, key in (("mae", "mae"), ("pearson", "pearson")):
        assert row[col] == m["test"][key]
    for col in ("parameters", "epochs_run", "best_epoch", "train_seconds"):
        assert row[col] == m[col]
    assert row.valid_acc == pytest.approx(100 * m["valid"]["acc7"])
    table = table1(reg, runs, read_json(reg.profile()))
    nokd = table[table.name == "nokd"].iloc[0]
    assert (nokd.group, nokd.configuration, nokd.teacher, nokd.method, nokd.level) == (
        "",
        "language_audio",
        "",
        "none",
        "",
    )
    crd = table[table.name == "c2_crd_final"].iloc[0]
    assert (crd.group, crd.configuration, crd.teacher, crd.method, crd.level) == (
        "KD from Video Branch",
        "video",
        "video",
        "crd",
        "final",
    )
    # teachers no student distils from close the table, in their own group, with the paper's value
    rest = table[table.group == "Teachers without a student"]
    assert list(rest.name) == ["complete", "language", "audio"] and (rest.network == "Teacher").all()
    assert list(table.name[-3:]) == ["complete", "language", "audio"]
    audio = rest[rest.name == "audio"].iloc[0]
    assert audio.description == "Teacher 'audio' (branches A)" and audio.paper_acc == 49.217
    assert (audio.configuration, audio.teacher, audio.method, audio.level) == ("", "", "", "")
    assert table[table.name == "complete"].iloc[0].description == "Teacher 'complete' (branches V+A+L)"
    assert table[table.name == "video"].iloc[0].group == "KD from Video Branch"


def test_heading_names_the_data_label_rule_and_a_split_that_is_not_the_standard_one():
    table = pd.DataFrame([row("Student", "s")])
    preamble = (
        "Accuracy and weighted F1 on the test split in percent, mean ± std over seeds; the paper's values "
        "(CMU-MOSEI unaligned) beside ours. Latency: median inference time per forward pass on cpu with 2 thread(s)."
    )
    standard = to_markdown(table, None, PROFILE, "synthetic").splitlines()
    assert standard[:5] == [
        "# Table 1 — data: `synthetic`; 7 classes: numpy.round(clip(y, -3, 3)) (label rule `round`)",
        "",
        preamble,
        "",
        "| Network | Description | Seeds | Accuracy (%) | Paper acc. | F1 (%) | Paper F1 | Parameters "
        "| Latency b1 (ms) |",
    ]
    assert standard[5] == "|---|---|---|---|---|---|---|---|---|"
    other = to_markdown(table, None, PROFILE, "sdk_csd", "sdk", split="hash split of the video ids").splitlines()
    assert other[:7] == [
        "# Table 1 — data: `sdk_csd`; 7 classes: SDK cmumosei_round(clip(y, -3, 3)) (label rule `sdk`)"
        " — NOT the standard split",
        "",
        "**Split: hash split of the video ids. The paper's values below are on the standard split.**",
        "",
        preamble,
        "",
        standard[4],
    ]


def test_split_note_comes_from_the_summary():
    from mmdistill.report.table import split_note

    folds = {"standard": False, "description": "hash split (seed 0)"}
    assert split_note({"raw": {"folds": folds}}) == "hash split (seed 0)"
    assert split_note({"raw": {"folds": {"standard": False}}}) == "not the standard split"
    assert split_note({"raw": {"folds": {**folds, "standard": True}}}) is None
    assert split_note({"raw": {"folds": {"description": "x"}}}) is None  # standard unless said otherwise
    assert split_note({"raw": {"folds": "standard"}}) is None and split_note({}) is None


def test_no_kd_descriptions(params):
    from mmdistill.report.table import nokd_description

    params["students"]["nokd_half"] = {**params["students"]["nokd"], "train_fraction": 0.5}
    params["students"]["nokd_c1_half"] = {**params["students"]["nokd_c1"], "train_fraction": 0.5}
    reg = Registry(params)
    s = reg.students
    assert nokd_description(s["nokd"], True) == "Without KD (language_audio student)"
    assert nokd_description(s["nokd_half"], False) == "Without KD (language_audio student (50 % of the training set))"
    beyond = "baseline of its architecture, beyond the paper)"
    assert nokd_description(s["nokd_c1"], False) == f"Without KD (complete student, 9 transformers; {beyond}"
    assert nokd_description(s["nokd_c1_half"], False) == (
        f"Without KD (complete student, 9 transformers (50 % of the training set); {beyond}"
    )
    assert nokd_description(s["nokd_c5_full"], False) == (
        f"Without KD (language_audio student, 3 transformers, full-length proxies; {beyond}"
    )


def test_teacher_rows_leave_the_student_columns_empty(params, tmp_path):
    from mmdistill.report.table import collect_runs, table1
    from tests.test_table_numbers import write_results

    reg = Registry(params, root=tmp_path)
    write_results(reg, np.random.default_rng(4))
    table = table1(reg, collect_runs(reg), read_json(reg.profile()))
    teachers = table[table.network == "Teacher"]
    assert len(teachers) >= 4
    for col in ("configuration", "teacher", "method", "level"):
        assert (teachers[col] == "").all(), col
    students = table[table.network == "Student"]
    assert (students.train_fraction == 1.0).all() and teachers.train_fraction.isna().all()
    complete = teachers[teachers.name == "complete"].iloc[0]
    assert complete.description == "Teacher 'complete' (branches V+A+L)"


def test_the_best_distilled_student_is_never_a_student_without_kd(params):
    reg = Registry(params)
    runs = pd.DataFrame(
        [
            {"role": "student", "name": "nokd", "seed": 0, "valid_acc": 60.0},  # the highest, but no KD
            {"role": "student", "name": "other", "seed": 0, "valid_acc": 50.0},
        ]
    )
    table = pd.DataFrame(
        [row("Student", "nokd"), row("Student", "other", method="crd"), row("Teacher", "complete", latency_b1_ms=10.0)]
    )
    r = cost_ratios(table, reg, runs)
    assert r["best_student"] == "other"
    # the latency reduction is shown in whole percent: 1 - 1.0 / 10.0 = 90 %
    assert "(90% less; paper: 22% less)." in to_markdown(table, r, PROFILE, "x")


def test_mean_and_sample_sd_over_seeds():
    from mmdistill.report.table import _stats

    assert _stats(pd.Series([1.0, 3.0])) == (2.0, pytest.approx(2**0.5))  # 2 seeds have an sd
    mean, sd = _stats(pd.Series([4, 5, 9]))
    assert mean == 6.0 and sd == pytest.approx(np.std([4, 5, 9], ddof=1))
    one = _stats(pd.Series([7.0]))
    assert one[0] == 7.0 and math.isnan(one[1])


def test_a_second_no_kd_row_of_the_papers_architecture_is_marked_beyond_the_paper(params):
    from mmdistill.report.table import nokd_description

    params["students"]["nokd_again"] = dict(params["students"]["nokd"])
    s = Registry(params).students["nokd_again"]
    assert nokd_description(s, False) == (
        "Without KD (language_audio student, 3 transformers; baseline of its architecture, beyond the paper)"
    )
