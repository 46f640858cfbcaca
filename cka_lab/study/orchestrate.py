"""The study from start to end: folder, trainings, evaluations, contrasts, tables, report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cka_lab import __version__
from cka_lab.analysis.attention_cache import AttentionCache
from cka_lab.errors import CkaLabError
from cka_lab.study.claims import judge_claims
from cka_lab.study.contrasts import ContrastRecord, run_contrasts
from cka_lab.io import made_dirs, remove_empty_dirs, write_bytes
from cka_lab.io.lock import folder_lock
from cka_lab.runtime import rank_world
from cka_lab.study.measure import measure_contrast, protocol_label
from cka_lab.study.runner import StudyPaths, evaluate_runs, hardware_description, prepare_folder, train_runs
from cka_lab.study.spec import StudySpec, load_study
from cka_lab.train.logs import training_wall_time
from cka_lab.study.tables import (ALPHA, FINDINGS, baselines_frame, findings_markdown, gains, model_table, score_summary, scores_frame,
                                  verdict_table)

__all__ = ["study_from_args", "resolve_study_file"]


def resolve_study_file(name: str) -> Path:
    """A path, or the name of a bundled preset (a folder of that name, e.g. the study's own output, is not a file)."""
    path = Path(name)
    if path.suffix == ".toml" or path.is_file():
        if path.exists():  # a FIFO or a huge file is refused before it is read
            from cka_lab.io.inputs import check_input_file

            check_input_file(path, "study file", max_bytes=1 << 20, hint="a study file is a small TOML file")
        return path
    from cka_lab.study import preset_path

    return preset_path(name)


def study_from_args(args: argparse.Namespace) -> int:
    spec = load_study(resolve_study_file(args.study))
    if args.max_runs is not None and args.max_runs < 0:
        raise CkaLabError(f"--max-runs must be >= 0, got {args.max_runs}")
    out = Path(args.out) if args.out else Path("studies") / spec.study.name
    if out.exists() and not out.is_dir():
        raise CkaLabError(f"--out {str(out)!r} is a file: a study writes a folder; choose another --out")
    rank = rank_world().rank
    if rank != 0:
        return _run_study(spec, out, args)
    created = made_dirs(out)
    try:
        with folder_lock(out, "study folder"):  # one study process writes a folder at a time
            return _run_study(spec, out, args)
    except BaseException:
        remove_empty_dirs(created)
        raise


def _run_study(spec: StudySpec, out: Path, args: argparse.Namespace) -> int:
    rank, world = rank_world().rank, rank_world().world
    t0 = time.perf_counter()
    if rank == 0:
        paths = prepare_folder(spec, out, resume=args.resume)
    if world > 1:
        _wait_for(out / "study.json")
        paths = prepare_folder(spec, out, resume=True) if rank else paths
    trained = train_runs(spec, paths, max_runs=args.max_runs, rank=rank, world=world)
    if args.max_runs is not None:
        print(f"[study] trained {len(trained)} run(s) and stopped (--max-runs): continue with --resume")
        return 0
    if rank != 0:
        return 0
    if world > 1:
        from cka_lab.study.plan import plan_runs

        for r in plan_runs(spec):
            _wait_for(paths.model(r.name))
    device = _device(args.device)
    results = evaluate_runs(spec, paths, device=device)
    from cka_lab.study.baselines import evaluate_baselines

    baselines = evaluate_baselines(spec, paths)
    # a model in several contrasts (scratch runs are in most) has its attention measured once, in a pass of
    # its own, so that every table is the same whether or not the study was resumed midway
    cache = AttentionCache(separate=True)
    by_protocol, measured = {}, []

    def say(line: str) -> None:  # run_contrasts says a line for each contrast it measures (not for a saved one)
        measured.append(line)
        print(line, flush=True)

    for protocol in spec.analysis.protocols:
        by_protocol[protocol] = run_contrasts(
            spec, paths, lambda s, p, c, q=protocol: measure_contrast(s, p, c, device=device, attention_cache=cache,
                                                                       protocol=q),
            say=say, protocol=protocol)
    report = write_outputs(spec, paths, by_protocol, hardware=hardware_description(device), baselines=baselines,
                           results=results, elapsed_s=time.perf_counter() - t0, measured=len(measured))
    print(f"[study] {spec.study.name} done in {time.perf_counter() - t0:.0f} s: {report}")
    return 0


def _mean_matrices(records: list[ContrastRecord], which: str) -> np.ndarray:
    return np.nanmean(np.stack([r.matrix(which) for r in records]), axis=0)


def design_frame(spec: StudySpec) -> pd.DataFrame:
    """Per target and condition: pre-training tasks, training steps and patches (pre-training included),
    the training data and whether the pre-training corpus includes the target's training set."""
    from cka_lab.study.plan import condition_compute
    from cka_lab.study.spec import task_kind

    rows = []
    for t in spec.tasks.targets:
        kind = task_kind(t)
        for c in spec.conditions_for(t):
            steps, patches = condition_compute(spec, t, c)
            tasks = c.pretrain_tasks(t, spec.tasks.targets)
            kinds = tuple(dict.fromkeys(task_kind(x) for x in tasks))
            overlap = spec.pretrain_overlap(kind, kinds) if tasks else []
            rows.append({"target": t, "condition": c.name, "pretrain": "+".join(tasks) or "none",
                         "budget": "pre-training + fine-tune" if tasks else c.budget, "steps": steps,
                         "patches": patches,
                         "pretrain_data": _sources(tuple(s for k in kinds for s in getattr(spec.data, f"pretrain_{k}"))),
                         "target_data": _sources(getattr(spec.data, f"target_{kind}")),
                         "pretrain_includes_target_data": ", ".join(overlap) if tasks and overlap else "",
                         "eval": getattr(spec.eval, kind)})
    return pd.DataFrame(rows)


def write_outputs(spec: StudySpec, paths: StudyPaths, records: dict[str, list[ContrastRecord]] | list[ContrastRecord],
                  *, hardware: str, baselines: list[dict] = (), results: list[dict],
                  elapsed_s: float | None = None, measured: int | None = None) -> Path:
    """The tables (``tables/*.csv``) and the PDF (``report.pdf``), from evaluations (``results``), baselines
    and the contrast records of each CKA protocol (``{"default": [...], "paper": [...]}``; a list is the
    default protocol's). ``elapsed_s``: the wall time of this invocation so far (on the title page beside the
    runs' own training times); ``measured``: how many contrasts this invocation measured (0: all were saved)."""
    from cka_lab.analysis.compare import stage_starts
    from cka_lab.reports.study_report import StudyReportContent, write_study_report

    by_protocol = records if isinstance(records, dict) else {"default": records}
    records = by_protocol.get("default") or next(iter(by_protocol.values()))
    scratch, long = spec.scratch, spec.scratch_long
    base = baselines_frame(list(baselines))
    scores = scores_frame(results, base)
    summary = score_summary(scores, base)
    gain = gains(scores, scratch, long)
    order = list(FINDINGS)
    verdicts = sorted(judge_claims(spec, scores, records, protocols=by_protocol),
                      key=lambda v: order.index(v.finding) if v.finding in order else len(order))
    design = design_frame(spec)
    same_layer = pd.DataFrame([{"protocol": name, "pair": r.plan.pair, "kind": r.plan.kind, "target": r.plan.target,
                                "condition": r.plan.condition, "seed": r.plan.seed, "seed_b": r.plan.seed_b,
                                "same_layer_cka": r.same_layer_mean,
                                "lower": r.same_layer_lower, "upper": r.same_layer_upper}
                               for name, recs in by_protocol.items() for r in recs])
    locality = pd.DataFrame([{**row, "pair": r.plan.pair, "target": r.plan.target}
                             for r in records if r.plan.kind == "pretrain" for row in r.attention])
    claims = verdict_table(verdicts)
    models = model_table(scores, [row for recs in by_protocol.values() for r in recs for row in r.attention])
    for name, df in (("scores", scores), ("models", models), ("score_summary", summary), ("gains", gain), ("same_layer_cka", same_layer),
                     ("attention_locality", locality), ("claims", claims), ("baselines", base),
                     ("design", design)):
        write_bytes(paths.tables / f"{name}.csv", df.to_csv(index=False, float_format="%.6g").encode("utf-8"))
    heatmaps, curves = [], []
    for name, records in by_protocol.items():
        protocol = protocol_label(spec, name)
        tag = f" [{name} protocol]" if len(by_protocol) > 1 else ""
        for target in spec.tasks.targets:
            per_cond = {}
            for cond in spec.conditions_for(target):
                recs = [r for r in records if r.plan.kind == "pretrain" and r.plan.target == target]
                key = "within_a" if cond.name == scratch else "within_b"
                recs = [r for r in recs if cond.name == scratch or r.plan.condition == cond.name]
                if recs:
                    per_cond[cond.name] = _mean_matrices(recs, key)
            seed_rec = [r for r in records if r.plan.kind == "seed" and r.plan.target == target and r.plan.condition == scratch]
            panels = [(f"{target} {c}: within-model CKA\n(mean over seeds)", m.tolist()) for c, m in per_cond.items()]
            if seed_rec:
                panels.append((f"{target} {scratch}: seed vs seed, mean over {len(seed_rec)} pairs\n(control: cross-model CKA)",
                               _mean_matrices(seed_rec, "cross").tolist()))
            layers = records[0].layers if records else []
            heatmaps.append((f"{target}: CKA maps{tag} ({protocol})", [(t, np.asarray(m)) for t, m in panels],
                             stage_starts(layers)))
            series = {f"{r.plan.condition} vs {scratch}": [] for r in records if r.plan.kind == "pretrain" and r.plan.target == target}
            for r in records:
                if r.plan.kind == "pretrain" and r.plan.target == target:
                    series[f"{r.plan.condition} vs {scratch}"].append(np.asarray(r.same_layer))
            control = {f"control: {target} {r.plan.condition} seed {r.plan.seed} vs {r.plan.seed_b}": np.asarray(r.same_layer)
                       for r in seed_rec}
            curves.append((f"{target}: same-layer CKA between scratch and pre-trained models{tag}\n"
                           "(mean over seeds, band: their range; grey: scratch seed pairs, the control)",
                           series, control))
        task_recs = [r for r in records if r.plan.kind == "task"]
        if task_recs:
            curves.append((f"SR vs DN (scratch): same-layer CKA{tag}\n"
                           "(mean over seeds, band: their range; grey: scratch seed pairs of each task, the control)",
                           {"SR vs DN": [np.asarray(r.same_layer) for r in task_recs]},
                           {f"control: {r.plan.target} {r.plan.condition} seed {r.plan.seed} vs {r.plan.seed_b}": np.asarray(r.same_layer)
                            for r in records if r.plan.kind == "seed" and r.plan.condition == scratch}))
    protocol = "; ".join(f"{n}: {protocol_label(spec, n)}" if len(by_protocol) > 1 else protocol_label(spec, n)
                         for n in by_protocol)
    write_bytes(paths.root / "findings.md", findings_markdown(
        f"{spec.study.name}: the paper's findings, judged", verdicts,
        [f"Hardware: {hardware}. CKA protocols: {protocol}.",
         "Each sentence is the report's (report.pdf, claims page); numbers: tables/claims.csv. Holm's correction "
         "is over the tested claims."]).encode("utf-8"))
    title = _title_lines(spec, hardware, protocol, design, base)
    wall = run_wall_times(spec, paths)
    write_bytes(paths.tables / "wall_time.csv", wall.to_csv(index=False, float_format="%.1f").encode("utf-8"))
    title.insert(1, _wall_time_line(spec, wall, elapsed_s, measured))
    short = protocol if len(by_protocol) == 1 else "CKA protocols " + " and ".join(by_protocol)
    return write_study_report(paths.report, StudyReportContent(
        study_name=spec.study.name, hardware=hardware, protocol=short, title_lines=title,
        verdicts=[v.sentence() for v in verdicts], findings=[FINDINGS.get(v.finding, "Other claims") for v in verdicts],
        claims=claims, scores=scores, summary=summary, gains=gain, baselines=base, models=models, design=design,
        heatmaps=heatmaps, curves=curves, locality=locality))


def run_wall_times(spec: StudySpec, paths: StudyPaths) -> pd.DataFrame:
    """run, kind, wall_time_s (:func:`training_wall_time`; NaN for a run without a log) of every planned run."""
    from cka_lab.study.plan import plan_runs

    rows = []
    for r in plan_runs(spec):
        log = paths.runs / r.name / "train_log.csv"
        rows.append({"run": r.name, "kind": r.kind, "wall_time_s": training_wall_time(log)})
    return pd.DataFrame(rows)


def _wall_time_line(spec: StudySpec, wall: pd.DataFrame, elapsed_s: float | None, measured: int | None = None) -> str:
    if elapsed_s is None:
        this = ""
    elif measured == 0:
        this = (f"; this invocation {elapsed_s / 60:.0f} min, measuring no contrast (every contrast was saved by "
                "an earlier invocation of the study)")
    else:
        this = (f"; this invocation {elapsed_s / 60:.0f} min (evaluation, "
                f"{'' if measured is None else f'{measured} '}contrasts and this report included)")
    known = wall["wall_time_s"].dropna()
    if known.empty:
        return f"Wall time: training not recorded in this folder (no run has a train_log.csv){this}."
    slots = max(1, len(spec.study.devices) * spec.study.runs_per_device)
    return (f"Wall time: training {known.sum() / 3600:.1f} h of run time over {len(known)} of {len(wall)} runs "
            f"(each run's own wall clock, from its train_log.csv), {slots} run(s) at once "
            f"(about {known.sum() / 3600 / slots:.1f} h elapsed if the slots were always full){this}. "
            "Per run: tables/wall_time.csv.")


def _title_lines(spec: StudySpec, hardware: str, protocol: str, design: pd.DataFrame, base: pd.DataFrame) -> list[str]:
    from cka_lab.study.plan import scratch_long_budget
    from cka_lab.study.spec import task_kind

    b, long = spec.budget, spec.scratch_long
    lines = [
        f"Hardware: {hardware}.",
        f"Study file fingerprint {spec.fingerprint}; cka_lab {__version__}, torch {torch.__version__}.",
        f"Targets: {', '.join(spec.tasks.targets)}. Conditions: "
        + "; ".join(f"{c.name} (pretrain = {c.pretrain if isinstance(c.pretrain, str) else '+'.join(c.pretrain)}"
                    + (", budget total" if c.is_scratch_long else "") + (", added by the study" if c.added else "")
                    + (f", {'/'.join(c.targets)} only" if c.targets else "") + ")"
                    for c in spec.conditions) + f". Seeds: {', '.join(map(str, spec.study.seeds))} (the error bars).",
        f"Budgets: pre-training {b.pretrain_iterations} iterations, batch {b.pretrain_batch_size or b.batch_size} per head; "
        f"scratch and fine-tune {b.iterations} iterations each, batch {b.batch_size}; patch {spec.data.patch_size} px at "
        f"body resolution; EDT-{spec.study.size}.",
    ]
    if long:
        lines.append(f"Equal compute: {long} trains from scratch for the steps of pre-training + fine-tuning at the batch "
                     "that gives it at least the patches of the largest pre-training + fine-tune ("
                     + "; ".join(f"{t}: {scratch_long_budget(spec, t)[0]} it x batch {scratch_long_budget(spec, t)[1]}"
                                 for t in spec.tasks.targets)
                     + "). A gain over scratch = extra training (scratch-long - scratch) + transfer (pre-trained - "
                     "scratch-long); the pre-training claims are judged on the transfer. Steps and patches per condition: "
                     "tables/design.csv.")
    lines.append("Data: pre-training on " + _sources(spec.data.pretrain_sr + spec.data.pretrain_dn)
                 + "; target runs on " + _sources(spec.data.target_sr + spec.data.target_dn)
                 + ". No training source overlaps an evaluation folder (refused otherwise).")
    for t in spec.tasks.targets:
        kinds = tuple(dict.fromkeys(task_kind(x) for c in spec.pretrained if c.applies(t)
                                    for x in c.pretrain_tasks(t, spec.tasks.targets)))
        overlap = spec.pretrain_overlap(task_kind(t), kinds) if kinds else []
        if overlap:
            lines.append(f"Departure: the {t} pre-training corpus INCLUDES the target's training set ({', '.join(overlap)}): "
                         "a pre-trained model has seen the scratch run's images, besides images it never sees.")
    lines.append(f"Evaluation: SR on {spec.eval.sr}, DN on {spec.eval.dn} (official protocols; max_images {spec.eval.max_images}, "
                 f"crop {spec.eval.crop}). Trivial baselines on the same images by the same protocol: "
                 + ("; ".join(f"{r.target} {r.baseline} {r.psnr:.2f} dB" + (f" ({r.detail})" if r.detail else "")
                              for r in base.itertuples()) if not base.empty else "none measured") + ".")
    lines += [
        f"Analysis protocol: {protocol}. Seeds: every run has its own initialisation and batch-order seeds, so a compared "
        "pair (scratch, pre-trained) and a control pair (scratch seed i, scratch seed j) share nothing; the CKA control "
        "uses every pair of scratch seeds and enters with its variance (leave-one-seed-out jackknife).",
        _optim_line(spec),
        "Departures from the paper: far smaller budgets and data (ImageNet pre-training in the paper); every SR model "
        "uses the pixelshuffle upsampler so that scratch and fine-tuned models share one architecture.",
        f"Verdicts: a claim is tested by its effect's two-sided p (t over seeds; seed jackknife for CKA claims); Holm's "
        f"correction over the tested claims at {ALPHA:g}: reproduced / not reproduced by the sign of the effect where the "
        "adjusted p is at most that, otherwise not decidable at this scale. A PSNR claim is tested only where every "
        "compared model beats the best trivial baseline; a locality claim only where attention was learnt.",
    ]
    return lines


def _optim_line(spec: StudySpec) -> str:
    """The study's ``[optim]`` beside the official EDT recipe (``OptimConfig``'s defaults; milestones: the official
    250k/400k/450k/475k of 500k iterations as fractions), naming each departure."""
    import dataclasses

    from cka_lab.train.config import OptimConfig

    official = {f.name: f.default for f in dataclasses.fields(OptimConfig)}
    official["milestones"] = (0.5, 0.8, 0.9, 0.95)

    def fmt(v) -> str:
        if isinstance(v, (list, tuple)):
            return "(" + ", ".join(fmt(x) for x in v) + ")"
        return f"{v:g}" if isinstance(v, float) else str(v)

    given = spec.optim_dict()
    shown = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(given.items())) or "the official recipe"
    departures = []
    for key, value in sorted(given.items()):
        base = official.get("lr" if key in ("pretrain_lr", "finetune_lr") else key)
        if base is not None and fmt(value) != fmt(base):
            departures.append(f"{key} {fmt(value)} (official {'lr ' if key.endswith('_lr') else ''}{fmt(base)})")
    return (f"Optimiser (every run's [optim]): Adam, {shown}. Departures from the official EDT recipe: "
            + ("; ".join(departures) if departures else "none") + ".")


def _sources(values) -> str:
    """``["a", {"path": "b", "reduce": 2}, "a"]`` -> ``"a, b (1/2 size)"`` (each folder once)."""
    out = []
    for v in values:
        text = f"{v['path']} (1/{v['reduce']} size)" if isinstance(v, dict) and v.get("reduce", 1) != 1 else \
            str(v["path"] if isinstance(v, dict) else v)
        if text not in out:
            out.append(text)
    return ", ".join(out)


def _device(name: str) -> str:
    from cka_lab.runtime import resolve_device

    return str(resolve_device(name))


def _wait_for(path: Path, poll: float = 2.0) -> None:
    while not path.exists():
        time.sleep(poll)
