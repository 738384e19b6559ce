"""`mnist train`: config -> data tensors, model, optimizer -> epoch loop -> run folder.

Read top to bottom: `train()` sets the run up and runs the epoch loop; `train_one_epoch()` and
`evaluate()` are the inner loops; `Run` writes the run folder (checkpoints, summary.json).
How the run starts, fresh or resumed, is one `RunStart`; the state that changes as training goes
on is one `RunState`, passed explicitly.
"""

from __future__ import annotations

import math
import platform
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from mnist_cli import console
from mnist_cli.datasets import image_folder
from mnist_cli.errors import RunFailed, UserError
from mnist_cli.runs import checkpoints, metrics
from mnist_cli.runs.atomic import atomic_write, copy_atomically, write_csv, write_json
from mnist_cli.runs.folder import RunFolder, latest_link, point_latest
from mnist_cli.runs.resume import RunStart
from mnist_cli.runs.state import RunState, summary_of
from mnist_cli.search.trial import StudyTrial
from mnist_cli.training import distributed
from mnist_cli.training.augment import from_config
from mnist_cli.training.data import (
    TrainData,
    batches_per_epoch,
    epoch_generator,
    load_train_data,
    train_batches,
)
from mnist_cli.training.devices import out_of_memory, resolve_device
from mnist_cli.training.distributed import World, all_sum, any_true
from mnist_cli.training.ema import WeightAverage
from mnist_cli.training.forward import autocast, evaluate, to_model_input
from mnist_cli.training.interrupt import Interrupted, StopRequest
from mnist_cli.training.loggers import Loggers, start_loggers
from mnist_cli.training.models import build_model, count_parameters, for_inference, layer_summary
from mnist_cli.training.notes import did_not_learn, memory_sentence, start_notes
from mnist_cli.training.optim import build_optimizer, scheduler_at


@dataclass
class Run:
    """What the loop trains and writes with: the config, the objects being trained, the run folder."""

    cfg: DictConfig
    model: torch.nn.Module
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper under torchrun
    optimizer: torch.optim.Optimizer
    data: TrainData
    world: World = field(default_factory=World)
    folder: Optional[RunFolder] = None  # None: train without writing (benchmarks)
    facts: Optional[Dict[str, Any]] = None  # for summary.json: parameters, device, versions, ...
    config: Optional[Dict[str, Any]] = None  # cfg resolved to plain data, as checkpoints store it
    started: float = 0.0  # perf_counter() when this process started the run
    loggers: Loggers = field(default_factory=Loggers)  # TensorBoard, MLflow (rank 0 only)
    ema: Optional[WeightAverage] = None  # the moving average of the weights (ema_decay), or None

    def wall(self, state: RunState) -> float:
        """Seconds spent on the run, by this process and the ones before it."""
        return state.wall_seconds + time.perf_counter() - self.started

    def save(self, state: RunState, partial: Optional[Tuple] = None) -> None:
        """Write last.pt at `state` (under torchrun: the running sums all-reduced, rank 0 writes)."""
        totals = None if partial is None else tuple(all_sum(t.detach().clone(), self.world) for t in partial)
        if self.world.is_main and self.folder is not None:
            normalization = {"mean": self.data.mean, "std": self.data.std}
            snapshot = checkpoints.snapshot(
                self.model,
                self.optimizer,
                state,
                totals,
                self.config,
                self.data.classes,
                normalization,
                self.wall(state),
                self.ema,
            )
            checkpoints.save(self.folder.last, snapshot)

    def finish(self, state: RunState, status: str, resumed_with: List[str]) -> Dict:
        """Write summary.json for the run as it stands (rank 0); returns it."""
        learned = status in ("completed", "early_stopped")
        warning = did_not_learn(state, self.data) if learned else None
        summary = summary_of(
            status, self.folder.path, self.cfg, state, self.facts, self.wall(state), resumed_with, warning
        )
        if self.world.is_main:
            write_json(self.folder.summary, summary)
            steps = batches_per_epoch(self.data.train, self.cfg.batch_size)
            self.loggers.call("finish", summary, self.config, state.epoch * steps + state.step)
        return summary


