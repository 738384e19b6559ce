"""KMNIST, EMNIST (its six splits) and QMNIST (its three test parts) read from files laid out as torchvision's
download leaves them: images upright, labels 0..classes-1, the class names of each set's own mapping.

In-process for what the files hold (load_set, milliseconds); `mnist` in a process for a run end to end and for
what a user sees when the files are missing (the exit code, the sentence, nothing left behind).
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import (
    EMNIST_GLYPHS,
    IDX_NAMES,
    TEST_SIZE,
    qmnist_labels,
    run_mnist,
    write_family,
    write_idx,
    write_idx_int,
)
from mnist_cli.datasets.torchvision_sets import class_names, load_dataset, load_set
from mnist_cli.errors import UserError

OFFLINE = {"no_proxy": "*", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
KMNIST_CLASSES = ["お", "き", "す", "つ", "な", "は", "ま", "や", "れ", "を"]
DIGITS = list(string.digits)
# The class count of each EMNIST split as EMNIST's paper and readme give it
EMNIST_COUNTS = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 26, "digits": 10, "mnist": 10}


def config(name: str, **keys):
    """A run's dataset config as conf/dataset/<name>.yaml composes it (the keys torchvision_sets reads)."""
    base = {
        "kmnist": {"name": "kmnist", "folder": "KMNIST", "classes": KMNIST_CLASSES},
        "emnist": {"name": "emnist", "folder": "EMNIST", "split": "balanced", "classes": None},
        "qmnist": {"name": "qmnist", "folder": "QMNIST", "test_part": "all", "classes": DIGITS},
    }[name]
    return OmegaConf.create({**base, **keys})


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """(a data root holding KMNIST, every EMNIST split and QMNIST, small; what each should load as)."""
    root = tmp_path_factory.mktemp("family")
    return root, write_family(root, train_size=60, test_size=20)


SETS = [("KMNIST", config("kmnist"))] + [(f"EMNIST {split}", config("emnist", split=split)) for split in EMNIST_COUNTS]
SETS.append(("QMNIST", config("qmnist")))


@pytest.mark.parametrize("name,dataset", SETS, ids=[name for name, _ in SETS])
@pytest.mark.parametrize("part", ["train", "test"])
def test_each_set_loads_its_images_upright_and_its_labels_from_zero(family, name, dataset, part):
    root, written = family
    images, labels = written[(name, part)]
    split = load_set(dataset, str(root), part, download=False)
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    # EMNIST's files hold each image transposed: it must come back as the glyph was drawn, upright
    assert torch.equal(split.images, torch.from_numpy(images))
    assert split.labels.tolist() == labels.tolist()
    count = EMNIST_COUNTS[dataset.split] if dataset.name == "emnist" else 10
    assert len(class_names(dataset)) == count and int(split.labels.max()) < count


