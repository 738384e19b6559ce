"""`mnist train`: config -> data tensors, model, optimizer -> epoch loop -> run folder.

Read top to bottom: `train()` is the whole job; `train_one_epoch()` and `evaluate()` are the loops.
"""

from __future__ import annotations

import math
import platform
import shutil
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
from mnist_cli.data import Split, TrainData, epoch_generator, eval_batches, load_train_data, normalize, train_batches
from mnist_cli.errors import RunFailed, UserError
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


def train_one_epoch(model, optimizer, scheduler, data: TrainData, cfg, epoch: int) -> Tuple[float, float]:
    """One pass over the training split; returns (mean loss, accuracy) with one host sync at the end."""
    model.train()
    device = data.train.images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    pad = AUGMENT_PAD if cfg.model.augment else 0
    steps = -(-len(data.train) // cfg.batch_size)
    batches = train_batches(data.train, cfg.batch_size, epoch_generator(cfg.seed, epoch), pad)
    with console.batch_progress(f"epoch {epoch}/{cfg.epochs}", steps) as advance:
        for images, labels in batches:
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
    n = len(data.train)
    return loss_sum.item() / n, correct.item() / n


@torch.no_grad()
def evaluate(model, split: Split, data: TrainData, cfg) -> Tuple[float, float]:
    """Returns (mean loss, accuracy) of `model` on `split`."""
    model.eval()
    loss_sum = torch.zeros((), device=split.images.device)
    correct = torch.zeros((), device=split.images.device, dtype=torch.long)
    for images, labels in eval_batches(split, cfg.eval_batch_size):
        logits = model(to_model_input(images, data, cfg.channels_last))
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    return loss_sum.item() / len(split), correct.item() / len(split)


def summary_metric(summary: Dict, path: str) -> float:
    """The value at a dotted path of summary.json, e.g. best.val_accuracy."""
    value = summary
    for part in path.split("."):
        value = value[part]
    return float(value)


def train(cfg: DictConfig, run_dir: Path, overrides: Optional[List[str]] = None) -> float:
    """Train as `cfg` says, writing the run folder `run_dir`; returns cfg.optimized_metric
    (best validation accuracy by default) for a sweeper."""
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    data = load_train_data(cfg, device)
    model = build_model(cfg.model, num_classes=len(data.classes)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    steps_per_epoch = -(-len(data.train) // cfg.batch_size)
    scheduler = build_scheduler(optimizer, cfg.scheduler, steps_per_epoch, cfg.epochs)

    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    runs.point_latest(Path(cfg.outputs_dir) / "train" / "latest", run_dir)
    params = count_parameters(model)
    table = console.layer_table(layer_summary(model), params, title=f"{cfg.model.name} on {cfg.dataset.name}")
    (run_dir / "model.txt").write_text(console.render_text(table))
    console.show_table(table)
    console.say(
        f"{cfg.dataset.name}: {len(data.train)} train / {len(data.val)} val images on {device}; "
        f"{cfg.model.name} ({params:,} parameters), {cfg.optimizer.name} lr {cfg.optimizer.lr:g}, "
        f"scheduler {cfg.scheduler.name}, batch {cfg.batch_size}, {cfg.epochs} epochs"
    )

    config = OmegaConf.to_container(cfg, resolve=True)
    best: Dict = {"epoch": 0, "val_accuracy": -1.0, "val_loss": float("inf")}
    row: Dict = {}

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
            "seconds_per_epoch": round(wall / max(1, row.get("epoch", 0)), 3),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(),
            "versions": versions(),
            "started_at": started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        runs.write_json(run_dir / "summary.json", summary)
        return summary
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(model, optimizer, scheduler, data, cfg, epoch)
        if not math.isfinite(train_loss):
            finish("diverged")
            kept = f"; the last good checkpoint is {run_dir / 'checkpoints' / 'last.pt'}" if epoch > 1 else ""
            raise RunFailed(
                f"the training loss became {train_loss} in epoch {epoch}; lower optimizer.lr (now {cfg.optimizer.lr:g}) "
                f"and train again{kept}."
            )
        val_loss, val_acc = evaluate(model, data.val, data, cfg)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - epoch_start, 3),
        }
        runs.append_metrics(run_dir, row)
        console.say(console.epoch_line(row, cfg.epochs))

        is_best = val_acc > best["val_accuracy"]
        if is_best:
            best = {"epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss}
        checkpoint = {
            "format": runs.CHECKPOINT_FORMAT,
            "format_version": runs.CHECKPOINT_VERSION,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "metrics": row,
            "best": best,
            "config": config,
            "classes": data.classes,
            "normalization": {"mean": data.mean, "std": data.std},
            "versions": versions(),
            "rng": {"torch": torch.get_rng_state()},
        }
        last = run_dir / "checkpoints" / "last.pt"
        runs.save_checkpoint(last, checkpoint)
        if is_best:
            with open(last, "rb") as source:
                runs.atomic_write(run_dir / "checkpoints" / "best.pt", lambda f: shutil.copyfileobj(source, f))

    summary = finish("completed")
    console.say(f"best val_acc {best['val_accuracy']:.2%} at epoch {best['epoch']}; {summary['wall_seconds']:.1f}s in all; run folder:")
    console.say(str(run_dir))
    return summary_metric(summary, cfg.optimized_metric)
