"""Ensembles of runs (`run=[A,B]`, `run=<sweep> top=K`): the mean of the members' probabilities, in eval,
predict, serve and export; members that do not match are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_mnist
from mnist_cli.config.compose import compose
from mnist_cli.datasets.torchvision_sets import load_set
from mnist_cli.inference import ensembles
from mnist_cli.inference.predictions import predict_logits
from mnist_cli.runs.checkpoints import load_trained

TINY = ["model=mlp", "epochs=2", "data.limit=600", "data.val_size=150", "batch_size=50", "device=cpu"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cli_env):
    """Three runs that differ in seed (one sweep), and a FashionMNIST run beside them."""
    work = tmp_path_factory.mktemp("ensembles")
    result = run_mnist("train", "-m", "seed=0,1,2", *TINY, cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    (folder,) = (work / "outputs" / "multirun").glob("*/*")
    result = run_mnist("train", "dataset=fashion_mnist", *TINY, cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    return work, folder, work / result.stdout.strip().splitlines()[-1]


def test_an_ensemble_gives_the_mean_of_its_members_probabilities(sweep, data_root):
    work, folder, _ = sweep
    cfg = compose("eval", [f"run=[{folder}/0,{folder}/2]", "device=cpu"])
    ensemble = ensembles.load_model(cfg, torch.device("cpu"))
    images = load_set(ensemble.config.dataset, str(data_root), "test", False).images
    members = [load_trained(str(folder / n), "outputs", torch.device("cpu")) for n in ("0", "2")]
    mean = sum(predict_logits(m, images, 100).softmax(1) for m in members) / 2
    assert torch.allclose(predict_logits(ensemble, images, 100).softmax(1), mean, atol=1e-6)
    assert not torch.allclose(mean, predict_logits(members[0], images, 100).softmax(1), atol=1e-3)  # not one member


def test_eval_of_an_ensemble_lists_its_members_with_their_own_accuracy(sweep, cli_env, data_root):
    work, folder, _ = sweep
    result = run_mnist("eval", f"run={folder}", "top=2", "format=json", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    ranked = sorted(
        (json.loads((folder / n / "summary.json").read_text())["best"]["val_accuracy"], n) for n in ("0", "1", "2")
    )
    best_two = {str(folder / n) for _, n in sorted(ranked, key=lambda r: (-r[0], r[1]))[:2]}
    assert {m["run"] for m in report["members"]} == best_two
    for member in report["members"]:
        own = json.loads(run_mnist("eval", f"run={member['run']}", "format=json", cwd=work, env=cli_env).stdout)
        assert member["accuracy"] == pytest.approx(own["accuracy"])
    assert report["run"] is None and report["samples"] == 200
    (saved,) = (work / "outputs" / "ensembles").glob("*/*/eval/test.json")
    assert json.loads(saved.read_text())["accuracy"] == report["accuracy"]
    members = json.loads((saved.parent.parent / "members.json").read_text())
    assert {m["run"] for m in members} == best_two


@pytest.mark.parametrize(
    "given,said",
    [
        ("run=[{folder}/0,{fashion}]", "has dataset.name=fashion_mnist but"),
        ("run=[{folder}/0,{folder}/0]", "run= names one run twice"),
        ("run={folder} top=4", "holds 3 completed runs, fewer than top=4"),
        ("run=[{folder}/0,{folder}/1] top=2", "top= picks the best runs of a sweep folder"),
    ],
    ids=["another dataset", "a run twice", "top beyond the sweep", "top with a list"],
)
def test_members_that_do_not_make_an_ensemble_are_refused_in_one_sentence(sweep, cli_env, given, said):
    work, folder, fashion = sweep
    args = given.format(folder=folder, fashion=fashion).split()
    result = run_mnist("eval", *args, cwd=work, env=cli_env)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_members_with_other_validation_splits_are_refused(sweep, cli_env):
    work, folder, _ = sweep
    result = run_mnist("train", *TINY[:-3], "data.val_size=100", "batch_size=50", "device=cpu", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    other = work / result.stdout.strip().splitlines()[-1]
    result = run_mnist("eval", f"run=[{folder}/0,{other}]", "split=val", cwd=work, env=cli_env)
    assert result.returncode == 2 and "has data.val_size=100 but" in result.stderr


def test_an_exported_ensemble_gives_the_mean_of_its_members_exports(sweep, cli_env):
    onnxruntime = pytest.importorskip("onnxruntime")
    work, folder, _ = sweep
    files = []
    for run in (f"run=[{folder}/0,{folder}/1]", f"run={folder}/0", f"run={folder}/1"):
        out = work / f"export-{len(files)}.onnx"
        result = run_mnist("export", run, "format=onnx", f"output={out}", cwd=work, env=cli_env)
        assert result.returncode == 0, result.stderr
        files.append(out)
    images = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)

    def probabilities(path: Path) -> np.ndarray:
        session = onnxruntime.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"images": images})[0]
        return torch.from_numpy(logits).softmax(1).numpy()

    ensemble, first, second = (probabilities(f) for f in files)
    assert np.allclose(ensemble, (first + second) / 2, atol=1e-5)


def test_an_export_says_it_computes_in_float32_when_a_member_trained_in_bf16(sweep, cli_env):
    work, folder, _ = sweep
    result = run_mnist("train", *TINY, "precision=bf16", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    bf16 = work / result.stdout.strip().splitlines()[-1]
    result = run_mnist("export", f"run=[{folder}/0,{bf16}]", f"output={work}/mixed.pt2", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "float32, while 1 of its 2 members trained (and mnist eval runs it) in bf16 autocast" in result.stdout
    result = run_mnist("export", f"run={bf16}", f"output={work}/single.pt2", cwd=work, env=cli_env)
    assert "float32, while the run trained (and mnist eval runs it) in bf16 autocast" in result.stdout
    result = run_mnist("export", f"run=[{folder}/0,{folder}/1]", f"output={work}/plain.pt2", cwd=work, env=cli_env)
    assert result.returncode == 0 and "float32, while" not in result.stdout


def test_predict_and_serve_take_an_ensemble_and_agree(sweep, cli_env, data_root):
    from PIL import Image
    from starlette.testclient import TestClient

    from mnist_cli.serving import serve

    work, folder, _ = sweep
    cfg = compose("serve", [f"run={folder}", "top=3", "device=cpu"])
    trained = ensembles.load_model(cfg, torch.device("cpu"))
    sample = work / "sample.png"
    Image.fromarray(load_set(trained.config.dataset, str(data_root), "test", False).images[0].numpy()).save(sample)
    result = run_mnist("predict", f"run={folder}", "top=3", f"inputs=[{sample}]", "format=json", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["predictions"]
    with TestClient(
        serve.build_app(serve.make_service(cfg, trained, torch.device("cpu"))), base_url="http://localhost"
    ) as client:
        model = client.get("/model").json()
        assert sorted(model["members"]) == ["0", "1", "2"] and model["run"] is None
        (served,) = client.post("/predict", content=sample.read_bytes(), headers={"content-type": "image/png"}).json()[
            "predictions"
        ]
    assert served["topk"] == row["topk"]


def test_report_shows_the_ensemble_of_a_sweeps_best_runs_as_eval_measures_it(sweep, cli_env):
    work, folder, _ = sweep
    result = run_mnist("report", str(folder), "ensemble=2", "group_seeds=false", "format=json", cwd=work, env=cli_env)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    (row,) = [r for r in rows if r["status"] == "ensemble"]
    assert row["run"] == "top-2 ensemble" and len(rows) == 4
    measured = run_mnist("eval", f"run={folder}", "top=2", "split=val", "format=json", cwd=work, env=cli_env)
    assert row["best_val_accuracy"] == pytest.approx(json.loads(measured.stdout)["accuracy"])
    assert [r["best_val_accuracy"] for r in rows] == sorted((r["best_val_accuracy"] for r in rows), reverse=True)
    beyond = run_mnist("report", str(folder), "ensemble=9", cwd=work, env=cli_env)
    assert beyond.returncode == 2 and beyond.stderr.strip().endswith("holds 3 completed runs, fewer than ensemble=9.")
