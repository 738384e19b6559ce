"""How `mnist predict` does on real test images saved as files a user might have.

Writes the first --count test images of the run's dataset as five kinds of file (the sample as a
PNG; inverted JPEG; coloured ink on light paper, RGB PNG; enlarged into a 200x300 white page;
off-centre in a 90x90 black BMP), runs the real `mnist predict` on each folder, and prints the
accuracy per kind as a Markdown table, beside `mnist eval`'s accuracy on the same images as tensors.

    python bench/predict_files.py --run outputs/train/latest --data-root ../shared/data --count 1000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnist_cli.datasets.torchvision_sets import load_dataset


def variants(image: np.ndarray) -> dict:
    """One 28x28 uint8 sample (white ink on black) as PIL images and their file suffix."""
    ink = image.astype(np.float32) / 255
    paper = np.stack([250 - 200 * ink, 245 - 215 * ink, 235 - 120 * ink], axis=-1).astype(np.uint8)
    large = Image.new("L", (200, 300), 255)
    large.paste(Image.fromarray(255 - image).resize((180, 180), Image.BICUBIC), (10, 60))
    off = Image.new("L", (90, 90), 0)
    off.paste(Image.fromarray(image), (55, 4))
    return {
        "png (as is)": (Image.fromarray(image), ".png"),
        "inverted jpeg": (Image.fromarray(255 - image), ".jpg"),
        "rgb ink on paper": (Image.fromarray(paper), ".png"),
        "large 200x300": (large, ".png"),
        "off-centre 90x90": (off, ".bmp"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a train run folder")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()

    checkpoint = torch.load(Path(args.run) / "checkpoints" / "best.pt", weights_only=True)
    dataset = checkpoint["config"]["dataset"]
    test = load_dataset(
        args.data_root, dataset["folder"], train=False, download=False, classes=len(checkpoint["classes"])
    )
    labels = [checkpoint["classes"][i] for i in test.labels[: args.count].tolist()]
    mnist = [sys.executable, "-m", "mnist_cli"]

    evaluated = subprocess.run(
        [*mnist, "eval", f"run={args.run}", f"data.root={args.data_root}", "format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [("tensors, whole test set (mnist eval)", json.loads(evaluated.stdout)["accuracy"])]
    with tempfile.TemporaryDirectory() as tmp:
        indices = ",".join(map(str, range(args.count)))
        sampled = subprocess.run(
            [
                *mnist,
                "predict",
                f"run={args.run}",
                f"indices=[{indices}]",
                f"data.root={args.data_root}",
                "format=json",
                f"outputs_dir={tmp}/out",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        predicted = [row["predicted"] for row in json.loads(sampled.stdout)["predictions"]]
        rows.append(
            (
                f"tensors, first {args.count} (mnist predict indices=)",
                float(np.mean([p == t for p, t in zip(predicted, labels)])),
            )
        )
        folders = {}
        for i in range(args.count):
            for kind, (picture, suffix) in variants(test.images[i].numpy()).items():
                folder = folders.setdefault(kind, Path(tmp) / f"kind{len(folders)}")
                folder.mkdir(exist_ok=True)
                picture.save(folder / f"{i:05d}{suffix}")
        for kind, folder in folders.items():
            result = subprocess.run(
                [*mnist, "predict", f"run={args.run}", f"inputs=[{folder}]", "format=json", f"outputs_dir={tmp}/out"],
                capture_output=True,
                text=True,
                check=True,
            )
            predicted = [row["predicted"] for row in json.loads(result.stdout)["predictions"]]
            rows.append((f"{kind}, first {args.count}", float(np.mean([p == t for p, t in zip(predicted, labels)]))))

    print(
        f"{dataset['name']} test, {checkpoint['config']['model']['name']} run {args.run}; "
        f"{platform.node()} {date.today()}; python bench/predict_files.py --run {args.run} --count {args.count}\n"
    )
    print("| input | accuracy |\n|---|---|")
    for name, accuracy in rows:
        print(f"| {name} | {accuracy:.2%} |")


if __name__ == "__main__":
    main()
