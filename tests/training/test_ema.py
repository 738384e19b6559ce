"""The moving average of the weights (ema.py, ema_decay) and test-time flip (models.for_inference)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from conftest import run_mnist
from mnist_cli.training.ema import WeightAverage
from mnist_cli.training.models import FlipAveraged, build_model, for_inference

CNN = OmegaConf.create({"name": "cnn", "channels": [4, 8, 8], "hidden": 16, "dropout": 0.0})


def test_the_average_moves_towards_the_weights_by_one_minus_decay_and_copies_batch_counts():
    torch.manual_seed(0)
    model = build_model(CNN, 10)
    average = WeightAverage(model, decay=0.9)
    before = {k: v.clone() for k, v in average.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    model(torch.randn(8, 1, 28, 28))  # training mode: batch norm updates its running stats and count
    average.update(steps_done=1000)  # late in a run: the full decay
    trained = model.state_dict()
    for key, value in average.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * before[key] + 0.1 * trained[key], atol=1e-6), key
        else:
            assert torch.equal(value, trained[key]), key  # num_batches_tracked


def test_early_steps_average_less_so_the_random_start_fades_quickly():
    model = build_model(CNN, 10)
    average = WeightAverage(model, decay=0.999)
    weight = next(model.parameters())
    with torch.no_grad():
        weight.add_(1.0)
    start = next(average.model.parameters()).clone()
    average.update(steps_done=0)  # decay (1 + 0) / (10 + 0) = 0.1: mostly the new weights
    assert torch.allclose(next(average.model.parameters()), 0.1 * start + 0.9 * weight.detach(), atol=1e-6)


def test_the_average_is_its_own_copy_and_never_trains():
    model = build_model(CNN, 10)
    average = WeightAverage(model, decay=0.99)
    assert all(not p.requires_grad for p in average.model.parameters())
    assert all(a.data_ptr() != p.data_ptr() for a, p in zip(average.model.parameters(), model.parameters()))


def run_config(test_time_flip=None, flip=True, augment=True):
    dataset = {"name": "fashion_mnist", "augment": {"flip": flip}} | (
        {} if test_time_flip is None else {"test_time_flip": test_time_flip}
    )
    return OmegaConf.create({"dataset": dataset, "model": {"name": "cnn", "augment": augment}})


def test_test_time_flip_gives_an_image_and_its_mirror_the_same_logits():
    torch.manual_seed(0)
    model = build_model(CNN, 10).eval()
    images = torch.randn(5, 1, 28, 28)
    flipped = for_inference(model, run_config(test_time_flip=True))
    assert isinstance(flipped, FlipAveraged)
    assert torch.allclose(flipped(images), flipped(images.flip(-1)), atol=1e-5)
    assert torch.allclose(flipped(images), (model(images) + model(images.flip(-1))) / 2)
    assert not torch.allclose(model(images), model(images.flip(-1)), atol=1e-3)  # the plain model does not


def test_only_a_model_trained_on_mirrored_images_is_flip_averaged():
    model = build_model(CNN, 10)
    assert for_inference(model, run_config(test_time_flip=False)) is model
    assert for_inference(model, run_config(test_time_flip=True, flip=False)) is model
    assert for_inference(model, run_config(test_time_flip=True, augment=False)) is model  # mlp: no augmentation at all
    assert for_inference(model, run_config()) is model  # a run from before the key existed


def test_a_checkpoint_that_lost_its_average_is_refused_on_resume_in_one_sentence_and_left_as_it_is(tmp_path, cli_env):
    trained = run_mnist(
        "train",
        "model=lenet",
        "data.limit=120",
        "data.val_size=20",
        "batch_size=50",
        "epochs=1",
        "device=cpu",
        "ema_decay=0.9",
        cwd=tmp_path,
        env=cli_env,
    )
    assert trained.returncode == 0, trained.stderr
    last = tmp_path / trained.stdout.strip().splitlines()[-1] / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    assert set(checkpoint["ema"]) == set(checkpoint["model"])  # the average is saved beside the weights
    del checkpoint["ema"]  # as a hand-edited or foreign file might have it
    torch.save(checkpoint, last)
    before = last.read_bytes()
    resumed = run_mnist("train", f"resume={last.parent.parent}", "epochs=2", cwd=tmp_path, env=cli_env)
    assert resumed.returncode == 2
    assert "has no moving average of the weights" in resumed.stderr and "Traceback" not in resumed.stderr
    assert last.read_bytes() == before


def test_turning_test_time_flip_off_is_accepted_for_any_model():
    from mnist_cli.config.checks import check_config
    from mnist_cli.config.compose import compose

    overrides = [
        "dataset=fashion_mnist",
        "model=mlp",
        "dataset.test_time_flip=false",
    ]  # e.g. one job of a sweep over models
    check_config(compose("train", overrides), "train", overrides)
