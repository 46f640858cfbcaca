"""The learning-rate schedule: a pure function of (config, iteration), rebuilt on every start and resume.

Step ``t`` (0-based; the step that completes iteration ``t + 1``) runs at ``optim.lr * lr_factor(cfg, t)``:

* warm-up: ``min(1, (t + 1) / W)`` for ``W = cfg.resolved_warmup()`` (1 when ``W = 0``);
* ``multistep`` (official): ``gamma ** (number of milestones <= t)`` -- torch's ``MultiStepLR``;
* ``cosine``: ``m + (1 - m) * (1 + cos(pi * (t - W) / (T - W))) / 2`` for ``t >= W``, 1 during the
  warm-up, with ``m = min_lr / lr`` and ``T = schedule.iterations``.

Because the schedule is recomputed from the config and the iteration, a run resumed with a changed
schedule (a longer ``schedule.iterations``, other milestones, a warm-up) continues at the rate the
*new* config gives for that iteration; nothing of the old schedule is carried over.
"""

from __future__ import annotations

import bisect
import math

import torch

from cka_lab.train.config import TrainConfig

__all__ = ["lr_factor", "build_scheduler"]


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of ``optim.lr`` for 0-based step ``step``."""
    o = cfg.optim
    warm = cfg.resolved_warmup()
    factor = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    if o.lr_schedule == "multistep":
        return factor * o.gamma ** bisect.bisect_right(cfg.resolved_milestones(), step)
    if step < warm:
        return factor
    span = max(1, cfg.schedule.iterations - warm)
    progress = min(1.0, (step - warm) / span)
    floor = o.min_lr / o.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` at iteration ``start``: every group's lr becomes ``optim.lr * lr_factor(cfg, start)``.

    The base lr is ``optim.lr`` of ``cfg`` (also after loading an optimizer state), ``last_epoch`` is
    ``start``; call ``scheduler.step()`` after each optimizer step as usual.
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.optim.lr

    def factor(step: int) -> float:
        return lr_factor(cfg, step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start - 1)
