"""The training loop: L1 loss on every head every step, Adam, lr schedule, validation, checkpoints.

One step draws one batch per head (:mod:`cka_lab.train.batches`), runs them through the model in
one call (in training mode EDT sends heads whose body inputs share a shape through the body as one
batch, as the official multi-task model does), and minimises the **mean over heads** of each head's
L1 loss. Every ``val.every`` iterations rank 0 validates each head on its validation set (PSNR/SSIM
by the task's convention); every ``schedule.ckpt_every`` iterations rank 0 writes ``last.pt``
atomically (model, optimizer, scheduler, every rank's RNG states, the config), and ``best.pt``
(weights only) whenever the mean validation PSNR improves.

Resuming (``resume=True``) loads ``last.pt`` from the run folder and continues; since batches are a
pure function of (seed, iteration, rank, head) and the RNG states are restored, the final weights
equal those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import torch.nn.functional as F

from cka_lab.errors import CkaLabError
from cka_lab.io import made_dirs, remove_empty_dirs, write_text
from cka_lab.io.lock import folder_lock
from cka_lab.models.bounds import available_memory, check_fits, stored_mask_bytes, training_bytes
from cka_lab.models.checkpoint import load_weights, save_checkpoint
from cka_lab.models.edt import EDT, compile_for_training
from cka_lab.models.registry import config_from_name
from cka_lab.train.batches import (
    StepBatches,
    TrainingData,
    build_patch_sets,
    check_patch_size,
    head_patch_size,
    step_loader,
)
from cka_lab.train.config import TrainConfig, config_differences, config_to_dict
from cka_lab.train.diagnostics import TrainingDiagnostics, heldout_probe, probe_inputs, progress_text
from cka_lab.runtime import DistEnv, init_distributed
from cka_lab.train.finetune import init_from_checkpoint
from cka_lab.train.logs import CsvLog, make_progress, progress_enabled, say
from cka_lab.train.qk_lr import QKLearningRate
from cka_lab.train.precision import autocast_dtype, precision_label
from cka_lab.train.schedule import build_scheduler
from cka_lab.train.state import BEST, LAST, capture_rng, read_training_checkpoint, restore_rng, seed_everything
from cka_lab.train.validate import TaskScore, ValidationSets

__all__ = ["TrainResult", "train", "resolve_out", "build_model"]

T = TypeVar("T")


#: Per-head attention statistics of every log row (:mod:`cka_lab.train.diagnostics`).
HEADS_LOG = "attn_heads.csv"


@dataclass
class TrainResult:
    """Where a run ended: its folder, the last iteration, the checkpoints and the last validation."""

    out: Path
    iteration: int
    last: Path | None
    best: Path | None
    val: dict[str, TaskScore] = field(default_factory=dict)
    final_loss: float | None = None


def resolve_out(cfg: TrainConfig, out: str | Path | None) -> Path:
    """The run folder: ``out`` (command line) > ``[run] out`` > ``runs/<name>`` in the working directory."""
    if out is not None:
        return Path(out)
    if cfg.run.out is not None:
        return cfg.run.out
    return Path("runs") / cfg.run.name


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu") -> EDT:
    """The EDT of ``[model]``; ``image_size`` (mask buffers) defaults to ``data.patch_size``.

    Sizes are checked against the memory of the machine (``device``) before the model is built.
    """
    overrides = {"image_size": cfg.data.patch_size, **cfg.model.override_dict()}
    try:
        model_cfg = config_from_name(cfg.model.arch, **overrides)
    except TypeError as exc:
        raise CkaLabError(f"[model] bad override: {exc}") from None
    check_patch_size(model_cfg, cfg.data.patch_size)
    check_training_memory(model_cfg, cfg.data.patch_size, cfg.schedule.batch_size, device)
    return EDT(model_cfg)


def check_training_memory(model_cfg, patch_size: int, batch_size: int, device: torch.device | str = "cpu") -> None:
    """Refuse (one line) a patch, image size or batch whose estimated memory the machine does not have."""
    p = model_cfg.image_size
    check_fits(stored_mask_bytes(model_cfg), available_memory("cpu"), f"the attention masks of image_size {p}",
               "use a smaller data.patch_size (or [model] image_size)")
    sides = {h.key: patch_size * model_cfg.token_stride(h.key) for h in model_cfg.heads}
    check_fits(training_bytes(model_cfg, batch_size, sides), available_memory(device),
               f"training at data.patch_size {patch_size} with batch_size {batch_size}",
               "use a smaller data.patch_size or schedule.batch_size")


def train(cfg: TrainConfig, *, out: str | Path | None = None, resume: bool = False,
          max_iters: int | None = None, split_batch: bool = False) -> TrainResult:
    """Run (or, with ``resume``, continue) the training a config describes.

    ``max_iters`` stops at that iteration instead of ``schedule.iterations`` (the lr schedule is
    unchanged). Under torchrun every process calls this; only rank 0 writes files. ``split_batch``:
    each of the processes takes ``batch_size / world_size`` patches per head (the run's batch is the
    config's; :mod:`cka_lab.train.cpu_ranks`), else ``batch_size`` each.
    """
    threads = torch.get_num_threads()
    env = init_distributed(cfg.run.device, cfg.run.threads)
    try:
        if split_batch and cfg.schedule.batch_size % env.world_size:
            raise CkaLabError(f"schedule.batch_size {cfg.schedule.batch_size} does not split over {env.world_size} processes")
        trainer = _Trainer(cfg, env, resolve_out(cfg, out), resume, max_iters)
        trainer.batch = cfg.schedule.batch_size // env.world_size if split_batch else cfg.schedule.batch_size
        try:
            with trainer.locks:  # the run folder's lock (rank 0), released before a failed run's clean-up
                result = trainer.run()
            # every rank done (rank 0's last writes included) before any leaves the process group: a gloo
            # rank whose peer has torn the group down may abort at exit ("terminate called without an
            # active exception", seen once in CI with two CPU ranks)
            env.barrier()
            return result
        except BaseException:
            remove_empty_dirs(trainer.created)  # a failed run leaves no empty run folder behind
            raise
    finally:
        env.close()
        torch.set_num_threads(threads)


class _Trainer:
    def __init__(self, cfg: TrainConfig, env: DistEnv, out: Path, resume: bool, max_iters: int | None):
        self.cfg, self.env, self.out, self.resume = cfg, env, Path(out), resume
        if max_iters is not None and max_iters < 1:
            raise CkaLabError(f"--max-iters must be >= 1, got {max_iters}")
        self.end = int(max_iters) if max_iters is not None else cfg.schedule.iterations
        self.device = env.device
        self.amp_dtype = autocast_dtype(cfg.run, self.device)
        self.best_psnr: float | None = None
        self.last_val: dict[str, TaskScore] = {}
        self.diag: TrainingDiagnostics | None = None
        self.heads_log: CsvLog | None = None
        self.batch = cfg.schedule.batch_size  # per head and process
        self.created: list[Path] = []  # folders this run made (removed again if it fails and leaves them empty)
        self.locks = contextlib.ExitStack()  # rank 0 holds the run folder's lock while the run writes it

    # -- helpers -------------------------------------------------------------------------------------
    def _on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0; a CkaLabError there is raised on every rank (no rank is left waiting)."""
        result, err = None, None
        if self.env.is_main:
            try:
                result = fn()
            except CkaLabError as exc:
                err = str(exc)
        err = self.env.broadcast_object(err)
        if err:
            raise CkaLabError(err)
        return result

    def _lock(self) -> None:
        """Create the run folder and lock it: a second process training into it is refused (its PID named)."""
        self.created += made_dirs(self.out)
        self.locks.enter_context(folder_lock(self.out, "run folder"))

    def _check_out(self) -> None:
        last = self.out / LAST
        if self.resume and not last.is_file():
            raise CkaLabError(f"nothing to resume: {last} does not exist (run without --resume to start a new run)")
        if not self.resume and last.exists():
            raise CkaLabError(
                f"{self.out} already holds a checkpoint ({LAST}): pass --resume to continue that run, or choose another --out"
            )

    def _check_leaks(self, data: TrainingData, val: ValidationSets) -> None:
        for digest, name in val.digests.items():
            if digest in data.digests:
                raise CkaLabError(
                    f"training image {data.digests[digest]} is pixel-identical to validation image {name}: "
                    "keep test images out of training (see shared/data/README.md on Rain100/CBSD68)"
                )

    def _save(self, iteration: int, model: EDT, optimizer, scheduler, scaler) -> Path | None:
        rng = self.env.all_gather_object(capture_rng())
        path = None
        if self.env.is_main:
            train_state = {
                "iteration": iteration,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng,
                "world_size": self.env.world_size,
                "config": config_to_dict(self.cfg),
                "config_toml": self.cfg.text,
                "best_psnr": self.best_psnr,
            }
            path = save_checkpoint(self.out / LAST, model, meta=self._meta(iteration), train=train_state)
        self.env.barrier()
        return path

    def _meta(self, iteration: int) -> dict[str, Any]:
        return {
            "run": self.cfg.run.name,
            "iteration": iteration,
            "config_file": str(self.cfg.source) if self.cfg.source else None,
            "device": str(self.device),
            "precision": precision_label(self.amp_dtype) + (", torch.compile" if self.cfg.run.compile else ""),
            "val": {t: {"psnr": s.psnr, "ssim": s.ssim, "images": s.images} for t, s in self.last_val.items()},
        }

    def _validate(self, iteration: int, model: EDT, val: ValidationSets | None, log: CsvLog | None) -> Path | None:
        best_path = None
        if self.env.is_main and val:
            scores = val.run(model, self.device)
            self.last_val = scores
            for s in scores.values():
                log.write({"iteration": iteration, "task": s.task, "psnr": s.psnr, "ssim": s.ssim,
                           "images": s.images, "seconds": s.seconds})
            line = "  ".join(f"{t} {s.psnr:.2f} dB / {s.ssim:.4f}" for t, s in scores.items())
            say(f"[val {iteration}] {line}")
            mean = sum(s.psnr for s in scores.values()) / len(scores)
            if self.best_psnr is None or mean > self.best_psnr:
                self.best_psnr = mean
                best_path = save_checkpoint(self.out / BEST, model, meta=self._meta(iteration))
        self.env.barrier()
        return best_path

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        self._on_main(self._lock)
        self._on_main(self._check_out)
        seed_everything(cfg.run.resolved_init_seed() + env.rank)
        model = build_model(cfg, self.device)
        resume_ckpt = None
        if self.resume:
            resume_ckpt = read_training_checkpoint(self.out / LAST)
            diffs = config_differences(resume_ckpt.train.get("config", {}), config_to_dict(cfg))
            if diffs:
                raise CkaLabError(
                    f"cannot resume: {self.out / LAST} was written with another config ({diffs[0]}"
                    f"{f', and {len(diffs) - 1} more' if len(diffs) > 1 else ''}); "
                    "use the run's own config or another --out"
                )
            load_weights(model, resume_ckpt)
        elif cfg.finetune.init is not None:
            report = init_from_checkpoint(model, cfg.finetune.init, cfg.finetune.drop, cfg.finetune.strict)
            if env.is_main:
                say(report.describe())
        model.to(self.device)

        data = build_patch_sets(cfg, model.config)
        val = self._on_main(lambda: self._load_val(model, data))

        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                     eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
        QKLearningRate(model, optimizer, cfg.optim.qk_lr_scale)  # hooks live as long as the optimizer
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        start = 0
        if resume_ckpt is not None:
            st = resume_ckpt.train
            optimizer.load_state_dict(st["optimizer"])
            if scaler is not None and st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
            start = int(st["iteration"])
        # The schedule is rebuilt from this config at this iteration (a resumed run with another
        # schedule.iterations or milestones runs at the new schedule's rate, not the checkpoint's).
        saved_lr = optimizer.param_groups[0]["lr"]
        scheduler = build_scheduler(optimizer, cfg, start)
        if resume_ckpt is not None:
            self.best_psnr = st.get("best_psnr")
            rngs = st.get("rng") or []
            if len(rngs) == env.world_size:
                restore_rng(rngs[env.rank])
            else:
                seed_everything(cfg.run.resolved_init_seed() + 7919 * start + env.rank)
                if env.is_main:
                    say(f"note: the checkpoint was written by {len(rngs)} processes, this run has {env.world_size}: "
                        "RNG states reseeded (drop-path masks differ from an uninterrupted run)")
            new_lr = optimizer.param_groups[0]["lr"]
            if env.is_main and start < self.end and not math.isclose(new_lr, saved_lr, rel_tol=1e-9, abs_tol=0.0):
                say(f"note: the lr schedule of this config gives lr {new_lr:.3g} at iteration {start} "
                    f"(the checkpoint's run was at {saved_lr:.3g}); continuing with the config's schedule")

        train_log = val_log = None
        diag = None
        if env.is_main and cfg.schedule.diagnostics:
            diag = self._diagnostics(model, data, val)
        self.diag = diag
        if env.is_main:
            self.created += made_dirs(self.out)
            for stale in self.out.glob(f".{LAST}.*.tmp"):
                stale.unlink()  # a write that a killed process left half done
            train_log = CsvLog(self.out / "train_log.csv",
                               ["iteration", "lr", "loss"] + [f"loss_{t}" for t in model.tasks]
                               + ["sec_per_iter", "data_share", "patches_per_s"]
                               + (diag.columns if diag is not None else []))
            val_log = CsvLog(self.out / "val_log.csv", ["iteration", "task", "psnr", "ssim", "images", "seconds"])
            logs = [train_log, val_log]
            if diag is not None:
                self.heads_log = CsvLog(self.out / HEADS_LOG, ["iteration", "stage", "block", "kind", "direction",
                                                               "head", "entropy_rel", "logit_spread"])
                logs.append(self.heads_log)
            for log in logs:
                if self.resume:
                    log.truncate_after(start)
                else:  # a fresh run: new logs, never rows appended to an old run's
                    log.start()
            if not self.resume:
                if cfg.text:
                    write_text(self.out / "config.toml", cfg.text)
            self._announce(model, data, start)

        net = env.wrap(model)
        if cfg.run.compile:
            net = compile_for_training(net)  # shares model's parameters; checkpoints save model
        net.train()
        result = TrainResult(self.out, start, self.out / LAST if start else None, None)
        if start >= self.end:
            if env.is_main:
                say(f"nothing to do: the run is at iteration {start}, the end is {self.end}")
            return result
        batches = StepBatches(data.sets, self.batch, cfg.run.resolved_data_seed(), env.rank)
        loader = step_loader(batches, start, self.end, cfg.data.num_workers, pin_memory=self.device.type == "cuda")
        result = self._loop(net, model, optimizer, scheduler, scaler, loader, start, val, train_log, val_log)
        return result

    def _diagnostics(self, model: EDT, data: TrainingData, val: ValidationSets | None) -> TrainingDiagnostics:
        """Diagnostics on held-out crops (validation inputs at the training patch size) where a head has
        a validation set, else on ``schedule.probe_size`` training patches drawn once from the seed."""
        cfg = self.cfg
        train_probe = probe_inputs(data.sets, cfg.schedule.probe_size, cfg.run.seed)
        probe, sources = [], []
        for task, fallback in zip(model.tasks, train_probe):
            pairs = val.pairs.get(task) if val else None
            crop = head_patch_size(model.config, task, cfg.data.patch_size)
            try:
                probe.append(heldout_probe([p.input for p in pairs], crop) if pairs else fallback)
                sources.append(f"{task}: {len(probe[-1])} held-out crops" if pairs else f"{task}: training patches")
            except ValueError:
                probe.append(fallback)
                sources.append(f"{task}: training patches (validation inputs smaller than {crop} px)")
        diag = TrainingDiagnostics(model, probe, self.device, source="; ".join(sources))
        say(f"attention diagnostics on {diag.source}")
        return diag

    def _load_val(self, model: EDT, data: TrainingData) -> ValidationSets:
        v = self.cfg.val
        folders = {"sr": v.sr, "dn": v.dn, "dr": v.dr}
        train_dirs = [s.path for s in self.cfg.data.sr + self.cfg.data.dn] + list(self.cfg.data.dr)
        for folder in folders.values():
            if folder is None:
                continue
            for t in train_dirs:
                if Path(folder).resolve() == Path(t).resolve() or Path(t).resolve() in Path(folder).resolve().parents:
                    raise CkaLabError(f"validation folder {folder} is (inside) the training folder {t}: keep test images out of training")
        val = ValidationSets(model.tasks, [h.kind for h in model.config.heads], folders, v.max_images, v.crop)
        self._check_leaks(data, val)
        return val

    def _announce(self, model: EDT, data: TrainingData, start: int) -> None:
        cfg, env = self.cfg, self.env
        n = sum(p.numel() for p in model.parameters())
        say(f"{cfg.run.name}: {model.config.name} ({n / 1e6:.2f}M parameters), {env.world_size} process(es) on "
            f"{self.device} in {precision_label(self.amp_dtype)}{' with torch.compile' if cfg.run.compile else ''}, "
            f"iterations {start} -> {self.end}, batch {self.batch} per head per process")
        say(f"data: {data.describe()}")
        say(f"run folder: {self.out}")

    def _loop(self, net, model: EDT, optimizer, scheduler, scaler, loader, start: int,
              val: ValidationSets | None, train_log: CsvLog | None, val_log: CsvLog | None) -> TrainResult:
        cfg, env = self.cfg, self.env
        tasks = model.tasks
        sched = cfg.schedule
        bar = make_progress(self.end, start, env.is_main and progress_enabled(), cfg.run.name)
        win = _Window(len(tasks))
        best_path: Path | None = None
        loss_value = None
        iteration = start
        t_prev = t_mark = time.perf_counter()  # end of the last step / of the last iteration's bookkeeping
        try:
            for batch in loader:
                t_data = time.perf_counter()
                inputs = [x.to(self.device, non_blocking=True) for x, _ in batch]
                targets = [y.to(self.device, non_blocking=True) for _, y in batch]
                with torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext():
                    outputs = net(inputs)
                losses = [F.l1_loss(o.float(), y) for o, y in zip(outputs, targets)]
                loss = torch.stack(losses).mean()
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                iteration += 1
                per_head = [float(v) for v in torch.stack(losses).detach().cpu()]
                loss_value = sum(per_head) / len(per_head)
                if not torch.isfinite(torch.tensor(loss_value)):
                    raise CkaLabError(f"the loss became {loss_value} at iteration {iteration}: lower optim.lr or check the data")
                t_end = time.perf_counter()
                win.add(loss_value, per_head, t_end - t_prev, t_data - t_mark,
                        sum(x.shape[0] for x in inputs) * env.world_size)
                t_prev = t_end
                bar.update(1)
                final = iteration == self.end
                if env.is_main and (iteration % sched.log_every == 0 or final):
                    row = win.row(iteration, lr, tasks)
                    diag_text = ""
                    if self.diag is not None:
                        row.update(self.diag.row())
                        for rec in self.diag.last_heads.drop(columns="rows").itertuples(index=False):
                            self.heads_log.write({"iteration": iteration, **rec._asdict()})
                        diag_text = progress_text(row, self.diag.n_stages)
                    train_log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
                    if bar.disable:
                        say(f"[{iteration}/{self.end}] loss {row['loss']:.4f}  lr {lr:.2e}  "
                            f"{row['patches_per_s']:.1f} patches/s  data {100 * row['data_share']:.0f}%"
                            + (f"\n    {diag_text}" if diag_text else ""))
                    elif diag_text:
                        say(f"[{iteration}] {diag_text}")
                    win.reset()
                if (cfg.val.every and iteration % cfg.val.every == 0) or final:
                    b = self._validate(iteration, model, val, val_log)
                    best_path = b or best_path
                if iteration % sched.ckpt_every == 0 or final:
                    self._save(iteration, model, optimizer, scheduler, scaler)
                # t_prev is not reset: the next interval includes this iteration's logging, diagnostics,
                # validation and checkpoint, so that sec_per_iter and patches_per_s are wall-clock figures
                t_mark = time.perf_counter()  # the wait for the next batch starts here
        finally:
            bar.close()
        if env.is_main:
            say(f"done: iteration {iteration}, checkpoint {self.out / LAST}")
        best = best_path or (self.out / BEST if (self.out / BEST).exists() else None)
        return TrainResult(self.out, iteration, self.out / LAST, best, dict(self.last_val), loss_value)


class _Window:
    """Running means over the iterations since the last log row."""

    def __init__(self, n_heads: int):
        self.n_heads = n_heads
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.loss = 0.0
        self.heads = [0.0] * self.n_heads
        self.time = 0.0
        self.data = 0.0
        self.patches = 0

    def add(self, loss: float, heads: list[float], step_time: float, data_time: float, patches: int) -> None:
        self.count += 1
        self.loss += loss
        self.heads = [a + b for a, b in zip(self.heads, heads)]
        self.time += step_time
        self.data += data_time
        self.patches += patches

    def row(self, iteration: int, lr: float, tasks) -> dict[str, Any]:
        n = max(1, self.count)
        row: dict[str, Any] = {"iteration": iteration, "lr": float(lr), "loss": self.loss / n}
        row.update({f"loss_{t}": v / n for t, v in zip(tasks, self.heads)})
        row["sec_per_iter"] = self.time / n
        row["data_share"] = self.data / self.time if self.time > 0 else 0.0
        row["patches_per_s"] = self.patches / self.time if self.time > 0 else 0.0
        return row
