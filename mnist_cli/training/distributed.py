"""Data-parallel training under torchrun: which process this is, and the collectives the loop needs.

Without torchrun (no WORLD_SIZE > 1 in the environment) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes the run folder, logs and checkpoints."""
        return self.rank == 0


def join(device: torch.device) -> World:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU); a single World when not under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def leave(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The tensor summed over all processes (in place); unchanged in a single process."""
    if world.size > 1:
        dist.all_reduce(tensor)
    return tensor


def any_true(flag: bool, world: World, device: torch.device) -> bool:
    """True when the flag is set in any process, so all of them stop at the same step."""
    if world.size == 1:
        return flag
    return bool(all_sum(torch.tensor([int(flag)], device=device), world).item())
