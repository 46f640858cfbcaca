"""Study files: parsing, one-line errors, the run plan and the contrast plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from cka_lab.errors import CkaLabError
from cka_lab.study import parse_study, preset_path
from cka_lab.study.contrasts import plan_contrasts
from cka_lab.study.plan import arch_name, plan_runs, run_config

BASE = """
[study]
name = "t"
seeds = [0, 1]
[tasks]
targets = ["x2", "g25"]
[conditions.scratch]
pretrain = "none"
[conditions.single]
pretrain = "same"
[conditions.related]
pretrain = "related"
[conditions.unrelated]
pretrain = "unrelated"
[data]
root = "."
patch_size = 24
pretrain_sr = ["a"]
pretrain_dn = ["a"]
target_sr = ["b"]
target_dn = ["b"]
[budget]
pretrain_iterations = 7
iterations = 5
"""


def test_the_plan_shares_pretrainings_and_gives_finetunes_the_scratch_budget():
    spec = parse_study(BASE)
    runs = {r.name: r for r in plan_runs(spec)}
    pre = sorted(n for n, r in runs.items() if r.kind == "pretrain")
    # single x2, single g25, related SR, related DN, unrelated x2+g25 shared by both targets; per seed
    assert pre == sorted(f"pre-{t}-s{s}" for s in (0, 1) for t in ("x2", "g25", "x2x3x4", "g15g25g50", "x2g25"))
    assert runs["pre-x2g25-s0"].arch == "SRx2DNg25_EDTT"
    assert runs["g25-unrelated-s1"].init == "pre-x2g25-s1" and runs["g25-unrelated-s1"].drop == ("x2",)
    assert runs["x2-related-s0"].drop == ("x3", "x4")
    for name, r in runs.items():
        if r.condition == "scratch-long":
            assert r.iterations == 7 + 5, name  # added: from scratch for pre-training + fine-tuning
        elif r.kind != "pretrain":
            assert r.iterations == 5, name  # a fine-tune gets exactly the scratch budget
        else:
            assert r.iterations == 7
    order = [r.name for r in plan_runs(spec)]
    for r in plan_runs(spec):
        for d in r.depends:
            assert order.index(d) < order.index(r.name)
    assert len(runs) == 10 + 2 * 2 * 5


def test_every_sr_model_of_a_study_shares_one_upsampler(tmp_path):
    spec = parse_study(BASE)
    for r in plan_runs(spec):
        cfg = run_config(spec, r, models_dir=tmp_path, device="cpu")
        if "x2" in r.tasks:
            assert cfg["model"]["upsampler"] == "pixelshuffle"
        if r.kind == "finetune":
            assert cfg["finetune"]["init"].endswith(f"{r.init}.pt")
            assert cfg["data"].get("sr", cfg["data"].get("dn")) == ["b"]  # target data
        if r.kind == "pretrain":
            assert "a" in cfg["data"].get("sr", cfg["data"].get("dn"))


def test_contrast_plan_has_pretrain_seed_and_task_contrasts():
    kinds = [p.kind for p in plan_contrasts(parse_study(BASE))]
    assert kinds.count("pretrain") == 2 * 2 * 4  # targets x seeds x (pre-trained conditions + scratch-long)
    assert kinds.count("seed") == 2 * 1  # targets x pairs of seeds, scratch condition
    assert kinds.count("task") == 2  # SR vs DN per seed


def test_arch_names():
    assert arch_name(("x2", "x3", "x4"), "T") == "SRx2x3x4_EDTT"
    assert arch_name(("g15", "g25", "g50"), "B") == "DNg15g25g50_EDTB"


@pytest.mark.parametrize(
    "edit, message",
    [
        (("pretrain = \"same\"", "pretrain = [\"x2\", \"x5\"]"), "unknown task 'x5'"),
        (("targets = [\"x2\", \"g25\"]", "targets = [\"x2\", \"g52\"]"), "did you mean 'g50'"),
        (("pretrain = \"related\"", "pretrain = \"relatd\""), "did you mean 'related'"),
        (("pretrain = \"same\"", "pretrain = [\"x3\", \"x4\"]"), "has no x2 head"),
        (("[budget]", "[budgte]"), "unknown section [budgte]"),
        (("iterations = 5", "iterations = 0"), "iterations must be >= 1"),
        (("[conditions.scratch]\npretrain = \"none\"", ""), "needs a from-scratch condition"),
        (("pretrain = \"same\"", "pretrain = \"same\"\ntargets = [\"x4\"]"), "'x4', which is not in [tasks] targets"),
        (("pretrain = \"none\"", "pretrain = \"none\"\ntargets = [\"x2\"]"), "cannot be limited to some targets"),
        (("pretrain = \"same\"", "pretrain = \"same\"\ntargets = \"x2\""), "targets must be a list"),
    ],
)
def test_bad_study_files_get_one_line(edit, message):
    text = BASE.replace(*edit, 1)
    assert text != BASE
    with pytest.raises(CkaLabError, match=message.replace("[", r"\[").replace("]", r"\]")) as exc:
        parse_study(text)
    assert "\n" not in str(exc.value)


def test_a_condition_limited_to_some_targets_trains_and_contrasts_only_those():
    text = BASE.replace('pretrain = "same"', 'pretrain = "same"\ntargets = ["x2"]', 1)
    text = text.replace('pretrain = "unrelated"', 'pretrain = "unrelated"\ntargets = ["x2"]', 1)
    spec = parse_study(text)
    names = {r.name for r in plan_runs(spec)}
    assert {"x2-single-s0", "x2-unrelated-s1", "pre-x2g25-s0"} <= names
    assert not {n for n in names if n.startswith(("g25-single", "g25-unrelated", "pre-g25-"))}
    assert len(names) == 2 * (4 + 5 + 3)  # per seed: 4 pre-trainings, x2 in 5 conditions, g25 in 3
    pairs = {p.pair for p in plan_contrasts(spec)}
    assert "x2_scratch_vs_single_s0" in pairs and not any(p.startswith("g25_scratch_vs_single") for p in pairs)
    assert [c.name for c in spec.conditions_for("g25")] == ["scratch", "related", "scratch-long"]


def test_the_plan_goes_seed_by_seed():
    seeds = [r.seed for r in plan_runs(parse_study(BASE))]
    assert seeds == sorted(seeds)


def test_the_fingerprint_covers_what_is_trained_and_nothing_else():
    spec = parse_study(BASE)
    same = BASE.replace("[budget]", "# a comment\n[eval]\ncrop = 64\n[analysis]\nn_samples = 64\n[budget]")
    assert parse_study(same).fingerprint == spec.fingerprint
    for edit in (("iterations = 5", "iterations = 6"), ('name = "t"', 'name = "u"'), ("seeds = [0, 1]", "seeds = [0, 2]"),
                 ('target_sr = ["b"]', 'target_sr = ["c"]'), ("[budget]", "[optim]\nlr = 1e-3\n[budget]")):
        assert parse_study(BASE.replace(*edit, 1)).fingerprint != spec.fingerprint, edit


def test_bundled_presets_parse():
    from cka_lab.study import preset_names

    assert preset_names() == ["paper-cpu", "paper-small", "paper-small-cpu", "tiny"]
    specs = {}
    for name in preset_names():
        specs[name] = spec = parse_study(preset_path(name).read_text(), source=preset_path(name))
        assert plan_runs(spec) and plan_contrasts(spec)
    # paper-small-cpu is paper-small's design at a CPU budget: same runs, seeds, data split and recipe
    full, cpu = specs["paper-small"], specs["paper-small-cpu"]
    assert [(r.name, r.kind, r.init) for r in plan_runs(full)] == [(r.name, r.kind, r.init) for r in plan_runs(cpu)]
    assert (full.conditions, full.tasks, full.optim, full.study.seeds) == (cpu.conditions, cpu.tasks, cpu.optim, cpu.study.seeds)
    assert [getattr(full.data, k) for k in ("pretrain_sr", "pretrain_dn", "target_sr", "target_dn")] == \
        [getattr(cpu.data, k) for k in ("pretrain_sr", "pretrain_dn", "target_sr", "target_dn")]
    with pytest.raises(CkaLabError, match="bundled studies are"):
        preset_path("huge")


def test_a_preset_name_is_a_preset_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    from cka_lab.study.orchestrate import resolve_study_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # e.g. the study's output folder, made by --out tiny
    assert resolve_study_file("tiny") == preset_path("tiny")
    (tmp_path / "mine").write_text("[study]\n")
    assert resolve_study_file("mine") == Path("mine")


def test_the_bundled_pretraining_configs_are_the_paper_cpu_seed0_runs(tmp_path):
    """checkpoints/configs/edtt_{srx2x3x4,dn}_pretrain.toml train exactly the paper-cpu study's seed-0
    pre-trainings (same seeds, data, recipe, budget): only names, paths and the device differ."""
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    spec = parse_study(preset_path("paper-cpu").read_text(), source=preset_path("paper-cpu"))
    runs = {r.name: r for r in plan_runs(spec)}
    bundled = {"edtt_srx2x3x4_pretrain": "pre-x2x3x4-s0", "edtt_dn_pretrain": "pre-g15g25g50-s0"}
    for name, run in bundled.items():
        mine = tomllib.loads((repo / "checkpoints" / "configs" / f"{name}.toml").read_text())
        theirs = run_config(spec, runs[run], models_dir=tmp_path, device="cpu")
        for cfg in (mine, theirs):
            for key in ("name", "out", "device"):
                cfg["run"].pop(key, None)
            cfg["data"].pop("root")
        theirs = tomllib.loads(__import__("tomli_w").dumps(theirs))  # the same TOML round trip
        assert mine == theirs, name
