"""Datasets as uint8 tensors on the device, the fixed validation split, and on-device batching.

torchvision's MNIST/FashionMNIST classes read the IDX files; after that no per-sample Python
runs: images stay uint8 on the device and are augmented (augment.py), converted and normalised per batch.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Tuple

import torch
from torchvision import datasets

from mnist_cli.augment import Augment, apply, draw
from mnist_cli.paths import cache_dir
from mnist_cli.errors import UserError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TORCHVISION_CLASSES = {"MNIST": datasets.MNIST, "FashionMNIST": datasets.FashionMNIST}


@dataclass
class Split:
    """Images (N, 28, 28) uint8 and labels (N,) int64, both on the training device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrainData:
    train: Split
    val: Split
    classes: List[str]
    mean: float
    std: float


def _extracted_root(root: Path, folder: str) -> Path:
    """Return a root whose <folder>/raw/ holds the four IDX files uncompressed.

    torchvision reads only uncompressed files, and with download=True it re-downloads .gz files
    whose md5 differs from the official one. So gzipped copies are unpacked into a per-user cache,
    keyed by the source folder; data.root itself is never written to (it may be a shared copy).
    """
    raw = root / folder / "raw"
    gzipped = [name for name in IDX_FILES if not (raw / name).is_file()]
    if not gzipped:
        return root
    key = hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]
    target_root = Path(cache_dir()) / "extracted" / key
    target_raw = target_root / folder / "raw"
    target_raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        source = raw / f"{name}.gz" if name in gzipped else raw / name
        target = target_raw / name
        if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
            continue
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            opener = gzip.open if source.suffix == ".gz" else open
            with opener(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)
        except (OSError, EOFError) as error:
            tmp.unlink(missing_ok=True)
            raise UserError(f"Could not read {source} ({error}); replace it with a good copy.") from None
    return target_root


def _has_files(root: Path, folder: str) -> bool:
    raw = root / folder / "raw"
    return all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in IDX_FILES)


def _missing_message(root: Path, folder: str) -> str:
    return (
        f"No {folder} data in {root / folder / 'raw'}: put {', '.join(IDX_FILES)} there (gzipped or not), "
        f"or point data.root / MNIST_DATA_ROOT at a folder that holds {folder}/raw/."
    )


def load_dataset(root: str, folder: str, train: bool, download: bool) -> Split:
    """Return the training or test set as CPU tensors read by torchvision's dataset class."""
    root_path = Path(root).expanduser()
    if not _has_files(root_path, folder):
        if not download:
            raise UserError(_missing_message(root_path, folder))
        try:
            TORCHVISION_CLASSES[folder](str(root_path), train=train, download=True)
        except Exception:  # torchvision raises RuntimeError/URLError/OSError when offline
            raise UserError(_missing_message(root_path, folder) + " Downloading failed.") from None
    readable_root = _extracted_root(root_path, folder)
    try:
        dataset = TORCHVISION_CLASSES[folder](str(readable_root), train=train, download=False)
    except (RuntimeError, ValueError, TypeError, OSError) as error:
        raise UserError(f"Could not read the {folder} IDX files in {readable_root / folder / 'raw'}: {error}.") from None
    if dataset.data.ndim != 3 or len(dataset.data) != len(dataset.targets):
        raise UserError(f"The {folder} IDX files in {root_path / folder / 'raw'} do not match: images and labels differ in count.")
    return Split(dataset.data, dataset.targets)


def split_indices(n: int, val_size: int, split_seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return (validation, training) indices into the first n training images: a fixed split."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[:val_size], order[val_size:]


VAL_SHARE = 12  # data.val_size=null holds out 1/12 of the training images: 5,000 of 60,000


def validation_size(cfg, n: int) -> int:
    """How many of the n training images are held out for validation (data.val_size; null: n // 12)."""
    return n // VAL_SHARE if cfg.data.val_size is None else cfg.data.val_size


def load_train_data(cfg, device: torch.device) -> TrainData:
    """Return the training and the fixed validation split of cfg.dataset, moved to `device`
    (an empty validation split with data.val_size=0)."""
    full = load_dataset(cfg.data.root, cfg.dataset.folder, train=True, download=cfg.data.download)
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
    if cfg.batch_size > n - val_size:
        raise UserError(
            f"batch_size={cfg.batch_size} is larger than the {n - val_size} training images; lower batch_size."
        )
    val_idx, train_idx = split_indices(n, val_size, cfg.data.split_seed)
    return TrainData(
        train=Split(images[train_idx].to(device), labels[train_idx].to(device)),
        val=Split(images[val_idx].to(device), labels[val_idx].to(device)),
        classes=list(cfg.dataset.classes),
        mean=float(cfg.dataset.mean),
        std=float(cfg.dataset.std),
    )


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float32 (B, 1, 28, 28), scaled to 0..1 then standardised."""
    return images.unsqueeze(1).float().sub_(255.0 * mean).mul_(1.0 / (255.0 * std))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG for one epoch's shuffle and shifts: a function of (seed, epoch) alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train_batches(
    split: Split, batch_size: int, generator: torch.Generator, augment: Augment = Augment(), skip: int = 0,
    rank: int = 0, world_size: int = 1,
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
            images = apply(augment, images, {k: v[start : start + batch_size][rank::world_size] for k, v in params.items()})
        yield images, split.labels[idx]


def batches_per_epoch(split: Split, batch_size: int) -> int:
    """How many (global) batches train_batches yields in a whole epoch; the last may be smaller."""
    return -(-len(split) // batch_size)


def eval_batches(split: Split, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches in order."""
    for start in range(0, len(split), batch_size):
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
