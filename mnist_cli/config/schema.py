"""Typed config schema (Hydra ConfigStore) and the range checks types cannot express.

The schema holds names and types only; every value lives in the YAML under conf/, the one place a
user reads them (tests/test_config.py fails when a field gets a default here or a YAML misses a key).
Imports only hydra/omegaconf, never torch: `mnist train --help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import copy
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mnist_cli.config.resolvers import register_resolvers
from mnist_cli.errors import UserError
from mnist_cli.runs.metrics import SUMMARY_METRICS

# ---- groups: conf/<group>/<option>.yaml gives the values ----------------------------------


@dataclass
class AugmentConfig:
    """What model.augment=true does to training images (augment.py), per dataset."""

    shift: int = MISSING  # random shifts of up to N pixels
    flip: bool = MISSING  # mirror half of the images left-right
    rotate: float = MISSING  # random rotation within ± degrees
    scale: float = MISSING  # random zoom within 1 ± scale
    erase: float = MISSING  # probability of blanking one random rectangle


@dataclass
class DatasetConfig:
    name: str = MISSING  # "mnist" | "fashion_mnist"
    folder: str = MISSING  # torchvision's folder under data.root: MNIST, FashionMNIST
    classes: List[str] = MISSING
    mean: float = MISSING
    std: float = MISSING
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    test_time_flip: bool = MISSING  # evaluate and predict on each image and its mirror, averaging the logits


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

    run: str = MISSING  # a run folder, a checkpoint file, or latest (the YAML leaves it ???: required)
    split: str = MISSING  # test | val | train
    format: str = MISSING  # table | json
    device: str = MISSING
    batch_size: int = MISSING
    outputs_dir: str = MISSING
    data: SourceDataConfig = field(default_factory=SourceDataConfig)


@dataclass
class EvalConfig(UseRunConfig):
    min_accuracy: Optional[float] = MISSING


@dataclass
class PredictConfig(UseRunConfig):
    inputs: List[str] = MISSING  # image files and folders
    indices: List[int] = MISSING  # samples of `split`
    recursive: bool = MISSING
    topk: int = MISSING
    save_inputs: bool = MISSING


@dataclass
class ExportConfig:
    run: str = MISSING
    format: str = MISSING  # pt2 | torchscript | onnx
    output: Optional[str] = MISSING
    outputs_dir: str = MISSING


@dataclass
class ServeConfig:
    run: str = MISSING
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
    "dataset": {"mnist": DatasetConfig, "fashion_mnist": DatasetConfig},
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


@contextmanager
def _hydra() -> Iterator[None]:
    """Hydra ready to compose conf/: the running app's (resume runs inside it), else our own."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside `mnist train`: its search path is mnist_cli.conf
        yield
        return
    register_configs()
    with initialize_config_module(config_module="mnist_cli.conf", version_base="1.3"):
        yield


def compose(command: str, overrides: Sequence[str] = (), with_hydra: bool = False) -> DictConfig:
    """Return conf/<command>.yaml composed with `overrides`, as `mnist <command> --cfg job` shows it
    (with_hydra: with the `hydra` node too, as `--cfg all` shows it)."""
    from hydra import compose as hydra_compose

    with _hydra():
        return hydra_compose(config_name=command, overrides=list(overrides), return_hydra_config=with_hydra)


# Keys whose YAML value is not how a run from before the key existed ran: such a run continues
# without them (optimizer.fused absent: torch's default implementation, as it trained).
NOT_FILLED_ON_RESUME = ("optimizer.fused",)
# ... or with the value it ran with: before dataset.augment, model.augment meant 2-pixel shifts on every
# dataset (FashionMNIST's default is no shifts now)
FILLED_AS_BEFORE = {
    "dataset.augment": {"shift": 2, "flip": False, "rotate": 0.0, "scale": 0.0, "erase": 0.0},
    "dataset.test_time_flip": False,
}


