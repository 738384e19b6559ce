"""Sentences a training run says about itself: settings taken that are likely not what was meant, a run
that did not learn, and the memory a model asks for."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from omegaconf import DictConfig

from mnist_cli.datasets import torchvision_sets
from mnist_cli.runs.state import RunState
from mnist_cli.training.data import (
    TrainData,
)
from mnist_cli.training.models import build_model, count_parameters


def chance_level(data: TrainData) -> Tuple[float, int]:
    """(accuracy of always guessing the most frequent class, images it is measured on), on the
    validation split, else the training split."""
    labels = (data.val if len(data.val) else data.train).labels
    return torch.bincount(labels).max().item() / len(labels), len(labels)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo's names: x86 "flags", ARM "Features"


def cpu_has_bf16(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text lists an instruction set that computes in bf16."""
    lines = [line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))]
    return any(flag in BF16_CPU_FLAGS for line in lines for flag in line.split())


def _slow_bf16(cfg: DictConfig, data: TrainData) -> Optional[str]:
    if cfg.precision != "bf16" or data.train.images.device.type != "cpu":
        return None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: nothing to say
        return None
    if cpu_has_bf16(cpuinfo):
        return None
    return (
        "precision=bf16 on a CPU without AVX512-BF16 or AMX emulates bf16, which can be several times slower "
        "than fp32; add precision=fp32."
    )


def start_notes(cfg: DictConfig, data: TrainData) -> List[str]:
    """Sentences about settings that are taken but are likely not what was meant."""
    notes = [note for note in [_slow_bf16(cfg, data)] if note]
    cores = os.cpu_count() or 1
    if cfg.threads is not None and cfg.threads > cores:
        notes.append(
            f"threads={cfg.threads} is more than this machine's {cores} cores; the threads take turns, "
            "which is usually slower than threads=null."
        )
    if data.files is not None and data.files.skipped:
        notes.append(
            f"skipped {data.files.skipped} of {len(data.files.reasons)} files that are not readable images; "
            "dataset_files.csv in the run folder lists each with its reason."
        )
    if not len(data.val) and data.files is not None and cfg.dataset.val_fraction > 0:
        notes.append(
            f"no validation split: dataset.val_fraction={cfg.dataset.val_fraction:g} of each class is no image "
            "for classes this small; add images, or a val/ folder."
        )
    elif not len(data.val) and cfg.data.val_size is None and data.files is None:
        notes.append(
            f"no validation split: data.val_size=null holds out 1/12 of the training images, none of "
            f"{len(data.train)}; set data.val_size, or raise data.limit."
        )
    return notes


def did_not_learn(state: RunState, data: TrainData) -> Optional[str]:
    """A sentence when the best accuracy is within 3 standard errors of chance level, else None."""
    chance, n = chance_level(data)
    key = "val_accuracy" if len(data.val) else "train_accuracy"
    accuracy = max((row[key] for row in state.history), default=None)
    bound = chance + 3 * math.sqrt(chance * (1 - chance) / n)
    if accuracy is None or accuracy > bound or bound >= 1:  # bound >= 1: too few images to tell
        return None
    return (
        f"the run did not learn: its best {key.replace('_accuracy', '')} accuracy {accuracy:.2%} is no better than chance "
        f"({chance:.2%}, always guessing the most frequent class); try another optimizer.lr."
    )


def memory_sentence(cfg: DictConfig, device: torch.device) -> str:
    """Why a run that ran out of memory did, with the sizes asked for (the model counted on the meta device,
    which allocates nothing)."""
    # an image folder's classes are counted as it is read; its output layer is a small part of the count
    num_classes = 10 if cfg.dataset.name == "folder" else len(torchvision_sets.class_names(cfg.dataset))
    with torch.device("meta"):
        params = count_parameters(build_model(cfg.model, num_classes=num_classes))
    return (
        f"{device} ran out of memory: model={cfg.model.name} with these sizes has {params:,} parameters "
        f"({params * 4 / 2**30:,.1f} GiB as float32, more for the optimizer's state) at batch_size={cfg.batch_size}; "
        "choose smaller model.* sizes or a smaller batch_size."
    )
