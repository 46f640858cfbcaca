"""``[run] precision`` and ``[run] compile``: the autocast dtype per device, one-line refusals, a bf16 CPU
run that trains and records its precision, and the compiled module used for the steps."""

from __future__ import annotations

import pytest
import torch

from cka_lab.errors import CkaLabError
from cka_lab.models.checkpoint import read_checkpoint
from cka_lab.models.edt import cpu_bf16_supported
from cka_lab.train import loop as train_loop
from cka_lab.train.config import RunConfig, parse_config
from cka_lab.train.loop import train
from cka_lab.train.precision import autocast_dtype, precision_label
from tests.train.helpers import tiny_config

CPU = torch.device("cpu")


def test_auto_is_float32_on_cpu_and_fp32_never_autocasts():
    assert autocast_dtype(RunConfig(), CPU) is None
    assert autocast_dtype(RunConfig(precision="fp32", amp=True), CPU) is None
    assert precision_label(None) == "float32"
    assert precision_label(torch.bfloat16) == "bfloat16 autocast"


def test_fp16_off_cuda_is_one_line():
    with pytest.raises(CkaLabError, match="needs CUDA") as err:
        autocast_dtype(RunConfig(precision="fp16"), CPU)
    assert "\n" not in str(err.value)


def test_bf16_on_cpu_follows_native_support():
    if cpu_bf16_supported():
        assert autocast_dtype(RunConfig(precision="bf16"), CPU) is torch.bfloat16
    else:
        with pytest.raises(CkaLabError, match="no native bfloat16"):
            autocast_dtype(RunConfig(precision="bf16"), CPU)


def test_a_bad_precision_names_the_choices():
    with pytest.raises(CkaLabError, match="run.precision must be one of auto, fp32, bf16, fp16"):
        parse_config('[run]\nprecision = "int8"\n[model]\narch = "SRx2_EDTT"\n')
    cfg = parse_config('[run]\nprecision = "bf16"\ncompile = true\n[model]\narch = "SRx2_EDTT"\n')
    assert (cfg.run.precision, cfg.run.compile) == ("bf16", True)


def _with_run_keys(text: str, keys: str) -> str:
    return text.replace("[run]\n", f"[run]\n{keys}\n", 1)


@pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bfloat16")
def test_a_bf16_cpu_run_trains_and_records_its_precision(data_dir, train_folders, tmp_path):
    text = _with_run_keys(tiny_config("SRx2_EDTT", train_folders, data_dir), 'precision = "bf16"')
    result = train(parse_config(text, source=tmp_path / "bf16.toml"), out=tmp_path / "run")
    ckpt = read_checkpoint(result.last)
    assert ckpt.meta["precision"] == "bfloat16 autocast"
    assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point())
    assert all(v.dtype == torch.float32 for v in ckpt.state_dict.values() if v.is_floating_point())


def test_compile_trains_through_the_compiled_module(data_dir, train_folders, tmp_path, monkeypatch):
    seen = []

    class Spy(torch.nn.Module):  # stands for torch.compile's wrapper (compiling takes minutes on a CPU)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, xs):
            seen.append(len(xs))
            return self.inner(xs)

    monkeypatch.setattr(train_loop, "compile_for_training", Spy)
    text = _with_run_keys(tiny_config("SRx2_EDTT", train_folders, data_dir), "compile = true")
    result = train(parse_config(text, source=tmp_path / "c.toml"), out=tmp_path / "run")
    assert seen == [1, 1]  # both iterations went through the wrapper, one head each
    assert read_checkpoint(result.last).meta["precision"] == "float32, torch.compile"
