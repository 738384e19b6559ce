"""The checks a type cannot express: what each command refuses, in one sentence, before any work starts.

`check_config` is the one entry: the command line's removed and added keys, the train-only rules
between keys, then `validate`'s ranges. Imports only hydra/omegaconf, never torch.
"""

from __future__ import annotations

import math
import os
import re
from typing import Callable, List

from omegaconf import DictConfig, OmegaConf

from mnist_cli.config.hydra_refusals import invalid_value, not_a_key
from mnist_cli.config.schema import (
    ACTIVATIONS,
    CHOSEN_GROUPS,
    EMNIST_SPLITS,
    OUTPUT_FORMATS,
    PRECISIONS,
    PREPARATIONS,
    QMNIST_TEST_PARTS,
    SPLITS,
    known_keys,
)
from mnist_cli.errors import UserError
from mnist_cli.runs.metrics import SUMMARY_METRICS

MAX_THREADS = 1024  # torch's OpenMP runtime crashes (segfault) creating tens of thousands of threads
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_DEVICES = "one of auto, cpu, cuda, cuda:N, mps"

# need(ok, key, rule): raise UserError "<key> must be <rule> (got <value>)." unless ok
Need = Callable[[bool, str, str], None]


def trained_on_mirrors(cfg) -> bool:
    """Return whether a run config trains on mirrored images (model.augment with dataset.augment.flip): the
    condition for dataset.test_time_flip, checked here and applied by models.for_inference (to stored
    configs too, which may predate both keys: hence the .get)."""
    return bool(cfg.model.get("augment", False) and (cfg.dataset.get("augment") or {}).get("flip", False))


def check_config(cfg: DictConfig, command: str, overrides: List[str]) -> None:
    """Raise UserError, in one sentence, for anything in `cfg` or the command line `overrides` that
    cannot work: a required key removed (~key), an unknown key added (+key=...), a value out of range."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf.errors import OmegaConfBaseException

    parsed = OverridesParser.create().parse_overrides(overrides)
    removed = [o.key_or_group for o in parsed if o.is_delete() and not o.key_or_group.startswith("hydra")]
    if removed:
        raise UserError(
            f"~{removed[0]}: mnist {command} needs {removed[0]}; give it another value instead of removing it."
        )
    if command == "train":
        refuse_unknown_keys(cfg, [o.key_or_group for o in parsed if o.is_add() or o.is_force_add()])
        _refuse_unused_augment(cfg, [o.key_or_group for o in parsed])
    try:
        validate(cfg, command)
    except OmegaConfBaseException as error:  # a key the checks need is missing or mistyped
        raise UserError(invalid_value(error)) from None


def _refuse_unused_augment(cfg: DictConfig, given: List[str]) -> None:
    """Raise UserError for dataset.augment.* or dataset.test_time_flip=true given where they do nothing."""
    # only =true is refused: =false is harmless
    flip_asked = "dataset.test_time_flip" in given and OmegaConf.select(cfg, "dataset.test_time_flip") is True
    unused = [key for key in given if key.startswith("dataset.augment.")] + (
        ["dataset.test_time_flip"] if flip_asked else []
    )
    if unused and not OmegaConf.select(cfg, "model.augment", default=True):
        whose = f" ({cfg.model.name}'s default)" if "model.augment" not in given else ""
        raise UserError(f"{unused[0]} does nothing while model.augment=false{whose}; add model.augment=true.")
    if flip_asked and not trained_on_mirrors(cfg):
        raise UserError(
            "dataset.test_time_flip=true does nothing for a model that does not train on mirrored images; "
            "add dataset.augment.flip=true."
        )


def refuse_unknown_keys(cfg: DictConfig, added: List[str]) -> None:
    """Raise UserError for a key added with +key=... that the schema does not know (a typo would
    otherwise be ignored), suggesting the closest known key."""
    if not added:  # the common case: nothing to look up
        return
    known = set(known_keys(cfg))
    for key in added:
        if key in known or key in (*CHOSEN_GROUPS, "hparams_search") or key.startswith("hydra"):
            continue
        raise UserError(not_a_key("train", key, known))


def validate(cfg: DictConfig, command: str = "train") -> None:
    """Raise UserError naming the key of the first value of `command`'s config that is out of range."""

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise UserError(f"{key} must be {rule} (got {value!r}).")

    if command == "train":
        _validate_train(cfg, need)
        return
    if OmegaConf.is_missing(cfg, "run"):
        raise UserError(f"{command} needs run=<run folder | checkpoint.pt | latest>.")
    need(cfg.top is None or cfg.top >= 1, "top", "null or at least 1")
    if command == "serve":
        _validate_serve(cfg, need)
        return
    need(cfg.format in OUTPUT_FORMATS[command], "format", f"one of {', '.join(OUTPUT_FORMATS[command])}")
    if command == "export":
        return
    need(cfg.split in SPLITS, "split", f"one of {', '.join(SPLITS)}")
    need(cfg.batch_size >= 1, "batch_size", "at least 1")
    need(bool(_DEVICE.match(cfg.device)), "device", _DEVICES)
    if command == "eval":
        need(cfg.min_accuracy is None or 0 <= cfg.min_accuracy <= 1, "min_accuracy", "a fraction in [0, 1]")
        need(cfg.max_ece is None or 0 <= cfg.max_ece <= 1, "max_ece", "a fraction in [0, 1]")
    if command == "predict":
        if not cfg.inputs and not cfg.indices:
            raise UserError("predict needs inputs=[file.png,folder/] or indices=[0,1,2].")
        need(cfg.topk >= 1, "topk", "at least 1")


