"""`mnist export`: a trained run as one self-contained model file: a torch.export program (.pt2, the
default), ONNX, or TorchScript (for older consumers; torch deprecates it).

The file takes float images in 0..1, shape (N, 1, 28, 28) with any N, and returns logits: the
dataset's normalisation is inside it, and the classes and constants are recorded in its metadata.
Before it is written, the file is loaded back in its own runtime and compared with the model.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Dict, Optional

import torch
from omegaconf import DictConfig

from mnist_cli import console
from mnist_cli.errors import RunFailed, UserError, WriteFailed
from mnist_cli.inference import ensembles
from mnist_cli.inference.predictions import precision
from mnist_cli.runs.atomic import atomic_write
from mnist_cli.runs.checkpoints import Trained
from mnist_cli.runs.folder import RunFolder

FILENAMES = {
    "pt2": "model.pt2",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
}  # formats: config.OUTPUT_FORMATS
SUFFIXES = {
    "pt2": (".pt2",),
    "torchscript": (".pt", ".pth"),
    "onnx": (".onnx",),
}  # an output named for another format is refused
METADATA_FILE = "mnist_cli.json"  # the metadata inside a .pt2 or TorchScript file
CHECK_BATCHES = (1, 8)  # the round trip is checked on random batches of these sizes (the batch size is free)


class WithPreprocessing(torch.nn.Module):
    """The classifier with its normalisation: images in 0..1 -> logits."""

    def __init__(self, model: torch.nn.Module, mean: float, std: float, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.register_buffer("temperature", torch.tensor(temperature))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std) / self.temperature


def metadata(trained: Trained) -> Dict[str, str]:
    return {
        "mnist_cli.input": "float32 images in 0..1, shape (N, 1, 28, 28), made from image files as mnist_cli.prepare says",
        "mnist_cli.prepare": trained.config.dataset.prepare,  # digit, object (white ink on black) or resize
        "mnist_cli.output": "logits, shape (N, classes)",
        "mnist_cli.classes": json.dumps(trained.classes),
        "mnist_cli.normalization": json.dumps({"mean": trained.mean, "std": trained.std}),
        "mnist_cli.temperature": json.dumps(trained.temperature),  # the logits are divided by it (1: not calibrated)
        "mnist_cli.dataset": trained.config.dataset.name,
        "mnist_cli.model": trained.config.model.name,
        "mnist_cli.checkpoint": str(trained.checkpoint_path),
        "mnist_cli.members": json.dumps([str(m.checkpoint_path) for m in trained.members]),  # [] for one run
    }


def _batch_dimension():
    return {"images": {0: torch.export.Dim("batch", min=1, max=1 << 20)}}


def to_pt2(wrapped: torch.nn.Module, example: torch.Tensor, meta: Dict[str, str]) -> bytes:
    program = torch.export.export(wrapped, (example,), dynamic_shapes=_batch_dimension())
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(meta)})
    return buffer.getvalue()


def to_torchscript(wrapped: torch.nn.Module, example: torch.Tensor, meta: Dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch's deprecation notices: the user asked for this format
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(wrapped, example), buffer, _extra_files={METADATA_FILE: json.dumps(meta)})
    return buffer.getvalue()


def to_onnx(wrapped: torch.nn.Module, example: torch.Tensor, meta: Dict[str, str]) -> bytes:
    import importlib.util

    if (
        importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None
    ):  # torch's exporter needs both
        raise UserError("format=onnx needs the onnx and onnxscript packages: pip install 'mnist-cli[onnx]'.")
    program = torch.onnx.export(
        wrapped,
        (example,),
        dynamo=True,
        verbose=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=_batch_dimension(),
    )
    proto = program.model_proto
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


EXPORTERS = {"pt2": to_pt2, "torchscript": to_torchscript, "onnx": to_onnx}


def runner(fmt: str, data: bytes):
    """The exported file loaded in its own runtime, as a function of a float tensor -> logits (numpy)."""
    if fmt == "pt2":
        module = torch.export.load(io.BytesIO(data)).module()
        return lambda images: module(images).detach().numpy()
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(io.BytesIO(data))
        return lambda images: module(images).detach().numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images.numpy()})[0]


def round_trip_difference(fmt: str, data: bytes, wrapped: torch.nn.Module) -> float:
    """The largest absolute difference between the exported file's logits and the model's, on random
    images in batches of CHECK_BATCHES."""
    run = runner(fmt, data)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        for n in CHECK_BATCHES:
            images = torch.rand(n, 1, 28, 28, generator=generator)
            worst = max(worst, float(abs(run(images) - wrapped(images).numpy()).max()))
    return worst


def output_path(cfg: DictConfig, trained: Trained) -> Path:
    """Where the file goes: output= (a folder: the format's file name inside it), else next to the
    checkpoint. Raises UserError for a suffix of another format or a file a run folder needs."""
    target = Path(cfg.output or trained.checkpoint_path.parent).expanduser()
    if target.is_dir() or not cfg.output or cfg.output.endswith(("/", os.sep)):
        target = target / FILENAMES[cfg.format]
    problem = replaces_run_file(target, trained.checkpoint_path)
    if problem:
        raise UserError(f"writing {target} would replace {problem}; give output= a path outside the run's files.")
    other = next(
        (fmt for fmt, suffixes in SUFFIXES.items() if fmt != cfg.format and target.suffix.lower() in suffixes), None
    )
    if other is not None:
        raise UserError(
            f"output={cfg.output} ends in {target.suffix}, the suffix of {other} files, but format={cfg.format}; "
            f"name it *{SUFFIXES[cfg.format][0]} or give format={other}."
        )
    return target


def replaces_run_file(target: Path, checkpoint: Path) -> Optional[str]:
    """What writing `target` would destroy: the exported checkpoint or a file of a train run folder
    (RunFolder.owns: an export never replaces these, only earlier exports); None if nothing. The rename
    replaces the entry `target` names, after its folder's links are followed: a link or hard link named
    `target` is replaced itself, never its target."""
    entry = Path(os.path.realpath(target.parent)) / target.name
    if entry == Path(os.path.realpath(checkpoint)):
        return f"the checkpoint it exports ({checkpoint})"
    run = next((RunFolder(p) for p in entry.parents if RunFolder(p).is_run()), None)
    if run is None:
        return None
    earlier_export = entry.parent == run.checkpoints and entry.name in FILENAMES.values()
    if run.owns(entry) and not earlier_export:
        return f"{entry.relative_to(run.path)} of the run folder {run.path}"
    return None


def export_command(cfg: DictConfig) -> int:
    """Run `mnist export`; returns the exit code."""
    trained = ensembles.load_model(cfg, torch.device("cpu"))
    if trained.members:
        trained.model.exporting = True  # float32 throughout, as a single export
        if not cfg.output:  # not into one member's checkpoints/: the ensemble's own folder
            cfg.output = str(ensembles.ensemble_folder(cfg.outputs_dir)) + "/"
    target = output_path(cfg, trained)  # before exporting: a refused path costs no work
    wrapped = WithPreprocessing(trained.model, trained.mean, trained.std, trained.temperature).eval()
    example = torch.rand(2, 1, 28, 28)
    data = EXPORTERS[cfg.format](wrapped, example, metadata(trained))
    difference = round_trip_difference(cfg.format, data, wrapped)
    if not difference <= 1e-3:  # nothing is written: a file that disagrees with the model is no export
        raise RunFailed(
            f"the {cfg.format} file gives logits up to {difference:.3g} away from the model's; it was not written."
        )
    try:
        if trained.members:
            ensembles.write_members(target.parent, trained)
        atomic_write(target, lambda f: f.write(data))
    except WriteFailed as error:  # output= names a folder that cannot be written: the user's to fix
        raise UserError(str(error)) from None
    what = f"an ensemble of {len(trained.members)} runs" if trained.members else trained.config.model.name
    console.say(f"exported {what} ({trained.config.dataset.name}) as {cfg.format}: {target}")
    console.say(
        f"checked in its runtime: max abs difference from the model's logits {difference:.2g} on {sum(CHECK_BATCHES)} random images"
    )
    models = trained.members or [trained]
    autocast = [p for p in map(precision, models) if p != "fp32"]
    if autocast:  # eval, predict and serve run each model in its run's precision; the file is float32
        which = "the run" if not trained.members else f"{len(autocast)} of its {len(models)} members"
        console.say(
            f"the file computes in float32, while {which} trained (and mnist eval runs "
            f"{'it' if len(autocast) == 1 else 'them'}) in {autocast[0]} autocast: its accuracy may differ slightly."
        )
    return 0
