"""`mnist train`: config -> data tensors, model, optimizer -> epoch loop -> run folder.

Read top to bottom: `train()` is the whole job; `train_one_epoch()` and `evaluate()` are the loops.
"""

from __future__ import annotations

import math
import platform
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import torchvision
from omegaconf import DictConfig, OmegaConf

import mnist_cli
from mnist_cli import console, runs
from mnist_cli import distributed
from mnist_cli.distributed import World, all_sum, any_true
from mnist_cli.data import Split, TrainData, batches_per_epoch, epoch_generator, eval_batches, load_train_data, normalize, train_batches
from mnist_cli.errors import RunFailed, UserError
from mnist_cli.interrupt import Interrupted, StopRequest
from mnist_cli.models import build_model, count_parameters, layer_summary
from mnist_cli.optim import build_optimizer, build_scheduler

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
def evaluate(model, split: Split, data: TrainData, cfg, world: World = World()) -> Tuple[float, float]:
    """Returns (mean loss, accuracy) of `model` on `split` (under torchrun: each process a share)."""
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


def summary_metric(summary: Dict, path: str) -> float:
    """The value at a dotted path of summary.json, e.g. best.val_accuracy."""
    value = summary
    for part in path.split("."):
        value = value[part]
    return float(value)


def restore(state: Dict, model, optimizer, scheduler, total_steps: int) -> None:
    """Put model, optimizer, scheduler and RNGs back as `state` (a checkpoint) had them."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
        # epochs raised on resume: stretch the per-batch schedule to the new length
        for length_key in ("total_steps", "T_max"):
            if hasattr(scheduler, length_key):
                setattr(scheduler, length_key, total_steps)
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and state["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def train(cfg: DictConfig, run_dir: Path, overrides: Optional[List[str]] = None, resume_state: Optional[Dict] = None) -> float:
    """Train as `cfg` says, writing the run folder `run_dir` (continuing from `resume_state`, a
    checkpoint of that run, when given); returns cfg.optimized_metric (best validation accuracy
    by default) for a sweeper."""
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = resolve_device(cfg.device)
    world = distributed.join(device)
    try:
        return _train(cfg, Path(run_dir), overrides, resume_state, device, world, started, started_at)
    finally:
        distributed.leave(world)


def _train(cfg, run_dir: Path, overrides, resume_state, device, world: World, started: float, started_at: str) -> float:
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + world.rank)  # dropout differs per process, as it would per batch
    main = world.is_main
    if not main:
        console.silence()

    data = load_train_data(cfg, device)
    model = build_model(cfg.model, num_classes=len(data.classes)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    steps_per_epoch = batches_per_epoch(data.train, cfg.batch_size)
    scheduler = build_scheduler(optimizer, cfg.scheduler, steps_per_epoch, cfg.epochs)
    net = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model

    last, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    params = count_parameters(model)
    table = console.layer_table(layer_summary(model), params, title=f"{cfg.model.name} on {cfg.dataset.name}")
    if main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        runs.point_latest(Path(cfg.outputs_dir) / "train" / "latest", run_dir)
        (run_dir / "model.txt").write_text(console.render_text(table))
    console.show_table(table)
    console.say(
        f"{cfg.dataset.name}: {len(data.train)} train / {len(data.val)} val images on {device}; "
        f"{cfg.model.name} ({params:,} parameters), {cfg.optimizer.name} lr {cfg.optimizer.lr:g}, "
        f"scheduler {cfg.scheduler.name}, batch {cfg.batch_size}, {cfg.epochs} epochs"
        + (f", {cfg.precision}" if cfg.precision != "fp32" else "")
        + (f", {world.size} processes" if world.size > 1 else "")
    )

    config = OmegaConf.to_container(cfg, resolve=True)
    best: Dict = {"epoch": 0, "val_accuracy": -1.0, "val_loss": float("inf")}
    last_improvement, row, start_epoch, start_step, sums = 0, {}, 1, 0, None
    if resume_state is not None:
        restore(resume_state, model, optimizer, scheduler, steps_per_epoch * cfg.epochs)
        best, row = resume_state["best"], resume_state["metrics"] or {}
        last_improvement = resume_state["last_improvement"]
        start_epoch, start_step = resume_state["epoch"] + 1, resume_state["step"]
        if resume_state["partial"] is not None:  # all processes' sums: the main process carries them
            sums = tuple(t.to(device) if main else torch.zeros_like(t, device=device) for t in resume_state["partial"])
        if main:
            runs.keep_metrics_until(run_dir, resume_state["epoch"], resume_state["metrics"])
        console.say(f"resuming {run_dir} at epoch {start_epoch}, step {start_step}")

    def checkpoint(epoch_done: int, step: int, partial) -> Dict:
        """Everything needed to continue after `epoch_done` epochs and `step` steps of the next."""
        return {
            "format": runs.CHECKPOINT_FORMAT,
            "format_version": runs.CHECKPOINT_VERSION,
            "epoch": epoch_done,
            "step": step,
            "partial": None if partial is None else tuple(t.detach().cpu() for t in partial),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "metrics": row,
            "best": best,
            "last_improvement": last_improvement,
            "config": config,
            "classes": data.classes,
            "normalization": {"mean": data.mean, "std": data.std},
            "versions": versions(),
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        }

    def finish(status: str) -> Dict:
        """Write summary.json for the run as it stands; returns it."""
        wall = time.perf_counter() - started
        summary = {
            "status": status,
            "run_dir": str(run_dir),
            "overrides": list(overrides or []),
            "dataset": cfg.dataset.name,
            "model": cfg.model.name,
            "optimizer": cfg.optimizer.name,
            "scheduler": cfg.scheduler.name,
            "parameters": params,
            "epochs": cfg.epochs,
            "epochs_completed": row.get("epoch", 0),
            "best": best,
            "final": row,
            "wall_seconds": round(wall, 3),
            "seconds_per_epoch": round(wall / max(1, row.get("epoch", 0) - start_epoch + 1), 3),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(),
            "versions": versions(),
            "started_at": started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if not main:
            return summary
        if status == "early_stopped":
            summary["early_stopping"] = {"patience": cfg.early_stopping.patience, "min_delta": cfg.early_stopping.min_delta,
                                         "last_improvement": last_improvement}  # fmt: skip
        runs.write_json(run_dir / "summary.json", summary)
        return summary

    def interrupted(where: str) -> Interrupted:
        """Record the interruption in summary.json; the exception tells the user how to go on."""
        finish("interrupted")
        name = "SIGINT" if stop.signal == signal.SIGINT else "SIGTERM"
        return Interrupted(stop.signal or signal.SIGTERM, f"stopped by {name} {where}; last.pt is saved. Continue with: mnist train resume={run_dir}")

    status = "completed"
    with StopRequest() as stop:
        for epoch in range(start_epoch, cfg.epochs + 1):
            epoch_start = time.perf_counter()

            def save_partial(step: int, partial) -> None:
                totals = tuple(all_sum(t.detach().clone(), world) for t in partial)
                if main:
                    runs.save_checkpoint(last, checkpoint(epoch - 1, step, totals))

            result = train_one_epoch(net, optimizer, scheduler, data, cfg, epoch, start_step, sums, stop, save_partial, world)
            start_step, sums = 0, None
            if result is None:  # a signal: last.pt already holds this step
                raise interrupted(f"in epoch {epoch}")
            train_loss, train_acc = result
            if not math.isfinite(train_loss):
                finish("diverged")
                kept = f"; the last good checkpoint is {last}" if epoch > 1 else ""
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
            if main:
                runs.append_metrics(run_dir, row)
            console.say(console.epoch_line(row, cfg.epochs))

            is_best = val_acc > best["val_accuracy"]
            if val_acc > best["val_accuracy"] + cfg.early_stopping.min_delta:
                last_improvement = epoch
            if is_best:
                best = {"epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss}
            if main:
                runs.save_checkpoint(last, checkpoint(epoch, 0, None))
                if is_best:
                    runs.copy_atomically(last, best_path)
            if epoch < cfg.epochs and any_true(stop.signal is not None, world, device):  # during evaluation or saving
                raise interrupted(f"after epoch {epoch}")
            patience = cfg.early_stopping.patience
            if patience and epoch - last_improvement >= patience and epoch < cfg.epochs:
                console.say(f"early stopping: no val_acc gain above {cfg.early_stopping.min_delta} in {patience} epochs")
                status = "early_stopped"
                break

    summary = finish(status)
    console.say(f"best val_acc {best['val_accuracy']:.2%} at epoch {best['epoch']}; {summary['wall_seconds']:.1f}s in all; run folder:")
    console.say(str(run_dir))
    return summary_metric(summary, cfg.optimized_metric)
