"""Typed config schema (Hydra ConfigStore) and the range checks types cannot express.

Imports only hydra/omegaconf, never torch: `mnist train --help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mnist_cli.errors import UserError
from mnist_cli.metrics import SUMMARY_METRICS


def cache_dir() -> str:
    """Return mnist-cli's per-user cache folder ($XDG_CACHE_HOME/mnist-cli or ~/.cache/mnist-cli)."""
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-cli")


def default_data_root() -> str:
    """Return $MNIST_DATA_ROOT if set, else the per-user cache folder for datasets."""
    return os.environ.get("MNIST_DATA_ROOT") or str(Path(cache_dir()) / "data")


RUN_NAME_ENV = "MNIST_CLI_RUN_NAME"


def run_name() -> str:
    """`<YYYY-MM-DD>/<HH-MM-SS>-<random id>`, fixed for the whole process and its children.

    Hydra resolves the run/sweep folder more than once, and the joblib launcher resolves it again
    in each worker process; keeping the first value in the environment makes it one folder.
    """
    if RUN_NAME_ENV not in os.environ:
        os.environ[RUN_NAME_ENV] = time.strftime("%Y-%m-%d/%H-%M-%S-") + os.urandom(3).hex()
    return os.environ[RUN_NAME_ENV]


def config_groups_text() -> str:
    """One line per config group with its options, read from the YAML files (for --help)."""
    conf = importlib.resources.files("mnist_cli.conf")
    lines = []
    for group in sorted(p.name for p in conf.iterdir() if p.is_dir() and not p.name.startswith("_")):
        options = sorted(f.name[: -len(".yaml")] for f in conf.joinpath(group).iterdir() if f.name.endswith(".yaml"))
        if options:  # conf/hydra/ holds only launcher presets, listed in the footer
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_resolvers() -> None:
    """Register the ${...} resolvers the YAML files use; safe to call twice."""
    if not OmegaConf.has_resolver("mnist_data_root"):
        OmegaConf.register_new_resolver("mnist_data_root", default_data_root)
    if not OmegaConf.has_resolver("mnist_config_groups"):
        OmegaConf.register_new_resolver("mnist_config_groups", config_groups_text)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)


# ---- groups -----------------------------------------------------------------------------


@dataclass
class DatasetConfig:
    name: str = MISSING  # "mnist" | "fashion_mnist"
    folder: str = MISSING  # torchvision's folder under data.root: MNIST, FashionMNIST
    classes: List[str] = MISSING
    mean: float = MISSING
    std: float = MISSING


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [1024, 1024])
    activation: str = "relu"
    dropout: float = 0.2
    augment: bool = False


@dataclass
class CNNConfig:
    name: str = "cnn"
    channels: List[int] = field(default_factory=lambda: [32, 64, 128])
    hidden: int = 128
    dropout: float = 0.25
    augment: bool = True


@dataclass
class LeNetConfig:
    name: str = "lenet"
    augment: bool = True


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    fused: bool = True  # one fused kernel per step where torch has one for the device; false: foreach


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = 2e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    fused: bool = True  # one fused kernel per step where torch has one for the device; false: foreach


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = 1e-2


@dataclass
class RMSpropConfig:
    name: str = "rmsprop"
    lr: float = 1e-3
    alpha: float = 0.99
    momentum: float = 0.0
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class AdagradConfig:
    name: str = "adagrad"
    lr: float = 2e-2
    lr_decay: float = 0.0
    eps: float = 1e-10
    weight_decay: float = 0.0
    fused: bool = True  # one fused kernel per step where torch has one for the device; false: foreach


@dataclass
class AdadeltaConfig:
    name: str = "adadelta"
    lr: float = 1.0
    rho: float = 0.9
    eps: float = 1e-6
    weight_decay: float = 0.0


@dataclass
class NoSchedulerConfig:
    name: str = "none"


@dataclass
class StepSchedulerConfig:
    name: str = "step"
    step_epochs: int = 3  # multiply the lr by gamma every step_epochs epochs
    gamma: float = 0.3


@dataclass
class CosineSchedulerConfig:
    name: str = "cosine"
    min_lr: float = 0.0


@dataclass
class OneCycleSchedulerConfig:
    name: str = "onecycle"
    pct_start: float = 0.25  # fraction of all steps spent warming up to optimizer.lr
    div_factor: float = 25.0
    final_div_factor: float = 1e4


# ---- the train command -------------------------------------------------------------------


@dataclass
class DataConfig:
    root: str = "${mnist_data_root:}"
    download: bool = True
    val_size: Optional[int] = None  # null: 1/12 of the training images (5,000 of 60,000); 0: no validation
    split_seed: int = 0  # the validation split never changes with `seed`
    limit: Optional[int] = None


@dataclass
class CheckpointConfig:
    every_n_steps: Optional[int] = None  # also write last.pt every N steps (long epochs); null: per epoch


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = None  # stop after this many epochs without a better val accuracy
    min_delta: float = 0.0  # an improvement smaller than this does not count


