"""``cka-lab info CKPT``: architecture, heads, parameter count and provenance of a weights file."""

from __future__ import annotations

import argparse
import json

from cka_lab.cli._common import add_model_args, format_count


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a checkpoint: architecture, heads, parameters, provenance")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=run)


def describe(ckpt_path: str, arch: str | None = None) -> dict:
    from cka_lab.models import load_model
    from cka_lab.models.checkpoint import PROVENANCE_KEYS

    model = load_model(ckpt_path, arch=arch)
    cfg = model.config
    info = model.checkpoint_info
    return {
        "path": info["path"],
        "format": info["format"],
        "arch": cfg.name,
        "size": cfg.size + ("SF" if cfg.sf else ""),
        "tasks": list(cfg.tasks),
        "pad_multiple": {t: cfg.pad_multiple(t) for t in cfg.tasks},
        "parameters": model.num_parameters(),
        "embed_dim": cfg.embed_dim,
        "depths": list(cfg.depths),
        "num_heads": list(cfg.num_heads),
        "num_feat": cfg.num_feat,
        "upsampler": cfg.upsampler if cfg.scales else None,
        "train_patch_body": cfg.image_size,
        # what wrote the weights (None: not recorded, e.g. an official file or one saved before cka_lab recorded it)
        "saved_with": {k: info.get(k) for k in PROVENANCE_KEYS},
        "provenance": {k: v for k, v in info.items() if k not in ("path", "format", *PROVENANCE_KEYS)},
    }


def run(args: argparse.Namespace) -> int:
    d = describe(args.ckpt, args.arch)
    if args.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    origin = "cka_lab checkpoint" if d["format"] == "cka_lab/1" else "official-layout state dict (architecture inferred)"
    print(f"{d['path']}")
    print(f"  architecture  {d['arch']}  (EDT-{d['size']}, {origin})")
    print(f"  heads         {', '.join(d['tasks'])}  (input padded to multiples of "
          f"{', '.join(f'{t}:{m}' for t, m in d['pad_multiple'].items())})")
    print(f"  parameters    {d['parameters']:,} ({format_count(d['parameters'])})")
    print(f"  body          embed {d['embed_dim']}, depths {d['depths']}, heads {d['num_heads']}, "
          f"head/tail width {d['num_feat']}" + (f", upsampler {d['upsampler']}" if d["upsampler"] else ""))
    sw = d["saved_with"]
    if any(v is not None for v in sw.values()):
        commit = sw["git_commit"][:12] if sw["git_commit"] else "no git checkout"
        print(f"  saved with    torch {sw['torch'] or '?'}, cka_lab {sw['cka_lab'] or '?'} ({commit}), "
              f"on {sw['device'] or '?'}, {sw['precision'] or '?'}")
    else:
        print("  saved with    not recorded (torch/cka_lab versions, commit, device and precision are unknown)")
    for key, value in d["provenance"].items():
        print(f"  {key:<13} {value}")
    return 0
