"""Seconds per epoch: the classic torchvision DataLoader pipeline vs `mnist train`'s loop.

In one process and one run, per model, on the same 55,000 training images and batch size:
- classic: torchvision's MNIST class with ToTensor + Normalize per sample, a shuffling
  DataLoader, the same model and optimizer settings with torch's default optimizer
  implementation, as the PyTorch MNIST example writes it;
- mnist-cli: `train_one_epoch` as `mnist train` runs it (uint8 tensors on the device, batches cut
  and normalised there, fused optimizer), in fp32 and with precision=bf16.
The three take turns, an epoch each, for four rounds; the median of rounds 2-4 (steady state,
after one-time set-up) is reported.
Also: time to 99% test accuracy with the speedrun preset, `mnist --help` / `mnist train --help`
start-up, and peak memory. Writes a Markdown table.

    python bench/speed.py --device cpu --data-root ../shared/data --out bench/results-cpu.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from mnist_cli.config.schema import register_configs
from mnist_cli.datasets.split import split_indices
from mnist_cli.datasets.torchvision_sets import IDX_FILES
from mnist_cli.runs.state import RunState
from mnist_cli.training.data import load_train_data, validation_size
from mnist_cli.training.interrupt import StopRequest
from mnist_cli.training.loop import Run, train_one_epoch
from mnist_cli.training.models import build_model
from mnist_cli.training.optim import build_optimizer

EPOCHS = 4  # the first is set-up; the median of the others is reported


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_config(model: str, args, *overrides: str):
    with initialize_config_module(config_module="mnist_cli.conf", version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                f"model={model}",
                f"batch_size={args.batch_size}",
                f"data.root={args.data_root}",
                f"device={args.device}",
                *overrides,
            ],
        )


def classic_trainer(cfg, device: torch.device) -> Callable[[int], None]:
    """Set up training the way the PyTorch example does; returns a function that runs one epoch."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((cfg.dataset.mean,), (cfg.dataset.std,))]
    )
    with tempfile.TemporaryDirectory() as unpacked:  # torchvision's class reads only unpacked files, into memory
        raw = Path(unpacked, "MNIST", "raw")
        raw.mkdir(parents=True)
        for name in IDX_FILES:
            source = Path(cfg.data.root, "MNIST", "raw", name)
            (raw / name).write_bytes(
                source.read_bytes() if source.is_file() else gzip.decompress(Path(f"{source}.gz").read_bytes())
            )
        full = datasets.MNIST(unpacked, train=True, transform=transform)
    _, train_idx = split_indices(len(full), validation_size(cfg, len(full)), cfg.data.split_seed)
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(full, train_idx.tolist()),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=1 if cuda else 0,
        pin_memory=cuda,
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, 10).to(device)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    model.train()

    def epoch(_: int) -> None:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return epoch


def our_trainer(cfg, device: torch.device, stop: StopRequest) -> Callable[[int], None]:
    """Set up mnist-cli's own loop as `mnist train` does; returns a function that runs one epoch."""
    data = load_train_data(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg.model, 10).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    run = Run(cfg, model, model, optimizer, data)  # no run folder: nothing is written
    return lambda number: train_one_epoch(run, RunState([], epoch=number - 1), None, stop)


def steady_epoch_seconds(trainers: Dict[str, Callable[[int], None]], device: torch.device) -> Dict[str, float]:
    """Run the trainers' epochs in turn (1 of each, 2 of each, ...) so that a slow spell of a shared
    machine hits them alike; returns each one's median seconds per epoch, the first epoch left out."""
    seconds: Dict[str, List[float]] = {name: [] for name in trainers}
    for number in range(1, EPOCHS + 1):
        for name, epoch in trainers.items():
            sync(device)
            start = time.perf_counter()
            epoch(number)
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(times[1:]) for name, times in seconds.items()}


