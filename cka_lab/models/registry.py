"""Named EDT configurations: official names such as ``SRx2x3x4_EDTT`` -> :class:`EDTConfig`.

The official naming scheme is ``<tasks>_EDT<size>[SF][_<dataset suffixes>]``:

* ``<tasks>`` concatenates task groups: ``SRx2x3x4`` (super-resolution scales), ``DNg15g25g50``
  (Gaussian denoising levels), ``DRlshs`` (deraining: ``ls`` = light rain ``L``, ``hs`` = heavy ``H``),
  e.g. ``SRx2x3DNg15``.
* ``<size>`` is ``T``, ``S``, ``B`` or ``L``; a trailing ``SF`` selects the single-resolution variant
  (``edtsf``: denoise/derain heads without down/up-sampling, body at full resolution).
* Anything after the next ``_`` (``_Div2kFlickr2K__SRx2_ImageNet200K``, ``_D4``) names training data
  and is ignored.

Task keys used everywhere in cka_lab: ``x2 x3 x4`` (SR), ``g15 g25 g50`` (denoising), ``L H`` (rain).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field

from cka_lab.errors import CkaLabError
from cka_lab.tasks import TASK_KEYS, token_stride

__all__ = [
    "EDTConfig",
    "SIZES",
    "TaskHead",
    "parse_name",
    "config_from_name",
    "canonical_name",
    "TASK_KEYS",
]



@dataclass(frozen=True)
class SizeSpec:
    """Width and depth of one EDT size."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    num_feat: int


SIZES: dict[str, SizeSpec] = {
    "T": SizeSpec(60, (6,) * 4, (6,) * 4, 8),
    "S": SizeSpec(120, (6,) * 5, (6,) * 5, 16),
    "B": SizeSpec(180, (6,) * 6, (6,) * 6, 32),
    "L": SizeSpec(240, (6,) * 12, (8,) * 12, 64),
}


@dataclass(frozen=True)
class TaskHead:
    """One head/tail pair of the network, in the official forward order.

    ``kind`` is ``sr``, ``dn`` or ``dr``; ``level`` the scale (2/3/4), noise sigma (15/25/50) or rain
    level (``"L"``/``"H"``); ``key`` the cka_lab task key (``x2``, ``g25``, ``L``).
    """

    kind: str
    level: int | str

    @property
    def key(self) -> str:
        return {"sr": f"x{self.level}", "dn": f"g{self.level}", "dr": f"{self.level}"}[self.kind]

    @property
    def suffix(self) -> str:
        """Module-name suffix: ``sr_x2``, ``dn_g15``, ``dr_L``."""
        return {"sr": f"sr_x{self.level}", "dn": f"dn_g{self.level}", "dr": f"dr_{self.level}"}[self.kind]

    @property
    def out_scale(self) -> int:
        return int(self.level) if self.kind == "sr" else 1


