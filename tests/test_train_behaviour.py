"""The training loop's documented behaviour beyond determinism and resume: the weights kept are
the best validation epoch's, early stopping, the learning-rate schedule, the history it
returns, device choice, and a non-finite loss leaving the last good checkpoint in place."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from mmdistill.train import loop
from mmdistill.train.loop import NonFiniteLossError, TrainConfig, evaluate, resolve_device
from tests.test_train import CFG, fit, make_split

pytestmark = pytest.mark.usefixtures("one_thread")


def test_history_and_best_weights(tmp_path, monkeypatch):
    snapshots = {}
    real_save = loop.save_resume

    def keep(path, config_hash, model, *args, **kwargs):
        state = args[-2]
        snapshots[state["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_save(path, config_hash, model, *args, **kwargs)

    monkeypatch.setattr(loop, "save_resume", keep)
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 4, "early_stop": 10, "lr": 0.05})
    model, res = fit(tmp_path, "r", cfg)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4] and res.epochs_run == 4
    for h in res.history:
        assert set(h) == {
            "epoch",
            "train_loss",
            "train_ce",
            "valid_loss",
            "valid_acc7",
            "valid_f1_weighted",
            "lr",
            "seconds",
        }
        assert h["train_loss"] == pytest.approx(h["train_ce"])  # no distillation term
        assert 0 <= h["valid_acc7"] <= 1 and h["seconds"] > 0
    losses = [h["valid_loss"] for h in res.history]
    best = min(range(4), key=lambda i: losses[i])
    assert res.best_epoch == best + 1 and res.best_valid_loss == losses[best]
    assert res.train_seconds == pytest.approx(sum(h["seconds"] for h in res.history))
    # the model returned holds the best epoch's weights, and its validation loss is the best one
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[best + 1][k]), k
    assert evaluate(model, make_split("valid", 16, 2), 16, torch.device("cpu"))["loss"] == pytest.approx(losses[best])
    assert not math.isinf(res.best_valid_loss)


def script_validation_losses(monkeypatch, losses: list[float]) -> None:
    """Make the per-epoch validation report ``losses`` in turn (the rest of its metrics real)."""
    values = iter(losses)
    real_evaluate = loop.evaluate

    def scripted(*args, **kwargs):
        out = real_evaluate(*args, **kwargs)
        out["loss"] = next(values)
        return out

    monkeypatch.setattr(loop, "evaluate", scripted)


def test_early_stop_and_learning_rate_schedule(tmp_path, monkeypatch):
    # the validation loss never improves after epoch 1: the learning rate is cut after
    # lr_patience bad epochs, and the run stops after early_stop bad epochs
    script_validation_losses(monkeypatch, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 8, "early_stop": 3, "lr_patience": 1, "lr_factor": 0.5})
    _, res = fit(tmp_path, "r", cfg)
    assert res.epochs_run == 4 and res.best_epoch == 1  # 1 good epoch, then 3 bad ones
    assert [h["lr"] for h in res.history] == pytest.approx([3e-3, 3e-3, 1.5e-3, 1.5e-3])


def test_early_stopping_counts_consecutive_bad_epochs(tmp_path, monkeypatch):
    script_validation_losses(monkeypatch, [1.0, 2.0, 0.5, 3.0, 4.0, 5.0, 6.0])
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 7, "early_stop": 2, "lr_patience": 10})
    _, res = fit(tmp_path, "stop", cfg)
    assert res.best_epoch == 3 and res.epochs_run == 5  # the improvement at epoch 3 restarts the count


def test_a_finished_run_started_again_trains_no_more(tmp_path):
    model, res = fit(tmp_path, "done", CFG)
    again_model, again = fit(tmp_path, "done", CFG)
    assert again.resumed_from_epoch == CFG.epochs == again.epochs_run
    assert again.history == res.history
    for a, b in zip(model.state_dict().values(), again_model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_file_from_other_settings_is_named_in_a_warning(tmp_path, caplog):
    fit(tmp_path, "x", TrainConfig(**{**CFG.__dict__, "epochs": 1}))
    caplog.set_level(logging.WARNING, logger="mmdistill.train.loop")
    _, res = fit(tmp_path, "other", resume="x", config_hash="other")
    assert res.resumed_from_epoch == 0
    assert "test/other" in caplog.text and "x.pt was written under other settings; starting afresh" in caplog.text


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2})
    good = make_split("train", 48, 1)
    _, first = fit(tmp_path, "nan", TrainConfig(**{**CFG.__dict__, "epochs": 1}), train_split=good)
    ckpt = torch.load(tmp_path / "nan.pt", weights_only=False)
    bad = make_split("train", 48, 1)
    bad.inputs["V"][:, -1, :] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"test/nan: training loss is non-finite at epoch 2, step 1/3") as err:
        fit(tmp_path, "nan", cfg, train_split=bad)
    assert str(tmp_path / "nan.pt") in str(err.value)
    kept = torch.load(tmp_path / "nan.pt", weights_only=False)
    assert kept["state"]["epoch"] == 1 == ckpt["state"]["epoch"]
    for k, v in ckpt["model"].items():
        assert torch.equal(v, kept["model"][k]), k


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="train.device is 'cuda' but no CUDA device is available"):
            resolve_device("cuda")
    assert TrainConfig.from_dict(CFG.__dict__) == CFG
    with pytest.raises(TypeError):
        TrainConfig.from_dict({**CFG.__dict__, "epochz": 3})


def test_device_auto_picks_cuda_when_torch_reports_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")  # no error when a GPU is there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


def test_set_determinism_seeds_threads_and_deterministic_kernels():
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        loop.set_determinism(11, 1, torch.device("cpu"))
        first = torch.rand(4)
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        torch.manual_seed(11)
        assert torch.equal(first, torch.rand(4))  # the global generator was seeded with the seed given
    finally:
        torch.use_deterministic_algorithms(was)


def test_teacher_internals_cached_exactly_up_to_the_budget(caplog):
    # one batch of 4 samples holding 4 * 2 * 8 * 8 float32 scores = 2,048 bytes: 512 per sample,
    # so 1,000 samples need 0.512 MB
    out = loop.ModelOutput(torch.zeros(4, 7), torch.zeros(4, 3), attention={"V<-A": [torch.zeros(4, 2, 8, 8)]})
    caplog.set_level(logging.INFO, logger="mmdistill.train.loop")
    assert loop.TeacherCache._fits(out, 4, 1000, budget_mb=0.512)
    assert "1 MB for the split, teacher_cache_mb=0.512: cached once" in caplog.text
    assert not loop.TeacherCache._fits(out, 4, 1000, budget_mb=0.511)
    assert "teacher_cache_mb=0.511: computed per step" in caplog.text
    assert not loop.TeacherCache._fits(out, 4, 3000, budget_mb=1.5)  # 1.536 MB needed


def test_progress_bar_and_epoch_log_line(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="mmdistill.train.loop")
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2})
    _, res = fit(tmp_path, "bar", cfg, progress=True)
    bar = capsys.readouterr().err
    # one bar per epoch over its 3 steps (not on a terminal: drawn at the start, then every 30 s)
    assert "test/bar epoch 1/2:   0%|          | 0/3" in bar and "test/bar epoch 2/2:   0%|          | 0/3" in bar
    for h in res.history:
        line = (
            f"test/bar epoch {h['epoch']}: train loss {h['train_loss']:.4f}, valid loss {h['valid_loss']:.4f} "
            f"acc7 {h['valid_acc7']:.4f} f1 {h['valid_f1_weighted']:.4f} ({h['seconds']:.1f}s)"
        )
        assert line in caplog.text
    fit(tmp_path, "quiet", cfg)
    assert "test/quiet" not in capsys.readouterr().err  # no bar when progress is off


def test_resume_checkpoint_holds_what_resume_restores(tmp_path):
    fit(tmp_path, "ck", TrainConfig(**{**CFG.__dict__, "epochs": 1}), config_hash="abc")
    ckpt = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert set(ckpt) == {
        "config_hash",
        "model",
        "optimizer",
        "scheduler",
        "kd_loss",
        "generator",
        "torch_rng",
        "cuda_rng",
        "state",
    }
    assert ckpt["config_hash"] == "abc" and ckpt["kd_loss"] is None and ckpt["cuda_rng"] is None
    assert ckpt["state"]["epoch"] == 1 and ckpt["state"]["best_epoch"] == 1
    assert ckpt["optimizer"]["state"], "the optimizer's moments are saved"
