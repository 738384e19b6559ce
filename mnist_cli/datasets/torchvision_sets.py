"""The MNIST family as torchvision ships it: which IDX files each set has, where they live, and downloading them.

The files are read by idx.py; torchvision is used only to download missing files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

from mnist_cli.datasets.idx import IMAGE_SIZE, REPLACE, read_idx
from mnist_cli.datasets.split import Split
from mnist_cli.errors import UserError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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
    images_file, images = read_idx(raw, f"{prefix}-images-idx3-ubyte", (0, IMAGE_SIZE, IMAGE_SIZE))
    labels_file, labels = read_idx(raw, f"{prefix}-labels-idx1-ubyte", (0,))
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


def class_names(dataset) -> List[str]:
    """The class names of the torchvision set `dataset` (a run's dataset config), in label order."""
    return list(dataset.classes)


def load_set(dataset, root: str, part: str, download: bool) -> Split:
    """The `part` ("train" or "test") of the torchvision set `dataset` (a run's dataset config) under `root`,
    as CPU tensors with labels 0..classes-1; with `download`, missing files are fetched first."""
    return load_dataset(
        root, dataset.folder, train=part == "train", download=download, classes=len(class_names(dataset))
    )
