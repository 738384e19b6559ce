"""Checkpoints: what one holds, writing it, reading it back safely, and turning it into a model.

A checkpoint is one dict (torchvision's references do the same): model, optimizer, the run's
state (epoch, step, best, epoch history), the resolved config, classes, normalisation, versions
and RNG states. This module owns what goes in (snapshot), writing it atomically (save), reading
it with weights_only=True and checking it (read_checkpoint, read_resumable), and bringing it
back (state_of, restore, load_trained). It alone knows the formats older mnist-cli versions wrote:
upgrade() brings them to today's, and every reader gets that.
"""

from __future__ import annotations

import json
import math
import pickle
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

import mnist_cli
from mnist_cli.errors import UserError
from mnist_cli.runs import metrics
from mnist_cli.runs.atomic import atomic_write
from mnist_cli.runs.folder import RunFolder, hydra_overrides, resolve_checkpoint, run_dir_of
from mnist_cli.runs.state import RunState
from mnist_cli.training.models import build_model, for_inference
from mnist_cli.training.optim import load_optimizer_state

FORMAT = "mnist-cli-checkpoint"
# 2: adds "history", "overrides" and "wall_seconds"; the scheduler is rebuilt on resume, not stored
# 3: adds "ema" and "inference_weights" (which of "model" and "ema" eval, predict and export load)
# 4: the config's dataset says how image files are prepared ("prepare") and may measure its normalisation
VERSION = 4


def upgrade(checkpoint: Dict[str, Any], run: RunFolder) -> Dict[str, Any]:
    """`checkpoint` (format 1 to 4) as format VERSION holds it; `run`: its run folder, where format 1
    kept what it lacks (the epochs in metrics.jsonl, the overrides in .hydra/overrides.yaml).

    Only the checkpoint's own fields are upgraded: its config, from whichever mnist-cli version, is
    brought up to today's keys on resume by config.compatibility.defaults_for, as .hydra/config.yaml is."""
    version = checkpoint.get("format_version", 1)
    if version >= VERSION:
        return checkpoint
    checkpoint = dict(checkpoint, format_version=VERSION)
    if version < 2:  # its "scheduler" stays unread: the schedule is rebuilt for the run's length
        last = [checkpoint["metrics"]] if checkpoint.get("metrics") else []
        history = [r for r in metrics.read_epochs(run.path) if r["epoch"] < checkpoint["epoch"]] + last
        checkpoint["history"] = history
        checkpoint["overrides"] = hydra_overrides(run)
        checkpoint["wall_seconds"] = sum(row.get("seconds", 0) for row in history)
    if version < 3:  # no moving average was kept; eval, predict and export load the trained weights
        checkpoint["ema"] = None
        checkpoint["inference_weights"] = "model"
    if version < 4:  # only MNIST and FashionMNIST existed, each prepared image files its own way
        dataset = checkpoint["config"]["dataset"]
        checkpoint["config"] = dict(
            checkpoint["config"], dataset=dict(dataset, prepare="digit" if dataset["name"] == "mnist" else "object")
        )
    return checkpoint


