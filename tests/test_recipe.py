"""The recipe's pieces against their formulas: schedules, weight scaling, loss reduction."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import tiny_overrides
from helpers import qdnn, read_csv
from qdnn_cli.engine.optim import build_scheduler, lr_factor


def _sched(**kw):
    base = {"name": "cosine", "interval": "epoch", "warmup_epochs": 0, "warmup_steps": 0, "pct_start": 0.15,
            "milestones": [], "gamma": 0.1}
    return OmegaConf.create({**base, **kw})


def test_per_epoch_cosine_with_warmup_values():
    f = lr_factor(_sched(warmup_epochs=1), epochs=5)
    assert f(0) == pytest.approx(0.5)  # (0 + 1) / (1 + 1)
    # then cosine over the 4 remaining epochs
    assert [f(e) for e in (1, 2, 3, 4)] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_per_step_onecycle_values_at_known_steps():
    # 8 epochs × 10 steps = 80 steps; 15 % = 12 warm-up steps, then cosine over 68
    f = lr_factor(_sched(name="onecycle", interval="step"), epochs=8, steps_per_epoch=10)
    assert f(0) == pytest.approx(1 / 13) and f(11) == pytest.approx(12 / 13)
    assert f(12) == pytest.approx(1.0)
    assert f(12 + 34) == pytest.approx(0.5)
    assert f(79) == pytest.approx(0.5 * (1 + math.cos(math.pi * 67 / 68)))


def test_per_step_warmup_steps_and_step_decay_by_epoch():
    f = lr_factor(_sched(name="step", interval="step", warmup_steps=4, milestones=[2], gamma=0.1), epochs=3,
                  steps_per_epoch=5)
    assert [f(p) for p in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(0.1)  # epoch 2 starts at step 10


def test_the_scheduler_moves_once_per_optimizer_step_in_training(tmp_path):
    run = tmp_path / "run"
    # 96 images / batch 32 = 3 steps per epoch, 2 epochs, one-cycle with 1/6 warm-up
    r = qdnn("train", "quickstart", *tiny_overrides(run, "sched.name=onecycle", "sched.interval=step",
                                                    "sched.pct_start=0.1667"))
    assert r.exit_code == 0, r.output
    lrs = [float(x["lr"]) for x in read_csv(run / "metrics.csv") if x["split"] == "train" and x["mode"] == "32"]
    f = lr_factor(_sched(name="onecycle", interval="step", pct_start=0.1667), epochs=2, steps_per_epoch=3)
    base = 0.05  # quickstart's optim.lr
    assert lrs == pytest.approx([base * f(2), base * f(5)])  # the lr of each epoch's last step


def test_bad_schedule_settings_are_one_line(tmp_path):
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "sched.warmup_steps=5"))
    assert r.exit_code == 2 and "sched.warmup_steps needs sched.interval=step" in r.output
    r = qdnn("train", "quickstart", *tiny_overrides(tmp_path / "r", "sched.interval=batch"))
    assert r.exit_code == 2 and "sched.interval='batch' is not allowed" in r.output
