"""A user's own images as a dataset: a folder with one subfolder per class (`dataset=folder dataset.path=DIR`).

Two layouts: DIR/train/<class>/* with optional DIR/val/ and DIR/test/, or DIR/<class>/* alone, split into
train/val/test per class by a seeded draw (dataset.val_fraction, dataset.test_fraction, data.split_seed).
Classes are the folder names, sorted. Files in a class folder (its subfolders too) are the class's images;
hidden files and Thumbs.db/desktop.ini are ignored; a file that does not prepare into an image is skipped,
listed in the run's dataset_files.csv, and the folder is refused when more than dataset.max_bad_fraction of
its files are such. The images are prepared as `mnist predict` prepares files (images.py), by decoding.py.
"""

from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from mnist_cli.datasets import decoding
from mnist_cli.datasets.split import Split
from mnist_cli.errors import UserError
from mnist_cli.runs.atomic import printable

PARTS = ("train", "val", "test")
# what file managers and archivers leave behind: never images, never classes
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r", "__macosx", "@eadir"}
FILE_COLUMNS = ("split", "class", "file", "bytes", "mtime_ns", "content", "skipped")  # dataset_files.csv


@dataclass
class Listing:
    """Every image file of the folder, in order (part, class, path), with what identifies its content."""

    root: Path
    classes: List[str]  # the class folders' names, sorted (as the file system spells them)
    folders: List[str]  # the part folders found: ["train", "val"?, "test"?], or [] for DIR/<class>/*
    files: List[str] = field(default_factory=list)  # relative to root
    labels: List[int] = field(default_factory=list)
    parts: List[str] = field(default_factory=list)  # the part folder a file is in; "" for DIR/<class>/*
    sizes: List[int] = field(default_factory=list)
    mtimes: List[int] = field(default_factory=list)  # st_mtime_ns
    ctimes: List[int] = field(default_factory=list)  # st_ctime_ns: changes when a file is replaced, even by cp -p
    folders_seen: Dict[Tuple[int, int], str] = field(default_factory=dict)  # (device, inode) -> the path read
    files_seen: set = field(default_factory=set)  # (device, inode) of each file read: a million fit in ~100 MB


@dataclass
class FolderData:
    """The decoded folder: a Split per part (test may be empty), the class names, and each file's part and
    reason for being skipped ("" for an image), from which dataset_files.csv is written."""

    splits: Dict[str, Split]
    classes: List[str]
    listing: Listing
    part_of: List[str]  # per file: train | val | test, "" for a skipped file (and one data.limit left out)
    reasons: List[str]
    digests: List[str]  # BLAKE2b of each file's bytes: what resume and eval compare with the run's list

    @property
    def folders(self) -> List[str]:
        return self.listing.folders

    @property
    def skipped(self) -> int:
        return sum(1 for reason in self.reasons if reason)

    def rows(self) -> Iterator[Dict]:
        """FILE_COLUMNS for each file, in order: what dataset_files.csv holds (names written readably)."""
        listing = self.listing
        for i, name in enumerate(listing.files):
            yield {
                "split": self.part_of[i],
                "class": printable(listing.classes[listing.labels[i]]),
                "file": printable(name),
                "bytes": listing.sizes[i],
                "mtime_ns": listing.mtimes[i],
                "content": self.digests[i],
                "skipped": self.reasons[i],
            }


