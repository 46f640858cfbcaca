"""Forward hooks on named modules: the features that CKA compares.

Layer names are those of ``model.named_modules()``. A name may be a glob pattern:

* ``*`` matches within one dotted component, ``**`` across components, ``?`` one character,
  ``[0-3]`` a character class (``[!…]`` negates), as in path globs;
* ``body.layers.*`` -> ``body.layers.0``, ``body.layers.1``, … (the blocks, not their submodules);
  ``body.**.attn`` -> every ``attn`` below ``body``.

A pattern expands to the matching modules in ``named_modules()`` order; duplicates are dropped.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from cka_lab.errors import CkaLabError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FeatureExtractor", "first_tensor", "list_layers", "resolve_layers"]

_GLOB_CHARS = re.compile(r"[*?\[]")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a dotted-name glob to a regex (``*`` stops at dots, ``**`` does not)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _unknown(spec: str, names: list[str], model: nn.Module) -> CkaLabError:
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
    kind = "pattern matches no layer" if _GLOB_CHARS.search(spec) else "unknown layer"
    hint = f"close matches: {', '.join(close)}" if close else f"no close match among {len(names)} modules"
    return CkaLabError(
        f"{kind} {spec!r} in {type(model).__name__}; {hint} "
        "(list the names with `cka-lab layers` or cka_lab.features.list_layers(model, x))"
    )


def resolve_layers(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
    """Expand names and glob patterns to module names of ``model``, in ``named_modules()`` order per item.

    Raises:
        CkaLabError: for a name or pattern that matches no module, listing close matches.
    """
    if isinstance(layers, str):
        layers = [layers]
    names = [name for name, _ in model.named_modules() if name]
    known = set(names)
    out: list[str] = []
    for spec in layers:
        if _GLOB_CHARS.search(spec):
            regex = _glob_regex(spec)
            matches = [n for n in names if regex.fullmatch(n)]
        else:
            matches = [spec] if spec in known else []
        if not matches:
            raise _unknown(spec, names, model)
        out.extend(m for m in matches if m not in out)
    if not out:
        raise CkaLabError("no layer given: name at least one module (or a glob pattern such as 'layers.*')")
    return out


def first_tensor(output: Any) -> Tensor | None:
    """A module's output, or the first tensor of a tuple/list output (None if there is none)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    return None


FEATURE_KINDS = ("output", "update")


