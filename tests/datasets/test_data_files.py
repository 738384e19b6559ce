"""The IDX files as they are read: what is on disk now, checked, nothing written while reading.

In-process for what a file holds (load_dataset, milliseconds); `mnist` in a process where the exit code,
the message or the folders left behind are the point.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import IDX_NAMES, QUICK, run_mnist, write_idx
from mnist_cli.datasets.torchvision_sets import load_dataset
from mnist_cli.errors import UserError

OFFLINE = {"no_proxy": "*", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def copy_dataset(data_root: Path, root: Path, folder: str = "MNIST") -> Path:
    """A copy of the fixture's <folder>/raw/ under `root`; returns the new raw folder."""
    raw = root / folder / "raw"
    shutil.copytree(data_root / folder / "raw", raw)
    return raw


def files_under(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def unwritable(tmp_path: Path) -> str:
    """A path no process can create, root included: it lies under a regular file."""
    (tmp_path / "a_file").write_text("")
    return str(tmp_path / "a_file" / "home")


def test_files_replaced_with_older_dates_are_read_as_they_are_now(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    raw = copy_dataset(data_root, tmp_path / "root")
    before = load_dataset(str(tmp_path / "root"), "MNIST", train=False, download=False, classes=10)
    replacement = (np.arange(50 * 28 * 28) % 251).astype(np.uint8).reshape(50, 28, 28)
    write_idx(raw / IDX_NAMES[("test", "images")], replacement, compress=True)
    write_idx(raw / IDX_NAMES[("test", "labels")], np.full(50, 7, dtype=np.uint8), compress=True)
    for path in raw.iterdir():  # put back with an old date, as cp -p, tar x and rsync -a do
        os.utime(path, (946684800, 946684800))
    after = load_dataset(str(tmp_path / "root"), "MNIST", train=False, download=False, classes=10)
    assert len(before) == 200 and len(after) == 50
    assert torch.equal(after.images, torch.from_numpy(replacement)) and after.labels.tolist() == [7] * 50


def test_reading_writes_nothing_under_the_data_root_or_the_home(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("HOME", unwritable(tmp_path))  # a read-only home, as in many containers
    monkeypatch.setenv("XDG_CACHE_HOME", unwritable(tmp_path))
    copy_dataset(data_root, tmp_path / "root", "MNIST")
    copy_dataset(data_root, tmp_path / "root", "FashionMNIST")
    before = files_under(tmp_path)
    for folder in ("MNIST", "FashionMNIST"):  # gzipped and plain files
        for train in (True, False):
            split = load_dataset(str(tmp_path / "root"), folder, train=train, download=True, classes=10)
            assert split.images.shape == (600 if train else 200, 28, 28) and split.labels.dtype == torch.int64
    assert files_under(tmp_path) == before


def test_a_plain_and_a_gzipped_copy_that_disagree_are_refused(tmp_path, data_root):
    raw = copy_dataset(data_root, tmp_path / "root")
    name = IDX_NAMES[("train", "labels")]
    shutil.copy(data_root / "FashionMNIST" / "raw" / name, raw / name)  # a plain copy beside MNIST's .gz
    with pytest.raises(
        UserError, match=f"{raw / name} and {name}.gz hold different data; delete the one that is out of date."
    ):
        load_dataset(str(tmp_path / "root"), "MNIST", train=True, download=False, classes=10)
    (raw / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))  # the same data twice is fine
    assert len(load_dataset(str(tmp_path / "root"), "MNIST", train=True, download=False, classes=10)) == 600


def damage(raw: Path, split: str, kind: str, how: str) -> Path:
    """Damage one file of the gzipped fixture copy in `raw` as `how` says; returns the file the message must name."""
    name = IDX_NAMES[(split, kind)]
    packed = raw / f"{name}.gz"
    data = gzip.decompress(packed.read_bytes())
    if how == "label 12":
        labels = np.frombuffer(data[8:], np.uint8).copy()
        labels[3] = 12
        write_idx(raw / name, labels, compress=True)
    elif how == "32x32 images":
        write_idx(raw / name, np.zeros((600, 32, 32), np.uint8), compress=True)
    elif how == "signed bytes":  # the IDX type byte 0x09: int8, which torchvision reads and then cannot use
        packed.write_bytes(gzip.compress(data[:2] + b"\x09" + data[3:]))
    elif how == "empty plain file":
        packed.unlink()
        (raw / name).write_bytes(b"")
        return raw / name
    elif how == "no images":
        write_idx(raw / name, np.zeros((0, 28, 28), np.uint8), compress=True)
    elif how == "cut short":
        packed.write_bytes(gzip.compress(data[:-100]))
    elif how == "extra bytes":
        packed.write_bytes(gzip.compress(data + b"\0"))
    elif how == "fewer labels":
        write_idx(raw / name, np.frombuffer(data[8:-1], np.uint8), compress=True)
    elif how == "not gzip":
        packed.write_bytes(b"this is not a gzip file")
    elif how == "cut-off gzip":
        packed.write_bytes(packed.read_bytes()[:-20])
    return packed


DAMAGES = {  # how: (split, file, what the sentence says after the file's path)
    "label 12": ("train", "labels", "holds label 12, but MNIST has 10 classes (0–9); replace it with a good copy."),
    "32x32 images": ("train", "images", "holds 32×32 images; mnist-cli reads 28×28 images"),
    "signed bytes": (
        "train",
        "images",
        "starts with 0x00000903, not the 0x00000803 of an IDX file of 3-dimensional unsigned bytes",
    ),
    "empty plain file": ("test", "labels", "is 0 bytes long, too short for an IDX file of labels"),
    "no images": ("test", "images", "holds no images; replace it with a good copy."),
    "cut short": ("train", "images", "is 470316 bytes long where its header says 470416 (600 images): it is cut short"),
    "extra bytes": (
        "test",
        "labels",
        "is 209 bytes long where its header says 208 (200 labels): it has extra bytes at its end",
    ),
    "fewer labels": ("train", "labels", "holds 599 labels; replace them with copies that match."),
    "not gzip": ("test", "images", "is not a readable gzip file"),
    "cut-off gzip": ("train", "labels", "is not a readable gzip file"),
}


@pytest.mark.parametrize("how", DAMAGES, ids=DAMAGES)
def test_a_damaged_file_is_one_sentence_naming_it(how, tmp_path, data_root):
    split, kind, says = DAMAGES[how]
    raw = copy_dataset(data_root, tmp_path / "root")
    named = damage(raw, split, kind, how)
    with pytest.raises(UserError) as refused:
        load_dataset(str(tmp_path / "root"), "MNIST", train=split == "train", download=False, classes=10)
    message = str(refused.value)
    assert str(named) in message and says in message and "\n" not in message


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cli_env) -> tuple:
    """(a run trained with a home and a cache that cannot be written, its folder, that environment)."""
    workdir = tmp_path_factory.mktemp("datafiles")
    env = dict(cli_env, HOME=unwritable(workdir), XDG_CACHE_HOME=unwritable(workdir))
    result = run_mnist("train", "model=mlp", *QUICK, "epochs=1", cwd=workdir, env=env)
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1], workdir, env


