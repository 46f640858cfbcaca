"""One tap on the softmax of every EDT window-attention module: logits, probabilities and the window.

:class:`AttentionTap` hooks each window-attention module (an ``nn.Module`` with a ``softmax`` submodule
and a ``window``, at a site :func:`~cka_lab.models.names.attention_site` knows) and hands every map to a
callback as an :class:`AttentionMap`: the softmax's input (logits) and output (probabilities), detached,
the shifted-window mask the module was called with, the ``(H, W)`` body map the windows tile and the
window. The attention statistics (:class:`~cka_lab.metrics.attention.AttentionDistance`) and the
training diagnostics (:class:`~cka_lab.train.diagnostics.AttentionProbe`) both read attention through it.
The hooks are removed when the ``with`` block ends, also when it raises.

A hook on the softmax takes the EDT off its fused attention path (the map must exist to be read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from cka_lab.errors import CkaLabError
from cka_lab.models.names import attention_site

__all__ = ["AttentionMap", "AttentionTap", "attention_modules"]


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every EDT window-attention module (one with a ``softmax`` and a ``window``)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(getattr(m, "softmax", None), nn.Softmax) and hasattr(m, "window") and attention_site(n)
    ]


@dataclass(frozen=True)
class AttentionMap:
    """One attention map as the softmax of one module saw it.

    Attributes:
        module: the attention module's name (``body.layers.0.residual_group.blocks.1.attns.0``).
        logits: ``(B*nW, h, N, N)`` the softmax's input (mask added), detached.
        probs: ``(B*nW, h, N, N)`` its output, detached; windows crop-major, ``N = wh*ww``.
        mask: ``(nW, N, N)`` the additive shifted-window mask (0 where a key is allowed), or None.
        size: ``(H, W)`` the body map the windows tile.
        window: ``(wh, ww)``.
    """

    module: str
    logits: Tensor
    probs: Tensor
    mask: Tensor | None
    size: tuple[int, int]
    window: tuple[int, int]


class AttentionTap:
    """Hooks that pass every attention map of ``model`` to ``on_map`` while the ``with`` block runs.

    ::

        with AttentionTap(model, maps.append):
            model.forward_task(x, "x2")
        maps[0].probs.shape    # (B*nW, heads, N, N)

    ``modules``: the ``(name, module)`` pairs to tap (default: :func:`attention_modules`).
    """

    def __init__(self, model: nn.Module, on_map: Callable[[AttentionMap], None],
                 modules: list[tuple[str, nn.Module]] | None = None) -> None:
        self.modules = attention_modules(model) if modules is None else list(modules)
        self.on_map = on_map
        self._handles: list = []
        self._calls: dict[str, tuple[tuple[int, int], Tensor | None]] = {}

    def __enter__(self) -> AttentionTap:
        if self._handles:
            raise CkaLabError("this attention tap is already recording: enter its `with` block only once at a time")
        try:
            for name, mod in self.modules:
                self._handles.append(mod.register_forward_pre_hook(self._call_hook(name), with_kwargs=True))
                self._handles.append(mod.softmax.register_forward_hook(self._softmax_hook(name, tuple(mod.window))))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()
        self._calls.clear()

    def _call_hook(self, name: str):
        def hook(_module, args, kwargs) -> None:
            qkv = args[0] if args else kwargs["qkv"]  # (3, B, H, W, C)
            mask = args[1] if len(args) > 1 else kwargs.get("mask")  # (nW, N, N) additive, or None
            self._calls[name] = ((int(qkv.shape[2]), int(qkv.shape[3])), mask)

        return hook

    def _softmax_hook(self, name: str, window: tuple[int, int]):
        def hook(_module, inputs, probs: Tensor) -> None:
            logits = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
            size, mask = self._calls[name]
            self.on_map(AttentionMap(name, None if logits is None else logits.detach(), probs.detach(), mask, size,
                                     window))

        return hook
