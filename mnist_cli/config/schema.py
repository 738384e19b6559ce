"""The typed config schema: one dataclass per command and per group option, stored in Hydra's ConfigStore.

The schema holds names and types only; every value lives in the YAML under conf/, the one place a
user reads them (tests/config/test_config.py fails when a field gets a default here or a YAML misses a key).
Imports only hydra/omegaconf, never torch: `mnist train --help` and `--cfg job` stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mnist_cli.config.resolvers import register_resolvers

# ---- groups: conf/<group>/<option>.yaml gives the values ----------------------------------


@dataclass
class AugmentConfig:
    """What model.augment=true does to training images (augment.py), per dataset."""

    shift: int = MISSING  # random shifts of up to N pixels
    flip: bool = MISSING  # mirror half of the images left-right
    rotate: float = MISSING  # random rotation within ± degrees
    scale: float = MISSING  # random zoom within 1 ± scale
    erase: float = MISSING  # probability of blanking one random rectangle
    shear: float = MISSING  # slant by a horizontal shear factor within ± shear
    stroke: float = MISSING  # probability of a stroke one pixel thicker or thinner


@dataclass
class DatasetConfig:
    name: str = MISSING  # mnist | fashion_mnist | kmnist | emnist | qmnist | folder
    folder: Optional[str] = MISSING  # torchvision's folder under data.root (MNIST, ...); null: an image folder
    classes: Optional[List[str]] = MISSING  # null: from the data (the class folders; EMNIST: its split)
    mean: Optional[float] = MISSING  # of the training images on a 0..1 scale; null: measured on them
    std: Optional[float] = MISSING
    prepare: str = MISSING  # how an image file becomes a 28x28 input: digit | object | resize
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    test_time_flip: bool = MISSING  # evaluate and predict on each image and its mirror, averaging the logits


@dataclass
class EmnistDatasetConfig(DatasetConfig):
    split: str = MISSING  # digits | letters | balanced | byclass | bymerge | mnist


@dataclass
class QmnistDatasetConfig(DatasetConfig):
    test_part: str = MISSING  # all | test10k | test50k: which of QMNIST's 60,000 test images split=test reads


@dataclass
class FolderDatasetConfig(DatasetConfig):
    """A folder of image files with one subfolder per class (datasets/image_folder.py)."""

    path: Optional[str] = MISSING  # required: null is refused
    val_fraction: float = MISSING  # of each class, held out for validation when there is no val/ folder
    test_fraction: float = MISSING  # of each class, held out for testing when there is no train/ folder
    max_bad_fraction: float = MISSING  # refuse the folder when more of its files than this cannot be read
    cache: bool = MISSING  # keep the decoded images in mnist-cli's cache folder
    workers: Optional[int] = MISSING  # processes decoding images; null: one per core


@dataclass
class MLPConfig:
    name: str = MISSING
    hidden: List[int] = MISSING
    activation: str = MISSING
    dropout: float = MISSING
    augment: bool = MISSING


@dataclass
class CNNConfig:
    name: str = MISSING
    channels: List[int] = MISSING
    convs_per_block: int = MISSING
    hidden: int = MISSING
    dropout: float = MISSING
    augment: bool = MISSING


@dataclass
class LeNetConfig:
    name: str = MISSING
    augment: bool = MISSING


@dataclass
class OptimizerConfig:
    """What every optimizer takes; the others add their own torch arguments."""

    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass
class FusedOptimizerConfig(OptimizerConfig):
    """An optimizer torch has a fused kernel for (sgd, adam, adamw, adagrad)."""

    fused: bool = MISSING  # one fused kernel per step where torch has one for the device; false: foreach


@dataclass
class SGDConfig(FusedOptimizerConfig):
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class AdamConfig(FusedOptimizerConfig):  # also AdamW's: the same arguments
    betas: List[float] = MISSING
    eps: float = MISSING


@dataclass
class RMSpropConfig(OptimizerConfig):
    alpha: float = MISSING
    momentum: float = MISSING
    eps: float = MISSING


@dataclass
class AdagradConfig(FusedOptimizerConfig):
    lr_decay: float = MISSING
    eps: float = MISSING


@dataclass
class AdadeltaConfig(OptimizerConfig):
    rho: float = MISSING
    eps: float = MISSING


@dataclass
class SchedulerConfig:  # `none` has nothing else
    name: str = MISSING


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    step_epochs: int = MISSING  # multiply the lr by gamma every step_epochs epochs
    gamma: float = MISSING


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    min_lr: float = MISSING


@dataclass
class OneCycleSchedulerConfig(SchedulerConfig):
    pct_start: float = MISSING  # fraction of all steps spent warming up to optimizer.lr
    div_factor: float = MISSING
    final_div_factor: float = MISSING


# ---- the commands: conf/<command>.yaml gives the values -----------------------------------
# A nested section is a field holding its (value-free) schema, so its keys are typed too.


@dataclass
class DataConfig:
    root: str = MISSING
    download: bool = MISSING
    val_size: Optional[int] = MISSING  # null: 1/12 of the training images (5,000 of 60,000); 0: no validation
    split_seed: int = MISSING  # the validation split never changes with `seed`
    limit: Optional[int] = MISSING


@dataclass
class CheckpointConfig:
    every_n_steps: Optional[int] = MISSING  # also write last.pt every N steps (long epochs); null: per epoch


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = MISSING  # stop after this many epochs without a better val accuracy
    min_delta: float = MISSING  # an improvement smaller than this does not count


@dataclass
class TensorBoardLoggerConfig:
    log_every_n_steps: int = MISSING  # the training loss as a scalar every N steps (0: per epoch only)


@dataclass
class MLflowLoggerConfig:
    tracking_uri: Optional[str] = MISSING  # null: sqlite:///<outputs_dir>/mlflow.db
    experiment: Optional[str] = MISSING  # null: the dataset's name; a sweep's jobs: "<dataset> sweep <folder>"


@dataclass
class LoggerConfig:
    """The `logger` group: each option fills its own key (logger=[tensorboard,mlflow] fills both);
    a logger not chosen is null. csv (metrics.jsonl/csv) is always written and has no key."""

    tensorboard: Optional[TensorBoardLoggerConfig] = MISSING
    mlflow: Optional[MLflowLoggerConfig] = MISSING


@dataclass
class TrainConfig:
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    device: str = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    seed: int = MISSING
    channels_last: bool = MISSING  # memory layout for conv nets
    precision: str = MISSING  # fp32 | bf16 (autocast for forward passes; weights and optimizer stay fp32)
    label_smoothing: float = MISSING  # of the training loss (validation and test losses stay plain cross-entropy)
    ema_decay: Optional[float] = MISSING  # keep a moving average of the weights (ema.py); null: none
    threads: Optional[int] = MISSING  # torch CPU threads; null: torch's default, or cores / parallel jobs
    optimized_metric: str = MISSING  # what train returns to a sweeper, from summary.json
    outputs_dir: str = MISSING
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    resume: Optional[str] = MISSING  # a run folder, a checkpoint or latest: continue that run
    logger: LoggerConfig = field(default_factory=LoggerConfig)


@dataclass
class SourceDataConfig:
    """Where eval/predict read a run's dataset: null root means the root the run trained with."""

    root: Optional[str] = MISSING
    download: bool = MISSING