@pytest.mark.slow
def test_a_read_only_home_does_not_stop_train_eval_or_predict(trained_run):
    run, workdir, env = trained_run  # the training itself ran with that home (the fixture checks it)
    evaluated = run_mnist("eval", f"run={run}", "format=json", cwd=workdir, env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    predicted = run_mnist("predict", f"run={run}", "indices=[0,1]", cwd=workdir, env=env)
    assert predicted.returncode == 0, predicted.stderr


@pytest.mark.slow
def test_train_eval_and_predict_refuse_a_label_out_of_range_in_one_sentence(trained_run, tmp_path, data_root):
    run, _, env = trained_run
    raw = copy_dataset(data_root, tmp_path / "root")
    for split in ("train", "test"):
        damage(raw, split, "labels", "label 12")
    runs_before = files_under(run.parent)
    for command, args in (("train", QUICK), ("eval", [f"run={run}"]), ("predict", [f"run={run}", "indices=[0]"])):
        result = run_mnist(command, *args, f"data.root={tmp_path / 'root'}", cwd=tmp_path, env=env)
        split = "train" if command == "train" else "t10k"
        assert result.returncode == 2, result.stderr
        assert f"{raw}/{split}-labels-idx1-ubyte.gz holds label 12, but MNIST has 10 classes (0–9)" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert files_under(run.parent) == runs_before


@pytest.mark.slow
@pytest.mark.parametrize("given", ["MNIST_DATA_ROOT", "data.root"])
def test_a_relative_data_root_is_stored_absolute_and_found_from_another_folder(given, tmp_path, data_root, cli_env):
    copy_dataset(data_root, tmp_path / "data")
    here, elsewhere = tmp_path / "a" / "b", tmp_path / "c" / "d" / "e"
    here.mkdir(parents=True), elsewhere.mkdir(parents=True)
    env = dict(cli_env, **OFFLINE)
    env.pop("MNIST_DATA_ROOT")
    args = ["data.root=../../data"] if given == "data.root" else []
    trained = run_mnist(
        "train",
        "model=mlp",
        *QUICK,
        "epochs=1",
        *args,
        cwd=here,
        env=dict(env, MNIST_DATA_ROOT="../../data") if given == "MNIST_DATA_ROOT" else env,
    )
    assert trained.returncode == 0, trained.stderr
    run = here / trained.stdout.strip().splitlines()[-1]
    stored = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["config"]["data"]["root"]
    assert os.path.isabs(stored) and Path(stored).resolve() == (tmp_path / "data").resolve()
    evaluated = run_mnist("eval", f"run={run}", cwd=elsewhere, env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert not (tmp_path / "c" / "data").exists()  # where ../../data leads from the other folder


def test_a_download_that_fails_leaves_no_folders_behind(tmp_path, cli_env):
    env = dict(cli_env, **OFFLINE)
    result = run_mnist("train", *QUICK, f"data.root={tmp_path / 'nowhere'}", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "Downloading failed." in result.stderr, result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_folder_with_some_files_missing_is_not_downloaded_over(tmp_path, data_root):
    raw = copy_dataset(data_root, tmp_path / "root")
    (raw / f"{IDX_NAMES[('test', 'labels')]}.gz").unlink()
    kept = {p.name: p.read_bytes() for p in raw.iterdir()}
    with pytest.raises(UserError, match="holds some of the IDX files but not t10k-labels-idx1-ubyte; put the missing"):
        load_dataset(str(tmp_path / "root"), "MNIST", train=True, download=True, classes=10)
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == kept


def test_a_gz_that_unpacks_past_any_idx_file_is_refused_without_unpacking_it_all(tmp_path, data_root, monkeypatch):
    from mnist_cli.datasets import idx as data

    raw = copy_dataset(data_root, tmp_path / "root")
    name = raw / f"{IDX_NAMES[('train', 'labels')]}.gz"
    monkeypatch.setattr(data, "MAX_BYTES", 10_000)  # the real bound is a million images; a bomb that large is slow
    with gzip.open(name, "wb") as f:
        f.write(b"\0" * 1_000_000)
    with pytest.raises(UserError, match="unpacks to more than 10,000 bytes, more than any IDX file it could hold"):
        load_dataset(str(tmp_path / "root"), "MNIST", train=True, download=False, classes=10)
