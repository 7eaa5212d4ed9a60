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
    assert c1 and all(r["baselines"][r["rows"][n]["architecture"]]["row"] is None for n in c1)
    md = rows_markdown(r)
    assert all(f"| {n} |" in md for n in reg.students)