def _validate_serve(cfg: DictConfig, need: Need) -> None:
    need(0 <= cfg.port <= 65535, "port", "in 0..65535 (0: a free port)")
    need(cfg.topk >= 1, "topk", "at least 1")
    need(bool(_DEVICE.match(cfg.device)), "device", _DEVICES)
    need(cfg.threads is None or 1 <= cfg.threads <= MAX_THREADS, "threads", f"null or from 1 to {MAX_THREADS}")
    need(cfg.max_body_mb > 0, "max_body_mb", "greater than 0")
    need(cfg.max_batch >= 1, "max_batch", "at least 1")
    need(0 <= cfg.batch_window_ms <= 1000, "batch_window_ms", "in 0..1000")


def _validate_train(cfg: DictConfig, need: Need) -> None:
    """The train rules, in the order a user meets them: the first one broken is the one reported."""
    _validate_run(cfg, need)
    _validate_loggers(cfg, need)
    _validate_training(cfg, need)
    _validate_dataset(cfg, need)
    _validate_augment(cfg, need)
    need(cfg.optimized_metric in SUMMARY_METRICS, "optimized_metric", f"one of {', '.join(SUMMARY_METRICS)}")
    _validate_optimizer(cfg.optimizer, need)
    _validate_model(cfg.model, need)
    _validate_scheduler(cfg.scheduler, need)


def _validate_run(cfg: DictConfig, need: Need) -> None:
    need(cfg.epochs >= 1, "epochs", "at least 1")
    need(cfg.batch_size >= 1, "batch_size", "at least 1")
    need(cfg.eval_batch_size >= 1, "eval_batch_size", "at least 1")
    need(bool(_DEVICE.match(cfg.device)), "device", _DEVICES)
    need(
        cfg.data.val_size is None or cfg.data.val_size >= 0,
        "data.val_size",
        "null (1/12 of the images), 0 (no validation) or more",
    )
    need(cfg.data.limit is None or cfg.data.limit >= 2, "data.limit", "null or at least 2")
    every = cfg.checkpoint.every_n_steps
    need(every is None or every >= 1, "checkpoint.every_n_steps", "null or at least 1")


def _validate_loggers(cfg: DictConfig, need: Need) -> None:
    uri = cfg.logger.mlflow.tracking_uri if cfg.logger.mlflow is not None else None
    need(
        uri is None or ("://" in uri and not uri.startswith("file:")),
        "logger.mlflow.tracking_uri",
        "null, a database URL (sqlite:///path/mlflow.db) or a server (http://host:5000); "
        "MLflow 3 no longer takes new file stores",
    )
    if cfg.logger.tensorboard is not None:
        need(
            cfg.logger.tensorboard.log_every_n_steps >= 0,
            "logger.tensorboard.log_every_n_steps",
            "0 (per epoch only) or more",
        )


