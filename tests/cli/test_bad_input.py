"""Bad input: one clear message on stderr, exit 2, no traceback, nothing left behind.

Two tiers. A mistake found by `config.check_config` is checked in-process (compose + check, milliseconds),
one case per rule. The way the message reaches the user (exit 2, stderr, no traceback, no files) is checked
by running `mnist`, once for each place in the command where a mistake is caught.
"""

from __future__ import annotations

import re

import pytest
import torch

from conftest import IDX_NAMES, run_mnist
from mnist_cli.cli.command_line import parse_command_line, refuse_before_hydra
from mnist_cli.config.checks import check_config
from mnist_cli.config.compose import compose
from mnist_cli.config.hydra_refusals import composition_problem
from mnist_cli.errors import UserError

# (command, overrides, what the sentence says): config.check_config refuses these before any work
CONFIG_MISTAKES = {
    "negative lr": ("train", ["optimizer.lr=-1"], "optimizer.lr must be greater than 0"),
    "infinite lr": ("train", ["optimizer.lr=inf"], "optimizer.lr must be a finite number"),
    "zero epochs": ("train", ["epochs=0"], "epochs must be at least 1"),
    "threads beyond what OpenMP can start": ("train", ["threads=40000"], "threads must be null or from 1 to 1024"),
    "zero batch size": ("train", ["batch_size=0"], "batch_size must be at least 1"),
    "a folder dataset without its path": ("train", ["dataset=folder"], "dataset=folder needs dataset.path=DIR"),
    "fractions that leave no training images": (
        "train",
        ["dataset=folder", "dataset.path=x", "dataset.val_fraction=0.5", "dataset.test_fraction=0.5"],
        "dataset.test_fraction must be less than 1 - dataset.val_fraction",
    ),
    "val_size for an image folder": (
        "train",
        ["dataset=folder", "dataset.path=x", "data.val_size=100"],
        "data.val_size must be null for an image folder",
    ),
    "an unknown preparation": (
        "train",
        ["dataset.prepare=crop"],
        "dataset.prepare must be one of digit, object, resize",
    ),
    "negative val_size": ("train", ["data.val_size=-1"], "data.val_size must be null"),
    "dropout out of range": ("train", ["model=mlp", "model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    "rmsprop alpha 1": ("train", ["optimizer=rmsprop", "optimizer.alpha=1"], "optimizer.alpha must be in [0, 1)"),
    "adam betas": ("train", ["optimizer=adam", "optimizer.betas=[0.9,1.2]"], "optimizer.betas must be two numbers"),
    "nesterov without momentum": (
        "train",
        ["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"],
        "optimizer.nesterov must be false when optimizer.momentum is 0",
    ),
    "early stopping without validation": (
        "train",
        ["data.val_size=0", "early_stopping.patience=3"],
        "early_stopping.patience must be null when data.val_size=0",
    ),
    "bad device name": ("train", ["device=tpu"], "device must be one of"),
    "unknown precision": ("train", ["precision=fp16"], "precision must be one of fp32, bf16"),
    "EMA decay of 1": ("train", ["ema_decay=1"], "ema_decay must be null or in (0, 1)"),
    "test-time flip without flips": ("train", ["dataset.test_time_flip=true"], "add dataset.augment.flip=true"),
    "test-time flip for an mlp": (
        "train",
        ["dataset=fashion_mnist", "model=mlp", "dataset.test_time_flip=true"],
        "dataset.test_time_flip does nothing while model.augment=false (mlp's default)",
    ),
    "test-time flip, augmentation off": (
        "train",
        ["dataset=fashion_mnist", "model.augment=false", "dataset.test_time_flip=true"],
        "dataset.test_time_flip does nothing while model.augment=false; add",
    ),
    "unknown optimized metric": ("train", ["optimized_metric=best.val_acc"], "optimized_metric must be one of"),
    "removed required key": ("train", ["~seed"], "needs seed"),
    "unknown key added": ("train", ["+epochz=3"], "did you mean epochs?"),
    "unknown group key added": ("train", ["+optimizer.betaz=[0.9,0.9]"], "did you mean optimizer.betas?"),
    "eval on an unknown device": ("eval", ["run=latest", "device=tpu"], "device must be one of"),
    "eval gate above 1": ("eval", ["run=latest", "min_accuracy=97"], "min_accuracy must be a fraction in [0, 1]"),
    "calibration gate above 1": ("eval", ["run=latest", "max_ece=2"], "max_ece must be a fraction in [0, 1]"),
    "an ensemble of none": ("eval", ["run=latest", "top=0"], "top must be null or at least 1"),
    "eval without a run": ("eval", [], "eval needs run="),
    "predict with batch size 0": (
        "predict",
        ["run=latest", "indices=[0]", "batch_size=0"],
        "batch_size must be at least 1",
    ),
    "predict with nothing to predict": ("predict", ["run=latest"], "predict needs inputs="),
    "predict top 0": ("predict", ["run=latest", "indices=[0]", "topk=0"], "topk must be at least 1"),
    "export to an unknown format": (
        "export",
        ["run=latest", "format=tflite"],
        "format must be one of pt2, torchscript, onnx",
    ),
}


@pytest.mark.parametrize("command,overrides,message", CONFIG_MISTAKES.values(), ids=CONFIG_MISTAKES.keys())
def test_a_config_mistake_is_refused_in_one_sentence(command, overrides, message):
    cfg = compose(command, overrides)
    with pytest.raises(UserError, match=re.escape(message)) as refused:
        check_config(cfg, command, overrides)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "optimizer.lr=interval(0.001,0.01)"], "needs a search sweeper"),
        (["--shell-completion", "install=bash"], "shell completion is not supported"),
        (
            ["-m", "experiment=mnist_best", "model=choice(cnn,mlp)"],
            "experiment=mnist_best sets model.channels, which model=mlp does not have",
        ),
    ],
)
def test_a_command_line_hydra_would_misread_is_refused_before_it_starts(args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        refuse_before_hydra(parse_command_line("train", args))


# (command, overrides, the sentence): Hydra refuses these while composing; its own message runs over lines
COMPOSITION_MISTAKES = {
    "unknown group option": (
        "train",
        ["model=resnet"],
        "model=resnet is not an option of model; choose one of cnn, lenet, mlp.",
    ),
    "unknown launcher": (
        "train",
        ["hydra/launcher=nope"],
        "hydra/launcher=nope is not an option of hydra/launcher; choose one of",
    ),
    "wrong type": ("train", ["epochs=abc"], "epochs=abc: Value 'abc' of type 'str' could not be converted to Integer."),
    "list for a number": (
        "train",
        ["optimizer=adam", "optimizer.betas=3"],
        "optimizer.betas=3: Invalid value assigned",
    ),
    "unknown key": ("train", ["epochz=3"], "epochz is not a key of mnist train; did you mean epochs?"),
    "unknown key of a group option": ("train", ["optimizer=sgd", "optimizer.lrr=3"], "did you mean optimizer.lr?"),
    "unknown eval key": ("eval", ["run=latest", "splt=val"], "splt is not a key of mnist eval; did you mean split?"),
    "unreadable value": ("train", ["model.hidden=[64"], "model.hidden=[64 cannot be read as KEY=VALUE"),
    "a key without a value": ("train", ["model"], "model cannot be read as KEY=VALUE"),
    "unknown logger": (
        "train",
        ["logger=wandb"],
        "logger=wandb is not an option of logger; choose one of csv, mlflow, tensorboard.",
    ),
    "a preset with another model": (
        "train",
        ["experiment=mnist_best", "model=mlp"],
        "experiment=mnist_best sets model.channels, which model=mlp does not have; leave model= out",
    ),
    "a setting of a logger not chosen": (
        "train",
        ["logger=tensorboard", "logger.mlflow.tracking_uri=x"],
        "logger.mlflow.tracking_uri sets the mlflow logger, which is not chosen; add logger=mlflow",
    ),
}


@pytest.mark.parametrize("command,overrides,message", COMPOSITION_MISTAKES.values(), ids=COMPOSITION_MISTAKES.keys())
def test_a_command_line_hydra_refuses_gets_one_sentence(command, overrides, message):
    sentence = composition_problem(command, overrides)
    assert sentence is not None and message in sentence and "\n" not in sentence, sentence


def test_a_command_line_that_composes_has_no_problem():
    assert composition_problem("train", ["model=mlp", "optimizer=sgd", "optimizer.lr=0.1"]) is None


# One case for each place a mistake is caught, in the order `mnist` meets them.
PROCESS_MISTAKES = {
    "unknown command": (["fit"], "'fit' is not a command"),  # cli.main, before any import
    "interval without a search sweeper": (
        ["train", "-m", "optimizer.lr=interval(0.001,0.01)"],
        "needs a search sweeper",
    ),
    "unknown group option": (
        ["train", "model=resnet"],
        "model=resnet is not an option of model; choose one of cnn, lenet, mlp",
    ),
    "wrong type": (["train", "epochs=abc"], "epochs=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    "unknown key": (
        ["train", "epochz=3"],
        "epochz is not a key of mnist train; did you mean epochs?",
    ),  # Hydra refuses these
    "a key without a value": (["train", "--cfg", "job", "model"], "model cannot be read as KEY=VALUE"),
    "a sweep option a preset does not fit": (
        ["train", "-m", "experiment=mnist_best", "model=cnn,mlp"],
        "experiment=mnist_best sets model.channels, which model=mlp does not have",
    ),
    "value out of range": (["train", "optimizer.lr=-1"], "optimizer.lr must be greater than 0"),  # check_config
    "eval value out of range": (["eval", "run=latest", "device=tpu"], "device must be one of"),
    "predict value out of range": (
        ["predict", "run=latest", "indices=[0]", "batch_size=0"],
        "batch_size must be at least 1",
    ),
    "val_size too large": (
        ["train", "data.limit=100", "data.val_size=100"],
        "data.val_size=100 leaves no training images",
    ),
    "batch larger than data": (
        ["train", "data.limit=100", "data.val_size=10", "batch_size=500"],
        "batch_size=500 is larger",
    ),
    "augmenting with augment off": (
        ["train", "model=mlp", "dataset.augment.rotate=15"],
        "dataset.augment.rotate does nothing while model.augment=false (mlp's default); add model.augment=true.",
    ),
    "a file store for mlflow": (
        ["train", "logger=mlflow", "logger.mlflow.tracking_uri=file:///tmp/mlruns"],
        "MLflow 3 no longer takes new file stores (got 'file:///tmp/mlruns').",
    ),
}
if not torch.cuda.is_available():  # found when the device is resolved, after the config
    PROCESS_MISTAKES["cuda without a GPU"] = (["train", "device=cuda"], "no CUDA GPU is available")


@pytest.mark.parametrize("name", PROCESS_MISTAKES)
def test_bad_input_exits_2_with_a_clear_message_and_leaves_nothing(name, tmp_path, cli_env):
    args, message = PROCESS_MISTAKES[name]
    result = run_mnist(*args, cwd=tmp_path, env=cli_env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "a refused command left files behind"


@pytest.mark.parametrize("download", ["false", "true"])
def test_missing_data_offline_names_the_folder_and_files(download, tmp_path, cli_env):
    empty_root = tmp_path / "nowhere"
    env = dict(cli_env, no_proxy="*", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    result = run_mnist("train", f"data.root={empty_root}", f"data.download={download}", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert str(empty_root / "MNIST" / "raw") in result.stderr
    for name in set(IDX_NAMES.values()):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_truncated_idx_file_is_named(tmp_path, data_root, cli_env):
    root = tmp_path / "root"
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_NAMES.values():
        (raw / name).write_bytes((data_root / "FashionMNIST" / "raw" / name).read_bytes())
    images = raw / IDX_NAMES[("train", "images")]
    images.write_bytes(images.read_bytes()[:5000])
    result = run_mnist("train", "dataset=fashion_mnist", f"data.root={root}", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2, result.stderr
    assert f"{images} is 5000 bytes long where its header says 470416 (600 images): it is cut short" in result.stderr
    assert "Traceback" not in result.stderr
