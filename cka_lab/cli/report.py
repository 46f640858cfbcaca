"""``cka-lab report A B [C D ...] --out reports/NAME.pdf``: contrasts as a PDF with provenance and findings."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from cka_lab.cli._common import check_probe_args, check_probe_bounds, parse_layers, probe_tasks, writable_dir
from cka_lab.cli.contrast import add_probe_args, model_label, print_contrast, probed_pair, run_contrast
from cka_lab.errors import CkaLabError
from cka_lab.io import file_lock
from cka_lab.runtime import rank_world


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write a PDF report contrasting checkpoints (A vs B, C vs D, ...)",
        description="Contrast checkpoints in pairs -- A with B, then C with D, ... -- and write one PDF: a title "
        "page (models, training provenance, data, versions), for each pair the CKA heatmaps, their difference, "
        "cross-model CKA, attention-distance curves and tables, and a findings page.",
    )
    p.add_argument("ckpts", metavar="CKPT", nargs="+", help="checkpoints, taken in pairs: A B [C D ...]")
    add_probe_args(p)
    p.add_argument("--title", default=None, help="title of the report (default: from the checkpoint names)")
    p.add_argument("--out", default="reports/report.pdf", help="PDF to write (default reports/report.pdf)")
    p.set_defaults(func=run)


def _check_out(out: Path, ckpts) -> None:
    from cka_lab.io import check_not_input

    if out.is_dir():
        raise CkaLabError(f"--out {str(out)!r} is a folder: give a file name ending in .pdf")
    if out.suffix.lower() != ".pdf":
        raise CkaLabError(f"--out {str(out)!r} must be a .pdf file")
    check_not_input(out, [c for c in ckpts if Path(c).exists()])
    writable_dir(out.parent if str(out.parent) else Path("."))


def run(args: argparse.Namespace) -> int:
    if len(args.ckpts) < 2 or len(args.ckpts) % 2:
        raise CkaLabError(f"give checkpoints in pairs (A B [C D ...]); got {len(args.ckpts)}")
    check_probe_args(args)
    parse_layers(args.layers)
    out = Path(args.out)
    with contextlib.ExitStack() as held:
        if rank_world().rank == 0:  # under torchrun only rank 0 writes
            _check_out(out, args.ckpts)
            held.enter_context(file_lock(out, "report"))  # a second report into the same PDF is refused now
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    from cka_lab.analysis.attention_cache import AttentionCache
    from cka_lab.analysis.contrast import attach_seed_controls
    from cka_lab.cli._common import Session, spec_from_args
    from cka_lab.models import load_model
    from cka_lab.reports import model_info, write_report

    spec = spec_from_args(args, attention=not args.no_attention, controls=not args.no_controls)
    for ck in args.ckpts:
        if not Path(ck).exists():  # a folder or a FIFO is named for what it is when it is loaded
            raise CkaLabError(f"checkpoint {ck!r} does not exist: check the path")
    pairs = list(zip(args.ckpts[0::2], args.ckpts[1::2]))
    models = {ck: load_model(ck) for ck in dict.fromkeys(args.ckpts)}  # every checkpoint read before any pair
    for a, b in pairs:
        ta, tb = probe_tasks(args.task, models[a], models[b])  # a task some pair's model lacks: now, not after earlier pairs
        check_probe_bounds(args, [(models[a], ta), (models[b], tb)])  # crops and batches that cannot fit: now too
    with Session(args.device) as session:
        contrasts = []
        cache = AttentionCache()  # a checkpoint in several pairs has its attention measured once
        for a, b in pairs:
            side_a, side_b = probed_pair(args, models[a], models[b], (a, b), session.device)  # loaded once, above
            result = run_contrast(side_a, side_b, spec, same_task=args.same_task, device=session.device,
                                  attention_cache=cache)
            if session.writes:
                print_contrast(result)
            contrasts.append(result)
        if not session.writes:
            return 0
    infos, metas = [], {}
    for ck in dict.fromkeys(args.ckpts):
        infos.append(model_info(model_label(ck), ck, models[ck]))
        metas[model_label(ck)] = dict(getattr(models[ck], "checkpoint_info", {}) or {})
    attach_seed_controls(contrasts, metas)
    c0 = contrasts[0].cross
    patches = sorted({c.cross.patch for c in contrasts} | {c.cross.meta.get("patch_b", c.cross.patch) for c in contrasts})
    settings = {
        "protocol": f"{spec.estimator} linear CKA on the {spec.layer_label} layer set, {spec.features} features, "
                    f"N={c0.n_samples} crops in {c0.n_units} resampling units of {c0.n_samples // max(c0.n_units, 1)}",
        "probe data": c0.data,
        "crops": f"{c0.n_samples} crops (input sizes {', '.join(f'{p} px' for p in patches)}: each model at its "
                 f"training size unless --patch), seed {args.seed}, forward batches of {args.batch_size}",
        "inputs": "SR heads: the crop as low-resolution input; denoising heads: crop + Gaussian noise drawn per crop "
                  "(seeded by seed and crop index)",
        "controls": "probe-draw (each model's map on two disjoint halves of the crops)"
                    + ("; seed-to-seed: " + "; ".join(sorted({c.seed_control_label for c in contrasts if c.seed_control_label}))
                       if any(c.seed_control_label for c in contrasts) else
                       "; seed-to-seed: none (no two checkpoints here differ only in their training seed)"),
        "command": "cka-lab report " + " ".join(args.ckpts) + f" --out {args.out}",
    }
    title = args.title or "; ".join(f"{model_label(a)} vs {model_label(b)}" for a, b in pairs)
    path = write_report(out, contrasts, infos, title=title, settings=settings)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
