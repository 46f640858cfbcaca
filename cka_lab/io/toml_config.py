"""The one TOML reader of the config files (training configs, study files): parsing, ``${VAR}`` expansion,
typed scalar checks and close-match hints, every problem a one-line :class:`~cka_lab.errors.CkaLabError`.

>>> read_toml('a = 1', "x.toml")
{'a': 1}
>>> check_scalar(2, float, "optim.lr")
2.0
>>> close_match("iteratons", ["iterations", "batch_size"])
" (did you mean 'iterations'?)"

Built on the standard library's ``tomllib`` and a few typed checks rather than pydantic or cattrs: the
configs need their own one-line messages (the field, the value, the closest valid key), which those
libraries would have to be taught anyway, and the package then depends on nothing more.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterable
from typing import Any

from cka_lab.errors import CkaLabError

__all__ = ["check_scalar", "close_match", "expand_env", "read_toml"]

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def read_toml(text: str, where: str) -> dict[str, Any]:
    """The TOML document ``text`` as a dict; ``where`` (the file) names it in the one-line error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CkaLabError(f"{where} is not valid TOML: {exc}") from None


def close_match(key: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options`` to a mistyped ``key``, else ``""``."""
    match = difflib.get_close_matches(str(key), list(options), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def expand_env(value: str, where: str) -> str:
    """``${VAR}`` and ``${VAR:-default}`` replaced by the environment, as a shell does: a variable set to
    the empty string counts as unset (its default is used); one unset and without a default is an error."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if os.environ.get(name, "") != "":
            return os.environ[name]
        if default is not None:
            return default
        raise CkaLabError(f"{where}: environment variable ${{{name}}} is not set (set it, or write ${{{name}:-default}})")

    return _ENV.sub(sub, value)


def check_scalar(value: Any, tp: type, where: str) -> Any:
    """``value`` checked against ``bool``, ``int``, ``float`` (finite; an integer is accepted) or ``str``;
    ``where`` names the field in the error (``optim.lr must be a number, got 'x'``)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise CkaLabError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CkaLabError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CkaLabError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):  # TOML has inf and nan: no field takes them
            raise CkaLabError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise CkaLabError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"check_scalar: no rule for {tp!r}")