def defaults_for(stored: Dict[str, Any]) -> DictConfig:
    """Return today's train.yaml values for the group options `stored` (a run's saved config) chose,
    untyped: merged under `stored` they fill the keys added to mnist-cli since that run started.

    A group `stored` lacks stays ??? (its config was cut short: resume refuses it); a group option
    that no longer exists gets nothing; keys in NOT_FILLED_ON_RESUME are left out, and those in
    FILLED_AS_BEFORE get the value runs had before the key existed.
    """
    chosen = {}
    for group, options in GROUP_SCHEMAS.items():
        node = stored.get(group)
        if isinstance(node, dict) and node.get("name") in options:
            chosen[group] = node["name"]
    values = OmegaConf.to_container(compose("train", [f"{g}={c}" for g, c in chosen.items()]), resolve=False)
    for group in GROUP_SCHEMAS:
        if group not in chosen:
            values[group] = {} if group in stored else MISSING
    for key in NOT_FILLED_ON_RESUME:
        section, name = key.split(".")
        if isinstance(values[section], dict):
            values[section].pop(name, None)
    for key, before in FILLED_AS_BEFORE.items():
        section, name = key.split(".")
        if isinstance(values[section], dict):
            values[section][name] = copy.deepcopy(before)
    return OmegaConf.create(values)


# ---- range checks -------------------------------------------------------------------------

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


SPLITS = ("test", "val", "train")
PRECISIONS = ("fp32", "bf16")
OUTPUT_FORMATS = {"eval": ("table", "json"), "predict": ("table", "json"), "export": ("pt2", "torchscript", "onnx")}


def trained_on_mirrors(cfg) -> bool:
    """Whether a run config trains on mirrored images (model.augment with dataset.augment.flip): the
    condition for dataset.test_time_flip (models.for_inference)."""
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
        given = [o.key_or_group for o in parsed]
        flip_asked = (
            "dataset.test_time_flip" in given and OmegaConf.select(cfg, "dataset.test_time_flip") is True
        )  # false is harmless
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
    if command == "serve":
        _validate_serve(cfg, need)
        return
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
    if not added:  # the common case: nothing to look up
        return
    known = set(known_keys(cfg))
    for key in added:
        if key in known or key in (*CHOSEN_GROUPS, "hparams_search") or key.startswith("hydra"):
            continue
        raise UserError(_not_a_key("train", key, known))


def _not_a_key(command: str, key: str, known) -> str:
    """`key is not a key of mnist <command>`, with the closest known key when there is one."""
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; `mnist {command} --help` lists every key."
    return f"{key} is not a key of mnist {command}{hint}"


def quoted_value(value) -> str:
    """`value` as a quoted Hydra override value (a quote inside it escaped): key='a path with spaces'."""
    return "'" + str(value).replace("'", "\\'") + "'"


def composition_problem(command: str, overrides: Sequence[str]) -> Optional[str]:
    """One sentence saying why conf/<command>.yaml does not compose with `overrides` (Hydra's own
    message runs over several lines), or None when it composes."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    def first_line(error: BaseException) -> str:
        return str(error).strip().splitlines()[0].rstrip(".") + "."

    try:
        compose(command, overrides, with_hydra=True)
        return None
    except MissingConfigException as error:  # model=resnet
        if not error.options:
            return first_line(error)
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"{group}={option} is not an option of {group}; choose one of {', '.join(error.options)}."
    except OverrideParseException as error:  # model.hidden=[64
        return (
            f"{error.override} cannot be read as KEY=VALUE ({first_line(error).rstrip('.')}); a value with brackets, "
            "braces, commas, quotes or = in it needs quotes: 'inputs=[\"scans/x (1).png\"]' or 'run=\"a,b\"'."
        )
    except Exception as error:  # Hydra's ConfigCompositionException, caused by OmegaConf's error on one key
        unchosen = _unchosen_logger_key(overrides) or _preset_key_missing(error, overrides)
        if unchosen:
            return unchosen
        cause, key = error.__cause__, getattr(error.__cause__, "full_key", None)
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:  # epochz=3
            choices = [o for o in overrides if o.split("=", 1)[0] in CHOSEN_GROUPS]  # model=mlp, ...
            try:
                composed = compose(command, choices)
                known = known_keys(composed) if command == "train" else _schema_keys(COMMAND_SCHEMAS[command])
            except Exception:
                known = []
            return _not_a_key(command, key, known)
        if isinstance(cause, OmegaConfBaseException) and key:  # epochs=abc
            given = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key)
            return f"{given}: {first_line(cause)}"
        return first_line(error)


def _preset_key_missing(error: Exception, overrides: Sequence[str]) -> Optional[str]:
    """experiment=mnist_best model=mlp: the preset sets a key (model.channels) the chosen option lacks.
    Hydra names both only in its message's text, so they are read from there; None for other errors."""
    preset = re.match(r"In 'experiment/(\w+)'", str(error))
    key = re.search(r"full_key: (\S+)", str(error))
    if not (preset and key):
        return None
    group = key[1].split(".")[0]
    chosen = next((o for o in overrides if o.split("=", 1)[0] == group), f"the {group} chosen")
    return (
        f"experiment={preset[1]} sets {key[1]}, which {chosen} does not have; "
        f"leave {group}= out to train the preset as it is, or set the keys yourself without the preset."
    )


