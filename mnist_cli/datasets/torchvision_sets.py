"""The MNIST family as torchvision ships it: which IDX files each set has, where they live, and downloading them.

MNIST, FashionMNIST and KMNIST hold MNIST's four files; EMNIST holds four per split (emnist-<split>-...),
stored transposed; QMNIST holds qmnist-{train,test}-images-idx3-ubyte and 8-column int32 label files whose
first column is the class. The files are read by idx.py; torchvision is used only to download missing files.
"""

from __future__ import annotations

import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from mnist_cli.datasets.idx import IMAGE_SIZE, REPLACE, read_idx
from mnist_cli.datasets.split import Split
from mnist_cli.errors import UserError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

EMNIST_SPLITS = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")  # torchvision's EMNIST.splits
# The class of each label, from EMNIST's emnist-<split>-mapping.txt (label -> ASCII codes). bymerge and balanced
# merge 15 letters whose lower case looks like the upper case (c i j k l m o p s u v w x y z) into the upper-case
# class; letters maps each label to both cases ("1 65 97": A and a).
_DIGITS = list(string.digits)
EMNIST_CLASSES: Dict[str, List[str]] = {
    "byclass": _DIGITS + list(string.ascii_uppercase) + list(string.ascii_lowercase),
    "bymerge": _DIGITS + list(string.ascii_uppercase) + list("abdefghnqrt"),
    "balanced": _DIGITS + list(string.ascii_uppercase) + list("abdefghnqrt"),
    "letters": [f"{upper}/{lower}" for upper, lower in zip(string.ascii_uppercase, string.ascii_lowercase)],
    "digits": _DIGITS,
    "mnist": _DIGITS,
}
QMNIST_TEST10K = 10_000  # QMNIST's first 10,000 test rows are MNIST's test set; the other 50,000 are the lost ones


@dataclass(frozen=True)
class Layout:
    """How one set (one EMNIST split) lies in <root>/<folder>/raw/ and how it is read."""

    name: str  # in messages: MNIST, EMNIST letters, ...
    folder: str  # torchvision's folder under data.root
    files: Dict[str, Tuple[str, str]]  # "train"/"test" -> (images file, labels file)
    replaced: Tuple[str, ...]  # what torchvision's download writes: a raw folder holding some is not downloaded over
    labels_from: int = 0  # the first label in the files (EMNIST letters: 1), shifted to 0
    transposed: bool = False  # EMNIST: each image is stored column by column
    label_columns: int = 0  # QMNIST: 8 columns of int32, the first the class; 0: one byte a label
    test_rows: Optional[Tuple[int, Optional[int]]] = None  # QMNIST's dataset.test_part: the test rows read
    download: Tuple[Dict[str, object], ...] = ({"train": True},)  # torchvision constructor calls that fetch it all

    @property
    def needed(self) -> Tuple[str, ...]:
        return (*self.files["train"], *self.files["test"])


def _mnist_layout(folder: str) -> Layout:
    files = {"train": IDX_FILES[:2], "test": IDX_FILES[2:]}
    return Layout(name=folder, folder=folder, files=files, replaced=IDX_FILES)


def _emnist_files(split: str) -> Dict[str, Tuple[str, str]]:
    return {
        part: (f"emnist-{split}-{part}-images-idx3-ubyte", f"emnist-{split}-{part}-labels-idx1-ubyte")
        for part in ("train", "test")
    }


def _emnist_layout(split: str) -> Layout:
    # torchvision downloads NIST's gzip.zip and unpacks every split's files into raw/
    every = tuple(name for s in EMNIST_SPLITS for part in _emnist_files(s).values() for name in part)
    return Layout(
        name=f"EMNIST {split}",
        folder="EMNIST",
        files=_emnist_files(split),
        replaced=every,
        labels_from=1 if split == "letters" else 0,
        transposed=True,
        download=({"split": split, "train": True},),
    )


def _qmnist_layout(test_part: str) -> Layout:
    files = {part: (f"qmnist-{part}-images-idx3-ubyte", f"qmnist-{part}-labels-idx2-int") for part in ("train", "test")}
    rows = {"all": (0, None), "test10k": (0, QMNIST_TEST10K), "test50k": (QMNIST_TEST10K, None)}[test_part]
    return Layout(
        name="QMNIST",
        folder="QMNIST",
        files=files,
        replaced=(*files["train"], *files["test"]),
        label_columns=8,
        test_rows=rows,
        download=({"what": "train"}, {"what": "test"}),  # torchvision fetches only the part asked for
    )


def layout(dataset) -> Layout:
    """The layout of the torchvision set `dataset` (a run's dataset config)."""
    if dataset.name == "emnist":
        return _emnist_layout(dataset.split)
    if dataset.name == "qmnist":
        return _qmnist_layout(dataset.test_part)
    return _mnist_layout(dataset.folder)


def _missing_files(raw: Path, names) -> List[str]:
    """The IDX files of `names` that `raw` holds in neither form, gzipped or not."""
    return [n for n in names if not (raw / n).is_file() and not (raw / f"{n}.gz").is_file()]