@dataclass
class TrainConfig:
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    device: str = "auto"
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    seed: int = 0
    channels_last: bool = True  # memory layout for conv nets: about 1.6x faster on CPU
    precision: str = "fp32"  # fp32 | bf16 (autocast for forward passes; weights and optimizer stay fp32)
    threads: Optional[int] = None  # torch CPU threads; null: torch's default, or cores / parallel jobs
    optimized_metric: str = "best.val_accuracy"  # what train returns to a sweeper, from summary.json
    outputs_dir: str = "outputs"
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    resume: Optional[str] = None  # a run folder, a checkpoint or latest: continue that run


@dataclass
class SourceDataConfig:
    """Where eval/predict read a run's dataset: null root means the root the run trained with."""

    root: Optional[str] = "${oc.env:MNIST_DATA_ROOT,null}"
    download: bool = True


@dataclass
class UseRunConfig:
    """What eval and predict share: the run to use, the data it reads and where it runs."""

    run: str = MISSING  # a run folder, a checkpoint file, or latest
    split: str = "test"  # test | val | train
    format: str = "table"  # table | json
    device: str = "auto"
    batch_size: int = 1000
    outputs_dir: str = "outputs"
    data: SourceDataConfig = field(default_factory=SourceDataConfig)


@dataclass
class EvalConfig(UseRunConfig):
    min_accuracy: Optional[float] = None


@dataclass
class PredictConfig(UseRunConfig):
    inputs: List[str] = field(default_factory=list)  # image files and folders
    indices: List[int] = field(default_factory=list)  # samples of `split`
    recursive: bool = False
    topk: int = 3
    save_inputs: bool = False


@dataclass
class ExportConfig:
    run: str = MISSING
    format: str = "torchscript"  # torchscript | onnx
    output: Optional[str] = None
    outputs_dir: str = "outputs"


GROUP_SCHEMAS = {
    "model": {"mlp": MLPConfig, "cnn": CNNConfig, "lenet": LeNetConfig},
    "optimizer": {
        "sgd": SGDConfig,
        "adam": AdamConfig,
        "adamw": AdamWConfig,
        "rmsprop": RMSpropConfig,
        "adagrad": AdagradConfig,
        "adadelta": AdadeltaConfig,
    },
    "scheduler": {
        "none": NoSchedulerConfig,
        "step": StepSchedulerConfig,
        "cosine": CosineSchedulerConfig,
        "onecycle": OneCycleSchedulerConfig,
    },
    "dataset": {"mnist": DatasetConfig, "fashion_mnist": DatasetConfig},
}


def register_configs() -> None:
    """Store the schemas: `schema/<group>/<option>` for each YAML option, `train_schema` for the root."""
    register_resolvers()
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="eval_schema", node=EvalConfig)
    store.store(name="predict_schema", node=PredictConfig)
    store.store(name="export_schema", node=ExportConfig)
    for group, options in GROUP_SCHEMAS.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)


# ---- range checks -------------------------------------------------------------------------

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


SPLITS = ("test", "val", "train")
PRECISIONS = ("fp32", "bf16")
OUTPUT_FORMATS = {"eval": ("table", "json"), "predict": ("table", "json"), "export": ("torchscript", "onnx")}