def train_one_epoch(run: Run, state: RunState, scheduler, stop: StopRequest, sums: Optional[Tuple] = None):
    """One pass over the training split for epoch state.epoch + 1, from step state.step; returns
    (mean loss, accuracy) with one host sync at the end, or None when a signal asked to stop
    (after last.pt has been written).

    `sums` are the running (loss sum, correct count) of the steps already done; every
    checkpoint.every_n_steps steps, and on a signal, last.pt is written with them.
    Under torchrun each process trains on its share of every global batch; sums are all-reduced.
    """
    cfg, data, world, optimizer = run.cfg, run.data, run.world, run.optimizer
    epoch, start_step = state.epoch + 1, state.step
    run.net.train()
    device = data.train.images.device
    loss_sum, correct = (
        sums if sums is not None else (torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))
    )
    augment = from_config(cfg.dataset.get("augment"), cfg.model.augment)
    steps = batches_per_epoch(data.train, cfg.batch_size)
    every = cfg.checkpoint.every_n_steps
    batches = train_batches(
        data.train, cfg.batch_size, epoch_generator(cfg.seed, epoch), augment, start_step, world.rank, world.size
    )
    with console.batch_progress(f"epoch {epoch}/{cfg.epochs}", steps, start_step) as advance:
        for step, (images, labels) in enumerate(batches, start_step + 1):
            with autocast(device, cfg.precision):
                logits = run.net(to_model_input(images, data, cfg.channels_last))
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if run.ema is not None:
                run.ema.update(state.epoch * steps + step)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            if run.loggers.wants_step(state.epoch * steps + step):  # a host sync, every N steps only
                run.loggers.call("step", state.epoch * steps + step, loss.item())
            advance()
            stopping = step < steps and any_true(stop.signal is not None, world, device)
            if stopping or (step < steps and every and step % every == 0):
                state.step = step
                run.save(state, (loss_sum, correct))
                if stopping:
                    return None
    n = len(data.train)
    all_sum(loss_sum, world), all_sum(correct, world)
    return loss_sum.item() / n, correct.item() / n


def validation(run: Run) -> Dict[str, Any]:
    """The epoch's validation numbers. With ema_decay, both the trained weights and their average
    are measured, and val_loss / val_accuracy are those of the better one (`weights`), which is
    what best.pt, eval, predict and export then use."""
    cfg, data = run.cfg, run.data
    loss, accuracy = evaluate(for_inference(run.model, cfg), data.val, data, cfg, run.world)
    if run.ema is None:
        return {"val_loss": loss, "val_accuracy": accuracy}
    ema_loss, ema_accuracy = evaluate(for_inference(run.ema.model, cfg), data.val, data, cfg, run.world)
    ema_wins = accuracy is None or ema_accuracy > accuracy  # no validation split: the average
    return {
        "val_loss": ema_loss if ema_wins else loss,
        "val_accuracy": ema_accuracy if ema_wins else accuracy,
        "trained_val_accuracy": accuracy,
        "ema_val_accuracy": ema_accuracy,
        "weights": "ema" if ema_wins else "trained",
    }


def pruned(run: Run, state: RunState, trial: StudyTrial) -> bool:
    """Report the value the run would end with now to its study; whether the study stops it here
    (never after the last epoch). Under torchrun rank 0 asks and every process follows."""
    stop = False
    if run.world.is_main:
        now = {"best": state.best, "final": state.history[-1], "wall_seconds": run.wall(state)}
        trial.report(state.epoch, metrics.summary_value(now, run.cfg.optimized_metric))
        stop = state.epoch < run.cfg.epochs and trial.should_stop()
    return any_true(stop, run.world, run.data.train.images.device)


