"""Fixtures and helpers shared by the test modules: small synthetic IDX datasets in torchvision's raw layout,
a way to run `mnist`, and a checkpoint payload that runs code when unpickled."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from forked_mnist import ForkedCommand, run_forked, start_server

IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
TRAIN_SIZE = 600
TEST_SIZE = 200


def synthetic_glyphs(n: int, seed: int, glyphs: str) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 images of glyphs[label] drawn in a random size, angle and weight, MNIST style:
    white ink on black, scaled into a 20x20 box, centre of mass in the middle. The class is in the shape, so it
    survives cropping and re-centring (what `mnist predict` does to image files)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(glyphs), n).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        font = ImageFont.load_default(size=int(rng.integers(28, 44)))
        canvas = Image.new("L", (64, 64))
        ImageDraw.Draw(canvas).text(
            (12, 4), glyphs[label], fill=255, font=font, stroke_width=int(rng.integers(0, 3)), stroke_fill=255
        )
        canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
        glyph = canvas.crop(canvas.getbbox())
        scale = 20 / max(glyph.size)
        glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS)
        ink = np.asarray(glyph, dtype=np.float64)
        ys, xs = np.indices(ink.shape)
        top = int(np.clip(round(14 - (ys * ink).sum() / ink.sum()), 0, 28 - glyph.height))
        left = int(np.clip(round(14 - (xs * ink).sum() / ink.sum()), 0, 28 - glyph.width))
        image = Image.new("L", (28, 28))
        image.paste(glyph, (left, top))  # centre of mass at the centre, as MNIST did
        images[i] = np.asarray(image)
    return images, labels


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    magic = 0x0800 | array.ndim  # unsigned byte data, ndim dimensions
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def pytest_sessionstart(session):
    """Start the fork server for `run_mnist` now: its imports overlap with the collection's. Under
    pytest-xdist each worker has its own; the controlling process runs no test and needs none."""
    if getattr(session.config.option, "numprocesses", None) and not hasattr(session.config, "workerinput"):
        return
    start_server({"OMP_NUM_THREADS": "2"})


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding MNIST (gzipped files) and FashionMNIST (uncompressed files)."""
    root = tmp_path_factory.mktemp("data")
    for folder, compress, seed, glyphs in (("MNIST", True, 1, "0123456789"), ("FashionMNIST", False, 2, "TPDCSHBAKN")):
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        for split, n in (("train", TRAIN_SIZE), ("test", TEST_SIZE)):
            images, labels = synthetic_glyphs(n, seed if split == "train" else seed + 100, glyphs)
            write_idx(raw / IDX_NAMES[(split, "images")], images, compress)
            write_idx(raw / IDX_NAMES[(split, "labels")], labels, compress)
    return root


@pytest.fixture(scope="session")
def cli_env(data_root, tmp_path_factory) -> dict:
    """Environment for `mnist` subprocesses: synthetic data, a private cache, no terminal, 2 threads."""
    env = dict(os.environ)
    env.update(
        MNIST_DATA_ROOT=str(data_root),
        XDG_CACHE_HOME=str(tmp_path_factory.mktemp("cache")),
        OMP_NUM_THREADS="2",
        COLUMNS="200",
    )
    env.pop("HYDRA_FULL_ERROR", None)
    return env


class Payload:
    """Unpickling this runs code: it touches a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


MNIST_COMMAND = str(Path(sys.executable).with_name("mnist"))
QUICK = ["data.val_size=100", "epochs=2", "batch_size=50", "device=cpu"]


def run_mnist(*args: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `mnist *args` in its own process, forked from one that has imported torch (forked_mnist.py)."""
    return run_forked(MNIST_COMMAND, args, cwd, env, timeout)


def start_mnist(*args: str, cwd: Path, env: dict, stdout: Path | None = None) -> ForkedCommand:
    """Start `mnist *args` in its own process (as run_mnist does) and return at once: for signals, kill -9, races,
    pipes (stdout: a FIFO to write to)."""
    return ForkedCommand(MNIST_COMMAND, args, cwd, env, stdout=stdout)