def _missing_message(root: Path, lay: Layout) -> str:
    forms = "gzipped or not" + ("; NIST's gzip.zip holds every split's files" if lay.folder == "EMNIST" else "")
    return (
        f"No {lay.name} data in {root / lay.folder / 'raw'}: put {', '.join(lay.needed)} there ({forms}), "
        f"or point data.root / MNIST_DATA_ROOT at a folder that holds {lay.folder}/raw/."
    )


def _refuse_partial(raw: Path, lay: Layout) -> None:
    """Raises UserError when `raw` holds some of the files torchvision's download would write but not all this
    set needs: the download replaces every file whose checksum is not the official one (EMNIST: every split's),
    so the user's own files would be lost without a word."""
    if len(_missing_files(raw, lay.replaced)) == len(lay.replaced):
        return
    missing = _missing_files(raw, lay.needed)
    every = "all four" if lay.replaced == lay.needed else "them all"
    raise UserError(
        f"{raw} holds some of the IDX files but not {', '.join(missing)}; put the missing ones there "
        f"(downloading would replace the files you have), or empty the folder to download {every}."
    )


def _download(root: Path, lay: Layout) -> None:
    """Fetch the missing files with torchvision, which makes <root>/<folder>/raw/ and unpacks the .gz
    files there. A failed download removes the folders it made: nothing is left behind."""
    from torchvision import datasets  # only here: reading needs no torchvision

    made = next((p for p in (root, root / lay.folder, root / lay.folder / "raw") if not p.exists()), None)
    try:
        for arguments in lay.download:
            getattr(datasets, lay.folder)(str(root), download=True, **arguments)
    except Exception:  # torchvision raises RuntimeError/URLError/OSError when offline
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise UserError(_missing_message(root, lay) + " Downloading failed.") from None


def _read(root: str, lay: Layout, part: str, download: bool, classes: int) -> Split:
    """The `part` of the set `lay` under `root` as CPU tensors: images upright, labels 0..classes-1."""
    root_path = Path(root).expanduser()
    raw = root_path / lay.folder / "raw"
    if _missing_files(raw, lay.needed):
        if not download:
            raise UserError(_missing_message(root_path, lay))
        _refuse_partial(raw, lay)
        _download(root_path, lay)
    images_name, labels_name = lay.files[part]
    images_file, images = read_idx(raw, images_name, (0, IMAGE_SIZE, IMAGE_SIZE))
    if lay.label_columns:
        labels_file, table = read_idx(raw, labels_name, (0, lay.label_columns), dtype=torch.int32)
        labels = table[:, 0]
    else:
        labels_file, labels = read_idx(raw, labels_name, (0,))
    if len(images) != len(labels):
        raise UserError(
            f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels; "
            "replace them with copies that match."
        )
    labels = labels.long()
    low, high = lay.labels_from, lay.labels_from + classes - 1
    largest, smallest = int(labels.max()), int(labels.min())
    if largest > high or smallest < low:
        raise UserError(
            f"{labels_file} holds label {largest if largest > high else smallest}, but {lay.name} has {classes} classes ({low}–{high}); {REPLACE}"
        )
    if lay.transposed:
        images = images.transpose(1, 2).contiguous()  # upright, as MNIST's
    if part == "test" and lay.test_rows is not None:
        start, stop = lay.test_rows
        if start >= len(images):
            raise UserError(
                f"{images_file} holds {len(images)} test images, none past the first {start:,} that "
                "dataset.test_part=test50k reads; use dataset.test_part=all or test10k, or the full file."
            )
        images, labels = images[start:stop], labels[start:stop]
    return Split(images, labels - lay.labels_from)


def load_dataset(root: str, folder: str, train: bool, download: bool, classes: int) -> Split:
    """Return the training or test set of `folder` (MNIST, FashionMNIST or KMNIST: MNIST's four file names)
    under `root` as CPU tensors, after checking its IDX files (labels must be below `classes`); with
    `download`, fetch missing files first."""
    return _read(root, _mnist_layout(folder), "train" if train else "test", download, classes)


def class_names(dataset) -> List[str]:
    """The class names of the torchvision set `dataset` (a run's dataset config), in label order: its
    `classes`, or for EMNIST with classes null, its split's characters as EMNIST's mapping names them."""
    if dataset.name != "emnist":
        return list(dataset.classes)
    split = EMNIST_CLASSES[dataset.split]
    if dataset.classes is None:
        return list(split)
    if len(dataset.classes) != len(split):
        raise UserError(
            f"dataset.classes names {len(dataset.classes)} classes but EMNIST {dataset.split} has {len(split)}; "
            "give one name per class, or null for EMNIST's own."
        )
    return list(dataset.classes)


def load_set(dataset, root: str, part: str, download: bool) -> Split:
    """The `part` ("train" or "test") of the torchvision set `dataset` (a run's dataset config) under `root`,
    as CPU tensors with labels 0..classes-1 and images upright; with `download`, missing files are fetched first
    (QMNIST's test part: the rows dataset.test_part names)."""
    return _read(root, layout(dataset), part, download, len(class_names(dataset)))