def versions() -> Dict[str, str]:
    """The versions a checkpoint and summary.json record."""
    import torchvision

    return {
        "mnist_cli": mnist_cli.__version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def snapshot(
    model,
    optimizer,
    state: RunState,
    partial: Optional[Tuple],
    config: Dict,
    classes: List[str],
    normalization: Dict[str, float],
    wall_seconds: float,
    ema=None,
) -> Dict[str, Any]:
    """The checkpoint of a run at `state`: enough to continue it exactly (`partial`: the running
    loss sum and correct count of a half-done epoch), and to use the model on its own. With an
    `ema` (ema.WeightAverage), "ema" holds the averaged weights, and "inference_weights" says which
    of "model" and "ema" won the last validation: those are the weights eval, predict and export load."""
    ema_won = ema is not None and bool(state.history) and state.history[-1].get("weights") == "ema"
    return {
        "format": FORMAT,
        "format_version": VERSION,
        "epoch": state.epoch,
        "step": state.step,
        "partial": None if partial is None else tuple(t.detach().cpu() for t in partial),
        "model": model.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "inference_weights": "ema" if ema_won else "model",
        "optimizer": optimizer.state_dict(),
        "metrics": state.history[-1] if state.history else {},
        "history": state.history,
        "best": state.best,
        "last_improvement": state.last_improvement,
        "overrides": state.overrides,
        "wall_seconds": round(wall_seconds, 3),
        "config": config,
        "classes": classes,
        "normalization": normalization,
        "versions": versions(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        },
    }


def save(path: Path, checkpoint: Dict[str, Any]) -> None:
    """Write `checkpoint` to `path` atomically (raises WriteFailed; the old file stays)."""
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def state_of(checkpoint: Dict[str, Any]) -> RunState:
    """The run state a checkpoint (read by read_resumable) records."""
    return RunState(
        list(checkpoint["overrides"]),
        checkpoint["epoch"],
        checkpoint["step"],
        checkpoint["best"],
        checkpoint["last_improvement"],
        checkpoint["history"],
        checkpoint["wall_seconds"],
    )


def restore(
    checkpoint: Dict[str, Any], model, optimizer, device: torch.device, carries_sums: bool, ema=None
) -> Optional[Tuple]:
    """Put the weights (and their moving average), the optimizer's per-parameter state and the RNGs
    back as `checkpoint` has them (the lr schedule is rebuilt by the caller). Returns the running
    sums of a half-done epoch on `device` (zeros where `carries_sums` is false: under torchrun the
    main process carries them), or None at an epoch boundary."""
    model.load_state_dict(checkpoint["model"])
    if ema is not None:  # resume.resumed checked that the checkpoint has it
        ema.load_state_dict(checkpoint["ema"])
    load_optimizer_state(optimizer, checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if torch.cuda.is_available() and checkpoint["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    if checkpoint["partial"] is None:
        return None
    return tuple(t.to(device) if carries_sums else torch.zeros_like(t, device=device) for t in checkpoint["partial"])


@dataclass
class Trained:
    """A loaded checkpoint: the model (eval mode, on `device`; flip-averaged where its dataset.test_time_flip
    says so) and what it was trained with."""

    model: torch.nn.Module
    config: DictConfig
    classes: list
    mean: float
    std: float
    checkpoint_path: Path
    run_dir: Path
    checkpoint: Dict[str, Any]
    temperature: float = 1.0  # the logits are divided by it: the run's calibration.json, else 1
    members: List["Trained"] = field(default_factory=list)  # an ensemble's runs (inference/ensembles.py)


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """Load an mnist-cli checkpoint without running any pickled code, upgraded to format VERSION;
    bad files raise UserError."""
    unreadable = UserError(f"{path} is not a readable checkpoint (truncated or not a torch file).")
    try:
        with open(path, "rb") as file:
            magic = file.read(2)
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a checkpoint file.") from None
    except OSError:
        raise unreadable from None
    if not (magic.startswith(b"PK") or magic.startswith(b"\x80")):  # torch's zip format, or a bare pickle
        raise unreadable  # an image or a text file: not a checkpoint at all, rather than "pickled code?"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds more than weights (pickled code?); refusing to load it.") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a checkpoint file.") from None
    except Exception:  # torch's reader fails on arbitrary bytes in many ways (KeyError for a text file)
        raise unreadable from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UserError(f"{path} is not an mnist-cli checkpoint.")
    if checkpoint.get("format_version", 0) > VERSION:
        raise UserError(
            f"{path} was written by a newer mnist-cli (checkpoint format {checkpoint['format_version']}); upgrade mnist-cli."
        )
    return upgrade(checkpoint, RunFolder(run_dir_of(path)))


def read_resumable(path: Path) -> Dict[str, Any]:
    """read_checkpoint, and check it holds a training state to continue from."""
    checkpoint = read_checkpoint(path)
    if not all(key in checkpoint for key in ("step", "optimizer", "rng", "best", "last_improvement", "partial")):
        raise UserError(f"{path} has no training state to continue from (written by an older mnist-cli).")
    return checkpoint


def load_trained(run: str, outputs_dir: str, device: torch.device) -> Trained:
    """Load the checkpoint `run` names and rebuild its model; bad files raise UserError."""
    path = resolve_checkpoint(run, outputs_dir, key="run")
    checkpoint = read_checkpoint(path)
    config = OmegaConf.create(checkpoint["config"])
    model = build_model(config.model, num_classes=len(checkpoint["classes"]))
    try:
        model.load_state_dict(checkpoint[checkpoint["inference_weights"]])
    except (RuntimeError, KeyError, TypeError):
        raise UserError(f"{path}: the weights do not fit the {config.model.name} model its config describes.") from None
    model = for_inference(model, config).to(device).eval()
    norm = checkpoint["normalization"]
    run_dir = run_dir_of(path)
    return Trained(
        model,
        config,
        list(checkpoint["classes"]),
        norm["mean"],
        norm["std"],
        path,
        run_dir,
        checkpoint,
        stored_temperature(RunFolder(run_dir).calibration),
    )


def stored_temperature(path: Path) -> float:
    """The temperature a run's calibration.json holds; 1 without one. A file that is not a positive finite
    temperature is refused: confidences scaled by a wrong number would look right."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return 1.0
    except OSError as error:
        raise UserError(f"Could not read {path} ({error.strerror or error}).") from None
    try:
        temperature = float(json.loads(text)["temperature"])
    except (ValueError, KeyError, TypeError):
        temperature = float("nan")
    if not (math.isfinite(temperature) and temperature > 0):
        raise UserError(
            f"{path} holds no positive temperature; delete it, or fit it again with mnist eval calibrate=true."
        )
    return temperature
