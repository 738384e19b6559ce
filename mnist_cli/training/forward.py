"""A model's forward pass as training, validation and inference run it: the normalised input, the precision's
autocast, and the loss and accuracy on a split."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from mnist_cli.datasets.split import Split
from mnist_cli.training.data import (
    TrainData,
    eval_batches,
    normalize,
)
from mnist_cli.training.distributed import World, all_sum


def to_model_input(images: torch.Tensor, data: TrainData, channels_last: bool) -> torch.Tensor:
    x = normalize(images, data.mean, data.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device: torch.device, precision: str):
    """The context forward passes run in: bf16 autocast for precision=bf16 (weights stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate(
    model, split: Split, data: TrainData, cfg, world: World = World()
) -> Tuple[Optional[float], Optional[float]]:
    """Returns (mean loss, accuracy) of `model` on `split` (under torchrun: each process a share);
    (None, None) for an empty split (data.val_size=0)."""
    if len(split) == 0:
        return None, None
    model.eval()
    loss_sum = torch.zeros((), device=split.images.device)
    correct = torch.zeros((), device=split.images.device, dtype=torch.long)
    share = Split(split.images[world.rank :: world.size], split.labels[world.rank :: world.size])
    for images, labels in eval_batches(share, cfg.eval_batch_size):
        with autocast(split.images.device, cfg.precision):
            logits = model(to_model_input(images, data, cfg.channels_last))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    all_sum(loss_sum, world), all_sum(correct, world)
    return loss_sum.item() / len(split), correct.item() / len(split)
