"""The training loop: short and readable; each concern lives in its own module.

data (cache, split, patches) → model → loss in fp32 → PrecisionController decides autocast
dtype, loss scaling and whether the update is applied, the loop does the update itself
(``training.update``: backward, unscale, clip, ``optimizer.step``) → full-state checkpoints.

Resuming is exact: every patch is a pure function of (seed, epoch, index), and the
checkpoint holds every RNG, the optimiser, the controller and the position in the epoch.
Whatever watches a run (timing, budgets, early stopping) is a callback (``training.callbacks``)
called at the run's, the epochs' and the steps' ends.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from glioseg.checkpoint_io import load_checkpoint
from glioseg.data.output_space import OutputSpace
from glioseg.errors import GliosegError, InputError
from glioseg.files import clean_parts
from glioseg.inference.predictor import PredictConfig
from glioseg.data.sampling import PatchDataset, SamplerConfig, make_loader
from glioseg.cpu_allocator import keep_freed_memory
from glioseg.models.cpu_kernels import accelerate_cpu
from glioseg.models.registry import create, takes_ids
from glioseg.training import distributed as dist_utils
from glioseg.training.callbacks import Callback, EpochEnd, KeepSnapshots, RunStopped, StepEnd, TrainEnd
from glioseg.training.checkpoint import save_checkpoint
from glioseg.training.losses import SegmentationLoss
from glioseg.training.precision import NonFiniteTrainingError, PrecisionController
from glioseg.training.preflight import preflight
from glioseg.training.recipe import TrainConfig
from glioseg.training.run_folder import RunFolder
from glioseg.training.schedule import cosine_factor, make_optimizer, set_lr
from glioseg.training.datasource import TrainingData, prepare_data
from glioseg.training.state import restore_state, run_state, versions
from glioseg.training.update import optimizer_update
from glioseg.training.validate import validate

log = logging.getLogger(__name__)


def batches(loader: torch.utils.data.DataLoader):
    """An iterator over ``loader`` that leaves torch's global random stream where it was.

    Creating a DataLoader iterator draws a base seed from torch's global generator, the one
    dropout draws from: a resumed epoch creates its iterator at another point of that stream
    than the uninterrupted run did, and every later dropout mask would differ. The patches do
    not depend on that seed (each is a pure function of seed, epoch and index).
    """
    with torch.random.fork_rng(devices=[]):
        return iter(loader)


class TrainingError(GliosegError):
    """Training cannot go on; the last good checkpoint is untouched."""


class Trainer:
    def __init__(self, config: TrainConfig, data: TrainingData, run: RunFolder,
                 info: dist_utils.DistInfo, device: torch.device, callbacks: tuple[Callback, ...] = ()):
        self.config, self.data, self.run, self.info, self.device = config, data, run, info, device
        self.callbacks = tuple(callbacks)
        self.stop_reason: str | None = None
        self.loss_fn = SegmentationLoss(config.loss, config.ce_weight)
        self.output = OutputSpace(self.loss_fn.target, data.scheme)
        torch.manual_seed(config.seed)
        if device.type == "cpu":
            keep_freed_memory()     # a step's large activations reuse freed pages (cpu_allocator)
        # on a CPU, dense convs go to oneDNN whatever their size (aten's small-conv path is
        # single-threaded at batch 1); a class swap only, so checkpoints are unchanged
        self.model = accelerate_cpu(
            create(config.model, in_channels=len(data.channels), out_channels=self.output.channels,
                   **config.model_options).to(device))
        self.takes_ids = takes_ids(self.model)
        self.net = (DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
                    if info.enabled else self.model)
        self.params = list(self.model.parameters())
        self.optimizer = make_optimizer(config.optimizer, self.params, config.lr, config.weight_decay)
        self.controller = PrecisionController(
            config.precision, device,
            reduce_flag=lambda flag: dist_utils.any_rank(flag, info, device),
            on_event=run.log_event)
        self.dataset = PatchDataset(
            data.train_volumes(), data.scheme,
            SamplerConfig(patch_size=tuple(config.patch), foreground_fraction=config.foreground_fraction,
                          samples_per_epoch=config.steps_per_epoch * config.batch_size * info.world_size,
                          target=self.output.target, id_dropout=config.id_dropout),
            config.augment, seed=config.seed)
        self.step, self.epoch, self.position, self.best = 0, 0, 0, -1.0
        # losses and skipped updates of the current epoch so far: a run resumed in the middle of
        # an epoch needs the steps before the checkpoint for the epoch's mean train loss
        self.epoch_losses: list[float] = []
        self.epoch_skipped = 0
        # a skipped update leaves the weights as they were: a checkpoint after it would only
        # replace the last good one (and then its .prev) by a state amid a non-finite streak
        self.last_skipped = False
        self.total_steps = config.epochs * config.steps_per_epoch
        self.saved_at = -1   # the step whose state last.pt holds (no second save of one step)

    # -- callbacks ------------------------------------------------------------------------
    def _fire(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def request_stop(self, reason: str) -> None:
        """Stop after the current step's hooks: checkpoint, ``on_train_end``, :class:`RunStopped`.
        Under DDP every rank must ask at the same step (decide from values the ranks share)."""
        self.stop_reason = reason

    def _stop(self) -> None:
        if self.saved_at != self.step:
            self.save(self.run.last)
        self._fire("on_train_end", TrainEnd(self.controller.summary(), stopped=self.stop_reason))
        raise RunStopped(self.stop_reason, self.step, self.epoch)

    # -- one optimiser step -------------------------------------------------------------
    def _forward_loss(self, batch: dict) -> torch.Tensor:
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["target"].to(self.device, non_blocking=True)
        with self.controller.autocast():
            logits = self.net(x, **self._ids(batch))
        return self.loss_fn(logits, y)

    def _ids(self, batch: dict) -> dict:
        return {"ids": batch["site_id"].to(self.device)} if self.takes_ids else {}

    def _train_step(self, batch: dict):
        lr = set_lr(self.optimizer, self.config.lr,
                    cosine_factor(self.step, self.total_steps, self.config.warmup_steps))
        try:
            result = optimizer_update(self.controller, self._forward_loss(batch), self.params, self.optimizer,
                                      max_grad_norm=self.config.precision.max_grad_norm, cases=list(batch["case"]))
        except NonFiniteTrainingError as exc:
            kept = (f"the last good checkpoint is {self.run.last}, untouched" if self.run.last.exists()
                    else "no checkpoint was written before")
            raise TrainingError(f"{exc}; {kept}") from exc
        self.step += 1
        self.run.log_step({"step": self.step, "epoch": self.epoch, "loss": result.loss,
                           "precision": result.precision, "grad_norm": result.grad_norm,
                           "skipped": int(result.skipped), "lr": lr})
        return result

    def _probe(self) -> None:
        """Rank precisions by measured step time on the real model and patch (``auto`` only)."""
        batch = next(batches(make_loader(self.dataset, self.config.batch_size, workers=0)))

        def step_fn(precision: str) -> None:
            with self.controller.autocast(precision):
                logits = self.net(batch["image"].to(self.device), **self._ids(batch))
            self.loss_fn(logits, batch["target"].to(self.device)).backward()
            self.model.zero_grad(set_to_none=True)

        self.controller.probe(step_fn, model=self.model)

    # -- epochs -------------------------------------------------------------------------
    def _epoch_indices(self) -> list[int]:
        per_rank = self.config.steps_per_epoch * self.config.batch_size
        start = self.position * self.config.batch_size
        return [i * self.info.world_size + self.info.rank for i in range(start, per_rank)]

    def _run_epoch(self) -> tuple[float, int]:
        self.dataset.set_epoch(self.epoch)
        loader = make_loader(torch.utils.data.Subset(self.dataset, self._epoch_indices()),
                             self.config.batch_size, workers=self.config.workers)
        bar = tqdm(batches(loader), total=len(loader), disable=not self.info.is_main, leave=False, unit="step",
                   desc=f"epoch {self.epoch + 1}/{self.config.epochs}", initial=0)
        for batch in bar:
            started = time.perf_counter()
            result = self._train_step(batch)
            seconds = time.perf_counter() - started
            self.position += 1
            self.epoch_losses.append(result.loss)
            self.epoch_skipped += int(result.skipped)
            bar.set_postfix(loss=f"{result.loss:.4f}", precision=result.precision)
            self.last_skipped = result.skipped
            if (self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0
                    and not self.last_skipped):
                self.save(self.run.last)
            self._fire("on_step_end", StepEnd(self.step, self.epoch, result.loss, result.precision,
                                              bool(result.skipped), started, seconds))
            if self.stop_reason is not None:
                self._stop()
        losses = self.epoch_losses
        return float(np.nanmean(losses)) if losses else float("nan"), self.epoch_skipped

    def fit(self) -> dict:
        """Train the epochs left; the run folder gets its summary (rank 0), which is returned."""
        self._fire("on_train_start")
        if self.step == 0 and self.controller.needs_probe:
            self._probe()
        while self.epoch < self.config.epochs:
            self._fire("on_epoch_start")
            started = time.perf_counter()
            train_loss, skipped = self._run_epoch()
            loop_seconds = time.perf_counter() - started
            # the epoch's loss over every rank's patches, not only over rank 0's shard
            train_loss = dist_utils.mean_over_ranks(train_loss, self.info, self.device)
            row = {"epoch": self.epoch + 1, "step": self.step, "train_loss": train_loss,
                   "precision": self.controller.precision, "lr": self.optimizer.param_groups[0]["lr"],
                   "skipped": skipped}
            if (self.epoch + 1) % self.config.val_every == 0 or self.epoch + 1 == self.config.epochs:
                row.update(self._validate())
            self.epoch, self.position = self.epoch + 1, 0
            self.epoch_losses, self.epoch_skipped = [], 0
            row["seconds"] = round(time.perf_counter() - started, 3)
            self.run.log_epoch(row)
            if not self.last_skipped or self.epoch == self.config.epochs:
                self.save(self.run.last)
            log.info("epoch %d: %s", self.epoch, {k: v for k, v in row.items() if k != "epoch"})
            self._fire("on_epoch_end", EpochEnd(self.epoch, dict(row), loop_seconds))
        summary = self.controller.summary()
        if self.info.is_main:
            self.run.finish(summary)
        self._fire("on_train_end", TrainEnd(summary))
        return summary

    def _validate(self) -> dict:
        """Whole-volume Dice on rank 0 (the other ranks wait at the next barrier)."""
        if not (self.info.is_main and self.data.val_ids):
            return {}
        window = PredictConfig(window=self.config.val_window, overlap=self.config.val_overlap,
                               device=str(self.device))
        scores = validate(self.model, self.data.val_volumes(), self.output, tuple(self.config.patch), window)
        mean = float(np.mean(list(scores.values())))
        if mean > self.best:
            self.best = mean
            save_checkpoint(self.run.best, self.state_dict())
        return {**{f"val_dice_{r.lower()}": v for r, v in scores.items()}, "val_dice_mean": mean}

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return run_state(self)

    def save(self, path: Path) -> None:
        if self.info.is_main:
            save_checkpoint(path, self.state_dict())
        if path == self.run.last:
            self.saved_at = self.step
        dist_utils.barrier(self.info)

    def load(self, path: Path) -> None:
        # a kill between the two renames of a save leaves a new last.pt beside its old SHA-256;
        # the previous checkpoint, kept for that, is then the one to continue from
        restore_state(self, load_checkpoint(path, allow_previous=True))


def train(config: TrainConfig, data: Path | list[Path], out: Path, resume: bool = False, data_format: str = "auto",
          cache: Path | None = None, allow_other_data: bool = False,
          callbacks: tuple[Callback, ...] | list[Callback] = ()) -> dict:
    """Train ``config`` on ``data`` (a dataset, manifest or cache; or a list of datasets, trained on
    as one: :mod:`glioseg.data.sources`) into run folder ``out``; returns the precision summary.
    ``resume`` refuses data other than the run's own (``RUN/data.json``) unless ``allow_other_data``.

    ``callbacks`` (``training.callbacks``) watch the run; one that stops it makes this raise
    :class:`~glioseg.training.callbacks.RunStopped` with the run folder resumable."""
    info = dist_utils.init_distributed(config.device)
    device = dist_utils.pick_device(config.device, info)
    preflight(config, device)
    run = RunFolder(out, writer=info.is_main)
    if info.is_main:
        clean_parts(out)  # a run killed before its first checkpoint left a .part-last.pt
    try:
        if resume and not run.last.exists():
            raise InputError(f"{out}: --resume needs a checkpoint, but {run.last.name} is not there")
        if not resume and run.last.exists():
            raise InputError(f"{out}: a run is already there ({run.last.name}); pass --resume or another --out")
        prepared = prepare_data(data, out, config, data_format, cache, info, resume, allow_other_data)
        if config.snapshot_every:
            callbacks = (*callbacks, KeepSnapshots(config.snapshot_every))
        trainer = Trainer(config, prepared, run, info, device, callbacks)
        if resume:
            trainer.load(run.last)
            run.truncate_after(trainer.step, trainer.epoch)
            log.info("resumed %s at epoch %d, step %d", out, trainer.epoch, trainer.step)
        else:
            run.clear_logs()
        # on resume too: config.yaml describes the run as it now goes on (a larger --epochs),
        # and the next --resume starts from it
        run.write_config({**config.to_dict(), "versions": versions()}, prepared.split)
        return trainer.fit()
    finally:
        run.close()
        dist_utils.shutdown(info)

