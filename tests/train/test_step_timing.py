"""sec_per_iter and patches_per_s are wall-clock figures: validation and checkpoints count, data_share does not."""

from __future__ import annotations

import csv
import time

from cka_lab.train import loop as loop_mod
from cka_lab.train.config import parse_config
from cka_lab.train.loop import train
from tests.train.helpers import tiny_config


def test_bookkeeping_time_counts_in_sec_per_iter_but_not_in_the_data_share(train_folders, data_dir, tmp_path, monkeypatch):
    text = (tiny_config("SRx2_EDTT", train_folders, data_dir, iterations=4)
            .replace("log_every = 1", "log_every = 2").replace("ckpt_every = 2", "ckpt_every = 1"))
    cfg = parse_config(text)
    assert cfg.schedule.log_every == 2 and cfg.schedule.ckpt_every == 1
    real_save = loop_mod._Trainer._save

    def slow_save(self, *args, **kwargs):  # 0.5 s of bookkeeping after every iteration
        time.sleep(0.5)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(loop_mod._Trainer, "_save", slow_save)
    monkeypatch.setattr(loop_mod._Trainer, "_validate", lambda self, *a, **k: None)
    train(cfg, out=tmp_path / "run")
    with (tmp_path / "run" / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]  # iterations 3-4: each interval holds the 0.5 s save of the iteration before it
    assert float(last["sec_per_iter"]) >= 0.5
    assert float(last["data_share"]) < 0.2
    assert float(last["patches_per_s"]) <= 2 / 0.5
