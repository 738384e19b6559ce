"""Data-parallel training under torchrun: which process this is, and the collectives the loop needs.

Without torchrun (no WORLD_SIZE > 1 in the environment) everything here is a no-op. torchrun's
variables (RANK, WORLD_SIZE, LOCAL_RANK) are read here and nowhere else; reading them imports no
torch, because the CLI asks which process it is before torch is imported (`mnist --help` stays fast).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes the run folder, logs and checkpoints."""
        return self.rank == 0


def this_process() -> World:
    """Returns this process's place as torchrun's environment gives it; World() when not under torchrun."""
    env = os.environ
    return World(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


def join(device: torch.device) -> World:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU); a single World when not under torchrun."""
    world = this_process()
    if world.size <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def leave(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def all_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The tensor summed over all processes (in place); unchanged in a single process."""
    if world.size > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def any_true(flag: bool, world: World, device: torch.device) -> bool:
    """True when the flag is set in any process, so all of them stop at the same step."""
    if world.size == 1:
        return flag
    import torch

    return bool(all_sum(torch.tensor([int(flag)], device=device), world).item())
