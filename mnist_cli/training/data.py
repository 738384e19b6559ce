"""Datasets as uint8 tensors on the device, the fixed validation split, and on-device batching.

The IDX files are read here, gzipped or not, straight into tensors (70,000 images take about 0.3 s on
2 CPU cores), and checked as they are read: a damaged file is one sentence naming it. Nothing is cached
and nothing is written while reading; torchvision is used only to download missing files. After that no
per-sample Python runs: images stay uint8 on the device and are augmented (augment.py), converted and
normalised per batch.
"""

from __future__ import annotations

import gzip
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Tuple

import torch

from mnist_cli.errors import UserError
from mnist_cli.training.augment import Augment, apply, draw

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_SIZE = 28
REPLACE = "replace it with a good copy."
MAX_BYTES = 16 + 1_000_000 * IMAGE_SIZE * IMAGE_SIZE  # a million images: more than any MNIST-family file


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


def _missing_files(raw: Path) -> List[str]:
    """The IDX files `raw` holds in neither form, gzipped or not."""
    return [n for n in IDX_FILES if not (raw / n).is_file() and not (raw / f"{n}.gz").is_file()]


def _missing_message(root: Path, folder: str) -> str:
    return (
        f"No {folder} data in {root / folder / 'raw'}: put {', '.join(IDX_FILES)} there (gzipped or not), "
        f"or point data.root / MNIST_DATA_ROOT at a folder that holds {folder}/raw/."
    )


def _refuse_partial(raw: Path) -> None:
    """Raises UserError when `raw` holds some IDX files but not all: torchvision's download replaces every .gz
    whose checksum is not the official one, so the user's own files would be lost without a word."""
    missing = _missing_files(raw)
    if len(missing) < len(IDX_FILES):
        raise UserError(
            f"{raw} holds some of the IDX files but not {', '.join(missing)}; put the missing ones there "
            "(downloading would replace the files you have), or empty the folder to download all four."
        )


def _download(root: Path, folder: str) -> None:
    """Fetch the missing files with torchvision, which makes <root>/<folder>/raw/ and unpacks the .gz
    files there. A failed download removes the folders it made: nothing is left behind."""
    from torchvision import datasets  # only here: reading needs no torchvision

    made = next((p for p in (root, root / folder, root / folder / "raw") if not p.exists()), None)
    try:
        getattr(datasets, folder)(str(root), train=True, download=True)
    except Exception:  # torchvision raises RuntimeError/URLError/OSError when offline
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise UserError(_missing_message(root, folder) + " Downloading failed.") from None


def _file_bytes(path: Path) -> bytes:
    """The bytes of an IDX file, unpacked when its name ends in .gz."""
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as packed:  # read in a bounded amount: a small .gz may unpack to gigabytes
            data = packed.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise UserError(
                f"{path} unpacks to more than {MAX_BYTES:,} bytes, more than any IDX file it could hold; {REPLACE}"
            )
        return data
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise UserError(f"{path} is not a readable gzip file ({error}); {REPLACE}") from None
    except OSError as error:
        raise UserError(f"Could not read {path} ({error.strerror or error}); check its permissions.") from None


def _idx_bytes(raw: Path, name: str) -> Tuple[Path, bytes]:
    """(the file read, its bytes) for IDX file `name` in `raw`, gzipped or not. With both present they
    must agree: a copy replaced in one form only would otherwise be read or ignored by chance."""
    plain, packed = raw / name, raw / f"{name}.gz"
    if not plain.is_file():
        return packed, _file_bytes(packed)
    data = _file_bytes(plain)
    if packed.is_file() and _file_bytes(packed) != data:
        raise UserError(f"{plain} and {packed.name} hold different data; delete the one that is out of date.")
    return plain, data


def _read_idx(raw: Path, name: str, shape: Tuple[int, ...]) -> Tuple[Path, torch.Tensor]:
    """(the file read, a uint8 tensor) for IDX file `name`, checked against its header and against
    `shape`, where 0 stands for any positive size (the image or label count)."""
    path, data = _idx_bytes(raw, name)
    what = "images" if len(shape) == 3 else "labels"
    header = 4 + 4 * len(shape)
    if len(data) < header:
        raise UserError(f"{path} is {len(data)} bytes long, too short for an IDX file of {what}; {REPLACE}")
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 | len(shape):
        raise UserError(
            f"{path} starts with 0x{magic:08x}, not the 0x{0x0800 | len(shape):08x} of an IDX file of "
            f"{len(shape)}-dimensional unsigned bytes ({what}); {REPLACE}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(shape)))
    if dims[0] == 0:
        raise UserError(f"{path} holds no {what}; {REPLACE}")
    if any(want and got != want for got, want in zip(dims, shape)):
        size = "×".join(map(str, dims[1:]))
        raise UserError(
            f"{path} holds {size} images; mnist-cli reads {IMAGE_SIZE}×{IMAGE_SIZE} images (MNIST's IDX format)."
        )
    expected = header + dims[0] * (dims[1] * dims[2] if len(dims) == 3 else 1)
    if len(data) != expected:
        state = "it is cut short" if len(data) < expected else "it has extra bytes at its end"
        raise UserError(
            f"{path} is {len(data)} bytes long where its header says {expected} ({dims[0]} {what}): {state}; {REPLACE}"
        )
    return path, torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(dims)


def load_dataset(root: str, folder: str, train: bool, download: bool, classes: int) -> Split:
    """Return the training or test set of `folder` under `root` as CPU tensors, after checking its
    IDX files (labels must be below `classes`); with `download`, fetch missing files first."""
    root_path = Path(root).expanduser()
    if _missing_files(root_path / folder / "raw"):
        if not download:
            raise UserError(_missing_message(root_path, folder))
        _refuse_partial(root_path / folder / "raw")
        _download(root_path, folder)
    raw = root_path / folder / "raw"
    prefix = "train" if train else "t10k"
    images_file, images = _read_idx(raw, f"{prefix}-images-idx3-ubyte", (0, IMAGE_SIZE, IMAGE_SIZE))
    labels_file, labels = _read_idx(raw, f"{prefix}-labels-idx1-ubyte", (0,))
    if len(images) != len(labels):
        raise UserError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels; "
            "replace them with copies that match."
        )
    largest = int(labels.max())
    if largest >= classes:
        raise UserError(
            f"{labels_file} holds label {largest}, but {folder} has {classes} classes (0–{classes - 1}); {REPLACE}"
        )
    return Split(images, labels.long())


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
    full = load_dataset(
        cfg.data.root, cfg.dataset.folder, train=True, download=cfg.data.download, classes=len(cfg.dataset.classes)
    )
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
