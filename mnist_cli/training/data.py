"""The data a run trains on as uint8 tensors on the device, and on-device batching.

load_train_data gives the training and fixed validation splits of the configured dataset (datasets/).
No per-sample Python runs: images stay uint8 on the device and are augmented (augment.py), converted and
normalised per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch

from mnist_cli.datasets import image_folder, torchvision_sets
from mnist_cli.datasets.split import Split, split_indices
from mnist_cli.errors import UserError
from mnist_cli.training.augment import Augment, apply, draw


@dataclass
class TrainData:
    train: Split
    val: Split
    classes: List[str]
    mean: float
    std: float
    files: Optional[image_folder.FolderData] = None  # an image folder's files, for the run's dataset_files.csv


VAL_SHARE = 12  # data.val_size=null holds out 1/12 of the training images: 5,000 of 60,000


def validation_size(cfg, n: int) -> int:
    """How many of the n training images are held out for validation (data.val_size; null: n // 12)."""
    return n // VAL_SHARE if cfg.data.val_size is None else cfg.data.val_size


def load_train_data(cfg, device: torch.device) -> TrainData:
    """Return the training and the fixed validation split of cfg.dataset, moved to `device`
    (an empty validation split with data.val_size=0), with its class names and normalisation."""
    files = None
    if cfg.dataset.name == "folder":
        files = image_folder.load(cfg)
        train, val, classes = files.splits["train"], files.splits["val"], files.classes
    else:
        train, val = _idx_train_and_val(cfg)
        classes = torchvision_sets.class_names(cfg.dataset)
    if cfg.batch_size > len(train):
        raise UserError(
            f"batch_size={cfg.batch_size} is larger than the {len(train)} training images; lower batch_size."
        )
    mean, std = cfg.dataset.mean, cfg.dataset.std
    if mean is None or std is None:
        mean, std = measured_normalization(train.images)
    return TrainData(
        train=Split(train.images.to(device), train.labels.to(device)),
        val=Split(val.images.to(device), val.labels.to(device)),
        classes=classes,
        mean=float(mean),
        std=float(std),
        files=files,
    )


def _idx_train_and_val(cfg) -> Tuple[Split, Split]:
    """The training file of a torchvision set (its first data.limit images), split as split_indices draws it."""
    full = torchvision_sets.load_set(cfg.dataset, cfg.data.root, "train", cfg.data.download)
    images, labels = full.images, full.labels
    if cfg.data.limit is not None:
        images, labels = images[: cfg.data.limit], labels[: cfg.data.limit]
    n = len(labels)
    val_size = validation_size(cfg, n)
    if val_size >= n:
        raise UserError(
            f"data.val_size={val_size} leaves no training images out of {n}; lower data.val_size"
            + (" or raise data.limit." if cfg.data.limit is not None else ".")
        )
    val_idx, train_idx = split_indices(n, val_size, cfg.data.split_seed)
    return Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx])


def measured_normalization(images: torch.Tensor) -> Tuple[float, float]:
    """(mean, std) of uint8 `images` on a 0..1 scale, exactly, from their 256-bin histogram."""
    counts = torch.bincount(images.reshape(-1).cpu(), minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum()
    mean = float((counts * levels).sum() / total)
    std = float(((counts * (levels - mean) ** 2).sum() / total).sqrt())
    return mean, max(std, 1e-6)  # an all-black training set still divides by something


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float32 (B, 1, 28, 28), scaled to 0..1 then standardised."""
    return images.unsqueeze(1).float().sub_(255.0 * mean).mul_(1.0 / (255.0 * std))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG for one epoch's shuffle and shifts: a function of (seed, epoch) alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator,
    augment: Augment = Augment(),
    skip: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield shuffled (uint8 images, labels) batches, from batch number `skip` on (resuming
    mid-epoch), augmented as `augment` says. The same generator state gives the same batches.
    Under torchrun every process draws the same order and takes share `rank` of each global batch."""
    n = len(split)
    device = split.images.device
    order = torch.randperm(n, generator=generator).to(device)
    params = draw(augment, n, generator, device) if augment.active else {}
    for start in range(skip * batch_size, n, batch_size):
        idx = order[start : start + batch_size][rank::world_size]
        images = split.images[idx]
        if params:  # this batch's rows of the epoch's parameters: views, no copies
            images = apply(
                augment, images, {k: v[start : start + batch_size][rank::world_size] for k, v in params.items()}
            )
        yield images, split.labels[idx]


def batches_per_epoch(split: Split, batch_size: int) -> int:
    """How many (global) batches train_batches yields in a whole epoch; the last may be smaller."""
    return -(-len(split) // batch_size)


def eval_batches(split: Split, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches in order."""
    for start in range(0, len(split), batch_size):
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