# The files that take longest, longest first: pytest-xdist hands whole files to its two workers in
# collection order, and starting with the long ones keeps one worker from finishing a minute early.
LONGEST_FILES = ("test_readme.py", "test_optuna.py", "test_run_folders.py", "test_reliability.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def bar_png(path: Path, side: int) -> Path:
    """A side x side 1-bit PNG: black, a white upright bar in the middle. Written row by row: a 20000x20000 one
    is 75 KB on disk and costs kilobytes to write (Pillow holds mode "1" at a byte a pixel: 400 MB)."""
    blank = bytearray((side + 7) // 8 + 1)  # filter byte 0, then the row's bits
    ink = bytearray(blank)
    ink[1 + int(side * 0.45) // 8 : 1 + int(side * 0.55) // 8] = b"\xff" * (
        int(side * 0.55) // 8 - int(side * 0.45) // 8
    )
    packer = zlib.compressobj()
    data = (
        b"".join(packer.compress(ink if 0.2 * side <= y < 0.8 * side else blank) for y in range(side)) + packer.flush()
    )

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


# --- the rest of the MNIST family in torchvision's raw layout (KMNIST, EMNIST, QMNIST) -------------------------

# What each EMNIST split's synthetic glyphs draw, label by label (its classes as EMNIST's mapping files name them;
# letters: one case drawn per class)
EMNIST_GLYPHS = {
    "byclass": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "bymerge": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt",
    "balanced": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt",
    "letters": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "digits": "0123456789",
    "mnist": "0123456789",
}


def write_idx_int(path: Path, array: np.ndarray, compress: bool) -> None:
    """An IDX file of big-endian 32-bit integers (magic 0x00000C0N), as QMNIST's labels-idx2-int files."""
    payload = (
        struct.pack(">I", 0x0C00 | array.ndim)
        + b"".join(struct.pack(">I", d) for d in array.shape)
        + array.astype(">i4").tobytes()
    )
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def qmnist_labels(classes: np.ndarray, first_index: int = 0) -> np.ndarray:
    """QMNIST's 8 columns for each class: class, HSF series, writer, digit of the writer, NIST class code,
    global NIST index, duplicate, unused."""
    table = np.zeros((len(classes), 8), dtype=np.int32)
    table[:, 0] = classes
    table[:, 1] = 4
    table[:, 2] = 2100 + np.arange(len(classes)) // 100
    table[:, 3] = np.arange(len(classes)) % 100
    table[:, 4] = 30 + classes.astype(np.int32)
    table[:, 5] = first_index + np.arange(len(classes))
    return table


def write_family(root: Path, train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE) -> dict:
    """KMNIST (gzipped), every EMNIST split (plain files, images transposed and letters' labels 1-26 as EMNIST
    stores them) and QMNIST (gzipped, 8-column int32 labels) under root, as torchvision's download lays them out.
    Returns what a loader should give: {(set, part): (upright uint8 images, labels 0..classes-1)}, set being
    "KMNIST", "QMNIST" or "EMNIST <split>"."""
    written = {}
    # KMNIST's hiragana are drawn as the initials of their readings (o ki su tsu na ha ma ya re wo): Pillow's
    # default font has no kana
    sets = [("KMNIST", "OKSTNHMYRW", 11)] + [
        (f"EMNIST {split}", glyphs, 20 + i) for i, (split, glyphs) in enumerate(EMNIST_GLYPHS.items())
    ]
    sets.append(("QMNIST", "0123456789", 30))
    for name, glyphs, seed in sets:
        folder = name.split()[0]
        raw = root / folder / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for part, n in (("train", train_size), ("test", test_size)):
            images, labels = synthetic_glyphs(n, seed if part == "train" else seed + 100, glyphs)
            written[(name, part)] = (images, labels)
            if folder == "KMNIST":
                write_idx(raw / IDX_NAMES[(part, "images")], images, compress=True)
                write_idx(raw / IDX_NAMES[(part, "labels")], labels, compress=True)
            elif folder == "EMNIST":
                split = name.split()[1]
                prefix = raw / f"emnist-{split}-{part}"
                write_idx(Path(f"{prefix}-images-idx3-ubyte"), images.transpose(0, 2, 1).copy(), compress=False)
                stored = labels + 1 if split == "letters" else labels
                write_idx(Path(f"{prefix}-labels-idx1-ubyte"), stored.astype(np.uint8), compress=False)
            else:
                write_idx(raw / f"qmnist-{part}-images-idx3-ubyte", images, compress=True)
                write_idx_int(raw / f"qmnist-{part}-labels-idx2-int", qmnist_labels(labels), compress=True)
    return written


@pytest.fixture(scope="session")
def family_data_root(data_root, tmp_path_factory) -> Path:
    """A data root holding data_root's MNIST and FashionMNIST and write_family's KMNIST, EMNIST and QMNIST."""
    import shutil

    root = tmp_path_factory.mktemp("family")
    for folder in ("MNIST", "FashionMNIST"):
        shutil.copytree(data_root / folder, root / folder)
    write_family(root)
    return root
