"""Small real-image folders and tiny configs for the training tests (fast on a 2-core CPU).

Training images are copied from ``shared/data`` (a Sun_Hays80 photo, two BSD400 gray images, two
Rain100H pairs); validation uses one centre crop of one image of Set5 / McMaster / Rain100L.
Every config runs EDT-T on 24 px body patches, batch 2 per head, one CPU thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SUN = "train/Sun_Hays80/abbey_sun_asztnlqhlrvirneh.jpg"
GRAY = ("train/BSD400_gray/test_001.png", "train/BSD400_gray/test_002.png")
RAIN = ("001", "002")


def make_train_folders(data_dir: Path, dest: Path) -> dict[str, Path]:
    """``dest/clean`` (one color photo), ``dest/gray`` (two gray images), ``dest/rain/{rain,norain}``."""
    clean = dest / "clean"
    gray = dest / "gray"
    rain = dest / "rain"
    for d in (clean, gray, rain / "rain", rain / "norain"):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(data_dir / SUN, clean)
    for g in GRAY:
        shutil.copy(data_dir / g, gray)
    for n in RAIN:
        shutil.copy(data_dir / f"derain/Rain100H/rain/rain-{n}.png", rain / "rain")
        shutil.copy(data_dir / f"derain/Rain100H/norain/norain-{n}.png", rain / "norain")
    return {"clean": clean, "gray": gray, "rain": rain}


def tiny_config(arch: str, folders: dict[str, Path], data_dir: Path, *, iterations: int = 2,
                val: bool = False, extra: str = "", model_extra: str = "", seed: int = 0) -> str:
    """TOML text of a fast run; ``extra`` is appended (more sections), ``model_extra`` goes into [model]."""
    val_section = """
[val]
sr = "sr/Set5"
dn = "denoise/McMaster"
dr = "derain/Rain100L"
max_images = 1
crop = 48
""" if val else ""
    return f"""
[run]
seed = {seed}
threads = 1

[model]
arch = "{arch}"
{model_extra}

[data]
root = "{data_dir}"
patch_size = 24
sr = [{{path = "{folders['clean']}", reduce = 2}}]
dn = [{{path = "{folders['clean']}", reduce = 2}}]
dr = ["{folders['rain']}"]
{val_section}
[schedule]
iterations = {iterations}
batch_size = 2
ckpt_every = 2
log_every = 1
{extra}
"""