@dataclass
class UseRunConfig:
    """What eval and predict share: the run to use, the data it reads and where it runs."""

    run: Any = MISSING  # a run folder, a checkpoint file, latest, a list of them, or a sweep folder with top (the YAML leaves it ???: required)
    top: Optional[int] = MISSING  # with a sweep folder as run: an ensemble of its best `top` runs
    split: str = MISSING  # test | val | train
    format: str = MISSING  # table | json
    device: str = MISSING
    batch_size: int = MISSING
    outputs_dir: str = MISSING
    data: SourceDataConfig = field(default_factory=SourceDataConfig)


@dataclass
class EvalConfig(UseRunConfig):
    min_accuracy: Optional[float] = MISSING
    max_ece: Optional[float] = MISSING  # exit 1 when the expected calibration error is above it
    calibrate: bool = MISSING  # fit a temperature on the validation split and store it in the run


@dataclass
class PredictConfig(UseRunConfig):
    inputs: List[str] = MISSING  # image files and folders
    indices: List[int] = MISSING  # samples of `split`
    recursive: bool = MISSING
    topk: int = MISSING
    save_inputs: bool = MISSING


@dataclass
class ExportConfig:
    run: Any = MISSING
    top: Optional[int] = MISSING
    format: str = MISSING  # pt2 | torchscript | onnx
    output: Optional[str] = MISSING
    outputs_dir: str = MISSING


