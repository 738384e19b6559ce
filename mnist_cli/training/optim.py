"""Optimizers and learning-rate schedulers, built from their config groups."""

from __future__ import annotations

import warnings
from typing import Dict, Optional

import torch
from omegaconf import OmegaConf

OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
}


# Devices with a fused kernel per optimizer (torch >= 2.4); elsewhere fused=true falls back to
# torch's default implementation, which computes the same update in more kernels.
FUSED_DEVICES = {"sgd": ("cpu", "cuda"), "adam": ("cpu", "cuda"), "adamw": ("cpu", "cuda"), "adagrad": ("cpu",)}


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """Return the optimizer named by cfg.name; every other key of cfg is its keyword argument."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    name = kwargs.pop("name")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    params = list(params)
    if kwargs.get("fused") and params[0].device.type not in FUSED_DEVICES[name]:
        kwargs["fused"] = None
    return OPTIMIZERS[name](params, **kwargs)


def build_scheduler(
    optimizer, cfg, steps_per_epoch: int, epochs: int
) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """Return the scheduler named by cfg.name (None for "none"). Every scheduler steps once per batch."""
    total_steps = steps_per_epoch * epochs
    lr = optimizer.defaults["lr"]
    if cfg.name == "none":
        return None
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epochs * steps_per_epoch, gamma=cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=cfg.min_lr)
    if cfg.name == "onecycle":
        if total_steps < 3:  # too short to warm up and anneal: keep the lr constant
            return None
        # OneCycleLR divides by the length of each phase: give each at least one step.
        pct_start = min(max(cfg.pct_start, 2 / total_steps), 1 - 1 / total_steps)
        # Cycle momentum only where the optimizer has it; Adagrad/Adadelta have none to cycle.
        has_momentum = "betas" in optimizer.defaults or optimizer.defaults.get("momentum", 0) > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
            cycle_momentum=has_momentum,
        )
    raise ValueError(f"unknown scheduler {cfg.name!r}")


def scheduler_at(optimizer, cfg, steps_per_epoch: int, epochs: int, done_steps: int):
    """build_scheduler for a run of `epochs` epochs, stepped `done_steps` times: the optimizer's lr
    (and cycled momentum) are then exactly those of a fresh run of that length at that step.

    Resuming with more epochs rebuilds the schedule this way: patching a restored scheduler's
    T_max / total_steps does not stretch the curve it has already computed.
    """
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, epochs)
    if scheduler is not None and done_steps:
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(done_steps):
                scheduler.step()
    return scheduler


def load_optimizer_state(optimizer, saved: Dict) -> None:
    """Restore the per-parameter state (moments, step counts) of `saved`, keeping the
    hyperparameters (lr, momentum, ...) the optimizer's groups hold now (set by scheduler_at)."""
    hyperparameters = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, values in zip(optimizer.param_groups, hyperparameters):
        group.update(values)
