"""Bad input: one clear message on stderr, exit 2, no traceback, no run folder left behind."""

from __future__ import annotations


import pytest
import torch

from conftest import IDX_NAMES, run_mnist

CASES = {
    "unknown command": (["fit"], "'fit' is not a command"),
    "unknown group option": (["train", "model=resnet"], "Available options in 'model'"),
    "wrong type": (["train", "epochs=abc"], "epochs"),
    "negative lr": (["train", "optimizer.lr=-1"], "optimizer.lr must be greater than 0"),
    "zero batch size": (["train", "batch_size=0"], "batch_size must be at least 1"),
    "unknown key": (["train", "epochz=3"], "epochz"),
    "dropout out of range": (["train", "model=mlp", "model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    "bad device name": (["train", "device=tpu"], "device must be one of"),
    "unknown precision": (["train", "precision=fp16"], "precision must be one of fp32, bf16"),
    "val_size too large": (["train", "data.limit=100", "data.val_size=100"], "data.val_size=100 leaves no training images"),
    "batch larger than data": (["train", "data.limit=100", "data.val_size=10", "batch_size=500"], "batch_size=500 is larger"),
    "eval on an unknown device": (["eval", "run=latest", "device=tpu"], "device must be one of"),
    "predict with batch size 0": (["predict", "run=latest", "indices=[0]", "batch_size=0"], "batch_size must be at least 1"),
}
if not torch.cuda.is_available():
    CASES["cuda without a GPU"] = (["train", "device=cuda"], "no CUDA GPU is available")


@pytest.mark.parametrize("args,message", CASES.values(), ids=CASES.keys())
def test_bad_input_exits_2_with_a_clear_message(args, message, tmp_path, cli_env):
    result = run_mnist(*args, cwd=tmp_path, env=cli_env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list((tmp_path / "outputs").glob("*/*/*")), "a failed start left a run folder"


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
    assert "Could not read the FashionMNIST IDX files" in result.stderr
    assert "Traceback" not in result.stderr
