"""Which torch device a command runs on: `device=auto | cpu | cuda | cuda:N | mps`."""

from __future__ import annotations

import torch

from mnist_cli.errors import UserError


def resolve_device(name: str) -> torch.device:
    """auto -> cuda, else mps, else cpu; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} was asked for but no CUDA GPU is available; use device=cpu or device=auto.")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise UserError(f"device={name} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    if name == "mps" and not mps_ok:
        raise UserError("device=mps was asked for but MPS is not available; use device=cpu or device=auto.")
    return torch.device(name)


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is torch saying an allocation failed: the CPU allocator's RuntimeError ("can't allocate
    memory"), CUDA's OutOfMemoryError, MPS's "out of memory" (torch gives the CPU and MPS cases no type of their own)."""
    cuda_oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    text = str(error)
    return isinstance(error, (MemoryError, cuda_oom)) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
    )
