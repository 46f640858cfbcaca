"""Imports run one way: runtime -> data -> models -> features -> metrics -> analysis -> plots -> reports ->
CLI / study. No module imports a layer above its own (read from the source with ``ast``, imports inside
functions included), and nothing outside ``cka_lab.cli`` imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cka_lab"

#: Each part of cka_lab and its floor; a module may import its own part and parts on a lower floor only.
#: ``train`` stands beside ``analysis`` (both read models, features and metrics; neither reads the other);
#: the parts of the ground floor (errors, io, runtime, tasks, the package root) may use each other.
LAYERS = {
    "errors": 0, "io": 0, "runtime": 0, "tasks": 0, "<root>": 0,
    "data": 1,
    "models": 2,
    "features": 3,
    "metrics": 4,
    "analysis": 5, "train": 5,
    "plots": 6,
    "reports": 7,
    "study": 8,
    "cli": 9,
    "__main__": 10,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every cka_lab import in the file, relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "cka_lab":  # from cka_lab import X: X may be a part (from cka_lab import tasks)
                found += [(node.lineno, f"cka_lab.{a.name}") for a in node.names]
            elif target.startswith("cka_lab."):
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("cka_lab")]
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2:
        return "<root>"
    return parts[1] if parts[1] in LAYERS else "<root>"  # cka_lab.__version__ and the like: the root


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_floor():
    parts = {_part(_module_name(p)) for p in _files()}
    assert parts <= set(LAYERS), f"parts without a floor in LAYERS: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_import_runs_back_up(path):
    source = _part(_module_name(path))
    wrong = [f"line {line}: {target} ({_part(target)}, floor {LAYERS[_part(target)]})"
             for line, target in _imports(path)
             if _part(target) != source and LAYERS[_part(target)] >= LAYERS[source] > 0]
    assert not wrong, f"{path.name} ({source}, floor {LAYERS[source]}) imports from its floor or above: {wrong}"


@pytest.mark.parametrize("old, new", [
    ("cka_lab.metrics.cka_functional", "cka_lab.metrics.cka.functional"),
    ("cka_lab.metrics.cka_minibatch", "cka_lab.metrics.cka.minibatch"),
    ("cka_lab.metrics.cka_full", "cka_lab.metrics.cka.full"),
    ("cka_lab.metrics.cka_passes", "cka_lab.metrics.cka.passes"),
    ("cka_lab.metrics.cka_result", "cka_lab.metrics.cka.result"),
    ("cka_lab.metrics.attention_stats", "cka_lab.metrics.attention.stats"),
    ("cka_lab.metrics.attention_summary", "cka_lab.metrics.attention.summary"),
    ("cka_lab.metrics.attention_baselines", "cka_lab.metrics.attention.baselines"),
    ("cka_lab.metrics.attention_findings", "cka_lab.analysis.findings"),
])
def test_old_module_paths_are_the_new_modules(old, new):
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)


def test_the_attention_face_still_offers_the_findings_and_the_cka_face_its_names():
    from cka_lab.analysis.findings import attention_findings
    from cka_lab.metrics.attention import attention_findings as via_metrics
    from cka_lab.metrics.cka import CKAResult, FullBatchCKA, MinibatchCKA, cka_by_passes  # noqa: F401

    assert via_metrics is attention_findings