def check_config(cfg: DictConfig, command: str, overrides: List[str]) -> None:
    """Raise UserError, in one sentence, for anything in `cfg` or the command line `overrides` that
    cannot work: a required key removed (~key), an unknown key added (+key=...), a value out of range."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf.errors import OmegaConfBaseException

    parsed = OverridesParser.create().parse_overrides(overrides)
    removed = [o.key_or_group for o in parsed if o.is_delete() and not o.key_or_group.startswith("hydra")]
    if removed:
        raise UserError(f"~{removed[0]}: mnist {command} needs {removed[0]}; give it another value instead of removing it.")
    if command == "train":
        refuse_unknown_keys(cfg, [o.key_or_group for o in parsed if o.is_add() or o.is_force_add()])
    try:
        validate(cfg, command)
    except OmegaConfBaseException as error:  # a key the checks need is missing or mistyped
        raise UserError(f"{getattr(error, 'full_key', None) or 'the config'}: {str(error).splitlines()[0]}") from None


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
    need(cfg.format in OUTPUT_FORMATS[command], "format", f"one of {', '.join(OUTPUT_FORMATS[command])}")
    if command == "export":
        return
    need(cfg.split in SPLITS, "split", f"one of {', '.join(SPLITS)}")
    need(cfg.batch_size >= 1, "batch_size", "at least 1")
    need(bool(_DEVICE.match(cfg.device)), "device", "one of auto, cpu, cuda, cuda:N, mps")
    if command == "eval":
        need(cfg.min_accuracy is None or 0 <= cfg.min_accuracy <= 1, "min_accuracy", "a fraction in [0, 1]")
    if command == "predict":
        if not cfg.inputs and not cfg.indices:
            raise UserError("predict needs inputs=[file.png,folder/] or indices=[0,1,2].")
        need(cfg.topk >= 1, "topk", "at least 1")


def _schema_keys(schema: Any) -> List[str]:
    """Every dotted key of a dataclass schema, nested ones included."""
    tree = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False, throw_on_missing=False)
    keys = []
    for name, value in tree.items():
        keys.append(name)
        if isinstance(value, dict):
            keys += [f"{name}.{k}" for k in value]
    return keys


def known_keys(cfg: DictConfig) -> List[str]:
    """The dotted keys `mnist train` understands for the chosen group options."""
    keys = _schema_keys(TrainConfig)
    for group, options in GROUP_SCHEMAS.items():
        schema = options.get(OmegaConf.select(cfg, f"{group}.name", default=None))
        if schema is not None:
            keys += [f"{group}.{k}" for k in _schema_keys(schema)]
    return keys


def refuse_unknown_keys(cfg: DictConfig, added: List[str]) -> None:
    """Raise UserError for a key added with +key=... that the schema does not know (a typo would
    otherwise be ignored), suggesting the closest known key."""
    import difflib

    known = set(known_keys(cfg))
    for key in added:
        if key in known or key in ("experiment", "hparams_search", *GROUP_SCHEMAS) or key.startswith("hydra"):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else "; `mnist train --help` lists every key."
        raise UserError(f"{key} is not a key of mnist train{hint}")


def _validate_train(cfg: DictConfig, need) -> None:
    need(cfg.epochs >= 1, "epochs", "at least 1")
    need(cfg.batch_size >= 1, "batch_size", "at least 1")
    need(cfg.eval_batch_size >= 1, "eval_batch_size", "at least 1")
    need(bool(_DEVICE.match(cfg.device)), "device", "one of auto, cpu, cuda, cuda:N, mps")
    need(cfg.data.val_size is None or cfg.data.val_size >= 0, "data.val_size", "null (1/12 of the images), 0 (no validation) or more")
    need(cfg.data.limit is None or cfg.data.limit >= 2, "data.limit", "null or at least 2")
    every = cfg.checkpoint.every_n_steps
    need(every is None or every >= 1, "checkpoint.every_n_steps", "null or at least 1")
    need(cfg.early_stopping.patience is None or cfg.early_stopping.patience >= 1, "early_stopping.patience", "null or at least 1")
    need(cfg.early_stopping.patience is None or cfg.data.val_size != 0, "early_stopping.patience",
         "null when data.val_size=0 (early stopping watches the validation accuracy)")
    need(cfg.early_stopping.min_delta >= 0, "early_stopping.min_delta", "0 or more")
    need(cfg.threads is None or cfg.threads >= 1, "threads", "null or at least 1")
    need(cfg.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    need(cfg.optimized_metric in SUMMARY_METRICS, "optimized_metric", f"one of {', '.join(SUMMARY_METRICS)}")

    opt = cfg.optimizer
    need(opt.lr > 0, "optimizer.lr", "greater than 0")
    need(opt.weight_decay >= 0, "optimizer.weight_decay", "0 or more")
    for key in ("momentum", "alpha", "rho"):
        if key in opt:
            need(0 <= opt[key] < 1, f"optimizer.{key}", "in [0, 1)")
    if "betas" in opt:
        need(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas), "optimizer.betas", "two numbers in [0, 1)")
    if opt.name == "sgd":
        need(not opt.nesterov or opt.momentum > 0, "optimizer.nesterov", "false when optimizer.momentum is 0")

    model = cfg.model
    if "dropout" in model:
        need(0 <= model.dropout < 1, "model.dropout", "in [0, 1)")
    if "hidden" in model and model.name == "mlp":
        need(all(h >= 1 for h in model.hidden), "model.hidden", "a list of positive layer sizes")
    if "activation" in model:
        need(model.activation in ACTIVATIONS, "model.activation", f"one of {', '.join(ACTIVATIONS)}")
    if "channels" in model:
        need(len(model.channels) == 3 and all(c >= 1 for c in model.channels), "model.channels", "three positive channel counts")
    if model.name == "cnn":
        need(model.hidden >= 1, "model.hidden", "at least 1")

    sched = cfg.scheduler
    if sched.name == "step":
        need(sched.step_epochs >= 1, "scheduler.step_epochs", "at least 1")
        need(0 < sched.gamma <= 1, "scheduler.gamma", "in (0, 1]")
    if sched.name == "onecycle":
        need(0 < sched.pct_start < 1, "scheduler.pct_start", "in (0, 1)")
    if sched.name == "cosine":
        need(sched.min_lr >= 0, "scheduler.min_lr", "0 or more")


# Names only: models.py maps them to torch modules (keeps torch out of this module).
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "silu")
