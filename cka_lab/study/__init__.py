"""Pre-training studies: a grid of runs (tasks x conditions x seeds) trained, evaluated, contrasted, reported.

``cka-lab study STUDY.toml --out DIR [--resume]``; ``torchrun --nproc_per_node N -m cka_lab.study ...``
for several GPUs. The study file format is documented in :mod:`cka_lab.study.spec`; presets ship in
``cka_lab/study/presets/`` (``tiny``, ``paper-small``, ``paper-small-cpu``).
"""

from cka_lab.study.spec import StudySpec, load_study, parse_study

__all__ = ["StudySpec", "load_study", "parse_study", "preset_path"]


def preset_path(name: str):
    """The path of a bundled study file (``tiny``, ``paper-small``, ``paper-small-cpu``)."""
    from pathlib import Path

    from cka_lab.errors import CkaLabError

    path = Path(__file__).parent / "presets" / f"{name}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise CkaLabError(f"no bundled study {name!r}: bundled studies are {', '.join(names)}")
    return path
