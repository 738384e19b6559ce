"""`mnist train`: config -> data tensors, model, optimizer -> epoch loop -> run folder.

Read top to bottom: `train()` is the whole job; `train_one_epoch()` and `evaluate()` are the loops.
"""

from __future__ import annotations

import math
import platform
import signal
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import torchvision
from omegaconf import DictConfig, OmegaConf

import mnist_cli
from mnist_cli import checkpoints, console, metrics, runs
from mnist_cli import distributed
from mnist_cli.distributed import World, all_sum, any_true
from mnist_cli.data import Split, TrainData, batches_per_epoch, epoch_generator, eval_batches, load_train_data, normalize, train_batches
from mnist_cli.errors import RunFailed, UserError
from mnist_cli.interrupt import Interrupted, StopRequest
from mnist_cli.models import build_model, count_parameters, layer_summary
from mnist_cli.optim import build_optimizer, load_optimizer_state, scheduler_at

AUGMENT_PAD = 2  # random shifts of up to 2 pixels when model.augment is true


def resolve_device(name: str) -> torch.device:
    """auto -> cuda, else mps, else cpu; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} was asked for but no CUDA GPU is available; use device=cpu or device=auto.")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise UserError(f"device={name} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    if name == "mps" and not mps_ok:
        raise UserError("device=mps was asked for but MPS is not available; use device=cpu or device=auto.")
    return torch.device(name)


def versions() -> Dict[str, str]:
    return {
        "mnist_cli": mnist_cli.__version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def to_model_input(images: torch.Tensor, data: TrainData, channels_last: bool) -> torch.Tensor:
    x = normalize(images, data.mean, data.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device: torch.device, precision: str):
    """The context forward passes run in: bf16 autocast for precision=bf16 (weights stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_one_epoch(model, optimizer, scheduler, data: TrainData, cfg, epoch: int, start_step: int, sums, stop, save_partial,
                    world: World = World()):
    """One pass over the training split from `start_step`; returns (mean loss, accuracy) with one host
    sync at the end, or None when a signal asked to stop (after save_partial has written last.pt).

    `sums` are the running (loss sum, correct count) of the steps already done; every
    checkpoint.every_n_steps steps, and on a signal, save_partial(step, sums) writes last.pt.
    Under torchrun each process trains on its share of every global batch; sums are all-reduced.
    """
    model.train()
    device = data.train.images.device
    loss_sum, correct = sums if sums is not None else (torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))
    pad = AUGMENT_PAD if cfg.model.augment else 0
    steps = batches_per_epoch(data.train, cfg.batch_size)
    every = cfg.checkpoint.every_n_steps
    batches = train_batches(data.train, cfg.batch_size, epoch_generator(cfg.seed, epoch), pad, start_step, world.rank, world.size)
    with console.batch_progress(f"epoch {epoch}/{cfg.epochs}", steps, start_step) as advance:
        for step, (images, labels) in enumerate(batches, start_step + 1):
            with autocast(device, cfg.precision):
                logits = model(to_model_input(images, data, cfg.channels_last))
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            advance()
            stopping = step < steps and any_true(stop.signal is not None, world, device)
            if stopping or (step < steps and every and step % every == 0):
                save_partial(step, (loss_sum, correct))
                if stopping:
                    return None
    n = len(data.train)
    all_sum(loss_sum, world), all_sum(correct, world)
    return loss_sum.item() / n, correct.item() / n


@torch.no_grad()
def evaluate(model, split: Split, data: TrainData, cfg, world: World = World()) -> Tuple[Optional[float], Optional[float]]:
    """Returns (mean loss, accuracy) of `model` on `split` (under torchrun: each process a share);
    (None, None) for an empty split (data.val_size=0)."""
    if len(split) == 0:
        return None, None
    model.eval()
    loss_sum = torch.zeros((), device=split.images.device)
    correct = torch.zeros((), device=split.images.device, dtype=torch.long)
    share = Split(split.images[world.rank :: world.size], split.labels[world.rank :: world.size])
    for images, labels in eval_batches(share, cfg.eval_batch_size):
        with autocast(split.images.device, cfg.precision):
            logits = model(to_model_input(images, data, cfg.channels_last))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    all_sum(loss_sum, world), all_sum(correct, world)
    return loss_sum.item() / len(split), correct.item() / len(split)


