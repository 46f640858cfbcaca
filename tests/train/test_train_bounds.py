"""Issue 24 for training: sizes checked against memory before the model is built, finite floats at
parse time naming the field, one writer per run folder, config files checked before they are read."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cka_lab.cli import main
from cka_lab.errors import CkaLabError
from cka_lab.io import folder_lock
from cka_lab.train.config import load_config, parse_config
from tests.train.helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UNDER_LIMIT = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # nothing here can take the machine's memory
    from cka_lab.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _under_memory_limit(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "CKA_LAB_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-c", UNDER_LIMIT, *argv], capture_output=True, text=True, env=env,
                          timeout=600)


def test_a_huge_patch_is_refused_before_the_model_is_built(data_dir, train_folders, tmp_path):
    cfg = tmp_path / "big.toml"
    cfg.write_text(tiny_config("SRx2_EDTT", train_folders, data_dir).replace("patch_size = 24", "patch_size = 4800"))
    out = tmp_path / "run"
    proc = _under_memory_limit("train", str(cfg), "--out", str(out))
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert err.startswith("cka-lab: error: the attention masks of image_size 4800 would need about") and "\n" not in err
    assert "data.patch_size" in err
    assert not out.exists()  # the run folder it made for its lock is removed again


def test_a_batch_too_big_for_the_memory_is_refused_in_one_line(data_dir, train_folders, tmp_path):
    cfg = tmp_path / "batch.toml"
    cfg.write_text(tiny_config("SRx2_EDTT", train_folders, data_dir).replace("batch_size = 2", "batch_size = 100000"))
    proc = _under_memory_limit("train", str(cfg), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "training at data.patch_size 24 with batch_size 100000 would need about" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("line, field", [
    ("lr = inf", "optim.lr"), ("lr = nan", "optim.lr"), ("eps = -inf", "optim.eps"), ("warmup = nan", "optim.warmup"),
    ("weight_decay = inf", "optim.weight_decay"), ("betas = [0.9, nan]", "optim.betas[1]"),
    ("milestones = [0.5, inf]", "optim.milestones[1]"), ("min_lr = nan", "optim.min_lr"),
])
def test_non_finite_floats_are_refused_at_parse_time_naming_the_field(line, field):
    with pytest.raises(CkaLabError) as err:
        parse_config(f'[model]\narch = "SRx2_EDTT"\n[optim]\n{line}\n')
    assert str(err.value).startswith(f"{field} must be a finite number")


def test_model_and_data_floats_are_finite_and_in_range():
    for text, msg in (('drop_path_rate = nan', "model.drop_path_rate must be a finite number"),
                      ('mean = [0.4, inf, 0.4]', "model.mean[1] must be a finite number"),
                      ('drop_path_rate = 1.5', "model.drop_path_rate must be in [0, 1)")):
        with pytest.raises(CkaLabError, match=msg.replace("[", r"\[").replace(")", r"\)")):
            parse_config(f'[model]\narch = "SRx2_EDTT"\n{text}\n')
    with pytest.raises(CkaLabError, match=r"data.sr\[0\].weight must be a finite number"):
        parse_config('[model]\narch = "SRx2_EDTT"\n[data]\nsr = [{path = "x", weight = inf}]\n')


def test_a_config_that_is_a_folder_or_a_fifo_is_named_for_what_it_is(tmp_path):
    (tmp_path / "cfg").mkdir()
    with pytest.raises(CkaLabError, match="is a folder"):
        load_config(tmp_path / "cfg")
    os.mkfifo(tmp_path / "fifo.toml")
    with pytest.raises(CkaLabError, match="is a FIFO"):  # refused at once: never blocks on the read
        load_config(tmp_path / "fifo.toml")
    with pytest.raises(CkaLabError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_a_second_training_into_a_run_folder_is_refused_naming_the_holder(data_dir, train_folders, tmp_path, capsys):
    cfg = tmp_path / "sr.toml"
    cfg.write_text(tiny_config("SRx2_EDTT", train_folders, data_dir))
    out = tmp_path / "run"
    out.mkdir()
    with folder_lock(out, "run folder"):  # another writer holds it (flock excludes a second open file too)
        assert main(["train", str(cfg), "--max-iters", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"run folder {str(out)!r} is being written by another cka-lab process (PID {os.getpid()})" in err
    assert "\n" not in err
    assert list(out.iterdir()) == []  # nothing written, lock released


def test_the_model_constructor_refuses_masks_the_machine_cannot_hold_before_allocating_them(tmp_path):
    """``create_edt(image_size=4800)`` in Python (no CLI in front of it), under a 4 GB address-space cap."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
        from cka_lab.errors import CkaLabError
        from cka_lab.models import create_edt
        try:
            create_edt("SRx2_EDTT", image_size=4800)
        except CkaLabError as exc:
            print("refused:", exc)
            sys.exit(0)
        sys.exit(1)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the attention masks of image_size 4800" in proc.stdout and "GiB" in proc.stdout
