"""Reference data for the EDT tests: the official-code fixtures in ``../shared/fixtures/edt``."""

from __future__ import annotations

import importlib.util
import json
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import pytest
import torch

from cka_lab.models import EDT, create_edt

from ..conftest import _shared_path

EDT_FIXTURES = _shared_path() / "fixtures" / "edt"
requires_fixtures = pytest.mark.skipif(
    not EDT_FIXTURES.is_dir(), reason=f"EDT reference fixtures not found at {EDT_FIXTURES}"
)

KEY_FILES = sorted((EDT_FIXTURES / "keys").glob("*.json")) if EDT_FIXTURES.is_dir() else []
CASES = sorted(p.name for p in (EDT_FIXTURES / "cases").iterdir()) if EDT_FIXTURES.is_dir() else []


@lru_cache(maxsize=None)
def keys_of(config_name: str) -> dict:
    return json.loads((EDT_FIXTURES / "keys" / f"{config_name}.json").read_text())


@lru_cache(maxsize=None)
def case_json(case: str) -> dict:
    return json.loads((EDT_FIXTURES / "cases" / case / "case.json").read_text())


def load_array(case: str, rel: str) -> torch.Tensor:
    return torch.from_numpy(np.load(EDT_FIXTURES / "cases" / case / rel))


def recipe_state_dict(config_name: str):
    """The fixture weights, rebuilt by the fixtures' own recipe (parameters only, no mask buffers)."""
    spec = importlib.util.spec_from_file_location("weights_recipe", EDT_FIXTURES / "weights_recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe.build_state_dict(str(EDT_FIXTURES / "keys" / f"{config_name}.json"))


def case_model(case: str) -> EDT:
    """The model of a numerical case with its reference weights, in eval mode."""
    cfg = case_json(case)["config"]
    model = create_edt(cfg).eval()
    missing, unexpected = model.load_state_dict(recipe_state_dict(cfg), strict=False)
    assert not unexpected and all(k.endswith(("attn_mask_h", "attn_mask_v")) for k in missing)
    return model


def task_of(tag: str) -> str:
    """Fixture head tags (``x2``, ``g15``, ``dr_L``) -> cka_lab task keys (``x2``, ``g15``, ``L``)."""
    return tag.removeprefix("dr_")


@contextmanager
def cpu_kernels_disabled():
    """Inside the block the model uses torch's operators (``CKA_LAB_CPU_KERNEL=0``); after it, as before."""
    import os

    from cka_lab.models import cpu_kernels

    before = os.environ.get("CKA_LAB_CPU_KERNEL")
    os.environ["CKA_LAB_CPU_KERNEL"] = "0"
    cpu_kernels.reset_kernel()
    try:
        yield
    finally:
        if before is None:
            del os.environ["CKA_LAB_CPU_KERNEL"]
        else:
            os.environ["CKA_LAB_CPU_KERNEL"] = before
        cpu_kernels.reset_kernel()


def train_step(model, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training forward of ``model`` on ``x`` (first head) and the backward of ``mean(out^2)``, which weighs
    every output: the output and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    out = model([x])[0]
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def worst_relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max over pairs of ``max|a - b| / max|b|`` (``b`` the reference)."""
    assert len(a) == len(b)
    return max((x - y).abs().max().item() / max(y.abs().max().item(), 1e-30) for x, y in zip(a, b))