@dataclass
class RunState:
    """Where a run stands: what last.pt records besides the weights, and what summary.json reports."""

    overrides: List[str]  # the command line the run was started with
    epoch: int = 0  # epochs completed
    step: int = 0  # steps done in epoch + 1 (a mid-epoch checkpoint)
    best: Dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "val_accuracy": None, "val_loss": None})
    last_improvement: int = 0  # the epoch that last raised the best accuracy by more than min_delta
    history: List[Dict[str, Any]] = field(default_factory=list)  # one row per completed epoch
    wall_seconds: float = 0.0  # time spent by earlier processes of this run (resumed runs)

    @classmethod
    def from_checkpoint(cls, checkpoint: Dict, run_dir: Path, overrides: List[str]) -> "RunState":
        state = cls(overrides, checkpoint["epoch"], checkpoint["step"], checkpoint["best"], checkpoint["last_improvement"])
        state.history = checkpoint.get("history") or _history_before_v2(run_dir, checkpoint)
        state.wall_seconds = checkpoint.get("wall_seconds", sum(row.get("seconds", 0) for row in state.history))
        return state


def _history_before_v2(run_dir: Path, checkpoint: Dict) -> List[Dict]:
    """Format-1 checkpoints hold only the last row: the epochs before it come from metrics.jsonl."""
    rows = [r for r in metrics.read_epochs(run_dir) if r["epoch"] < checkpoint["epoch"]]
    return rows + ([checkpoint["metrics"]] if checkpoint.get("metrics") else [])


def snapshot(model, optimizer, state: RunState, partial, config: Dict, data: TrainData, device, wall: float) -> Dict:
    """The checkpoint dict: everything needed to continue from `state` (`partial`: the running
    sums of a half-done epoch), and to use the model on its own."""
    return {
        "format": checkpoints.FORMAT,
        "format_version": checkpoints.VERSION,
        "epoch": state.epoch,
        "step": state.step,
        "partial": None if partial is None else tuple(t.detach().cpu() for t in partial),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "metrics": state.history[-1] if state.history else {},
        "history": state.history,
        "best": state.best,
        "last_improvement": state.last_improvement,
        "overrides": state.overrides,
        "wall_seconds": round(wall, 3),
        "config": config,
        "classes": data.classes,
        "normalization": {"mean": data.mean, "std": data.std},
        "versions": versions(),
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
    }


def chance_level(data: TrainData) -> Tuple[float, int]:
    """(accuracy of always guessing the most frequent class, images it is measured on), on the
    validation split, else the training split."""
    labels = (data.val if len(data.val) else data.train).labels
    return torch.bincount(labels).max().item() / len(labels), len(labels)


def did_not_learn(state: RunState, data: TrainData) -> Optional[str]:
    """A sentence when the best accuracy is within 3 standard errors of chance level, else None."""
    chance, n = chance_level(data)
    key = "val_accuracy" if len(data.val) else "train_accuracy"
    accuracy = max((row[key] for row in state.history), default=None)
    if accuracy is None or accuracy > chance + 3 * math.sqrt(chance * (1 - chance) / n):
        return None
    return (f"the run did not learn: its best {key.replace('_accuracy', '')} accuracy {accuracy:.2%} is no better than chance "
            f"({chance:.2%}, always guessing the most frequent class); try a lower optimizer.lr.")  # fmt: skip


