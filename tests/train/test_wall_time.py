"""``training_wall_time``: a run's seconds from its ``train_log.csv``."""

import math

from cka_lab.train.logs import training_wall_time


def test_sums_each_log_window(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("iteration,loss,sec_per_iter\n25,0.1,2.0\n50,0.09,1.0\n60,0.08,0.5\n")
    assert training_wall_time(log) == 25 * 2.0 + 25 * 1.0 + 10 * 0.5


def test_missing_or_unusable_log_is_nan(tmp_path):
    assert math.isnan(training_wall_time(tmp_path / "missing.csv"))
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("iteration,loss\n25,0.1\n")
    assert math.isnan(training_wall_time(no_time))
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert math.isnan(training_wall_time(binary))


def test_bad_rows_add_nothing_and_steps_never_go_back(tmp_path):
    log = tmp_path / "train_log.csv"
    # a blank time, a repeated (earlier) iteration and a garbled row: none adds time or moves the start back
    log.write_text("iteration,sec_per_iter\n10,1.0\n20,\n15,3.0\nx,y\n30,2.0\n")
    assert training_wall_time(log) == 10 * 1.0 + 0 * 3.0 + 10 * 2.0
