"""`mnist export`: a trained run as one self-contained model file (TorchScript or ONNX).

The file takes float images in 0..1, shape (N, 1, 28, 28), and returns logits: the dataset's
normalisation is inside it, and the classes and constants are recorded in its metadata.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict

import torch
from omegaconf import DictConfig

from mnist_cli import console, runs
from mnist_cli.checkpoints import Trained, load_trained
from mnist_cli.errors import UserError, WriteFailed

FILENAMES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}  # formats: config.OUTPUT_FORMATS


class WithPreprocessing(torch.nn.Module):
    """The classifier with its normalisation: images in 0..1 -> logits."""

    def __init__(self, model: torch.nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def metadata(trained: Trained) -> Dict[str, str]:
    return {
        "mnist_cli.input": "float32 images in 0..1, shape (N, 1, 28, 28), white ink on black",
        "mnist_cli.output": "logits, shape (N, classes)",
        "mnist_cli.classes": json.dumps(trained.classes),
        "mnist_cli.normalization": json.dumps({"mean": trained.mean, "std": trained.std}),
        "mnist_cli.dataset": trained.config.dataset.name,
        "mnist_cli.model": trained.config.model.name,
        "mnist_cli.checkpoint": str(trained.checkpoint_path),
    }


def to_torchscript(wrapped: torch.nn.Module, example: torch.Tensor, meta: Dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(wrapped, example), buffer, _extra_files={"mnist_cli.json": json.dumps(meta)})
    return buffer.getvalue()


def to_onnx(wrapped: torch.nn.Module, example: torch.Tensor, meta: Dict[str, str]) -> bytes:
    try:
        import onnx
    except ImportError:
        raise UserError("format=onnx needs the onnx package: pip install 'mnist-cli[onnx]'.") from None
    buffer = io.BytesIO()
    torch.onnx.export(wrapped, example, buffer, dynamo=False, input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def export_command(cfg: DictConfig) -> int:
    """Run `mnist export`; returns the exit code."""
    trained = load_trained(cfg.run, cfg.outputs_dir, torch.device("cpu"))
    wrapped = WithPreprocessing(trained.model, trained.mean, trained.std).eval()
    example = torch.rand(2, 1, 28, 28)
    data = (to_onnx if cfg.format == "onnx" else to_torchscript)(wrapped, example, metadata(trained))
    target = Path(cfg.output) if cfg.output else trained.checkpoint_path.parent / FILENAMES[cfg.format]
    try:
        runs.atomic_write(target, lambda f: f.write(data))
    except WriteFailed as error:  # output= names a folder that cannot be written: the user's to fix
        raise UserError(str(error)) from None
    console.say(f"exported {trained.config.model.name} ({trained.config.dataset.name}) as {cfg.format}: {target}")
    return 0