def interrupted(run: Run, state: RunState, stop: StopRequest, where: str, resumed_with: List[str]) -> Interrupted:
    """Record the interruption in summary.json; the exception tells the user how to go on."""
    run.finish(state, "interrupted", resumed_with)
    name = "SIGINT" if stop.signal == signal.SIGINT else "SIGTERM"
    return Interrupted(
        stop.signal or signal.SIGTERM,
        f"stopped by {name} {where}; last.pt is saved. Continue with: mnist train resume={run.folder.path}",
    )


def diverged(run: Run, state: RunState, loss: float, resumed_with: List[str]) -> RunFailed:
    run.finish(state, "diverged", resumed_with)
    kept = f"; the last good checkpoint is {run.folder.last}" if state.epoch >= 1 else ""
    return RunFailed(
        f"the training loss became {loss} in epoch {state.epoch + 1}; lower optimizer.lr "
        f"(now {run.cfg.optimizer.lr:g}) and train again{kept}."
    )


def train(start: RunStart, folder: RunFolder, trial: Optional[StudyTrial] = None) -> Optional[float]:
    """Train as `start.config` says, writing the run folder `folder` (a resumed run: continuing from
    `start.checkpoint`, or from step 0 without one); returns cfg.optimized_metric from summary.json
    (None if the run has no such number). An Optuna `trial` reports that value after every epoch to
    its study, and stops (status `pruned`) when the study says so."""
    cfg = start.config
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = resolve_device(cfg.device)
    world = distributed.join(device)
    try:
        return _train(start, folder, device, world, started, started_at, trial)
    except Exception as error:
        if not out_of_memory(error):
            raise
        raise UserError(memory_sentence(cfg, device)) from None
    finally:
        distributed.leave(world)


