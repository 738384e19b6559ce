"""An MNIST-family set written out as a folder of PNG files, for `dataset=folder`'s parity and decoding time.

`write` saves every image of <data-root>/<folder>/raw as <out>/{train,val,test}/<class>/<index>.png, where
val/ holds exactly the images `dataset=mnist` (or fashion_mnist) holds out for validation with the default
data.val_size and data.split_seed, and <index> is the image's position in its IDX file. A folder run with
`dataset.prepare=resize` then trains on the very pixels, and validates on the very images, the IDX run does.

`decode` times reading the folder as `mnist train` does: cold (no cache) and again with the cache.
`compare` checks that the folder run's splits hold the very images and labels of the IDX run's splits
(as multisets: the folder's are in class order), and compares the two normalisations.

    python bench/image_folder.py write --data-root ../shared/data --dataset mnist --out /tmp/mnist-png
    python bench/image_folder.py decode --path /tmp/mnist-png
    python bench/image_folder.py compare --path /tmp/mnist-png --data-root ../shared/data --dataset mnist
    mnist train -m dataset=folder dataset.path=/tmp/mnist-png dataset.prepare=resize seed=0,1,2
    mnist train -m dataset=mnist seed=0,1,2
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from PIL import Image

from mnist_cli.config.compose import compose
from mnist_cli.datasets import decoding, image_folder, torchvision_sets
from mnist_cli.datasets.split import split_indices
from mnist_cli.training.data import validation_size


def write(data_root: str, dataset: str, out: Path) -> None:
    cfg = compose("train", [f"dataset={dataset}", f"data.root={data_root}", "data.download=false"])
    classes = [name.replace("/", "-") for name in torchvision_sets.class_names(cfg.dataset)]  # T-shirt/top
    train = torchvision_sets.load_set(cfg.dataset, data_root, "train", False)
    test = torchvision_sets.load_set(cfg.dataset, data_root, "test", False)
    val_idx, _ = split_indices(len(train), validation_size(cfg, len(train)), cfg.data.split_seed)
    held_out = set(val_idx.tolist())
    started = time.perf_counter()
    for part, split in (("train", train), ("test", test)):
        for index, (image, label) in enumerate(zip(split.images.numpy(), split.labels.tolist())):
            folder = out / ("val" if part == "train" and index in held_out else part) / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:05d}.png")
    count = len(train) + len(test)
    print(f"wrote {count:,} PNG files to {out} in {time.perf_counter() - started:.0f} s")


def decode(path: Path) -> None:
    cfg = compose("train", ["dataset=folder", f"dataset.path={path}", "dataset.prepare=resize"])
    cache = Path(tempfile.mkdtemp(prefix="mnist-cache-"))
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        for what in ("cold, no cache", "second start, cached"):
            started = time.perf_counter()
            data = image_folder.load(cfg)
            seconds = time.perf_counter() - started
            print(f"| {what} | {len(data.reasons):,} | {seconds:.1f} s |")
    finally:
        shutil.rmtree(cache)
    print(
        f"\n{platform.processor() or platform.machine()}, {decoding.cores()} cores, "
        f"{decoding.cores()} decoding processes, {date.today()}"
    )


def _rows(split, classes) -> list:
    """A split's (class name, image bytes) pairs, sorted: equal for two splits that hold the same images (the
    folder numbers its classes in name order, the IDX set in its own)."""
    names = [name.replace("/", "-") for name in classes]  # as write() names the folders
    return sorted(zip((names[i] for i in split.labels.tolist()), (bytes(image.numpy()) for image in split.images)))


def compare(path: Path, data_root: str, dataset: str) -> None:
    import torch

    from mnist_cli.training.data import load_train_data

    idx_cfg = compose("train", [f"dataset={dataset}", f"data.root={data_root}", "data.download=false"])
    folder_cfg = compose("train", ["dataset=folder", f"dataset.path={path}", "dataset.prepare=resize"])
    idx = load_train_data(idx_cfg, torch.device("cpu"))
    folder = load_train_data(folder_cfg, torch.device("cpu"))
    for name in ("train", "val"):
        same = _rows(getattr(idx, name), idx.classes) == _rows(getattr(folder, name), folder.classes)
        print(
            f"{name}: {len(getattr(idx, name)):,} IDX images, {len(getattr(folder, name)):,} folder images, "
            f"the same images and labels: {same}"
        )
    print(
        f"normalisation: IDX config mean {idx.mean:.4f} std {idx.std:.4f}; folder measured mean {folder.mean:.4f} "
        f"std {folder.std:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    writing = commands.add_parser("write")
    writing.add_argument("--data-root", required=True)
    writing.add_argument("--dataset", default="mnist")
    writing.add_argument("--out", type=Path, required=True)
    timing = commands.add_parser("decode")
    timing.add_argument("--path", type=Path, required=True)
    checking = commands.add_parser("compare")
    checking.add_argument("--path", type=Path, required=True)
    checking.add_argument("--data-root", required=True)
    checking.add_argument("--dataset", default="mnist")
    args = parser.parse_args()
    if args.command == "write":
        write(args.data_root, args.dataset, args.out)
    elif args.command == "compare":
        compare(args.path, args.data_root, args.dataset)
    else:
        decode(args.path)


if __name__ == "__main__":
    main()