def test_emnist_files_really_are_transposed_and_letters_really_start_at_1(family):
    """What the test above relies on: the files as written are not what the loader returns."""
    root, written = family
    raw = root / "EMNIST" / "raw"
    on_disk = np.frombuffer((raw / "emnist-letters-train-images-idx3-ubyte").read_bytes()[16:], np.uint8)
    upright, labels = written[("EMNIST letters", "train")]
    assert not np.array_equal(on_disk.reshape(-1, 28, 28), upright)
    assert np.array_equal(on_disk.reshape(-1, 28, 28), upright.transpose(0, 2, 1))
    stored = np.frombuffer((raw / "emnist-letters-train-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
    assert stored.min() >= 1 and stored.tolist() == (labels + 1).tolist()


def test_emnist_class_names_are_those_of_its_mapping_files():
    names = {split: class_names(config("emnist", split=split)) for split in EMNIST_COUNTS}
    assert {split: len(n) for split, n in names.items()} == EMNIST_COUNTS
    assert names["byclass"] == DIGITS + list(string.ascii_uppercase) + list(string.ascii_lowercase)
    # bymerge and balanced: 15 lower-case letters merged into their upper case, 11 kept (a b d e f g h n q r t)
    for split in ("bymerge", "balanced"):
        assert names[split][:36] == DIGITS + list(string.ascii_uppercase)
        assert names[split][36:] == ["a", "b", "d", "e", "f", "g", "h", "n", "q", "r", "t"]
    assert names["letters"][0] == "A/a" and names["letters"][25] == "Z/z"  # each class both cases
    assert names["digits"] == DIGITS and names["mnist"] == DIGITS
    assert class_names(config("emnist", split="digits", classes=list("abcdefghij"))) == list("abcdefghij")
    with pytest.raises(UserError, match=r"^dataset.classes names 3 classes but EMNIST letters has 26; give one"):
        class_names(config("emnist", split="letters", classes=["x", "y", "z"]))


def test_kmnist_reads_as_mnist_does_through_load_dataset_too(family):
    root, written = family
    split = load_dataset(str(root), "KMNIST", train=False, download=False, classes=10)
    assert torch.equal(split.images, torch.from_numpy(written[("KMNIST", "test")][0]))


def qmnist_root(root: Path, test_rows: int) -> Path:
    """A QMNIST folder with 60 training rows and `test_rows` test rows; image i holds i in its first two pixels
    and its label row holds i as its global NIST index (column 5)."""
    raw = root / "QMNIST" / "raw"
    raw.mkdir(parents=True)
    for part, n in (("train", 60), ("test", test_rows)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
        write_idx(raw / f"qmnist-{part}-images-idx3-ubyte", images, compress=False)
        write_idx_int(raw / f"qmnist-{part}-labels-idx2-int", qmnist_labels(np.arange(n) % 10), compress=False)
    return raw


def row_numbers(images: torch.Tensor) -> list:
    return (images[:, 0, 0].long() + 256 * images[:, 0, 1].long()).tolist()


def test_qmnist_test_part_reads_all_rows_mnists_10000_or_the_lost_ones(tmp_path):
    qmnist_root(tmp_path, 10_050)
    read = {
        part: load_set(config("qmnist", test_part=part), str(tmp_path), "test", download=False)
        for part in ("all", "test10k", "test50k")
    }
    assert row_numbers(read["all"].images) == list(range(10_050))
    assert row_numbers(read["test10k"].images) == list(range(10_000))
    assert row_numbers(read["test50k"].images) == list(range(10_000, 10_050))
    assert read["test50k"].labels.tolist() == [i % 10 for i in range(10_000, 10_050)]
    # the training set is the same whatever the test part
    train = load_set(config("qmnist", test_part="test50k"), str(tmp_path), "train", download=False)
    assert row_numbers(train.images) == list(range(60))


def test_qmnist_test50k_of_a_file_without_the_lost_rows_is_refused(tmp_path):
    raw = qmnist_root(tmp_path, 200)
    with pytest.raises(UserError) as refused:
        load_set(config("qmnist", test_part="test50k"), str(tmp_path), "test", download=False)
    assert str(refused.value) == (
        f"{raw / 'qmnist-test-images-idx3-ubyte'} holds 200 test images, none past the first 10,000 that "
        "dataset.test_part=test50k reads; use dataset.test_part=all or test10k, or the full file."
    )


def test_qmnist_labels_must_be_the_8_column_int32_file(tmp_path):
    raw = qmnist_root(tmp_path, 20)
    name = "qmnist-train-labels-idx2-int"
    write_idx(raw / name, qmnist_labels(np.arange(60) % 10).astype(np.uint8), compress=False)  # bytes, not int32
    with pytest.raises(UserError, match=r"starts with 0x00000802, not the 0x00000c02 of an IDX file of 2-dimensional"):
        load_set(config("qmnist"), str(tmp_path), "train", download=False)
    write_idx_int(raw / name, qmnist_labels(np.arange(60) % 10)[:, :7], compress=False)
    with pytest.raises(UserError, match=f"^{raw / name} holds rows of 7 labels where 8 are expected; replace it"):
        load_set(config("qmnist"), str(tmp_path), "train", download=False)
    write_idx_int(raw / name, qmnist_labels(np.arange(60) % 10), compress=False)
    (raw / name).write_bytes((raw / name).read_bytes()[:-4])  # one integer short: sizes counted in 4-byte integers
    with pytest.raises(
        UserError, match=r"is 1928 bytes long where its header says 1932 \(60 labels\): it is cut short"
    ):
        load_set(config("qmnist"), str(tmp_path), "train", download=False)


def copy_family(family, root: Path, folder: str) -> Path:
    shutil.copytree(family[0] / folder, root / folder)
    return root / folder / "raw"


LABEL_CASES = {
    "letters label 0": ("emnist", {"split": "letters"}, 0, "label 0, but EMNIST letters has 26 classes (1–26)"),
    "letters label 27": ("emnist", {"split": "letters"}, 27, "label 27, but EMNIST letters has 26 classes (1–26)"),
    "balanced label 47": ("emnist", {}, 47, "label 47, but EMNIST balanced has 47 classes (0–46)"),
    "kmnist label 10": ("kmnist", {}, 10, "label 10, but KMNIST has 10 classes (0–9)"),
    "qmnist class 10": ("qmnist", {}, 10, "label 10, but QMNIST has 10 classes (0–9)"),
    "qmnist class -1": ("qmnist", {}, -1, "label -1, but QMNIST has 10 classes (0–9)"),
}


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_a_label_out_of_range_is_refused_naming_the_file(tmp_path, family, case):
    name, keys, bad, sentence = LABEL_CASES[case]
    dataset = config(name, **keys)
    raw = copy_family(family, tmp_path, dataset.folder)
    if name == "emnist":
        path = raw / f"emnist-{dataset.split}-train-labels-idx1-ubyte"
        labels = np.frombuffer(path.read_bytes()[8:], np.uint8).copy()
        labels[7] = bad
        write_idx(path, labels, compress=False)
    elif name == "kmnist":
        path = raw / f"{IDX_NAMES[('train', 'labels')]}.gz"
        labels = np.full(60, 3, dtype=np.uint8)
        labels[7] = bad
        write_idx(raw / IDX_NAMES[("train", "labels")], labels, compress=True)
    else:
        path = raw / "qmnist-train-labels-idx2-int.gz"
        table = qmnist_labels(np.full(60, 3))
        table[7, 0] = bad
        write_idx_int(raw / "qmnist-train-labels-idx2-int", table, compress=True)
    with pytest.raises(UserError) as refused:
        load_set(dataset, str(tmp_path), "train", download=False)
    assert str(refused.value) == f"{path} holds {sentence}; replace it with a good copy."


def test_a_missing_set_without_download_names_its_files_and_folder(tmp_path):
    cases = [
        (
            config("kmnist"),
            "No KMNIST data in {raw}: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte there (gzipped or not)",
        ),
        (
            config("emnist", split="byclass"),
            "No EMNIST byclass data in {raw}: put emnist-byclass-train-images-idx3-ubyte, "
            "emnist-byclass-train-labels-idx1-ubyte, emnist-byclass-test-images-idx3-ubyte, "
            "emnist-byclass-test-labels-idx1-ubyte there (gzipped or not; NIST's gzip.zip holds every split's files)",
        ),
        (
            config("qmnist"),
            "No QMNIST data in {raw}: put qmnist-train-images-idx3-ubyte, qmnist-train-labels-idx2-int, "
            "qmnist-test-images-idx3-ubyte, qmnist-test-labels-idx2-int there (gzipped or not)",
        ),
    ]
    for dataset, start in cases:
        raw = tmp_path / dataset.folder / "raw"
        with pytest.raises(UserError) as refused:
            load_set(dataset, str(tmp_path), "train", download=False)
        assert str(refused.value) == (
            start.format(raw=raw)
            + f", or point data.root / MNIST_DATA_ROOT at a folder that holds {dataset.folder}/raw/."
        )
    assert list(tmp_path.iterdir()) == []


def test_a_raw_folder_with_some_files_is_not_downloaded_over(tmp_path, family):
    """torchvision's EMNIST download unpacks every split's files: a folder holding another split's is refused,
    as is a QMNIST folder holding the training files only, and nothing in them changes."""
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (family[0] / "EMNIST" / "raw").glob("emnist-balanced-*"):
        shutil.copy(path, raw)
    qraw = copy_family(family, tmp_path, "QMNIST")
    for path in qraw.glob("qmnist-test-*"):
        path.unlink()
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError) as emnist:
        load_set(config("emnist", split="letters"), str(tmp_path), "train", download=True)
    assert str(emnist.value).startswith(
        f"{raw} holds some of the IDX files but not emnist-letters-train-images-idx3-ubyte, "
        "emnist-letters-train-labels-idx1-ubyte, emnist-letters-test-images-idx3-ubyte, "
        "emnist-letters-test-labels-idx1-ubyte; put the missing ones there (downloading would replace"
    )
    with pytest.raises(UserError, match="holds some of the IDX files but not qmnist-test-images-idx3-ubyte, qmnist-"):
        load_set(config("qmnist"), str(tmp_path), "test", download=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == kept


# --- `mnist` in a process ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_env(cli_env, family_data_root) -> dict:
    return dict(cli_env, MNIST_DATA_ROOT=str(family_data_root))


def test_emnist_letters_trains_and_evaluates_end_to_end(tmp_path, family_env):
    args = ["dataset=emnist", "dataset.split=letters", "data.limit=500", "data.val_size=100", "batch_size=50"]
    trained = run_mnist("train", *args, "epochs=1", "model=mlp", "device=cpu", cwd=tmp_path, env=family_env)
    assert trained.returncode == 0, trained.stderr
    assert "emnist: 400 train / 100 val images" in trained.stdout
    run = tmp_path / trained.stdout.strip().splitlines()[-1]
    evaluated = run_mnist("eval", f"run={run}", "split=test", "format=json", cwd=tmp_path, env=family_env)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["dataset"] == "emnist" and report["samples"] == TEST_SIZE
    assert report["classes"] == [f"{u}/{u.lower()}" for u in EMNIST_GLYPHS["letters"]]
    # labels shifted from 1-26 to 0-25 in both files and images upright in both: far above chance (1/26)
    assert report["accuracy"] > 0.2, report["accuracy"]


@pytest.mark.parametrize(
    "args,start",
    [
        (["dataset=emnist", "dataset.split=digits"], "No EMNIST digits data in {raw}: put emnist-digits-train-images"),
        (["dataset=qmnist"], "No QMNIST data in {raw}: put qmnist-train-images-idx3-ubyte, qmnist-train-labels-idx2"),
        (["dataset=kmnist"], "No KMNIST data in {raw}: put train-images-idx3-ubyte, train-labels-idx1-ubyte,"),
    ],
    ids=["emnist", "qmnist", "kmnist"],
)
def test_a_failed_download_is_one_sentence_exit_2_and_leaves_no_folders(tmp_path, family_env, args, start):
    root = tmp_path / "nowhere"
    result = run_mnist("train", *args, f"data.root={root}", "device=cpu", cwd=tmp_path, env=dict(family_env, **OFFLINE))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()  # one sentence, no traceback
    folder = args[0].split("=")[1].upper()
    assert line.startswith("mnist train: " + start.format(raw=root / folder / "raw")), line
    assert line.endswith(f"a folder that holds {folder}/raw/. Downloading failed."), line
    assert not root.exists()


def test_a_label_out_of_range_stops_training_with_exit_2(tmp_path, family, family_env):
    raw = copy_family(family, tmp_path, "EMNIST")
    path = raw / "emnist-letters-train-labels-idx1-ubyte"
    labels = np.frombuffer(path.read_bytes()[8:], np.uint8).copy()
    labels[0] = 0
    write_idx(path, labels, compress=False)
    result = run_mnist(
        "train",
        "dataset=emnist",
        "dataset.split=letters",
        f"data.root={tmp_path}",
        "device=cpu",
        cwd=tmp_path,
        env=family_env,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"mnist train: {path} holds label 0, but EMNIST letters has 26 classes (1–26); replace it with a good copy."
    )
