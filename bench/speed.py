"""Seconds per epoch: the classic torchvision DataLoader pipeline vs `mnist train`'s loop.

In one process and one run, per model: one epoch of the classic pipeline (MNIST dataset with
ToTensor + Normalize, DataLoader, shuffle, same model, optimizer and batch size) and one epoch
of mnist-cli's loop (uint8 tensors on the device, batches cut and normalised there). Also the
start-up time of `mnist --help` / `mnist train --help` and the peak RSS of `mnist train model=mlp`.
Writes a Markdown table.

    python bench/speed.py --device cpu --data-root ../shared/data --out bench/results-cpu.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from mnist_cli.config import register_configs
from mnist_cli.data import load_train_data
from mnist_cli.interrupt import StopRequest
from mnist_cli.models import build_model
from mnist_cli.optim import build_optimizer
from mnist_cli.train import train_one_epoch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def classic_epoch(cfg, root: str, device: torch.device) -> tuple:
    """One epoch the way the PyTorch tutorial does it; returns (seconds, images)."""
    from torchvision import datasets, transforms

    from mnist_cli.data import _extracted_root

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((cfg.dataset.mean,), (cfg.dataset.std,))])
    dataset = datasets.MNIST(str(_extracted_root(Path(root), "MNIST")), train=True, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=1 if device.type == "cuda" else 0, pin_memory=device.type == "cuda")  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model, 10).to(device)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    model.train()
    sync(device)
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start, len(dataset)


def our_epoch(cfg, device: torch.device) -> tuple:
    """One epoch of mnist-cli's own loop; returns (seconds, images)."""
    data = load_train_data(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg.model, 10).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    sync(device)
    start = time.perf_counter()
    with StopRequest() as stop:
        train_one_epoch(model, optimizer, None, data, cfg, 1, 0, None, stop, lambda *a: None)
    sync(device)
    return time.perf_counter() - start, len(data.train)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet", "cnn"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args()
    device = torch.device(args.device)
    register_configs()

    rows = []
    for name in args.models:
        with initialize_config_module(config_module="mnist_cli.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"model={name}", f"batch_size={args.batch_size}",
                                                           f"data.root={args.data_root}", f"device={args.device}"])  # fmt: skip
        classic_s, classic_n = classic_epoch(cfg, args.data_root, device)
        ours_s, ours_n = our_epoch(cfg, device)
        rows.append((name, classic_s, classic_n / classic_s, ours_s, ours_n / ours_s, (ours_n / ours_s) / (classic_n / classic_s)))
        print(f"{name}: classic {classic_s:.1f} s, mnist-cli {ours_s:.1f} s", flush=True)

    mnist = [sys.executable, "-m", "mnist_cli"]
    help_s = command_seconds([*mnist, "--help"])
    train_help_s = command_seconds([*mnist, "train", "--help"])
    env = {"MNIST_DATA_ROOT": args.data_root, "PATH": "/usr/bin:/bin"}
    rss = peak_rss_mb([*mnist, "train", "model=mlp", "epochs=1", f"device={args.device}", "outputs_dir=/tmp/mnist-cli-bench"], env)

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    lines = [
        f"Machine: {machine}; torch {torch.__version__}; {date.today()}; batch {args.batch_size}; one epoch each.",
        f"Command: `python bench/speed.py --device {args.device} --data-root {args.data_root}`",
        "",
        "| model | classic DataLoader s/epoch | images/s | mnist-cli s/epoch | images/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {n} | {cs:.1f} | {cr:,.0f} | {os_:.1f} | {or_:,.0f} | {ratio:.1f}× |" for n, cs, cr, os_, or_, ratio in rows],
        "",
        f"`mnist --help`: {help_s:.2f} s; `mnist train --help`: {train_help_s:.2f} s (median of 5);"
        f" peak RSS of `mnist train model=mlp epochs=1`: {rss:.0f} MB.",
        "Classic: 60,000 images through ToTensor + Normalize per sample; mnist-cli: the 55,000 training"
        " images (5,000 held out), uint8 on the device. The speed-up compares images per second.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
