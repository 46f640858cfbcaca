"""Version-stable weight initialisation: the same weights from the same seed on every torch version.

``torch.nn.init.trunc_normal_`` changed its sampler between torch 2.11 and 2.13, so the same seed gave
different models. Here every random number comes from one primitive whose output torch has kept fixed
for years, ``torch.rand(..., dtype=torch.float64)`` on the CPU generator (53 random bits per draw from
mt19937, scaled by 2**-53), and is transformed by arithmetic that cka_lab controls:

* **Truncated normal** by inverse CDF (not Box-Muller: that needs ``cos`` and ``log`` of every draw, and
  rejection would make the number of draws depend on the values): ``u -> ndtri(F(a) + u (F(b) - F(a)))``
  in float64, with ``ndtri`` Wichura's algorithm AS 241 (1988, relative error 1e-16). Its central region
  (85 % of draws) is a rational function, i.e. only ``+ - * /`` (exactly rounded IEEE-754, hence
  bit-identical everywhere); the tails need ``sqrt`` (exact too) and ``log``, taken from Python's
  ``math.log`` (the C library's, not a vectorised SIMD variant that could differ with the CPU). The
  float64 result is rounded once to float32.
* **Uniform** (conv layers, PyTorch's default ``kaiming_uniform_(a=sqrt(5))`` bounds ``1/sqrt(fan_in)``):
  ``(2u - 1) * bound`` in float64, rounded to float32.

The draws come from a private ``torch.Generator`` seeded by one 63-bit draw from the global generator
(``torch.randint``), taken *before* any module is built: what PyTorch's own constructors draw (their
default init, which may change) does not reach the weights, and ``torch.manual_seed(s)`` still fixes them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ndtri", "stable_generator", "stable_uniform_", "stable_trunc_normal_", "init_edt_weights"]

# Wichura AS 241 (PPND16) coefficients
_A = (3.387132872796366608, 133.14166789178437745, 1971.5909503065514427, 13731.693765509461125,
      45921.953931549871457, 67265.770927008700853, 33430.575583588128105, 2509.0809287301226727)
_B = (1.0, 42.313330701600911252, 687.1870074920579083, 5394.1960214247511077,
      21213.794301586595867, 39307.89580009271061, 28729.085735721942674, 5226.495278852545925)
_C = (1.42343711074968357734, 4.6303378461565452959, 5.7694972214606914055, 3.64784832476320460504,
      1.27045825245236838258, 0.24178072517745061177, 0.0227238449892691845833, 7.7454501427834140764e-4)
_D = (1.0, 2.05319162663775882187, 1.6763848301838038494, 0.689767334985100004550,
      0.14810397642748007459, 0.0151986665636164571966, 5.475938084995344946e-4, 1.05075007164441684324e-9)
_E = (6.6579046435011037772, 5.4637849111641143699, 1.7848265399172913358, 0.29656057182850489123,
      0.026532189526576123093, 0.0012426609473880784386, 2.71155556874348757815e-5, 2.01033439929228813265e-7)
_F = (1.0, 0.59983220655588793769, 0.13692988092273580531, 0.0148753612908506148525,
      7.868691311456132591e-4, 1.8463183175100546818e-5, 1.4215117583164458887e-7, 2.04426310338993978564e-15)


def _poly(coef: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    """Horner evaluation of ``sum(coef[i] x**i)`` with one rounding per step (no fused multiply-add)."""
    out = np.full_like(x, coef[-1])
    for c in coef[-2::-1]:
        out = out * x
        out = out + c
    return out


def ndtri(p: np.ndarray) -> np.ndarray:
    """Inverse of the standard normal CDF (AS 241) for ``p`` in (0, 1), float64 -> float64, same shape."""
    p = np.asarray(p, dtype=np.float64)
    q = p - 0.5
    out = np.empty_like(p)
    central = np.abs(q) <= 0.425
    qc = q[central]
    r = 0.180625 - qc * qc
    out[central] = qc * _poly(_A, r) / _poly(_B, r)
    tail = ~central
    if tail.any():
        pt = p[tail]
        small = np.minimum(pt, 1.0 - pt)
        r = np.sqrt(-np.array([math.log(v) for v in small.tolist()], dtype=np.float64))
        near = r <= 5.0
        val = np.empty_like(r)
        rn = r[near] - 1.6
        val[near] = _poly(_C, rn) / _poly(_D, rn)
        rf = r[~near] - 5.0
        val[~near] = _poly(_E, rf) / _poly(_F, rf)
        out[tail] = np.where(pt < 0.5, -val, val)
    return out


def stable_generator() -> torch.Generator:
    """A private CPU generator seeded by one draw from the global one (so ``torch.manual_seed`` decides)."""
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64).item())
    return torch.Generator().manual_seed(seed)


def _uniform64(n: int, gen: torch.Generator) -> np.ndarray:
    return torch.rand(n, dtype=torch.float64, generator=gen).numpy()


@torch.no_grad()
def stable_uniform_(tensor: Tensor, bound: float, gen: torch.Generator) -> Tensor:
    """Fill ``tensor`` with U(-bound, bound): ``(2u - 1) * bound`` in float64, then rounded to its dtype."""
    u = _uniform64(tensor.numel(), gen)
    vals = (u * 2.0 - 1.0) * float(bound)
    return tensor.copy_(torch.from_numpy(vals).view(tensor.shape))


@torch.no_grad()
def stable_trunc_normal_(
    tensor: Tensor, std: float, gen: torch.Generator, mean: float = 0.0, a: float = -2.0, b: float = 2.0
) -> Tensor:
    """Fill ``tensor`` with N(mean, std) truncated to [a, b] (absolute bounds, as ``nn.init.trunc_normal_``)."""
    lo = 0.5 * math.erfc(-((a - mean) / std) / math.sqrt(2.0))  # F((a - mean) / std)
    hi = 0.5 * math.erfc(-((b - mean) / std) / math.sqrt(2.0))
    u = _uniform64(tensor.numel(), gen)
    p = lo + u * (hi - lo)
    p = np.clip(p, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0))  # u = 0 with F(a) = 0 would give -inf
    vals = np.clip(mean + std * ndtri(p), a, b)
    return tensor.copy_(torch.from_numpy(vals).view(tensor.shape))


def _fan_in(weight: Tensor, transposed: bool) -> int:
    receptive = math.prod(weight.shape[2:]) if weight.ndim > 2 else 1
    return (weight.shape[0] if transposed else weight.shape[1]) * receptive


@torch.no_grad()
def init_edt_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Swin/EDT initialisation, version-stable, module by module in ``named_modules()`` order.

    Linear: truncated normal, std 0.02 (bounds +-2 as in the official code), zero bias.
    LayerNorm: weight 1, bias 0. Conv2d / ConvTranspose2d: PyTorch's default distribution,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias (``kaiming_uniform_(a=sqrt(5))``).
    """
    for _, m in model.named_modules():
        if isinstance(m, nn.Linear):
            stable_trunc_normal_(m.weight, std=0.02, gen=gen)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            # ConvTranspose2d weights are (in, out/groups, k, k): PyTorch's fan_in is then dim 1 * k * k too
            fan_in = _fan_in(m.weight, transposed=False)
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            stable_uniform_(m.weight, bound, gen)
            if m.bias is not None:
                stable_uniform_(m.bias, bound, gen)