def build_run(
    cfg: DictConfig, state: RunState, folder: RunFolder, device, world: World, started: float, started_at: str
) -> Tuple[Run, Any]:
    """The data, model, optimizer and moving average a run trains with, as one Run, and its lr scheduler
    set to the step `state` has reached."""
    data = load_train_data(cfg, device)
    model = build_model(cfg.model, num_classes=len(data.classes)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    steps_per_epoch = batches_per_epoch(data.train, cfg.batch_size)
    # the schedule of a run this long, at the step the run has reached (raised epochs stretch it)
    scheduler = scheduler_at(
        optimizer, cfg.scheduler, steps_per_epoch, cfg.epochs, state.epoch * steps_per_epoch + state.step
    )
    net = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    params = count_parameters(model)
    facts = {
        "parameters": params,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "versions": checkpoints.versions(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "started_at": started_at,
    }
    run = Run(
        cfg,
        model,
        net,
        optimizer,
        data,
        world,
        folder,
        facts,
        OmegaConf.to_container(cfg, resolve=True),
        started,
        ema=ema,
    )
    return run, scheduler


def _train(
    start: RunStart,
    folder: RunFolder,
    device,
    world: World,
    started: float,
    started_at: str,
    trial: Optional[StudyTrial],
) -> Optional[float]:
    cfg = start.config
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + world.rank)  # dropout differs per process, as it would per batch
    main = world.is_main
    if not main:
        console.silence()

    resumed_with = start.resumed_with
    state = checkpoints.state_of(start.checkpoint) if start.checkpoint is not None else RunState(start.overrides)
    run, scheduler = build_run(cfg, state, folder, device, world, started, started_at)
    run.facts["resumes"] = start.resumes
    data, model, optimizer, ema, params = run.data, run.model, run.optimizer, run.ema, run.facts["parameters"]
    steps_per_epoch = batches_per_epoch(data.train, cfg.batch_size)
    if data.files is not None and main:  # an image folder: resume only on the files the run started with
        if start.checkpoint is not None:  # it trained on the files its list names: it needs the list
            image_folder.check_unchanged(data.files, folder.dataset_files, cfg.dataset.path, "resume")
        else:
            write_csv(folder.dataset_files, data.files.rows(), image_folder.FILE_COLUMNS)

    table = console.layer_table(layer_summary(model), params, title=f"{cfg.model.name} on {cfg.dataset.name}")
    if main:
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write(folder.model_table, lambda f: f.write(console.render_text(table).encode()))
        run.loggers = start_loggers(
            cfg.logger, folder.path, run.config, state.history, state.epoch * steps_per_epoch + state.step
        )
    console.show_table(table)
    console.say(
        f"{cfg.dataset.name}: {len(data.train)} train / {len(data.val)} val images on {device}; "
        f"{cfg.model.name} ({params:,} parameters), {cfg.optimizer.name} lr {cfg.optimizer.lr:g}, "
        f"scheduler {cfg.scheduler.name}, batch {cfg.batch_size}, {cfg.epochs} epochs"
        + (f", {cfg.precision}" if cfg.precision != "fp32" else "")
        + (f", {world.size} processes" if world.size > 1 else "")
    )
    for note in start_notes(cfg, data):
        console.say(f"note: {note}")

    sums = None
    if start.checkpoint is not None:
        sums = checkpoints.restore(start.checkpoint, model, optimizer, device, carries_sums=main, ema=ema)
    if start.resumed:
        if main:  # metrics files as the checkpoint knows them: no torn line, no epoch twice
            metrics.write_epochs(folder.path, state.history)
        console.say(f"resuming {folder.path} at epoch {state.epoch + 1}, step {state.step}")
    if main:  # only now: a run that failed to start never becomes `latest`
        note = point_latest(latest_link(cfg.outputs_dir), folder.path)
        if note:
            console.say(f"note: {note}")

    status = "completed"
    with StopRequest() as stop:
        while state.epoch < cfg.epochs:
            epoch_start = time.perf_counter()
            result = train_one_epoch(run, state, scheduler, stop, sums)
            sums = None
            if result is None:  # a signal: last.pt already holds this step
                raise interrupted(run, state, stop, f"in epoch {state.epoch + 1}", resumed_with)
            train_loss, train_accuracy = result
            if not math.isfinite(train_loss):
                raise diverged(run, state, train_loss, resumed_with)
            row = {
                "epoch": state.epoch + 1,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                **validation(run),
                "lr": optimizer.param_groups[0]["lr"],
            }
            row["seconds"] = round(time.perf_counter() - epoch_start, 3)
            console.say(console.epoch_line(row, cfg.epochs))
            is_best = state.record(row, cfg.early_stopping.min_delta)
            if main:
                metrics.write_epochs(folder.path, state.history)
            run.loggers.call("epoch_ended", row, state.epoch * steps_per_epoch)  # TensorBoard: before the checkpoint
            run.save(state)
            if main and is_best:
                copy_atomically(folder.last, folder.best)
            run.loggers.call(
                "epoch_saved", row, state.epoch * steps_per_epoch
            )  # MLflow: after it (loggers.py says why)
            if state.epoch < cfg.epochs and any_true(
                stop.signal is not None, world, device
            ):  # during evaluation or saving
                raise interrupted(run, state, stop, f"after epoch {state.epoch}", resumed_with)
            patience = cfg.early_stopping.patience
            if patience and state.epoch - state.last_improvement >= patience and state.epoch < cfg.epochs:
                console.say(
                    f"early stopping: no val_acc gain above {cfg.early_stopping.min_delta} in {patience} epochs"
                )
                status = "early_stopped"
                break
            if trial is not None and pruned(run, state, trial):
                console.say(f"pruned after epoch {state.epoch}: the study's {trial.pruner} pruner stopped this trial")
                status = "pruned"
                break

    summary = run.finish(state, status, resumed_with)
    if summary.get("warning"):
        console.say(f"warning: {summary['warning']}")
    best = state.best
    best_text = (
        f"best val_acc {best['val_accuracy']:.2%} at epoch {best['epoch']}"
        if best["val_accuracy"] is not None
        else "no validation split"
    )
    console.say(f"{best_text}; {summary['wall_seconds']:.1f}s in all; run folder:")
    console.say(str(folder.path))
    return metrics.summary_value(summary, cfg.optimized_metric)