def _visible(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in IGNORED_NAMES


def _subfolders(folder: Path) -> List[str]:
    """The visible subfolders of `folder` (links to folders included), sorted."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if _visible(e.name) and e.is_dir())
    except OSError as error:
        raise UserError(f"Could not read the folder {printable(str(folder))} ({error.strerror or error}).") from None


def _walk(listing: Listing, folder: str, part: str, label: int, above: Tuple[Tuple[int, int], ...]) -> None:
    """Add every visible file below `folder` to `listing`; `above`: the (device, inode) of the folders
    this one is inside, so a link back up is a loop and refused rather than followed forever.
    Plain strings, not Paths: a folder of a million files is walked in seconds."""
    try:
        here = os.stat(folder)
        with os.scandir(folder) as scanned:
            entries = sorted((e for e in scanned if _visible(e.name)), key=lambda e: e.name)
    except OSError as error:
        raise UserError(f"Could not read the folder {printable(folder)} ({error.strerror or error}).") from None
    inside = (*above, (here.st_dev, here.st_ino))
    _once(listing, here, folder, "folder")
    skip = len(str(listing.root)) + 1
    for entry in entries:
        try:
            info = entry.stat()  # follows links; a broken link raises and is a skipped file below
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            if (info.st_dev, info.st_ino) in inside:
                raise UserError(
                    f"{printable(entry.path)} is a link to a folder it is inside (a loop); remove the link."
                )
            _walk(listing, entry.path, part, label, inside)
            continue
        if info is not None and not stat.S_ISREG(info.st_mode):
            continue  # a FIFO, socket or device is no image file: never opened (a FIFO would block)
        if info is not None:
            _once(listing, info, entry.path, "file")
        listing.files.append(entry.path[skip:])
        listing.labels.append(label)
        listing.parts.append(part)
        listing.sizes.append(info.st_size if info else -1)
        listing.mtimes.append(info.st_mtime_ns if info else -1)
        listing.ctimes.append(info.st_ctime_ns if info else -1)


def _once(listing: Listing, info: os.stat_result, path: str, what: str) -> None:
    """Refuse a folder or file reached a second time (through a link, or a hard link): read twice, one
    image would be in two classes, or in the training and the test split."""
    key = (info.st_dev, info.st_ino)
    if what == "folder":
        first = listing.folders_seen.setdefault(key, path)
        again = f"the folder {printable(first)}" if first != path else None
    else:
        again = "a file read already through another path" if key in listing.files_seen else None
        listing.files_seen.add(key)
    if again:
        raise UserError(
            f"{printable(path)} is {again} (a link); an image read twice could be in two classes or in both "
            "training and test: remove the link."
        )


def scan(root: Path) -> Listing:
    """Every image file under `root` in one of the two layouts; raises UserError for a folder that is not
    a dataset (missing, empty, one class, a class folder without files, parts with different classes)."""
    shown = printable(str(root))
    if not root.exists():
        raise UserError(f"dataset.path {shown} does not exist.")
    if not root.is_dir():
        raise UserError(f"dataset.path {shown} is a file; give the folder that holds one folder per class.")
    top = _subfolders(root)
    folders = [p for p in PARTS if p in top] if "train" in top else []
    if folders and set(top) - set(PARTS):
        raise UserError(
            f"{shown} holds train/ and also {', '.join(printable(t) + '/' for t in sorted(set(top) - set(PARTS)))}; "
            "beside train/ only val/ and test/ are read: move or rename the others (a class named train needs "
            f"the layout {shown}/train/<class>/)."
        )
    if not folders and {"val", "test"} & set(top):
        part = "val" if "val" in top else "test"
        raise UserError(
            f"{shown} holds {part}/ but no train/; put the training images in {shown}/train/<class>/, "
            f"or rename {part}/ if it is a class."
        )
    class_sets = {p: _subfolders(root / p) for p in folders} if folders else {"": top}
    classes = class_sets[folders[0] if folders else ""]
    where = f"{shown}/train" if folders else shown
    if not classes:
        raise UserError(
            f"{where} holds no class folders; put each class's images in a folder named for it: "
            f"{shown}/<class>/*.png (or {shown}/train/<class>/*.png with val/ and test/ beside it)."
        )
    if len(classes) == 1:
        raise UserError(
            f"{where} holds one class folder ({printable(classes[0])}); a classifier needs at least two classes."
        )
    for part, found in class_sets.items():
        if found != classes:
            extra = sorted(set(found) - set(classes))
            lacking = sorted(set(classes) - set(found))
            what = "; ".join(
                ([f"has {', '.join(map(printable, extra))} that train/ lacks"] if extra else [])
                + ([f"lacks {', '.join(map(printable, lacking))}"] if lacking else [])
            )
            raise UserError(f"{shown}/{part}/ and {shown}/train/ hold different classes: {part}/ {what}.")
    listing = Listing(root, classes, folders)
    for part in folders or [""]:
        for label, name in enumerate(classes):
            before = len(listing.files)
            _walk(
                listing, os.path.join(str(root), part, name) if part else os.path.join(str(root), name), part, label, ()
            )
            if len(listing.files) == before:
                folder = f"{shown}/{part}/{name}" if part else f"{shown}/{name}"
                raise UserError(f"{printable(folder)} holds no image files; add some or remove the folder.")
    return listing


def _carve(labels: np.ndarray, pool: np.ndarray, fractions: Dict[str, float], seed: int) -> Dict[str, np.ndarray]:
    """Split the file numbers `pool` per class, seeded: round(n * fraction) of each class for each
    name in `fractions` (in order), the rest as "train"."""
    taken: Dict[str, List[np.ndarray]] = {name: [] for name in (*fractions, "train")}
    for label in np.unique(labels[pool]):
        members = pool[labels[pool] == label]
        members = members[np.random.default_rng([seed, int(label)]).permutation(len(members))]
        start = 0
        for name, fraction in fractions.items():
            count = min(round(len(members) * fraction), len(members) - 1 - start)  # one stays for training
            taken[name].append(members[start : start + max(count, 0)])
            start += max(count, 0)
        taken["train"].append(members[start:])
    return {name: np.sort(np.concatenate(parts)) if parts else np.zeros(0, int) for name, parts in taken.items()}


def _assign(listing: Listing, good: np.ndarray, cfg) -> Dict[str, np.ndarray]:
    """The file numbers of each part (train, val, test) among the `good` ones, as the layout and config say."""
    labels = np.asarray(listing.labels)
    parts = np.asarray(listing.parts)
    ds = cfg.dataset
    if listing.folders:
        given = {p: good[parts[good] == p] for p in PARTS}
        carved = {} if "val" in listing.folders else {"val": ds.val_fraction}
        assigned = _carve(labels, given["train"], carved, cfg.data.split_seed)
        assigned.setdefault("val", given["val"])
        assigned["test"] = given["test"]
    else:
        assigned = _carve(labels, good, {"test": ds.test_fraction, "val": ds.val_fraction}, cfg.data.split_seed)
    if cfg.data.limit is not None and cfg.data.limit < len(assigned["train"]):
        order = np.random.default_rng([cfg.data.split_seed]).permutation(len(assigned["train"]))
        assigned["train"] = np.sort(assigned["train"][order[: cfg.data.limit]])
    return assigned


def load(cfg) -> FolderData:
    """The folder cfg.dataset.path as decoded splits (train, val, test) on the CPU; raises UserError for a
    folder that is not a dataset or holds too many files that are not images."""
    ds = cfg.dataset
    listing = scan(Path(ds.path))
    decoded = decoding.decoded(listing, ds.prepare, ds.cache, ds.workers)
    images, reasons = decoded.images, decoded.reasons
    bad = np.asarray([bool(r) for r in reasons], dtype=bool)
    total = len(listing.files)
    if bad.sum() > ds.max_bad_fraction * total:
        examples = "; ".join(f"{printable(listing.files[i])}: {reasons[i]}" for i in np.flatnonzero(bad)[:3])
        raise UserError(
            f"{int(bad.sum())} of the {total} files in {printable(ds.path)} are not readable images, more than "
            f"dataset.max_bad_fraction={ds.max_bad_fraction:g} ({examples}); remove them or raise the fraction."
        )
    good = np.flatnonzero(~bad)
    labels = np.asarray(listing.labels)
    for label in set(range(len(listing.classes))) - set(labels[good].tolist()):
        raise UserError(f"class {printable(listing.classes[label])} of {printable(ds.path)} has no readable images.")
    assigned = _assign(listing, good, cfg)
    part_of = [""] * total
    for name, numbers in assigned.items():
        for i in numbers.tolist():
            part_of[i] = name
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    splits = {name: Split(images_t[numbers], labels_t[numbers]) for name, numbers in assigned.items()}
    return FolderData(splits, [printable(c) for c in listing.classes], listing, part_of, reasons, decoded.digests)


def changes(data: FolderData, stored: Iterable[Dict]) -> Optional[str]:
    """What changed between the files a run trained on (`stored`: the rows of its dataset_files.csv) and the
    folder now, by content (a file touched or copied with new dates is the same file), as one clause; None
    when nothing did."""
    now = {printable(name): digest for name, digest in zip(data.listing.files, data.digests)}
    removed, modified, seen = [], [], set()
    for row in stored:
        name = row["file"]
        seen.add(name)
        if name not in now:
            removed.append(name)
        elif now[name] != row["content"]:
            modified.append(name)
    added = [name for name in now if name not in seen]
    said = [
        f"{len(names)} {what} ({', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''})"
        for names, what in ((added, "added"), (removed, "removed"), (modified, "changed"))
        if names
    ]
    return "; ".join(said) or None


def check_unchanged(data: FolderData, stored: Path, path: str, doing: str) -> None:
    """Raise UserError when the folder's files differ from those listed in `stored` (a run's
    dataset_files.csv), naming what changed; `doing` says what cannot go on ("resume", "evaluate")."""
    try:
        with open(stored, newline="", encoding="utf-8") as file:
            changed = changes(data, csv.DictReader(file))
    except FileNotFoundError:
        raise UserError(
            f"{stored} is missing: the run's list of its files; without it cannot {doing} safely."
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as error:
        raise UserError(f"Could not read {stored} ({error}); without it cannot {doing} safely.") from None
    if changed:
        raise UserError(
            f"{printable(path)} changed since the run trained on it: {changed}; cannot {doing} on other images "
            "(restore the files, or train a new run)."
        )