@dataclass(frozen=True)
class EDTConfig:
    """Everything that determines the EDT architecture (the official ``MODEL.*`` fields).

    Attributes mirror the official config: ``depth`` is the number of down/up-sampling levels of the
    heads and tails, ``image_size`` the training patch size at body resolution (it only sizes the stored
    shifted-window mask buffers), ``window_size`` the (height, width) of the horizontal strip window.
    """

    scales: tuple[int, ...] = ()
    noise_levels: tuple[int, ...] = ()
    rain_levels: tuple[str, ...] = ()
    size: str = "T"
    sf: bool = False
    embed_dim: int = 60
    depths: tuple[int, ...] = (6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6)
    num_feat: int = 8
    upsampler: str = "pixelshuffledirect"
    in_channels: int = 3
    depth: int = 2
    image_size: int = 48
    window_size: tuple[int, int] = (6, 24)
    mlp_ratio: float = 2.0
    image_range: float = 1.0
    drop_path_rate: float = 0.1
    mean: tuple[float, float, float] = field(default=(0.4488, 0.4371, 0.4040))

    @property
    def heads(self) -> tuple[TaskHead, ...]:
        """Heads in the official forward order: SR scales, then noise levels, then rain levels."""
        return (
            tuple(TaskHead("sr", s) for s in self.scales)
            + tuple(TaskHead("dn", n) for n in self.noise_levels)
            + tuple(TaskHead("dr", r) for r in self.rain_levels)
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task keys in forward order, e.g. ``('x2', 'x3', 'g15')``."""
        return tuple(h.key for h in self.heads)

    @property
    def name(self) -> str:
        return canonical_name(self)

    def pad_multiple(self, task: str) -> int:
        """Input padding multiple of a head, as the official test script: 24 for SR, 24*2**depth else."""
        head = self.head(task)
        lcm = _lcm(*self.window_size)
        return lcm if head.kind == "sr" else lcm * 2**self.depth

    def token_stride(self, task: str) -> int:
        """Input pixels per body token side of ``task``'s head (:func:`cka_lab.tasks.token_stride`): 1 for SR
        and SF heads, ``2**depth`` for the denoise/derain heads that downsample."""
        return token_stride(self.head(task).kind, self.depth, self.sf)

    def head(self, task: str) -> TaskHead:
        for h in self.heads:
            if h.key == task:
                return h
        raise CkaLabError(
            f"model {self.name} has no head for task {task!r}; its tasks are {', '.join(self.tasks)}"
        )

    def to_dict(self) -> dict:
        """Plain-typed dict (for checkpoints and JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EDTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise CkaLabError(f"unknown EDT config fields {sorted(unknown)}; expected a subset of {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


def _lcm(a: int, b: int) -> int:
    from math import gcd

    return a * b // gcd(a, b)


_NAME_RE = re.compile(r"^(?P<tasks>[A-Za-z0-9]+)_EDT(?P<size>[TSBL])(?P<sf>SF)?(?:_.*)?$")
_GROUP_RE = re.compile(r"(SR|DN|DR)((?:x\d|g\d+|ls|hs)+)")


def parse_name(name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...], str, bool]:
    """Split an official name into (scales, noise_levels, rain_levels, size, sf).

    >>> parse_name("SRx2x3DNg15_EDTB_ImageNet200K")
    ((2, 3), (15,), (), 'B', False)
    """
    m = _NAME_RE.match(name.strip())
    tasks = m.group("tasks") if m else ""
    groups = _GROUP_RE.findall(tasks) if m else []
    if not m or "".join(g + body for g, body in groups) != tasks:
        examples = "SRx2_EDTT, SRx2x3x4_EDTB, DNg15_EDTBSF, SRx2x3DNg15_EDTB, DRlshs_EDTB"
        close = difflib.get_close_matches(name, _known_names(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CkaLabError(
            f"unknown EDT architecture {name!r}{hint}; names follow <tasks>_EDT<T|S|B|L>[SF], e.g. {examples}"
        )
    scales: list[int] = []
    noise: list[int] = []
    rain: list[str] = []
    for kind, body in groups:
        if kind == "SR":
            items = re.findall(r"x(\d)", body)
            if "".join(f"x{i}" for i in items) != body or not set(items) <= {"2", "3", "4"}:
                raise CkaLabError(f"bad SR scales {body!r} in {name!r}: use x2, x3 and/or x4")
            scales += [int(i) for i in items]
        elif kind == "DN":
            items = re.findall(r"g(\d+)", body)
            if "".join(f"g{i}" for i in items) != body:
                raise CkaLabError(f"bad noise levels {body!r} in {name!r}: use g15, g25, g50")
            noise += [int(i) for i in items]
        else:
            items = re.findall(r"(l|h)s", body)
            if "".join(f"{i}s" for i in items) != body:
                raise CkaLabError(f"bad rain levels {body!r} in {name!r}: use ls and/or hs")
            rain += [i.upper() for i in items]
    for label, seq in (("scale", scales), ("noise level", noise), ("rain level", rain)):
        if len(set(seq)) != len(seq):
            raise CkaLabError(f"{name!r} repeats a {label}")
    return tuple(scales), tuple(noise), tuple(rain), m.group("size"), bool(m.group("sf"))


def config_from_name(name: str, **overrides) -> EDTConfig:
    """The :class:`EDTConfig` of an official architecture name (dataset suffixes ignored).

    The upsampler follows the official configs: EDT-T with a single SR scale uses
    ``pixelshuffledirect``; every other model uses ``pixelshuffle``. SF models train on 144 px
    body patches (``image_size`` 144), the others on 48.
    """
    scales, noise, rain, size, sf = parse_name(name)
    if sf and scales:
        raise CkaLabError(f"{name!r}: SF models have no SR heads (the official edtsf is for denoising/deraining)")
    spec = SIZES[size]
    upsampler = "pixelshuffledirect" if size == "T" and len(scales) == 1 else "pixelshuffle"
    cfg = EDTConfig(
        scales=scales,
        noise_levels=noise,
        rain_levels=rain,
        size=size,
        sf=sf,
        embed_dim=spec.embed_dim,
        depths=spec.depths,
        num_heads=spec.num_heads,
        num_feat=spec.num_feat,
        upsampler=upsampler,
        image_size=144 if sf else 48,
    )
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def canonical_name(cfg: EDTConfig) -> str:
    """The official-style name of a config, e.g. ``SRx2x3DNg15_EDTB``."""
    tasks = ""
    if cfg.scales:
        tasks += "SR" + "".join(f"x{s}" for s in cfg.scales)
    if cfg.noise_levels:
        tasks += "DN" + "".join(f"g{n}" for n in cfg.noise_levels)
    if cfg.rain_levels:
        tasks += "DR" + "".join(f"{r.lower()}s" for r in cfg.rain_levels)
    return f"{tasks}_EDT{cfg.size}{'SF' if cfg.sf else ''}"


def _known_names() -> list[str]:
    out = []
    for size in SIZES:
        out += [f"SRx2_EDT{size}", f"SRx3_EDT{size}", f"SRx4_EDT{size}", f"SRx2x3x4_EDT{size}"]
        out += [f"DNg15_EDT{size}", f"DNg25_EDT{size}", f"DNg50_EDT{size}", f"DNg15g25g50_EDT{size}"]
        out += [f"DRls_EDT{size}", f"DRhs_EDT{size}", f"DRlshs_EDT{size}", f"SRx2x3DNg15_EDT{size}"]
    out += ["DNg15_EDTBSF", "DNg25_EDTBSF", "DNg50_EDTBSF"]
    return out