def command_seconds(args: list, repeat: int = 5) -> float:
    """Median wall time of a command."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb(args: list, env: dict) -> float:
    """Peak resident memory of a command, from GNU time."""
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *args], capture_output=True, text=True, env=env, check=True)
    return int(result.stderr.strip().splitlines()[-1]) / 1024


def speedrun(mnist: list, overrides: list, env: dict, outputs: str) -> dict:
    """Run `mnist train <overrides>` then `mnist eval` on its test split; returns the numbers."""
    train = subprocess.run(
        [*mnist, "train", *overrides, f"outputs_dir={outputs}"], capture_output=True, text=True, env=env
    )
    if train.returncode != 0:
        raise SystemExit(f"speedrun failed:\n{train.stdout}\n{train.stderr}")
    run_dir = Path(train.stdout.strip().splitlines()[-1])
    tested = subprocess.run(
        [*mnist, "eval", f"run={run_dir}", "format=json"], capture_output=True, text=True, env=env, check=True
    )
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "train_seconds": sum(r["seconds"] for r in rows),
        "wall_seconds": summary["wall_seconds"],
        "val_accuracy": summary["best"]["val_accuracy"],
        "test_accuracy": json.loads(tested.stdout)["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet", "cnn"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--speedrun",
        default=None,
        help="overrides of the time-to-99%% run ('' skips it); default: the device's speedrun preset",
    )
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.speedrun is None:
        args.speedrun = "experiment=speedrun_cpu" if device.type == "cpu" else "experiment=speedrun"
    register_configs()

    images = 60_000 - 5_000  # MNIST training images less the 5,000 held out (data.val_size): both pipelines use them
    rows = []
    with StopRequest() as stop:
        for name in args.models:
            times = steady_epoch_seconds(
                {
                    "classic": classic_trainer(train_config(name, args, "optimizer.fused=false"), device),
                    "ours": our_trainer(train_config(name, args), device, stop),
                    "bf16": our_trainer(train_config(name, args, "precision=bf16"), device, stop),
                },
                device,
            )
            rows.append((name, times["classic"], times["ours"], times["bf16"]))
            print(
                f"{name}: classic {times['classic']:.2f} s, mnist-cli {times['ours']:.2f} s, bf16 {times['bf16']:.2f} s",
                flush=True,
            )

    mnist = [sys.executable, "-m", "mnist_cli"]
    help_s = command_seconds([*mnist, "--help"])
    train_help_s = command_seconds([*mnist, "train", "--help"])
    env = {**os.environ, "MNIST_DATA_ROOT": args.data_root}
    with tempfile.TemporaryDirectory() as outputs:
        rss = peak_rss_mb(
            [*mnist, "train", "model=mlp", "epochs=1", f"device={args.device}", f"outputs_dir={outputs}"], env
        )
        fast = (
            speedrun(mnist, [*args.speedrun.split(), f"device={args.device}"], env, outputs) if args.speedrun else None
        )

    def cell(seconds: float) -> str:
        return f"{seconds:.2f} | {images / seconds:,.0f}"

    gpu = device.type == "cuda"
    machine = (
        torch.cuda.get_device_name(device)
        if gpu
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    lines = [
        f"Machine: {machine}; torch {torch.__version__}; {date.today()}; batch {args.batch_size}; seconds per epoch over the "
        f"same {images:,} training images, median of epochs 2-{EPOCHS}, the pipelines taking turns.",
        f"Command: `python bench/speed.py --device {args.device} --data-root {args.data_root}`",
        "",
        "| model | classic s/epoch | images/s | mnist-cli s/epoch | images/s | speed-up | mnist-cli bf16 s/epoch | images/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {n} | {cell(c)} | {cell(o)} | {c / o:.1f}× | {cell(b)} | {c / b:.1f}× |" for n, c, o, b in rows],
    ]
    lines += [
        "",
        f"`mnist --help`: {help_s:.2f} s; `mnist train --help`: {train_help_s:.2f} s (median of 5);"
        f" peak RSS of `mnist train model=mlp epochs=1`: {rss:.0f} MB"
        + (
            f"; peak GPU memory of this benchmark: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB."
            if gpu
            else "."
        ),
    ]
    if fast:
        lines.append(
            f"Time to 99%: `mnist train {args.speedrun}` reached {fast['val_accuracy']:.2%} validation and "
            f"{fast['test_accuracy']:.2%} test accuracy after {fast['train_seconds']:.1f} s of training "
            f"({fast['wall_seconds']:.1f} s wall, with data loading)."
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
