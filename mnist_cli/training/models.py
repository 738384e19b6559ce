"""The classifiers (mlp, cnn, lenet), built from their config, and a per-layer summary."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from mnist_cli.config.checks import trained_on_mirrors
from mnist_cli.errors import UserError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU}


class ByteMaskDropout(nn.Dropout):
    """Dropout whose CPU mask is cut from random bytes, 8 per 64-bit draw (not quite nn.Dropout).

    On CPU torch's bernoulli_ took ~1 ms per 128x1024 mask, a quarter of an mlp step; this takes
    ~0.1 ms. p is rounded to a multiple of 1/256 (0.2 -> 51/256). Other devices use torch's kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = round(self.p * 256)
        if not self.training or drop == 0 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, (-(-n // 8),), dtype=torch.int64)
        keep = draws.view(torch.uint8)[:n].view_as(x) >= drop
        return x * keep.to(x.dtype).mul_(256 / (256 - drop))


def mlp(cfg, num_classes: int) -> nn.Module:
    """Flatten, then Linear -> activation -> dropout per hidden size, then the classifier."""
    layers: List[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for size in cfg.hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[cfg.activation](), ByteMaskDropout(cfg.dropout)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(cfg, num_classes: int) -> nn.Module:
    """Three blocks of (conv 3x3 -> batch norm -> ReLU) x convs_per_block -> max pool (28 -> 14 -> 7
    -> 3), then a small head."""
    layers: List[nn.Module] = []
    in_channels = 1
    for out_channels in cfg.channels:
        for _ in range(cfg.get("convs_per_block", 1)):  # runs from before the key: one
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        layers.append(nn.MaxPool2d(2))
    layers += [
        nn.Flatten(),
        ByteMaskDropout(cfg.dropout),
        nn.Linear(in_channels * 3 * 3, cfg.hidden),
        nn.ReLU(inplace=True),
        nn.Linear(cfg.hidden, num_classes),
    ]
    return nn.Sequential(*layers)


def lenet(cfg, num_classes: int) -> nn.Module:
    """LeNet-5 with ReLU and max pooling."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


MODELS = {"mlp": mlp, "cnn": cnn, "lenet": lenet}


class FlipAveraged(nn.Module):
    """Test-time flip: the mean of the model's logits for each image and its left-right mirror."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(x.flip(-1))) / 2


def for_inference(model: nn.Module, cfg) -> nn.Module:
    """The model as evaluation and prediction run it under the run config `cfg`: flip-averaged when
    dataset.test_time_flip is true and the model trained on mirrored images (model.augment with
    dataset.augment.flip); plain otherwise, as for runs from before the key existed."""
    return FlipAveraged(model) if trained_on_mirrors(cfg) and cfg.dataset.get("test_time_flip", False) else model


def build_model(cfg, num_classes: int) -> nn.Module:
    """Return the untrained model named by cfg.name."""
    if cfg.name not in MODELS:
        raise UserError(f"model.name={cfg.name!r} is not a model; choose one of {', '.join(MODELS)}.")
    return MODELS[cfg.name](cfg, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_summary(model: nn.Module) -> List[Dict]:
    """Return one row per leaf layer: name, type, output shape for one 28x28 image, parameter count."""
    rows: List[Dict] = []
    hooks = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue

        def record(mod, _inputs, output, name=name):
            shape = tuple(output.shape[1:])
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            rows.append({"name": name, "type": type(mod).__name__, "output": shape, "params": params})

        hooks.append(module.register_forward_hook(record))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 28, 28, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return rows