def _validate_training(cfg: DictConfig, need: Need) -> None:
    patience = cfg.early_stopping.patience
    need(patience is None or patience >= 1, "early_stopping.patience", "null or at least 1")
    need(
        patience is None or cfg.data.val_size != 0,
        "early_stopping.patience",
        "null when data.val_size=0 (early stopping watches the validation accuracy)",
    )
    need(cfg.early_stopping.min_delta >= 0, "early_stopping.min_delta", "0 or more")
    need(cfg.threads is None or 1 <= cfg.threads <= MAX_THREADS, "threads", f"null or from 1 to {MAX_THREADS}")
    need(cfg.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    need(0 <= cfg.label_smoothing < 1, "label_smoothing", "in [0, 1)")
    need(cfg.ema_decay is None or 0 < cfg.ema_decay < 1, "ema_decay", "null or in (0, 1), e.g. 0.999")


def _validate_dataset(cfg: DictConfig, need: Need) -> None:
    ds = cfg.dataset
    need(ds.prepare in PREPARATIONS, "dataset.prepare", f"one of {', '.join(PREPARATIONS)}")
    if ds.name == "emnist":
        need(ds.split in EMNIST_SPLITS, "dataset.split", f"one of {', '.join(EMNIST_SPLITS)}")
    if ds.name == "qmnist":
        need(ds.test_part in QMNIST_TEST_PARTS, "dataset.test_part", f"one of {', '.join(QMNIST_TEST_PARTS)}")
    if ds.name != "folder":
        return
    if ds.path is None:
        raise UserError("dataset=folder needs dataset.path=DIR: a folder holding one folder of images per class.")
    need(bool(str(ds.path).strip()), "dataset.path", "the folder that holds one folder per class")
    need(0 <= ds.val_fraction < 1, "dataset.val_fraction", "in [0, 1)")
    need(0 <= ds.test_fraction < 1, "dataset.test_fraction", "in [0, 1)")
    need(ds.val_fraction + ds.test_fraction < 1, "dataset.test_fraction", "less than 1 - dataset.val_fraction")
    need(0 <= ds.max_bad_fraction <= 1, "dataset.max_bad_fraction", "a fraction in [0, 1]")
    need(ds.workers is None or 1 <= ds.workers <= MAX_THREADS, "dataset.workers", f"null or from 1 to {MAX_THREADS}")
    inside = os.path.realpath(cfg.outputs_dir) + os.sep
    if inside.startswith(os.path.realpath(ds.path) + os.sep):
        raise UserError(
            f"outputs_dir={cfg.outputs_dir} is inside dataset.path={ds.path}: run folders would be read as images; "
            "give outputs_dir= a folder outside it."
        )
    need(
        cfg.data.val_size is None,
        "data.val_size",
        "null for an image folder (its validation split is a val/ folder, or dataset.val_fraction of each class)",
    )


def _validate_augment(cfg: DictConfig, need: Need) -> None:
    aug = cfg.dataset.augment
    need(0 <= aug.shift <= 8, "dataset.augment.shift", "0 to 8 pixels")
    need(0 <= aug.rotate <= 180, "dataset.augment.rotate", "0 to 180 degrees")
    need(0 <= aug.scale < 1, "dataset.augment.scale", "in [0, 1)")
    need(0 <= aug.erase <= 1, "dataset.augment.erase", "a probability in [0, 1]")
    need(0 <= aug.shear <= 1, "dataset.augment.shear", "in [0, 1]")
    need(0 <= aug.stroke <= 1, "dataset.augment.stroke", "a probability in [0, 1]")


def _validate_optimizer(opt: DictConfig, need: Need) -> None:
    need(opt.lr > 0, "optimizer.lr", "greater than 0")
    need(math.isfinite(opt.lr), "optimizer.lr", "a finite number")
    need(opt.weight_decay >= 0, "optimizer.weight_decay", "0 or more")
    for key in ("momentum", "alpha", "rho"):
        if key in opt:
            need(0 <= opt[key] < 1, f"optimizer.{key}", "in [0, 1)")
    if "betas" in opt:
        need(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas), "optimizer.betas", "two numbers in [0, 1)")
    if opt.name == "sgd":
        need(not opt.nesterov or opt.momentum > 0, "optimizer.nesterov", "false when optimizer.momentum is 0")


def _validate_model(model: DictConfig, need: Need) -> None:
    if "dropout" in model:
        need(0 <= model.dropout < 1, "model.dropout", "in [0, 1)")
    if "hidden" in model and model.name == "mlp":
        need(all(h >= 1 for h in model.hidden), "model.hidden", "a list of positive layer sizes")
    if "activation" in model:
        need(model.activation in ACTIVATIONS, "model.activation", f"one of {', '.join(ACTIVATIONS)}")
    if "channels" in model:
        need(
            len(model.channels) == 3 and all(c >= 1 for c in model.channels),
            "model.channels",
            "three positive channel counts",
        )
        need(1 <= model.get("convs_per_block", 1) <= 4, "model.convs_per_block", "1 to 4")
    if model.name == "cnn":
        need(model.hidden >= 1, "model.hidden", "at least 1")


def _validate_scheduler(sched: DictConfig, need: Need) -> None:
    if sched.name == "step":
        need(sched.step_epochs >= 1, "scheduler.step_epochs", "at least 1")
        need(0 < sched.gamma <= 1, "scheduler.gamma", "in (0, 1]")
    if sched.name == "onecycle":
        need(0 < sched.pct_start < 1, "scheduler.pct_start", "in (0, 1)")
    if sched.name == "cosine":
        need(sched.min_lr >= 0, "scheduler.min_lr", "0 or more")
