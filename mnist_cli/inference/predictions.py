"""Running a trained model on images: what `mnist eval`, `mnist predict` and `mnist serve` share.

A trained run (checkpoints.load_trained) gives the model, its classes and its normalisation;
this module finds the images of one of its data splits, turns uint8 images into logits and
probabilities, and probabilities into the rows predict writes and serve returns.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mnist_cli.datasets import image_folder, torchvision_sets
from mnist_cli.datasets.split import Split, split_indices
from mnist_cli.errors import UserError
from mnist_cli.runs.atomic import printable
from mnist_cli.runs.checkpoints import Trained
from mnist_cli.runs.folder import RunFolder
from mnist_cli.training.data import load_train_data, normalize
from mnist_cli.training.forward import autocast


def load_split(trained: Trained, cfg: DictConfig, device: torch.device) -> Split:
    """The split the user asked for, from the run's dataset (val/train: the run's own fixed split)."""
    return load_positions(trained, cfg, device)[0]


def load_positions(trained: Trained, cfg: DictConfig, device: torch.device) -> Tuple[Split, torch.Tensor, int]:
    """(the split as load_split gives it, each of its rows' position in the dataset's own file (the
    test file for test, the training file for train and val: torchvision's numbering; an image folder:
    the row's place among the split's files), how many of that file's images the run uses (data.limit))."""
    run_cfg = trained.config
    if run_cfg.dataset.name == "folder":
        split = _folder_split(trained, cfg.split)
        return Split(split.images.to(device), split.labels.to(device)), torch.arange(len(split)), len(split)
    root = cfg.data.root if cfg.data.root is not None else run_cfg.data.root
    if cfg.split == "test":
        test = torchvision_sets.load_set(run_cfg.dataset, root, "test", cfg.data.download)
        return Split(test.images.to(device), test.labels.to(device)), torch.arange(len(test)), len(test)
    train_cfg = OmegaConf.merge(run_cfg, {"data": {"root": root, "download": cfg.data.download}})
    data = load_train_data(train_cfg, device)
    if cfg.split == "val" and len(data.val) == 0:
        raise UserError("the run trained with data.val_size=0: it has no validation split; use split=test.")
    used = len(data.train) + len(data.val)
    val_positions, train_positions = split_indices(
        used, len(data.val), run_cfg.data.split_seed
    )  # as load_train_data drew them
    return (data.val, val_positions, used) if cfg.split == "val" else (data.train, train_positions, used)


def _folder_split(trained: Trained, split: str) -> Split:
    """Split `split` of an image-folder run, read from its folder, which must hold the files it trained on."""
    data = image_folder.load(trained.config)
    image_folder.check_unchanged(
        data, RunFolder(trained.run_dir).dataset_files, trained.config.dataset.path, "evaluate"
    )
    if len(data.splits[split]) == 0:
        path = trained.config.dataset.path
        if split == "val":
            why = "dataset.val_fraction=0 and no val/ folder"
        elif data.folders:
            why = f"{path} has no test/ folder"
        else:
            why = "dataset.test_fraction=0"
        other = "val" if split == "test" else "test"
        raise UserError(f"the run has no {split} split ({printable(why)}); use split={other}, or split=train.")
    return data.splits[split]


def precision(trained: Trained) -> str:
    """The precision the run trained and validated in: fp32 or bf16 (older checkpoints: fp32)."""
    return trained.config.get("precision", "fp32")


@torch.no_grad()
def predict_logits(trained: Trained, images: torch.Tensor, batch_size: int, calibrated: bool = True) -> torch.Tensor:
    """Logits (N, classes) for uint8 images (N, 28, 28) already on the model's device, computed in the
    run's precision (bf16 autocast, as training validated), so `mnist eval split=val` is training's number;
    divided by the run's temperature (calibration.json) unless `calibrated` is false."""
    with autocast(images.device, precision(trained)):
        chunks = [
            trained.model(normalize(images[i : i + batch_size], trained.mean, trained.std))
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(chunks).float() / (trained.temperature if calibrated else 1.0)


def probabilities(
    trained: Trained, images: Sequence[np.ndarray], device: torch.device, batch_size: int
) -> torch.Tensor:
    """Class probabilities (N, classes) on the CPU for N uint8 28x28 arrays (N may be 0)."""
    if len(images) == 0:
        return torch.zeros(0, len(trained.classes))
    batch = torch.from_numpy(np.stack(images)).to(device)
    return predict_logits(trained, batch, batch_size).softmax(1).cpu()


def to_rows(entries: List[Dict], probs: torch.Tensor, classes: List[str], topk: int) -> List[Dict]:
    """One row per entry ({"input", "image" | "error", "label"?}), in order: input, label, predicted,
    confidence, topk [{class, probability}], error; `probs` holds one row per entry with an image."""
    rows, k = [], min(topk, len(classes))
    predicted = iter(zip(*probs.topk(k, dim=1)))
    for entry in entries:
        row = {
            "input": entry["input"],
            "label": entry.get("label"),
            "predicted": None,
            "confidence": None,
            "topk": [],
            "error": entry.get("error"),
        }
        if "image" in entry:
            values, indices = next(predicted)
            row["topk"] = [
                {"class": classes[i], "probability": round(p, 6)} for p, i in zip(values.tolist(), indices.tolist())
            ]
            row["predicted"], row["confidence"] = row["topk"][0]["class"], row["topk"][0]["probability"]
        rows.append(row)
    return rows