def _unchosen_logger_key(overrides: Sequence[str]) -> Optional[str]:
    """`logger.mlflow.tracking_uri=...` without logger=mlflow: the sentence saying so, else None."""
    given = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in overrides if "=" in o}
    chosen = given.get("logger", "csv").strip("[]").replace(" ", "").split(",")
    for key in given:
        parts = key.split(".")
        if parts[0] == "logger" and len(parts) > 2 and parts[1] not in chosen:
            return f"{key} sets the {parts[1]} logger, which is not chosen; add logger={parts[1]} (several: 'logger=[tensorboard,mlflow]')."
    return None


def _validate_serve(cfg: DictConfig, need) -> None:
    need(0 <= cfg.port <= 65535, "port", "in 0..65535 (0: a free port)")
    need(cfg.topk >= 1, "topk", "at least 1")
    need(bool(_DEVICE.match(cfg.device)), "device", "one of auto, cpu, cuda, cuda:N, mps")
    need(cfg.threads is None or cfg.threads >= 1, "threads", "null or at least 1")
    need(cfg.max_body_mb > 0, "max_body_mb", "greater than 0")
    need(cfg.max_batch >= 1, "max_batch", "at least 1")
    need(0 <= cfg.batch_window_ms <= 1000, "batch_window_ms", "in 0..1000")


def _validate_train(cfg: DictConfig, need) -> None:
    need(cfg.epochs >= 1, "epochs", "at least 1")
    need(cfg.batch_size >= 1, "batch_size", "at least 1")
    need(cfg.eval_batch_size >= 1, "eval_batch_size", "at least 1")
    need(bool(_DEVICE.match(cfg.device)), "device", "one of auto, cpu, cuda, cuda:N, mps")
    need(
        cfg.data.val_size is None or cfg.data.val_size >= 0,
        "data.val_size",
        "null (1/12 of the images), 0 (no validation) or more",
    )
    need(cfg.data.limit is None or cfg.data.limit >= 2, "data.limit", "null or at least 2")
    every = cfg.checkpoint.every_n_steps
    need(every is None or every >= 1, "checkpoint.every_n_steps", "null or at least 1")
    uri = cfg.logger.mlflow.tracking_uri if cfg.logger.mlflow is not None else None
    need(
        uri is None or ("://" in uri and not uri.startswith("file:")),
        "logger.mlflow.tracking_uri",
        "null, a database URL (sqlite:///path/mlflow.db) or a server (http://host:5000); MLflow 3 no longer takes new file stores",
    )
    if cfg.logger.tensorboard is not None:
        need(
            cfg.logger.tensorboard.log_every_n_steps >= 0,
            "logger.tensorboard.log_every_n_steps",
            "0 (per epoch only) or more",
        )
    need(
        cfg.early_stopping.patience is None or cfg.early_stopping.patience >= 1,
        "early_stopping.patience",
        "null or at least 1",
    )
    need(
        cfg.early_stopping.patience is None or cfg.data.val_size != 0,
        "early_stopping.patience",
        "null when data.val_size=0 (early stopping watches the validation accuracy)",
    )
    need(cfg.early_stopping.min_delta >= 0, "early_stopping.min_delta", "0 or more")
    need(cfg.threads is None or cfg.threads >= 1, "threads", "null or at least 1")
    need(cfg.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    need(0 <= cfg.label_smoothing < 1, "label_smoothing", "in [0, 1)")
    need(cfg.ema_decay is None or 0 < cfg.ema_decay < 1, "ema_decay", "null or in (0, 1), e.g. 0.999")
    aug = cfg.dataset.augment
    need(0 <= aug.shift <= 8, "dataset.augment.shift", "0 to 8 pixels")
    need(0 <= aug.rotate <= 180, "dataset.augment.rotate", "0 to 180 degrees")
    need(0 <= aug.scale < 1, "dataset.augment.scale", "in [0, 1)")
    need(0 <= aug.erase <= 1, "dataset.augment.erase", "a probability in [0, 1]")
    need(cfg.optimized_metric in SUMMARY_METRICS, "optimized_metric", f"one of {', '.join(SUMMARY_METRICS)}")

    opt = cfg.optimizer
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

    model = cfg.model
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
