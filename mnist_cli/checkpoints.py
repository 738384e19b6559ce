"""Checkpoints: what one holds, writing it, reading it back safely, and turning it into a model.

A checkpoint is one dict (torchvision's references do the same): model, optimizer, the run's
state (epoch, step, best, epoch history), the resolved config, classes, normalisation, versions
and RNG states. It is written atomically and only ever loaded with weights_only=True.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

from mnist_cli import runs
from mnist_cli.errors import UserError
from mnist_cli.models import build_model

FORMAT = "mnist-cli-checkpoint"
# 2: adds "history", "overrides" and "wall_seconds"; the scheduler is rebuilt on resume, not stored
VERSION = 2


def save(path: Path, checkpoint: Dict[str, Any]) -> None:
    """Write `checkpoint` to `path` atomically (raises WriteFailed; the old file stays)."""
    runs.atomic_write(path, lambda f: torch.save(checkpoint, f))


@dataclass
class Trained:
    """A loaded checkpoint: the model (eval mode, on `device`) and what it was trained with."""

    model: torch.nn.Module
    config: DictConfig
    classes: list
    mean: float
    std: float
    checkpoint_path: Path
    run_dir: Path
    checkpoint: Dict[str, Any]


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """Load an mnist-cli checkpoint without running any pickled code; bad files raise UserError."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds more than weights (pickled code?); refusing to load it.") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a checkpoint file.") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError):
        raise UserError(f"{path} is not a readable checkpoint (truncated or not a torch file).") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise UserError(f"{path} is not an mnist-cli checkpoint.")
    if checkpoint.get("format_version", 0) > VERSION:
        raise UserError(f"{path} was written by a newer mnist-cli (checkpoint format {checkpoint['format_version']}); upgrade mnist-cli.")
    return checkpoint


def load_trained(run: str, outputs_dir: str, device: torch.device) -> Trained:
    """Load the checkpoint `run` names and rebuild its model; bad files raise UserError."""
    path = runs.resolve_checkpoint(run, outputs_dir, key="run", prefer=("best.pt", "last.pt"))
    checkpoint = read_checkpoint(path)
    config = OmegaConf.create(checkpoint["config"])
    model = build_model(config.model, num_classes=len(checkpoint["classes"]))
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, KeyError):
        raise UserError(f"{path}: the weights do not fit the {config.model.name} model its config describes.") from None
    model.to(device).eval()
    norm = checkpoint["normalization"]
    return Trained(model, config, list(checkpoint["classes"]), norm["mean"], norm["std"], path, runs.run_dir_of(path), checkpoint)
