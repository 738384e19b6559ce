"""`dataset=folder`: a user's own image files, one folder per class, through every subcommand."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from image_folders import CLASSES, write_image_folder
from PIL import Image

from conftest import MNIST_COMMAND, run_mnist
from mnist_cli.config.compose import compose
from mnist_cli.datasets import decoding, image_folder
from mnist_cli.errors import UserError

FOLDER_RUN = ["model=mlp", "epochs=2", "batch_size=16", "device=cpu"]


def folder_cfg(path: Path, *overrides: str):
    return compose("train", ["dataset=folder", f"dataset.path={path}", *overrides])


def rows_of(run: Path) -> list:
    with open(run / "dataset_files.csv", newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# ---- what a folder must be: one sentence each ---------------------------------------------------------


def _one_class(root: Path) -> None:
    write_image_folder(root, 3, classes=("cat",))


def _empty_class(root: Path) -> None:
    write_image_folder(root, 3)
    (root / "leer").mkdir()
    (root / "leer" / ".DS_Store").write_bytes(b"hidden files do not count")


def _other_test_classes(root: Path) -> None:
    write_image_folder(root, 3, parts=("train",))
    write_image_folder(root, 3, parts=("test",), classes=(*CLASSES[:3], "vier"))


@pytest.mark.parametrize(
    "make,said",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.write_text("x"), "is a file; give the folder that holds one folder per class"),
        (lambda root: root.mkdir(), "holds no class folders; put each class's images in a folder named for it"),
        (_one_class, "holds one class folder (cat); a classifier needs at least two classes"),
        (_empty_class, "leer holds no image files; add some or remove the folder"),
        (_other_test_classes, "test/ has vier that train/ lacks; lacks drei"),
    ],
    ids=["missing", "a file", "empty", "one class", "a class without images", "other classes in test"],
)
def test_a_folder_that_is_no_dataset_is_one_sentence(tmp_path, make, said):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(UserError) as refused:
        image_folder.load(folder_cfg(root))
    assert said in str(refused.value) and "\n" not in str(refused.value)


def test_a_link_back_up_the_tree_is_refused_and_hidden_and_system_files_are_ignored(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, 4)
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._0000.png"):
        (root / "null" / name).write_bytes(b"\0junk")
    data = image_folder.load(folder_cfg(root))
    assert len(list(data.rows())) == 16 and not data.skipped  # none of the four is a row, let alone a skipped one
    (root / "eins" / "deeper").mkdir()
    (root / "eins" / "deeper" / "up").symlink_to(root / "eins")
    with pytest.raises(UserError, match=r"eins/deeper/up is a link to a folder it is inside \(a loop\); remove"):
        image_folder.load(folder_cfg(root))


def test_a_name_that_is_not_utf8_is_an_image_and_a_class_written_readably(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, 4, classes=("null", "zwölf"))
    odd = os.fsencode(root / "null") + b"/caf\xe9.png"
    shutil.copy(root / "null" / "0000.png", os.fsdecode(odd))
    os.rename(root / "zwölf", os.fsdecode(os.fsencode(root) + b"/f\xfcnf"))
    data = image_folder.load(folder_cfg(root))
    assert data.classes == ["f\\xfcnf", "null"] and not data.skipped
    assert "null/caf\\xe9.png" in [r["file"] for r in list(data.rows())]


# ---- the split --------------------------------------------------------------------------------------


def test_a_folder_of_classes_is_split_per_class_by_its_fractions_and_seed(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, 20)
    data = image_folder.load(folder_cfg(root, "dataset.val_fraction=0.2", "dataset.test_fraction=0.1"))
    for part, per_class in (("train", 14), ("val", 4), ("test", 2)):
        assert torch.bincount(data.splits[part].labels).tolist() == [per_class] * 4, part
    files = [r["file"] for r in list(data.rows())]
    assert len(set(files)) == 80 and {r["split"] for r in list(data.rows())} == {"train", "val", "test"}
    again = image_folder.load(folder_cfg(root, "dataset.val_fraction=0.2", "dataset.test_fraction=0.1"))
    other = image_folder.load(
        folder_cfg(root, "dataset.val_fraction=0.2", "dataset.test_fraction=0.1", "data.split_seed=1")
    )
    assert [r["split"] for r in list(again.rows())] == [r["split"] for r in list(data.rows())]
    assert [r["split"] for r in list(other.rows())] != [r["split"] for r in list(data.rows())]


def test_train_val_and_test_folders_are_the_splits_and_val_is_drawn_from_train_without_one(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, 10, parts=("train", "val", "test"))
    data = image_folder.load(folder_cfg(root))
    assert {p: len(data.splits[p]) for p in ("train", "val", "test")} == {"train": 40, "val": 40, "test": 40}
    assert all(r["file"].startswith(r["split"] + "/") for r in list(data.rows()))
    shutil.rmtree(root / "val")
    data = image_folder.load(folder_cfg(root, "dataset.val_fraction=0.2"))
    assert {p: len(data.splits[p]) for p in ("train", "val", "test")} == {"train": 32, "val": 8, "test": 40}


def test_resize_keeps_a_28x28_grey_image_exactly(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, 5)
    data = image_folder.load(
        folder_cfg(root, "dataset.prepare=resize", "dataset.val_fraction=0", "dataset.test_fraction=0")
    )
    written = np.stack([np.asarray(Image.open(root / r["file"])) for r in list(data.rows())])
    assert np.array_equal(data.splits["train"].images.numpy(), written)


# ---- decoding and its cache -------------------------------------------------------------------------


def test_the_cache_is_used_and_never_stale_when_a_file_is_replaced_keeping_size_and_mtime(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, 6)
    listing = image_folder.scan(root)
    first = decoding.decoded(listing, "resize", cache=True, workers=1).images
    assert len(list((tmp_path / "cache" / "mnist-cli" / "decoded").glob("*.npz"))) == 1
    # another image of the same byte count, given the old file's mtime: what `cp -p` of a look-alike does
    target, donor = root / "null" / "0000.png", None
    for candidate in sorted(root.rglob("*.png")):
        if candidate != target and candidate.stat().st_size == target.stat().st_size:
            donor = candidate
            break
    if donor is None:  # no two files of one size: pad one in a PNG-legal way (bytes after IEND are ignored)
        donor = root / "eins" / "0000.png"
        pad = target.stat().st_size - donor.stat().st_size
        if pad < 0:
            target, donor, pad = donor, target, -pad
        donor.write_bytes(donor.read_bytes() + b"\0" * pad)
    stat = target.stat()
    shutil.copyfile(donor, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    second = decoding.decoded(image_folder.scan(root), "resize", cache=True, workers=1).images
    row = image_folder.scan(root).files.index(str(target.relative_to(root)))
    assert np.array_equal(second[row], np.asarray(Image.open(target)))
    assert not np.array_equal(second[row], first[row])
    assert len(list((tmp_path / "cache" / "mnist-cli" / "decoded").glob("*.npz"))) == 1  # the old one is gone


def test_a_cache_that_cannot_be_written_or_is_damaged_only_costs_the_decoding(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_image_folder(root, 3)
    listing = image_folder.scan(root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a folder")
    decoded = decoding.decoded(listing, "digit", cache=True, workers=1)
    images = decoded.images
    assert images.shape == (12, 28, 28) and not any(decoded.reasons) and all(decoded.digests)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    decoding.decoded(listing, "digit", cache=True, workers=1)
    (stored,) = (tmp_path / "cache" / "mnist-cli" / "decoded").glob("*.npz")
    stored.write_bytes(stored.read_bytes()[:100])  # cut short, as a full disk might leave it
    again = decoding.decoded(listing, "digit", cache=True, workers=1).images
    assert np.array_equal(again, images)


def test_decoding_processes_give_what_one_process_gives(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, decoding.IN_PROCESS_BELOW // 4 + 20)
    (root / "null" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    listing = image_folder.scan(root)
    alone = decoding.decoded(listing, "digit", cache=False, workers=1)
    shared = decoding.decoded(listing, "digit", cache=False, workers=2)
    assert np.array_equal(alone.images, shared.images) and alone.reasons == shared.reasons
    assert alone.digests == shared.digests and sum(bool(r) for r in shared.reasons) == 1


# ---- through the command ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, cli_env):
    """A run trained on a folder of four classes (a unicode name among them), with one unreadable file."""
    work = tmp_path_factory.mktemp("folderwork")
    root = work / "scans"
    write_image_folder(root, 30, classes=("null", "eins", "zwei", "drölf"))
    (root / "null" / "notes.txt").write_text("not an image")
    result = run_mnist("train", "dataset=folder", "dataset.path=scans", *FOLDER_RUN, cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    return work, work / result.stdout.strip().splitlines()[-1]


def test_a_folder_run_learns_its_folder_names_and_lists_its_files(folder_run):
    work, run = folder_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["val_accuracy"] > 0.6  # chance is 0.25
    checkpoint = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert checkpoint["classes"] == ["drölf", "eins", "null", "zwei"]
    assert checkpoint["config"]["dataset"]["path"] == str(work / "scans")  # stored absolute
    rows = rows_of(run)
    assert len(rows) == 121 and sum(r["split"] == "test" for r in rows) == 12
    (skipped,) = [r for r in rows if r["skipped"]]
    assert skipped["file"] == "null/notes.txt" and skipped["skipped"] == "not an image file"


def test_eval_predict_export_and_report_take_a_folder_run(folder_run, cli_env):
    work, run = folder_run
    result = run_mnist("eval", f"run={run}", "split=test", "format=json", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == 12 and report["classes"] == ["drölf", "eins", "null", "zwei"]
    # the test files given to predict are prepared as training read them: its answers are eval's
    tests = [r for r in rows_of(run) if r["split"] == "test"]
    inputs = ",".join(f"scans/{r['file']}" for r in tests)
    result = run_mnist("predict", f"run={run}", f"inputs=[{inputs}]", "format=json", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    predicted = [row["predicted"] for row in json.loads(result.stdout)["predictions"]]
    right = sum(p == r["class"] for p, r in zip(predicted, tests))
    assert right / len(tests) == pytest.approx(report["accuracy"])
    result = run_mnist("export", f"run={run}", "format=torchscript", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    result = run_mnist("report", "format=json", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "folder" in result.stdout


def test_a_changed_folder_stops_resume_and_eval_naming_what_changed(folder_run, cli_env, tmp_path):
    work, run = folder_run
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    added = work / "scans" / "eins" / "extra.png"
    shutil.copy(work / "scans" / "eins" / "0000.png", added)
    try:
        for command in (["train", f"resume={run}", "epochs=3"], ["eval", f"run={run}"]):
            result = run_mnist(*command, cwd=work, env=cli_env)
            assert result.returncode == 2, result.stderr
            assert "changed since the run trained on it: 1 added (eins/extra.png)" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
    finally:
        added.unlink()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_eval_of_a_split_the_folder_does_not_have_says_so(tmp_path, cli_env):
    write_image_folder(tmp_path / "shots", 6, parts=("train",))
    result = run_mnist(
        "train",
        "dataset=folder",
        "dataset.path=shots",
        "model=mlp",
        "epochs=1",
        "batch_size=8",
        "device=cpu",
        cwd=tmp_path,
        env=cli_env,
    )
    assert result.returncode == 0, result.stderr
    result = run_mnist("eval", "run=latest", "split=test", cwd=tmp_path, env=cli_env)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("has no test/ folder); use split=val, or split=train.")


def test_too_many_unreadable_files_refuse_the_folder_and_leave_no_run(tmp_path, cli_env):
    write_image_folder(tmp_path / "shots", 5)
    for i in range(3):
        (tmp_path / "shots" / "zwei" / f"broken{i}.png").write_bytes(b"")
    result = run_mnist("train", "dataset=folder", "dataset.path=shots", *FOLDER_RUN, cwd=tmp_path, env=cli_env)
    assert result.returncode == 2
    assert "3 of the 23 files in" in result.stderr and "more than dataset.max_bad_fraction=0.05" in result.stderr
    assert "zwei/broken0.png: empty file" in result.stderr
    assert not (tmp_path / "outputs" / "train").exists() or not any(
        (tmp_path / "outputs" / "train").rglob("summary.json")
    )


def test_serve_prepares_an_upload_as_the_folder_run_trained_and_names_its_classes(folder_run, cli_env):
    from starlette.testclient import TestClient

    from mnist_cli.runs.checkpoints import load_trained
    from mnist_cli.serving import serve

    work, run = folder_run
    cfg = compose("serve", [f"run={run}", "device=cpu"])
    trained = load_trained(cfg.run, cfg.outputs_dir, torch.device("cpu"))
    tests = [r for r in rows_of(run) if r["split"] == "test"]
    result = run_mnist(
        "predict", f"run={run}", f"inputs=[scans/{tests[0]['file']}]", "format=json", cwd=work, env=cli_env
    )
    (expected,) = json.loads(result.stdout)["predictions"]
    with TestClient(
        serve.build_app(serve.make_service(cfg, trained, torch.device("cpu"))), base_url="http://localhost"
    ) as client:
        assert client.get("/model").json()["classes"] == ["drölf", "eins", "null", "zwei"]
        upload = (work / "scans" / tests[0]["file"]).read_bytes()
        (row,) = client.post("/predict", content=upload, headers={"content-type": "image/png"}).json()["predictions"]
    assert row["topk"] == expected["topk"]


# ---- from the hostile pass: what a folder may not do ------------------------------------------------------


def test_images_swapped_between_classes_keeping_size_and_dates_stop_eval_and_a_touch_does_not(folder_run, cli_env):
    work, run = folder_run
    first, second = work / "scans" / "eins" / "0001.png", work / "scans" / "zwei" / "0001.png"
    stats = [p.stat() for p in (first, second)]
    swap = work / "swap.png"
    try:
        os.replace(first, swap)
        os.replace(second, first)
        os.replace(swap, second)
        for path, stat in zip((first, second), stats):  # dates as they were: only the content moved
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        result = run_mnist("eval", f"run={run}", cwd=work, env=cli_env)
        assert result.returncode == 2 and "2 changed (eins/0001.png, zwei/0001.png)" in result.stderr
    finally:
        os.replace(first, swap)
        os.replace(second, first)
        os.replace(swap, second)
    os.utime(first)  # new dates, the same bytes: the same image
    result = run_mnist("eval", f"run={run}", "format=json", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "make,said",
    [
        (lambda root: (root / "test").symlink_to("train"), "is the folder"),
        (lambda root: (root / "train" / "zwei" / "more").symlink_to(root / "train" / "eins"), "is the folder"),
        (
            lambda root: (root / "train" / "zwei" / "x.png").symlink_to(root / "train" / "eins" / "0000.png"),
            "is a file read",
        ),
    ],
    ids=["test is train", "a class inside another", "one image in two classes"],
)
def test_an_image_reached_twice_through_a_link_is_refused(tmp_path, make, said):
    root = tmp_path / "data"
    write_image_folder(root, 3, parts=("train",))
    make(root)
    with pytest.raises(UserError, match="an image read twice could be in two classes or in both training and test"):
        image_folder.load(folder_cfg(root))
    with pytest.raises(UserError, match=said):
        image_folder.load(folder_cfg(root))


def test_part_folders_without_train_and_strays_beside_train_are_refused(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, 3)
    write_image_folder(root, 3, parts=("val",))
    with pytest.raises(UserError, match=r"holds val/ but no train/; put the training images in .*/train/<class>/"):
        image_folder.load(folder_cfg(root))
    other = tmp_path / "other"
    write_image_folder(other, 3, parts=("train", "Test"))
    with pytest.raises(UserError, match=r"holds train/ and also Test/; beside train/ only val/ and test/ are read"):
        image_folder.load(folder_cfg(other))


def test_resume_without_the_runs_file_list_and_outputs_inside_the_folder_are_refused(folder_run, cli_env, tmp_path):
    work, run = folder_run
    listed = (run / "dataset_files.csv").read_bytes()
    (run / "dataset_files.csv").unlink()
    try:
        result = run_mnist("train", f"resume={run}", "epochs=3", cwd=work, env=cli_env)
        assert result.returncode == 2 and "dataset_files.csv is missing" in result.stderr
    finally:
        (run / "dataset_files.csv").write_bytes(listed)
    write_image_folder(tmp_path / "scans", 3)
    result = run_mnist("train", "dataset=folder", "dataset.path=.", *FOLDER_RUN, cwd=tmp_path / "scans", env=cli_env)
    assert result.returncode == 2 and "is inside dataset.path=" in result.stderr
    assert not any((tmp_path / "scans" / "outputs").rglob(".hydra"))  # no run folder


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_a_signal_while_processes_decode_stops_them_all_and_leaves_no_run(tmp_path, cli_env, signum, code):
    root = tmp_path / "big"
    written = write_image_folder(root, 2, classes=("a", "b"))
    page = Image.open(written["a"][0]).resize((900, 900))  # big pages: decoding takes seconds
    page.save(written["a"][0])
    for i in range(700):
        shutil.copy(written["a"][0], root / ("a" if i % 2 else "b") / f"page{i}.png")
    process = subprocess.Popen(
        [
            MNIST_COMMAND,
            "train",
            "dataset=folder",
            "dataset.path=big",
            "dataset.workers=2",
            "dataset.prepare=digit",
            *FOLDER_RUN,
        ],
        cwd=tmp_path,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, workers = time.monotonic() + 60, []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = children_running_python(process.pid)
    assert len(workers) >= 2, "the decoding processes never started"
    time.sleep(1)
    started = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    assert time.monotonic() - started < 5  # not after the processes' current chunks
    if signum != signal.SIGKILL:
        assert "Traceback" not in stderr and stderr.strip().endswith(
            f"interrupted by {'Ctrl-C' if code == 130 else 'SIGTERM'}."
        )
        assert not any((tmp_path / "outputs" / "train").rglob("*/.hydra"))
    time.sleep(2)
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []


def children_running_python(pid: int) -> list:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text and "State:\tZ" not in text:
            found.append(int(status.parent.name))
    return found