class FeatureExtractor:
    """Record the outputs of named modules during forward passes, flattened to (B, D).

    A context manager: hooks are registered on entry and removed on exit, also when the block raises.

    Args:
        model: the network; a forward pass is one call of ``model(...)``.
        layers: module names or glob patterns (see the module docstring).
        call_index: which call of a module to keep when it runs several times in one forward pass
            (e.g. a shared body run once per task head): 0 keeps the first call (the default), k the
            k-th, -1 the last.
        kind: ``"output"`` records what the module returns; ``"update"`` records output minus input,
            what a residual block adds to the stream it reads (its input and output must have the
            same number of elements per sample). In a pre-norm transformer the residual stream
            carries the patch embedding through every block, so block *outputs* of a briefly
            trained EDT all have CKA ~1 with each other; the *updates* show what each block computes.

    Attributes:
        layers: the resolved module names.
        features: name -> (B, D) detached output of the latest forward pass, on the module's device
            and in its dtype. Each forward pass starts a new dict; a layer that did not run in the
            pass is absent.

    Modules run outside a call of ``model(...)`` -- e.g. ``model.forward_task(x, task)`` called
    directly, which bypasses the model's own hooks -- have no pass to count calls in: each of their
    calls overwrites the layer's entry in ``features`` (the latest call wins, ``call_index`` unused).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> with FeatureExtractor(model, "*") as ext:
        ...     _ = model(torch.randn(2, 3, 5, 5))
        ...     ext.layers, ext.features["0"].shape  # (B, D) with D = 4 * 5 * 5
        (['0', '1'], torch.Size([2, 100]))

    """

    def __init__(self, model: nn.Module, layers: str | Sequence[str], *, call_index: int = 0,
                 kind: str = "output") -> None:
        if call_index < -1:
            raise CkaLabError(f"call_index must be >= 0, or -1 for the last call; got {call_index}")
        if kind not in FEATURE_KINDS:
            raise CkaLabError(f"feature kind must be one of {', '.join(FEATURE_KINDS)}; got {kind!r}")
        self.kind = kind
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.call_index = call_index
        self.features: dict[str, Tensor] = {}
        self._calls: dict[str, int] = {}
        self._in_pass = False
        self._handles: list[RemovableHandle] = []

    def _start_pass(self, module: nn.Module, args: Any) -> None:
        self._calls = {}
        self.features = {}
        self._in_pass = True

    def _end_pass(self, module: nn.Module, args: Any, output: Any) -> None:
        self._in_pass = False

    def _record(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if self._in_pass:
            call = self._calls.get(name, 0)
            self._calls[name] = call + 1
            if self.call_index not in (-1, call):
                return
        tensor = first_tensor(output)
        if tensor is None:
            raise CkaLabError(
                f"layer {name!r} ({type(module).__name__}) returned {type(output).__name__}, no tensor; "
                "choose a module whose output is a tensor"
            )
        if tensor.dim() == 0:
            raise CkaLabError(f"layer {name!r} returned a scalar; choose a module with a (B, ...) output")
        flat = tensor.detach().reshape(tensor.shape[0], -1)
        if self.kind == "update":
            given = first_tensor(args)
            if given is None or given.numel() != tensor.numel():
                shape = "no tensor" if given is None else tuple(given.shape)
                raise CkaLabError(
                    f"layer {name!r} maps {shape} to {tuple(tensor.shape)}: 'update' features (output - input) "
                    "need a residual module whose input and output have the same size; use --features output"
                )
            flat = flat - given.detach().reshape(tensor.shape[0], -1)
        self.features[name] = flat

    def __enter__(self) -> FeatureExtractor:
        if self._handles:
            raise CkaLabError("this FeatureExtractor is already active; leave its `with` block first")
        modules = dict(self.model.named_modules())
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._start_pass))
            self._handles.append(self.model.register_forward_hook(self._end_pass, always_call=True))
            for name in self.layers:
                self._handles.append(modules[name].register_forward_hook(partial(self._record, name)))
        except BaseException:
            self._remove()
            raise
        self._calls = {}
        self.features = {}
        self._in_pass = False
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()

    def __repr__(self) -> str:
        state = "active" if self._handles else "inactive"
        return f"FeatureExtractor({type(self.model).__name__}, {len(self.layers)} layers, {state})"


def _as_args(example_input: Any) -> tuple[Any, ...]:
    return example_input if isinstance(example_input, tuple) else (example_input,)


def list_layers(model: nn.Module, example_input: Any) -> pd.DataFrame:
    """Run one forward pass and list every submodule with its output shape.

    Args:
        model: the network (temporarily put in eval mode; its modes are restored).
        example_input: the forward argument; a tuple is unpacked into several arguments, anything
            else (a tensor, a list of tensors) is passed as the single argument.

    Returns:
        DataFrame with columns ``name``, ``class``, ``output_shape`` (tuple of the first call's first
        output tensor, None if not called or not a tensor) and ``calls`` (calls in the pass), in
        ``named_modules()`` order.
    """
    import pandas as pd  # only this helper needs it: keep `import cka_lab.features` light

    modules = [(name, module) for name, module in model.named_modules() if name]
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}

    def record(name: str, module: nn.Module, args: Any, output: Any) -> None:
        calls[name] = calls.get(name, 0) + 1
        if name not in shapes:
            tensor = first_tensor(output)
            shapes[name] = tuple(tensor.shape) if tensor is not None else None

    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(partial(record, name)) for name, module in modules]
    try:
        model.eval()
        with torch.inference_mode():
            model(*_as_args(example_input))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return pd.DataFrame(
        {
            "name": [name for name, _ in modules],
            "class": [type(module).__name__ for _, module in modules],
            "output_shape": [shapes.get(name) for name, _ in modules],
            "calls": [calls.get(name, 0) for name, _ in modules],
        }
    )
