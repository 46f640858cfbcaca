"""Pre-training studies: a grid of runs (tasks x conditions x seeds) trained, evaluated, contrasted, reported.

``cka-lab study STUDY.toml --out DIR [--resume]``; ``torchrun --nproc_per_node N -m cka_lab.study ...``
for several GPUs. The study file format is documented in :mod:`cka_lab.study.spec`; presets ship in
``cka_lab/study/presets/`` (``tiny``, ``paper-cpu``, ``paper-small``, ``paper-small-cpu``: :func:`preset_names`).
"""

from cka_lab.study.spec import StudySpec, load_study, parse_study

__all__ = ["StudySpec", "load_study", "parse_study", "preset_names", "preset_path"]


def preset_names() -> list[str]:
    """The names of the bundled study files, sorted (``paper-cpu``, ``paper-small``, ``paper-small-cpu``, ``tiny``)."""
    from pathlib import Path

    return sorted(p.stem for p in (Path(__file__).parent / "presets").glob("*.toml"))


def preset_path(name: str):
    """The path of a bundled study file (one of :func:`preset_names`)."""
    from pathlib import Path

    from cka_lab.errors import CkaLabError

    path = Path(__file__).parent / "presets" / f"{name}.toml"
    if not path.is_file():
        raise CkaLabError(f"no bundled study {name!r}: bundled studies are {', '.join(preset_names())}")
    return path
