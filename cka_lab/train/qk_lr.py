"""A separate learning rate for the query and key rows of EDT's fused ``qkv`` projections.

EDT computes q, k and v with one ``nn.Linear(C, 3C)`` per block (rows ``0:C`` q, ``C:2C`` k, ``2C:3C``
v), so q/k cannot be given their own optimizer parameter group without changing the state dict.
Adam's (and AdamW's) step is linear in the learning rate -- ``w <- w - lr * m_hat / (sqrt(v_hat) + eps)``
-- so running the q/k rows at ``scale * lr`` is the same as stretching their step by ``scale`` after
the optimizer has taken it. :class:`QKLearningRate` does exactly that with optimizer step hooks: before
``step()`` it keeps a copy of the q/k rows, after it replaces ``delta`` by ``scale * delta``. Weight
decay in Adam enters through the gradient, so it is scaled alike. The optimizer's state (moments) is the
same as without the scale, and ``--resume`` needs nothing more than the config.

This departs from the official EDT recipe (one lr for every parameter): the training config names it
(``[optim] qk_lr_scale``) and so does every run that uses it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cka_lab.models.names import BLOCK_QKV

__all__ = ["qkv_modules", "QKLearningRate"]


def qkv_modules(model: nn.Module) -> list[nn.Linear]:
    """The fused ``...blocks.j.qkv`` projections of an EDT body, in module order."""
    return [m for name, m in model.named_modules() if BLOCK_QKV.search(name) and isinstance(m, nn.Linear)]


class QKLearningRate:
    """Run the q and k rows of every ``qkv`` projection at ``scale`` times the optimizer's lr.

    Use as a context manager around training or keep the object and call :meth:`remove`::

        with QKLearningRate(model, optimizer, 4.0):
            ...  # optimizer.step() as usual
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scale: float):
        if not (scale > 0 and scale < float("inf")):
            raise ValueError(f"qk_lr_scale must be a finite number > 0, got {scale}")
        self.scale = float(scale)
        self.params: list[Tensor] = []
        for m in qkv_modules(model):
            self.params.extend(p for p in (m.weight, m.bias) if p is not None)
        self._saved: list[Tensor] = []
        self._handles = []
        if self.scale != 1.0 and self.params:
            self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    @staticmethod
    def _qk(p: Tensor) -> Tensor:
        """The q and k rows of a ``(3C, C)`` weight or ``(3C,)`` bias (a view)."""
        return p[: 2 * (p.shape[0] // 3)]

    def _pre(self, optimizer, args, kwargs) -> None:
        self._saved = [self._qk(p).detach().clone() for p in self.params]

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        for p, before in zip(self.params, self._saved):
            qk = self._qk(p)
            qk.copy_(before.add_(qk - before, alpha=self.scale))  # before + scale * (after - before)
        self._saved = []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "QKLearningRate":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
