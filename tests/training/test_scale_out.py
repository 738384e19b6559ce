"""torchrun data-parallel training, the SLURM preset, and model export (the launchers run in test_readme.py, on the README's lines)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import run_mnist
from forked_mnist import TORCHRUN_ENTRY, run_forked

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
RUN = ["model=mlp", "model.hidden=[64]", "epochs=3", "batch_size=50", "data.val_size=100", "device=cpu"]


def torchrun(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """torchrun with 2 workers; the agent is forked from the test's server, each worker is a new `python -m mnist_cli`."""
    command = ["--standalone", "--nproc_per_node=2", "-m", "mnist_cli", "train", *args]
    return run_forked(TORCHRUN, command, cwd, dict(env, OMP_NUM_THREADS="1"), timeout=300, entry=TORCHRUN_ENTRY)


def final_val_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["final"]["val_accuracy"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_and_write_one_run_folder(tmp_path, cli_env):
    single = run_mnist("train", *RUN, cwd=tmp_path / ".", env=cli_env)
    assert single.returncode == 0, single.stderr
    single_dir = tmp_path / single.stdout.strip().splitlines()[-1]

    ddp_root = tmp_path / "ddp"
    ddp_root.mkdir()
    result = torchrun(*RUN, cwd=ddp_root, env=cli_env)
    assert result.returncode == 0, result.stderr
    runs = [p.parent for p in (ddp_root / "outputs" / "train").glob("*/*/summary.json")]
    assert len(runs) == 1, "only rank 0 writes a run folder"
    ddp_dir = runs[0]
    assert result.stdout.count("epoch 3/3") == 1  # one process speaks
    assert abs(final_val_accuracy(ddp_dir) - final_val_accuracy(single_dir)) <= 0.05
    evaluated = run_mnist("eval", f"run={ddp_dir}", "format=json", cwd=tmp_path, env=cli_env)  # loads in one process
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] > 0.5


def test_slurm_preset_composes(tmp_path, cli_env):
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher is not installed: pip install -e '.[slurm]'")
    result = run_mnist(
        "train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", cwd=tmp_path, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    assert (
        "SlurmLauncher" in result.stdout and "partition: gpu" in result.stdout and "gpus_per_node: 1" in result.stdout
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cli_env) -> Path:
    workdir = tmp_path_factory.mktemp("export")
    result = run_mnist("train", "model=cnn", "epochs=1", "data.val_size=100", "device=cpu", cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1]


def reference_logits(run_dir: Path, images: torch.Tensor) -> torch.Tensor:
    from mnist_cli.runs.checkpoints import load_trained

    model = load_trained(str(run_dir), "outputs", torch.device("cpu"))
    with torch.no_grad():
        return model.model((images - model.mean) / model.std)


@pytest.mark.parametrize("fmt", ["pt2", "onnx", "torchscript"])
def test_export_writes_a_file_whose_outputs_match_the_model(fmt, trained, cli_env):
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed: pip install -e '.[onnx]'")
    result = run_mnist("export", f"run={trained}", f"format={fmt}", cwd=trained, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert (
        "checked in its runtime: max abs difference" in result.stdout and "Warning" not in result.stderr + result.stdout
    )
    images = torch.rand(32, 1, 28, 28)  # a batch size the export never saw
    expected = reference_logits(trained, images)
    extra = {"mnist_cli.json": ""}
    if fmt == "pt2":
        got = torch.export.load(str(trained / "checkpoints" / "model.pt2"), extra_files=extra).module()(images)
        meta = json.loads(extra["mnist_cli.json"])
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", FutureWarning
            )  # torch.jit.load is deprecated; the format is for older consumers
            loaded = torch.jit.load(str(trained / "checkpoints" / "model.torchscript.pt"), _extra_files=extra)
        got = loaded(images)
        meta = json.loads(extra["mnist_cli.json"])
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(trained / "checkpoints" / "model.onnx"))
        got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
        meta = session.get_modelmeta().custom_metadata_map
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert json.loads(meta["mnist_cli.classes"]) == [str(i) for i in range(10)]
    assert json.loads(meta["mnist_cli.normalization"])["mean"] == pytest.approx(0.1307)
