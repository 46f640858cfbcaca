"""``checkpoints/edtt_srx2_seed0.pt`` is the true starting point of the bundled SR x2 from-scratch run.

The model is built the way ``cka-lab train`` builds it on rank 0 (seed everything with the run's init
seed, ``[run] init_seed``, then ``build_model``) from the config's own file and compared tensor by tensor with the bundled file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cka_lab.models import read_checkpoint
from cka_lab.train.config import load_config
from cka_lab.train.loop import build_model
from cka_lab.train.state import seed_everything

REPO = Path(__file__).resolve().parents[2]


def test_the_bundled_seed0_file_is_what_the_srx2_scratch_config_starts_from():
    cfg = load_config(REPO / "checkpoints" / "configs" / "edtt_srx2_scratch.toml", data_root=REPO)
    seed_everything(cfg.run.resolved_init_seed())  # what the training loop does on rank 0 before building the model
    model = build_model(cfg)
    ckpt = read_checkpoint(REPO / "checkpoints" / "edtt_srx2_seed0.pt")
    assert ckpt.config.name == model.config.name == "SRx2_EDTT"
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(("attn_mask_h", "attn_mask_v"))}
    assert list(own) == list(ckpt.state_dict)
    assert all(torch.equal(own[k], ckpt.state_dict[k]) for k in own)
    assert ckpt.meta["iterations"] == 0 and ckpt.meta["torch"] and ckpt.meta["precision"] == "float32"