@dataclass
class Run:
    """What the loop writes with: the run folder, its config and the objects being trained."""

    cfg: DictConfig
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: TrainData
    device: torch.device
    world: World
    config: Dict  # cfg resolved, as the checkpoint stores it
    started: float  # perf_counter() when this process started the run
    started_at: str

    @property
    def last(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def wall(self, state: RunState) -> float:
        return state.wall_seconds + time.perf_counter() - self.started

    def save(self, state: RunState, partial=None) -> None:
        """Write last.pt (main process only; under torchrun the running sums are all-reduced first)."""
        totals = None if partial is None else tuple(all_sum(t.detach().clone(), self.world) for t in partial)
        if self.world.is_main:
            checkpoints.save(self.last, snapshot(self.model, self.optimizer, state, totals, self.config, self.data, self.device, self.wall(state)))

    def finish(self, state: RunState, status: str, resumed_with: List[str]) -> Dict:
        """Write summary.json for the run as it stands; returns it."""
        cfg, history = self.cfg, state.history
        summary = {
            "status": status,
            "run_dir": str(self.run_dir),
            "overrides": state.overrides,
            "dataset": cfg.dataset.name,
            "model": cfg.model.name,
            "optimizer": cfg.optimizer.name,
            "scheduler": cfg.scheduler.name,
            "parameters": count_parameters(self.model),
            "epochs": cfg.epochs,
            "epochs_completed": state.epoch,
            "best": state.best,
            "final": history[-1] if history else {},
            "wall_seconds": round(self.wall(state), 3),
            "seconds_per_epoch": round(sum(r["seconds"] for r in history) / len(history), 3) if history else None,
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(),
            "versions": versions(),
            "started_at": self.started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if resumed_with:
            summary["resumed_with"] = resumed_with
        if status == "early_stopped":
            summary["early_stopping"] = {"patience": cfg.early_stopping.patience, "min_delta": cfg.early_stopping.min_delta,
                                         "last_improvement": state.last_improvement}  # fmt: skip
        if history and status in ("completed", "early_stopped"):
            warning = did_not_learn(state, self.data)
            summary["learned"] = warning is None
            if warning:
                summary["warning"] = warning
        if self.world.is_main:
            runs.write_json(self.run_dir / "summary.json", summary)
        return summary


def train(cfg: DictConfig, run_dir: Path, overrides: Optional[List[str]] = None, resume_state: Optional[Dict] = None,
          original_overrides: Optional[List[str]] = None) -> Optional[float]:
    """Train as `cfg` says, writing the run folder `run_dir` (continuing from `resume_state`, a
    checkpoint of that run, when given; from step 0 when `original_overrides` is given without
    one); returns cfg.optimized_metric from summary.json (None if the run has no such number)."""
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = resolve_device(cfg.device)
    world = distributed.join(device)
    try:
        return _train(cfg, Path(run_dir), list(overrides or []), resume_state, original_overrides, device, world, started, started_at)
    finally:
        distributed.leave(world)


def _train(cfg, run_dir: Path, overrides: List[str], resume_state, original_overrides, device, world: World,
           started: float, started_at: str) -> Optional[float]:
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + world.rank)  # dropout differs per process, as it would per batch
    main = world.is_main
    if not main:
        console.silence()

    resumed = resume_state is not None or original_overrides is not None
    if resume_state is not None:
        state = RunState.from_checkpoint(resume_state, run_dir, original_overrides or [])
    else:
        state = RunState(original_overrides if resumed else overrides)
    data = load_train_data(cfg, device)
    model = build_model(cfg.model, num_classes=len(data.classes)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    steps_per_epoch = batches_per_epoch(data.train, cfg.batch_size)
    # the schedule of a run this long, at the step the run has reached (raised epochs stretch it)
    scheduler = scheduler_at(optimizer, cfg.scheduler, steps_per_epoch, cfg.epochs, state.epoch * steps_per_epoch + state.step)
    net = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model
    run = Run(cfg, run_dir, model, optimizer, data, device, world, OmegaConf.to_container(cfg, resolve=True), started, started_at)

    params = count_parameters(model)
    table = console.layer_table(layer_summary(model), params, title=f"{cfg.model.name} on {cfg.dataset.name}")
    if main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        runs.point_latest(Path(cfg.outputs_dir) / "train" / "latest", run_dir)
        runs.atomic_write(run_dir / "model.txt", lambda f: f.write(console.render_text(table).encode()))
    console.show_table(table)
    console.say(
        f"{cfg.dataset.name}: {len(data.train)} train / {len(data.val)} val images on {device}; "
        f"{cfg.model.name} ({params:,} parameters), {cfg.optimizer.name} lr {cfg.optimizer.lr:g}, "
        f"scheduler {cfg.scheduler.name}, batch {cfg.batch_size}, {cfg.epochs} epochs"
        + (f", {cfg.precision}" if cfg.precision != "fp32" else "")
        + (f", {world.size} processes" if world.size > 1 else "")
    )

    sums = None
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        load_optimizer_state(optimizer, resume_state["optimizer"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        if torch.cuda.is_available() and resume_state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(resume_state["rng"]["cuda"])
        if resume_state["partial"] is not None:  # all processes' sums: the main process carries them
            sums = tuple(t.to(device) if main else torch.zeros_like(t, device=device) for t in resume_state["partial"])
    if resumed:
        if main:  # metrics files as the checkpoint knows them: no torn line, no epoch twice
            metrics.write_epochs(run_dir, state.history)
        console.say(f"resuming {run_dir} at epoch {state.epoch + 1}, step {state.step}")
    resumed_with = overrides if resumed else []

    def interrupted(stop: StopRequest, where: str) -> Interrupted:
        """Record the interruption in summary.json; the exception tells the user how to go on."""
        run.finish(state, "interrupted", resumed_with)
        name = "SIGINT" if stop.signal == signal.SIGINT else "SIGTERM"
        return Interrupted(stop.signal or signal.SIGTERM, f"stopped by {name} {where}; last.pt is saved. Continue with: mnist train resume={run_dir}")

    status = "completed"
    with StopRequest() as stop:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            epoch_start = time.perf_counter()

            def save_partial(step: int, partial) -> None:
                state.step = step
                run.save(state, partial)

            result = train_one_epoch(net, optimizer, scheduler, data, cfg, epoch, state.step, sums, stop, save_partial, world)
            sums = None
            if result is None:  # a signal: last.pt already holds this step
                raise interrupted(stop, f"in epoch {epoch}")
            train_loss, train_acc = result
            if not math.isfinite(train_loss):
                run.finish(state, "diverged", resumed_with)
                kept = f"; the last good checkpoint is {run.last}" if epoch > 1 else ""
                raise RunFailed(
                    f"the training loss became {train_loss} in epoch {epoch}; lower optimizer.lr (now {cfg.optimizer.lr:g}) "
                    f"and train again{kept}."
                )
            val_loss, val_acc = evaluate(model, data.val, data, cfg, world)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - epoch_start, 3),
            }
            console.say(console.epoch_line(row, cfg.epochs))

            best_accuracy = state.best["val_accuracy"]
            is_best = val_acc is None or best_accuracy is None or val_acc > best_accuracy  # no validation: the last is best
            if val_acc is None or best_accuracy is None or val_acc > best_accuracy + cfg.early_stopping.min_delta:
                state.last_improvement = epoch
            if is_best:
                state.best = {"epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss}
            state.epoch, state.step = epoch, 0
            state.history.append(row)
            if main:
                metrics.write_epochs(run_dir, state.history)
            run.save(state)
            if main and is_best:
                runs.copy_atomically(run.last, run_dir / "checkpoints" / "best.pt")
            if epoch < cfg.epochs and any_true(stop.signal is not None, world, device):  # during evaluation or saving
                raise interrupted(stop, f"after epoch {epoch}")
            patience = cfg.early_stopping.patience
            if patience and epoch - state.last_improvement >= patience and epoch < cfg.epochs:
                console.say(f"early stopping: no val_acc gain above {cfg.early_stopping.min_delta} in {patience} epochs")
                status = "early_stopped"
                break

    summary = run.finish(state, status, resumed_with)
    if summary.get("warning"):
        console.say(f"warning: {summary['warning']}")
    best = state.best
    best_text = f"best val_acc {best['val_accuracy']:.2%} at epoch {best['epoch']}" if best["val_accuracy"] is not None else "no validation split"
    console.say(f"{best_text}; {summary['wall_seconds']:.1f}s in all; run folder:")
    console.say(str(run_dir))
    return metrics.summary_value(summary, cfg.optimized_metric)
