"""`mnist eval` and `mnist predict` end to end on a run trained on synthetic glyphs."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import Payload, run_mnist


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evalwork")


@pytest.fixture(scope="module")
def trained_run(workdir, cli_env) -> Path:
    result = run_mnist(
        "train", "model=lenet", "epochs=3", "data.val_size=100", "batch_size=32", "device=cpu", cwd=workdir, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def test_report(trained_run, workdir, cli_env) -> dict:
    result = run_mnist("eval", "run=latest", "format=json", cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # stdout is one JSON document and nothing else


def test_eval_report_is_consistent_with_its_confusion_matrix(test_report, trained_run):
    report = test_report
    assert report["split"] == "test" and report["samples"] == 200
    assert Path(report["checkpoint"]).is_absolute() and report["checkpoint"].startswith(
        report["run"]
    )  # one kind of path
    confusion = np.array(report["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == report["samples"]
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert report["accuracy"] > 0.5  # chance is 0.1
    for k, row in enumerate(report["per_class"]):
        assert row["support"] == confusion[k].sum()
        if confusion[:, k].sum():
            assert row["precision"] == pytest.approx(confusion[k, k] / confusion[:, k].sum())
        if confusion[k].sum():
            assert row["recall"] == pytest.approx(confusion[k, k] / confusion[k].sum())
    assert report["macro_f1"] == pytest.approx(np.mean([r["f1"] for r in report["per_class"]]))
    saved = json.loads((trained_run / "eval" / "test.json").read_text())
    assert saved["accuracy"] == report["accuracy"]
    for name in ("test_confusion.png", "test_errors.png"):
        with Image.open(trained_run / "eval" / name) as image:
            image.verify()
            assert image.format == "PNG"


def test_eval_table_on_a_checkpoint_file_and_the_val_split(trained_run, workdir, cli_env):
    result = run_mnist("eval", f"run={trained_run / 'checkpoints' / 'last.pt'}", "split=val", cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout
    assert json.loads((trained_run / "eval" / "val.json").read_text())["samples"] == 100


@pytest.mark.slow
def test_min_accuracy_gates_on_both_sides_of_the_measured_accuracy(test_report, workdir, cli_env):
    accuracy = test_report["accuracy"]
    below = run_mnist("eval", "run=latest", f"min_accuracy={accuracy - 0.01:.4f}", cwd=workdir, env=cli_env)
    assert below.returncode == 0, below.stderr
    if accuracy < 1.0:
        above = run_mnist(
            "eval", "run=latest", f"min_accuracy={min(1.0, accuracy + 0.005):.4f}", cwd=workdir, env=cli_env
        )
        assert above.returncode == 1
        assert "below min_accuracy" in above.stderr
        assert "Traceback" not in above.stderr


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["eval is a file", "eval/test.json is a folder"])
def test_eval_that_cannot_write_its_files_prints_the_result_and_still_gates(
    damage, test_report, trained_run, workdir, cli_env, tmp_path
):
    run = tmp_path / "run"  # a copy: as if the run folder were read-only (the tests run as root, so chmod would not do)
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval", "tb"))
    if damage == "eval is a file":
        (run / "eval").write_text("")
        result = run_mnist(
            "eval",
            f"run={run}",
            "format=json",
            f"min_accuracy={min(1.0, test_report['accuracy'] + 0.005):.4f}",
            cwd=workdir,
            env=cli_env,
        )
        assert result.returncode == (1 if test_report["accuracy"] < 1.0 else 0)  # the gate, never 2
        report = json.loads(result.stdout)
        assert report["accuracy"] == test_report["accuracy"] and report["files"] is None
        assert (
            f"warning: could not write the evaluation into {run / 'eval'} (File exists). The result above is printed, not saved."
            in result.stderr
        )
    else:
        (run / "eval" / "test.json").mkdir(parents=True)
        result = run_mnist(
            "eval", f"run={run}", f"min_accuracy={test_report['accuracy'] - 0.01:.4f}", cwd=workdir, env=cli_env
        )
        assert result.returncode == 0, result.stderr  # passed the gate; it was 1, the failed-gate code
        assert f"accuracy {test_report['accuracy']:.2%}" in result.stdout and "confusion matrix" in result.stdout
        assert f"warning: could not write {run / 'eval' / 'test.json'} (Is a directory)" in result.stderr
        assert "wrote " not in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_bf16_run_is_evaluated_as_it_trained(workdir, cli_env, tmp_path):
    trained = run_mnist(
        "train", "model=mlp", "epochs=1", "data.val_size=100", "device=cpu", "precision=bf16", cwd=tmp_path, env=cli_env
    )
    assert trained.returncode == 0, trained.stderr
    best = json.loads((tmp_path / trained.stdout.strip().splitlines()[-1] / "summary.json").read_text())["best"]
    result = run_mnist("eval", "run=latest", "split=val", "format=json", cwd=tmp_path, env=cli_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accuracy"] == best["val_accuracy"]
    assert report["loss"] == pytest.approx(best["val_loss"], rel=1e-5)  # fp32 gave another number (6e-4 apart here)
    assert report["precision"] == "bf16"


def test_predict_indices_are_positions_in_the_dataset_file(trained_run, workdir, cli_env, data_root):
    from mnist_cli.datasets.split import split_indices

    split_seed = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)["config"]["data"]["split_seed"]
    val_positions, train_positions = (p.tolist() for p in split_indices(600, 100, split_seed))
    with gzip.open(data_root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz") as file:
        labels = list(file.read()[8:])  # the training file's labels, in its own order
    for split, positions in (("train", sorted(train_positions)[:6]), ("val", sorted(val_positions)[:3])):
        result = run_mnist(
            "predict",
            "run=latest",
            f"split={split}",
            f"indices=[{','.join(map(str, positions))}]",
            "format=json",
            cwd=workdir,
            env=cli_env,
        )
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)["predictions"]
        assert [r["input"] for r in rows] == [f"{split}[{p}]" for p in positions]
        assert [r["label"] for r in rows] == [str(labels[p]) for p in positions]  # were the shuffled split's rows
    refused = run_mnist(
        "predict", "run=latest", "split=train", f"indices=[{val_positions[0]}]", cwd=workdir, env=cli_env
    )
    assert refused.returncode == 2
    assert refused.stderr == (
        f"mnist predict: indices: image {val_positions[0]} of the training file is in the run's val split, "
        "not its train split; use split=val for it.\n"
    )


def save_variants(image: np.ndarray, folder: Path, name: str) -> dict:
    """The same 28x28 sample as files a user might have: {variant: path}."""
    pil = Image.fromarray(image)
    paths = {}
    paths["png"] = folder / f"{name}.png"
    pil.save(paths["png"])
    paths["inverted_jpeg"] = folder / f"{name}_inverted.jpg"
    Image.fromarray(255 - image).save(paths["inverted_jpeg"], quality=95)
    rgb = np.stack([255 - image * 0.8, 255 - image * 0.9, 255 - image * 0.5], axis=-1).astype(np.uint8)
    paths["rgb_ink_on_paper"] = folder / f"{name}_rgb.png"
    Image.fromarray(rgb).save(paths["rgb_ink_on_paper"])
    large = Image.new("L", (200, 300), 255)
    large.paste(Image.fromarray(255 - image).resize((180, 180), Image.BICUBIC), (10, 60))
    paths["large_200x300"] = folder / f"{name}_large.png"
    large.save(paths["large_200x300"])
    off = Image.new("L", (90, 90), 0)
    off.paste(pil, (55, 4))
    paths["off_centre"] = folder / f"{name}_off.bmp"
    off.save(paths["off_centre"])
    return paths


@pytest.mark.slow
def test_predict_on_files_agrees_with_the_model_on_the_samples(trained_run, workdir, cli_env, data_root, tmp_path):
    from mnist_cli.datasets.torchvision_sets import load_dataset

    indices = list(range(40))
    samples = run_mnist(
        "predict", "run=latest", f"indices=[{','.join(map(str, indices))}]", "format=json", cwd=workdir, env=cli_env
    )
    assert samples.returncode == 0, samples.stderr
    expected = [row["predicted"] for row in json.loads(samples.stdout)["predictions"]]

    images = load_dataset(str(data_root), "MNIST", train=False, download=False, classes=10).images.numpy()
    variants = {}
    for i in indices:
        for variant, path in save_variants(images[i], tmp_path, f"s{i:03d}").items():
            variants.setdefault(variant, []).append(path)
    for variant, paths in variants.items():
        result = run_mnist(
            "predict",
            "run=latest",
            f"inputs=[{','.join(map(str, paths))}]",
            "format=json",
            "topk=3",
            cwd=workdir,
            env=cli_env,
        )
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)["predictions"]
        assert len(rows[0]["topk"]) == 3
        agreement = np.mean([row["predicted"] == e for row, e in zip(rows, expected)])
        assert agreement >= 0.8, f"{variant}: {agreement:.0%} agree with the predictions on the samples"


def test_predict_writes_csv_jsonl_and_input_grid_into_a_predict_run(trained_run, workdir, cli_env, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((28, 28), 0, np.uint8)).save(folder / "blank.png")
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(folder / "bar.png")
    (folder / "notes.txt").write_text("not an image, and not searched: wrong suffix")
    earlier = set((workdir / "outputs" / "predict").glob("*/*"))
    result = run_mnist("predict", "run=latest", f"inputs=[{folder}]", "save_inputs=true", cwd=workdir, env=cli_env)
    assert result.returncode == 1  # blank.png failed, bar.png was predicted
    (out,) = set((workdir / "outputs" / "predict").glob("*/*")) - earlier
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["input"]).name for r in rows] == ["bar.png", "blank.png"]
    assert rows[0]["predicted"] is not None and rows[1]["error"] == "blank image: no ink found"
    assert (out / "predictions.csv").read_text().startswith("input,label,predicted,confidence,topk,error")
    with Image.open(out / "inputs.png") as grid:
        grid.verify()


def test_predict_bad_files_get_their_own_rows(trained_run, workdir, cli_env, tmp_path):
    good = tmp_path / "good.png"
    digit = np.zeros((28, 28), np.uint8)
    digit[5:23, 10:18] = 255
    Image.fromarray(digit).save(good)
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    bad = [fake, empty, truncated, tmp_path / "missing.png"]
    some = run_mnist(
        "predict", "run=latest", f"inputs=[{good},{','.join(map(str, bad))}]", "format=json", cwd=workdir, env=cli_env
    )
    assert some.returncode == 1, some.stderr
    rows = json.loads(some.stdout)["predictions"]
    assert rows[0]["predicted"] is not None and all(r["error"] for r in rows[1:])
    none = run_mnist("predict", "run=latest", f"inputs=[{','.join(map(str, bad))}]", cwd=workdir, env=cli_env)
    assert none.returncode == 2
    assert "Traceback" not in some.stderr + none.stderr + none.stdout


@pytest.mark.parametrize(
    "case",
    [
        "missing run",
        "not a checkpoint",
        "a text file",
        "an image",
        "pickled code",
        "no train runs",
        "run not given",
        "run= empty",
    ],
)
def test_eval_and_predict_refuse_bad_runs(case, trained_run, workdir, cli_env, tmp_path):
    marker = tmp_path / "code_ran"
    args = {
        "missing run": ["eval", f"run={tmp_path / 'nope'}"],
        "not a checkpoint": ["eval", f"run={tmp_path / 'junk.pt'}"],
        "a text file": ["eval", f"run={tmp_path / 'notes.txt'}"],  # torch's reader raised KeyError on it
        "an image": ["predict", f"run={tmp_path / 'digit.png'}", "indices=[0]"],  # was called "pickled code?"
        "pickled code": ["predict", f"run={tmp_path / 'evil.pt'}", "indices=[0]"],
        "no train runs": ["eval", "run=latest"],
        "run not given": ["predict", "indices=[0]"],
        "run= empty": ["eval", "run="],
    }[case]
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "digit.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    torch.save({"format": "mnist-cli-checkpoint", "model": Payload(marker)}, tmp_path / "evil.pt")
    before = sorted(p.name for p in trained_run.rglob("*"))
    result = run_mnist(*args, cwd=tmp_path if case == "no train runs" else workdir, env=cli_env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"mnist {args[0]}: ") and result.stderr.count("\n") == 1
    if case == "run= empty":
        assert "run= is empty" in result.stderr
    if case in ("not a checkpoint", "a text file", "an image"):
        assert "is not a readable checkpoint (truncated or not a torch file)." in result.stderr
    if case == "pickled code":
        assert "holds more than weights (pickled code?)" in result.stderr
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert sorted(p.name for p in trained_run.rglob("*")) == before
