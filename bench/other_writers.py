"""Proxies for digits from other hands: MNIST images rotated, sheared, scaled, thickened, thinned or
elastically deformed, and how trained runs (or ensembles) do on each.

Choose on the proxies built from the validation split (--split val: the runs' own held-out images);
report on those built from the test split. Each proxy transforms every image once, with a fixed seed,
so runs are compared on the same images.

    python bench/other_writers.py --split val outputs/multirun/<date>/<time>/0 outputs/multirun/<date>/<time>/1
    python bench/other_writers.py --split test --ensemble outputs/multirun/<date>/<time>/0,outputs/multirun/<date>/<time>/1

`--drawn DIR` adds a column for a folder of drawings `DIR/<class>/*.png` (bench/drawn_digits.py writes one with
the serve page's own pen), each prepared as `mnist serve` and `mnist predict` prepare a file for that run.
"""

from __future__ import annotations

import argparse
import math
import platform
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mnist_cli.datasets.images import prepare
from mnist_cli.inference import ensembles
from mnist_cli.inference.predictions import load_split, predict_logits


def _affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(matrices, (len(images), 1, 28, 28), align_corners=False)
    moved = F.grid_sample(images.unsqueeze(1).float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved.squeeze(1).round().clamp(0, 255).to(torch.uint8)


def _signs(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1


def rotated(degrees: float) -> Callable:
    def make(images, generator):
        angle = _signs(len(images), generator) * math.radians(degrees)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros(len(images))
        return _affine(images, torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1))

    return make


def sheared(factor: float) -> Callable:
    def make(images, generator):
        s, one, zero = _signs(len(images), generator) * factor, torch.ones(len(images)), torch.zeros(len(images))
        return _affine(images, torch.stack([torch.stack([one, -s, zero], 1), torch.stack([zero, one, zero], 1)], 1))

    return make


def scaled(zoom: float) -> Callable:
    def make(images, generator):
        inverse, zero = torch.full((len(images),), 1 / zoom), torch.zeros(len(images))
        return _affine(
            images, torch.stack([torch.stack([inverse, zero, zero], 1), torch.stack([zero, inverse, zero], 1)], 1)
        )

    return make


def stroke(thicker: bool) -> Callable:
    def make(images, generator):
        x = images.unsqueeze(1).float()
        out = F.max_pool2d(x, 3, stride=1, padding=1) if thicker else -F.max_pool2d(-x, 3, stride=1, padding=1)
        return out.squeeze(1).to(torch.uint8)

    return make


def elastic(alpha: float = 34.0, sigma: float = 4.0) -> Callable:
    """Simard et al.'s elastic distortion: a random displacement field smoothed by a Gaussian of `sigma`
    pixels and scaled by `alpha` pixels."""

    def make(images, generator):
        n = len(images)
        field = torch.rand(n, 2, 28, 28, generator=generator) * 2 - 1
        radius = int(3 * sigma)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        field = F.conv2d(field.reshape(-1, 1, 28, 28), kernel.view(1, 1, 1, -1), padding=(0, radius))
        field = F.conv2d(field, kernel.view(1, 1, -1, 1), padding=(radius, 0)).reshape(n, 2, 28, 28)
        base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), (n, 1, 28, 28), align_corners=False)
        grid = base + field.permute(0, 2, 3, 1) * alpha * (2 / 28)
        moved = F.grid_sample(
            images.unsqueeze(1).float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return moved.squeeze(1).round().clamp(0, 255).to(torch.uint8)

    return make


PROXIES: Dict[str, Callable] = {
    "rotated ±25°": rotated(25),
    "sheared ±0.4": sheared(0.4),
    "smaller ×0.7": scaled(0.7),
    "larger ×1.25": scaled(1.25),
    "thicker (3x3 dilation)": stroke(True),
    "thinner (3x3 erosion)": stroke(False),
    "elastic (α 34, σ 4)": elastic(),
}


def drawn(folder: Path, classes: List[str], how: str):
    """The drawings in `folder`/<class>/*.png as (uint8 images, labels), prepared by recipe `how`."""
    strays = sorted({path.parent.name for path in folder.glob("*/*.png")} - set(classes))
    if strays:
        raise SystemExit(f"{folder}: folders {strays} are not classes of the run ({classes})")
    files = sorted((path, classes.index(path.parent.name)) for path in folder.glob("*/*.png"))
    if not files:
        raise SystemExit(f"{folder} holds no drawings <class>/*.png; bench/drawn_digits.py writes them.")
    images = torch.from_numpy(np.stack([prepare(path, how) for path, _ in files]))
    return images, torch.tensor([label for _, label in files])


def accuracies(runs: List[str], split: str, drawings: Optional[Path] = None) -> Dict[str, float]:
    cfg = ensembles.config_for(runs, split)
    device = torch.device("cpu")
    trained = ensembles.load_model(cfg, device)
    data = load_split(trained, cfg, device)

    def accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
        return (predict_logits(trained, images, 1000).argmax(1) == labels).double().mean().item()

    result = {split: accuracy(data.images, data.labels)}
    for name, make in PROXIES.items():
        images = make(data.images, torch.Generator().manual_seed(0))
        result[name] = accuracy(images, data.labels)
    if drawings is not None:
        images, labels = drawn(drawings, list(trained.config.dataset.classes), trained.config.dataset.prepare)
        result["drawn (page's pen)"] = accuracy(images, labels)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders; with --ensemble, comma-separated groups")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--ensemble", action="store_true", help="each argument is A,B,C: one ensemble")
    parser.add_argument("--drawn", type=Path, help="a folder of drawings DIR/<class>/*.png (bench/drawn_digits.py)")
    args = parser.parse_args()
    rows = {
        name: accuracies(name.split(",") if args.ensemble else [name], args.split, args.drawn) for name in args.runs
    }
    transformed = [args.split, *PROXIES]  # the drawn column, near its ceiling, stays out of the mean
    columns = list(next(iter(rows.values())))
    print(
        "| run | "
        + " | ".join(transformed)
        + f" | mean of the {len(PROXIES)} | "
        + " | ".join(columns[len(transformed) :])
        + " |"
    )
    print("|---|" + "---:|" * len(columns) + "---:|")
    for name, result in rows.items():
        mean = sum(result[k] for k in PROXIES) / len(PROXIES)
        cells = (
            [f"{result[k]:.2%}" for k in transformed]
            + [f"{mean:.2%}"]
            + [f"{result[k]:.2%}" for k in columns[len(transformed) :]]
        )
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        f"\n{platform.machine()}, torch {torch.__version__}, {date.today()}; proxies transformed from the "
        f"{args.split} split with seed 0" + (f"; drawn: {args.drawn}" if args.drawn else "")
    )


if __name__ == "__main__":
    main()
