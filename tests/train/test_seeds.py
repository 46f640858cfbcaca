"""``[run] init_seed`` seeds the initial weights, ``data_seed`` the batch order; both default to ``seed``.

A study gives every run its own pair of seeds, so that a compared pair of runs shares exactly what its
control shares (see :mod:`cka_lab.study.plan`). Here one SR x2 EDT-T iteration at an lr so small
(1e-9) that the weights stay their initial values to 1e-8, while the logged loss of iteration 1 is
the loss of the first batch: equal weights <=> equal init, equal loss with equal weights <=> equal batch.
"""

from __future__ import annotations

import csv

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.train.config import config_differences, config_to_dict, load_config, parse_config
from cka_lab.train.loop import train
from tests.train.helpers import tiny_config


def _run(tmp_path, name, train_folders, data_dir, run_keys: str):
    text = tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=1,
                       extra="[optim]\nlr = 1e-9\n").replace("[run]\nseed = 0\n", f"[run]\n{run_keys}\n")
    text = text.replace("ckpt_every = 2", "ckpt_every = 1")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    out = tmp_path / name
    train(load_config(path), out=out)
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    with open(out / "train_log.csv") as fh:
        loss = float(next(csv.DictReader(fh))["loss"])
    return weights, loss


def _max_diff(a, b):
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_folders, data_dir):
    tmp = tmp_path_factory.mktemp("seeds")
    return {
        "seed0": _run(tmp, "seed0", train_folders, data_dir, "seed = 0"),
        "data7": _run(tmp, "data7", train_folders, data_dir, "seed = 0\ndata_seed = 7"),
        "init5": _run(tmp, "init5", train_folders, data_dir, "seed = 0\ninit_seed = 5"),
        "both0": _run(tmp, "both0", train_folders, data_dir, "seed = 3\ninit_seed = 0\ndata_seed = 0"),
    }


def test_init_seed_and_data_seed_act_separately(runs):
    w0, loss0 = runs["seed0"]
    w_data, loss_data = runs["data7"]
    w_init, loss_init = runs["init5"]
    assert _max_diff(w0, w_data) < 1e-7          # another batch order, the same initial weights
    assert loss_data != loss0                     # ... and another first batch
    assert _max_diff(w0, w_init) > 1e-3           # another initialisation
    assert loss_init != loss0


def test_explicit_seeds_override_seed(runs):
    w0, loss0 = runs["seed0"]
    w, loss = runs["both0"]
    assert _max_diff(w0, w) == 0.0 and loss == loss0


def test_a_config_with_only_seed_is_unchanged():
    cfg = parse_config('[run]\nseed = 4\n[model]\narch = "SRx2_EDTT"\n')
    assert (cfg.run.resolved_init_seed(), cfg.run.resolved_data_seed()) == (4, 4)
    old = config_to_dict(cfg)
    for key in ("init_seed", "data_seed"):  # a checkpoint written before these keys existed
        old["run"].pop(key)
    assert config_differences(old, config_to_dict(cfg)) == []
    other = parse_config('[run]\nseed = 4\ndata_seed = 1\n[model]\narch = "SRx2_EDTT"\n')
    assert any("run.data_seed" in d for d in config_differences(old, config_to_dict(other)))


def test_a_negative_seed_gets_one_line():
    with pytest.raises(CkaLabError, match="run.init_seed must be >= 0"):
        parse_config('[run]\ninit_seed = -1\n[model]\narch = "SRx2_EDTT"\n')