@dataclass
class ServeConfig:
    run: Any = MISSING
    top: Optional[int] = MISSING
    host: str = MISSING
    allowed_hosts: List[str] = MISSING
    port: int = MISSING
    topk: int = MISSING
    device: str = MISSING
    threads: Optional[int] = MISSING
    max_body_mb: float = MISSING
    max_batch: int = MISSING
    batch_window_ms: float = MISSING
    outputs_dir: str = MISSING


COMMAND_SCHEMAS = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "predict": PredictConfig,
    "export": ExportConfig,
    "serve": ServeConfig,
}

GROUP_SCHEMAS = {
    "model": {"mlp": MLPConfig, "cnn": CNNConfig, "lenet": LeNetConfig},
    "optimizer": {
        "sgd": SGDConfig,
        "adam": AdamConfig,
        "adamw": AdamConfig,
        "rmsprop": RMSpropConfig,
        "adagrad": AdagradConfig,
        "adadelta": AdadeltaConfig,
    },
    "scheduler": {
        "none": SchedulerConfig,
        "step": StepSchedulerConfig,
        "cosine": CosineSchedulerConfig,
        "onecycle": OneCycleSchedulerConfig,
    },
    "dataset": {
        "mnist": DatasetConfig,
        "fashion_mnist": DatasetConfig,
        "kmnist": DatasetConfig,
        "emnist": EmnistDatasetConfig,
        "qmnist": QmnistDatasetConfig,
        "folder": FolderDatasetConfig,
    },
}
CHOSEN_GROUPS = (*GROUP_SCHEMAS, "experiment")  # the groups a command line picks an option of (model=mlp)


def register_configs() -> None:
    """Store the schemas: `<command>_schema` for each command's root, `schema/<group>/<option>` for each YAML option."""
    register_resolvers()
    store = ConfigStore.instance()
    for command, schema in COMMAND_SCHEMAS.items():
        store.store(name=f"{command}_schema", node=schema)
    for group, options in GROUP_SCHEMAS.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)


# ---- the names a string key may take (the checks refuse others) ----------------------------
# Names only: training/models.py maps ACTIVATIONS to torch modules and inference/export.py the export
# formats to writers (tests/config/test_config.py fails when the two lists disagree).
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "silu")
SPLITS = ("test", "val", "train")
PRECISIONS = ("fp32", "bf16")
PREPARATIONS = ("digit", "object", "resize")  # datasets/images.py maps them to functions
EMNIST_SPLITS = ("digits", "letters", "balanced", "byclass", "bymerge", "mnist")
QMNIST_TEST_PARTS = ("all", "test10k", "test50k")
OUTPUT_FORMATS = {"eval": ("table", "json"), "predict": ("table", "json"), "export": ("pt2", "torchscript", "onnx")}


def schema_keys(schema: Any) -> List[str]:
    """Return every dotted key of a dataclass schema, one level of nested sections included."""
    tree = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False, throw_on_missing=False)
    keys = []
    for name, value in tree.items():
        keys.append(name)
        if isinstance(value, dict):
            keys += [f"{name}.{k}" for k in value]
    return keys


def known_keys(cfg: DictConfig) -> List[str]:
    """Return the dotted keys `mnist train` understands for the group options `cfg` chose."""
    keys = schema_keys(TrainConfig)
    for group, options in GROUP_SCHEMAS.items():
        schema = options.get(OmegaConf.select(cfg, f"{group}.name", default=None))
        if schema is not None:
            keys += [f"{group}.{k}" for k in schema_keys(schema)]
    return keys
