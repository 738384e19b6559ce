"""A dataset split as uint8 tensors, and the fixed, seeded validation split of a training set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch


@dataclass
class Split:
    """Images (N, 28, 28) uint8 and labels (N,) int64, both on the training device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def split_indices(n: int, val_size: int, split_seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return (validation, training) indices into the first n training images: a fixed split."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[:val_size], order[val_size:]
