"""Finding a run's checkpoint from what a user types (`run=`), and turning it back into a model."""

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


def resolve_checkpoint(run: str, outputs_dir: str) -> Path:
    """`latest`, a run folder (its checkpoints/best.pt) or a checkpoint file -> the checkpoint path."""
    if run == "latest":
        link = Path(outputs_dir) / "train" / "latest"
        if not link.exists():
            raise UserError(f"run=latest found no train run under {link.parent}; train one first or give run=<folder>.")
        path = link.resolve()
    else:
        path = Path(run).expanduser()
        if not path.exists():
            raise UserError(f"run={run} does not exist; give a run folder, a .pt checkpoint or latest.")
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise UserError(f"{path} holds no checkpoints/best.pt or last.pt; is it a train run folder?")
    return path


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint belongs to (<run>/checkpoints/x.pt), else the checkpoint's folder."""
    parent = checkpoint_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def load_trained(run: str, outputs_dir: str, device: torch.device) -> Trained:
    """Load the checkpoint `run` names and rebuild its model; bad files raise UserError."""
    path = resolve_checkpoint(run, outputs_dir)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds more than weights (pickled code?); refusing to load it.") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError):
        raise UserError(f"{path} is not a readable checkpoint (truncated or not a torch file).") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != runs.CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an mnist-cli checkpoint.")
    config = OmegaConf.create(checkpoint["config"])
    model = build_model(config.model, num_classes=len(checkpoint["classes"]))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise UserError(f"{path}: the weights do not fit the {config.model.name} model its config describes.") from None
    model.to(device).eval()
    norm = checkpoint["normalization"]
    return Trained(model, config, list(checkpoint["classes"]), norm["mean"], norm["std"], path, run_dir_of(path), checkpoint)
