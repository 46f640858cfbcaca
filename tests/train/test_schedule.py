"""The lr schedule: official multi-step equals torch's MultiStepLR, warm-up and cosine by hand, resume rebuilds it."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.models import read_checkpoint
from cka_lab.train.config import config_differences, config_to_dict, parse_config
from cka_lab.train.loop import train
from cka_lab.train.schedule import build_scheduler, lr_factor
from tests.train.helpers import tiny_config


def _cfg(optim: str, iterations: int = 20):
    return parse_config(f'[model]\narch = "SRx2_EDTT"\n[schedule]\niterations = {iterations}\n[optim]\n{optim}')


def _lrs(scheduler, optimizer, n):
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_multistep_equals_torch_multistep_lr():
    cfg = _cfg("lr = 2e-4\nmilestones = [0.25, 0.5, 12]\ngamma = 0.5")
    assert cfg.resolved_milestones() == [5, 10, 12]
    p = [torch.nn.Parameter(torch.zeros(1))]
    o1, o2 = torch.optim.Adam(p, lr=2e-4), torch.optim.Adam(p, lr=2e-4)
    ref = torch.optim.lr_scheduler.MultiStepLR(o1, [5, 10, 12], 0.5)
    assert _lrs(build_scheduler(o2, cfg), o2, 20) == _lrs(ref, o1, 20)


def test_warmup_is_linear_then_the_decay():
    cfg = _cfg("lr = 1e-3\nwarmup = 4\nmilestones = [6]\ngamma = 0.1", iterations=10)
    assert [lr_factor(cfg, t) for t in range(8)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 0.1, 0.1])
    assert _cfg("warmup = 0.2", iterations=10).resolved_warmup() == 2


def test_cosine_by_hand():
    cfg = _cfg('lr = 1e-3\nlr_schedule = "cosine"\nwarmup = 2\nmin_lr = 1e-4', iterations=12)
    m = 0.1
    expected = [0.5, 1.0] + [m + (1 - m) * 0.5 * (1 + math.cos(math.pi * (t - 2) / 10)) for t in range(2, 12)]
    assert [lr_factor(cfg, t) for t in range(12)] == pytest.approx(expected, abs=1e-15)
    assert lr_factor(cfg, 7) == pytest.approx((1 + m) / 2)


def test_scheduler_built_at_an_iteration_runs_at_that_iterations_rate():
    cfg = _cfg("lr = 2e-4\nwarmup = 3\nmilestones = [8]", iterations=20)
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.Adam(p, lr=123.0)  # a loaded optimizer state with another lr
    sched = build_scheduler(opt, cfg, start=9)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert sched.last_epoch == 9


@pytest.mark.parametrize(
    "optim, expected",
    [
        ("eps = 0", "optim.eps must be in (0, 1)"),
        ('lr_schedule = "step"', "optim.lr_schedule must be one of multistep, cosine"),
        ('lr_schedule = "cosine"\nmilestones = [0.5]', "optim.milestones apply to lr_schedule = \"multistep\" only"),
        ("warmup = 30", "optim.warmup (30 iterations) is longer than schedule.iterations (20)"),
        ("warmup = 2.5", "optim.warmup must be a number of iterations >= 0 or a fraction below 1"),
        ("milestones = [2.5]", "optim.milestones must be iterations (whole numbers) or fractions below 1"),
        ("min_lr = 1.0", "optim.min_lr must be in [0, optim.lr]"),
        ("gamma = 0", "optim.gamma must be in (0, 1]"),
        ("betas = [0.9, 1.0]", "optim.betas must be in [0, 1)"),
    ],
)
def test_bad_optimiser_values_give_one_line(optim, expected):
    with pytest.raises(CkaLabError) as exc:
        _cfg(optim)
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_a_config_written_before_the_new_keys_resumes_with_their_defaults():
    new = config_to_dict(_cfg("lr = 2e-4"))
    old = {s: dict(v) for s, v in new.items()}
    for key in ("eps", "lr_schedule", "warmup", "min_lr"):
        del old["optim"][key]
    for key in ("diagnostics", "probe_size"):
        del old["schedule"][key]
    assert config_differences(old, new) == []
    assert config_differences(old, config_to_dict(_cfg("lr = 2e-4\neps = 1e-15"))) == [
        "optim.eps is 1e-08 there but 1e-15 here"
    ]


@pytest.fixture(scope="module")
def short_run(train_folders, data_dir, tmp_path_factory):
    """A finished 2-iteration run, milestone at 1: iteration 1 at 2e-4, iteration 2 at 1e-4."""
    tmp = tmp_path_factory.mktemp("sched")
    text = tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=2, extra="diagnostics = false\n[optim]\nmilestones = [1]\n")
    out = tmp / "run"
    train(parse_config(text), out=out)
    return text, out


def test_resume_with_a_longer_schedule_runs_at_the_new_schedules_rate(short_run, tmp_path, capsys):
    text, out = short_run
    longer = text.replace("iterations = 2", "iterations = 4").replace("milestones = [1]", "milestones = [3]")
    result = train(parse_config(longer), out=out, resume=True)
    assert result.iteration == 4
    with (out / "train_log.csv").open() as f:
        lrs = {int(r["iteration"]): float(r["lr"]) for r in csv.DictReader(f)}
    # the old milestone (1) decayed iteration 2; the new one (3) starts iterations 3-4 at the full rate:
    # restoring MultiStepLR's state would have run them at 1e-4
    assert lrs == {1: 2e-4, 2: 1e-4, 3: 2e-4, 4: 1e-4}
    assert "gives lr 0.0002 at iteration 2 (the checkpoint's run was at 0.0001)" in capsys.readouterr().out
    assert read_checkpoint(out / "last.pt").train["iteration"] == 4


def test_resume_with_other_adam_settings_is_refused(short_run, tmp_path):
    text, out = short_run
    for change, key in (("eps = 1e-15\n", "optim.eps"), ("lr = 1e-3\n", "optim.lr"), ("betas = [0.9, 0.999]\n", "optim.betas")):
        with pytest.raises(CkaLabError) as exc:
            train(parse_config(text.replace("[optim]\n", "[optim]\n" + change)), out=out, resume=True)
        msg = str(exc.value)
        assert "\n" not in msg and f"another config ({key} is" in msg, msg
