"""Every config option composes, builds and trains; the data pipeline does what it promises."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from mnist_cli.config.schema import ACTIVATIONS, GROUP_SCHEMAS, register_configs
from mnist_cli.training.augment import shift_images
from mnist_cli.training.data import Split, epoch_generator, train_batches
from mnist_cli.training.models import ACTIVATIONS as MODEL_ACTIVATIONS
from mnist_cli.training.models import build_model, layer_summary
from mnist_cli.training.optim import build_optimizer, build_scheduler

register_configs()
COMBINATIONS = list(itertools.product(GROUP_SCHEMAS["model"], GROUP_SCHEMAS["optimizer"], GROUP_SCHEMAS["scheduler"]))


def compose_train(*overrides: str):
    with initialize_config_module(config_module="mnist_cli.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@functools.lru_cache(maxsize=None)
def group_config(group: str, option: str):
    """The `group` section of train.yaml composed with group=option (one composition per option, not per combination)."""
    return compose_train(f"{group}={option}")[group]


@pytest.mark.parametrize("model_name,optimizer_name,scheduler_name", COMBINATIONS)
def test_every_model_optimizer_scheduler_trains_a_few_steps(model_name, optimizer_name, scheduler_name):
    torch.manual_seed(0)
    model = build_model(group_config("model", model_name), num_classes=10)
    optimizer = build_optimizer(model.parameters(), group_config("optimizer", optimizer_name))
    scheduler = build_scheduler(optimizer, group_config("scheduler", scheduler_name), steps_per_epoch=2, epochs=2)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no weight moved"
    assert model(x).shape == (16, 10)


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam", "adamw", "adagrad"])
def test_fused_optimizers_are_the_default_on_cpu_and_can_be_turned_off(optimizer_name):
    params = list(torch.nn.Linear(4, 2).parameters())
    assert build_optimizer(params, compose_train(f"optimizer={optimizer_name}").optimizer).defaults["fused"] is True
    off = compose_train(f"optimizer={optimizer_name}", "optimizer.fused=false").optimizer
    assert not build_optimizer(params, off).defaults["fused"]
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]  # no fused kernel there: torch's default
    assert build_optimizer(meta, compose_train(f"optimizer={optimizer_name}").optimizer).defaults["fused"] is None


def test_byte_mask_dropout_drops_about_p_keeps_the_mean_and_is_off_in_eval():
    from mnist_cli.training.models import ByteMaskDropout

    layer = ByteMaskDropout(0.2)
    torch.manual_seed(0)
    out = layer(torch.ones(1000, 1000))
    assert abs((out == 0).float().mean().item() - 0.2) < 0.005
    assert abs(out.mean().item() - 1.0) < 0.01
    assert not torch.equal(out, layer(torch.ones(1000, 1000)))  # a new mask each call
    layer.eval()
    assert torch.equal(layer(torch.ones(3, 3)), torch.ones(3, 3))


def test_schema_activations_match_the_models():
    assert set(ACTIVATIONS) == set(MODEL_ACTIVATIONS)


def test_lenet_has_the_classic_shape():
    cfg = compose_train("model=lenet")
    rows = layer_summary(build_model(cfg.model, num_classes=10))
    shapes = [r["output"] for r in rows if r["type"] in ("Conv2d", "Linear")]
    assert shapes == [(6, 28, 28), (16, 10, 10), (120,), (84,), (10,)]
    assert sum(r["params"] for r in rows) == 61706


def test_shift_images_moves_each_image_by_its_own_offset():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[:, 10, 10] = 255
    shifted = shift_images(images, torch.tensor([[2, -1], [0, 0]]), pad=2)
    assert shifted.dtype == torch.uint8 and shifted.shape == images.shape
    assert shifted[0, 12, 9] == 255 and shifted[0].sum() == 255
    assert torch.equal(shifted[1], images[1])


def test_shuffle_is_a_function_of_seed_and_epoch():
    split = Split(torch.arange(100, dtype=torch.uint8).view(100, 1, 1).expand(100, 28, 28), torch.arange(100))

    def order(seed, epoch):
        return torch.cat([labels for _, labels in train_batches(split, 32, epoch_generator(seed, epoch))])

    assert torch.equal(order(0, 1), order(0, 1))
    assert not torch.equal(order(0, 1), order(0, 2))
    assert not torch.equal(order(0, 1), order(1, 1))
    assert sorted(order(0, 1).tolist()) == list(range(100))  # every image once per epoch


def test_speedrun_preset_overrides_the_defaults_and_yields_to_the_command_line():
    cfg = compose_train("experiment=speedrun_cpu")
    assert (cfg.model.name, cfg.epochs, cfg.optimizer.lr, cfg.model.augment, cfg.device, cfg.precision) == (
        "cnn",
        1,
        0.008,
        False,
        "cpu",
        "bf16",
    )
    gpu = compose_train("experiment=speedrun")
    assert (gpu.model.channels, gpu.model.augment, gpu.batch_size, gpu.device) == ([32, 64, 128], False, 512, "cuda")
    assert compose_train("experiment=speedrun_cpu", "epochs=5").epochs == 5


def test_best_presets_pick_their_dataset_and_pass_the_config_checks():
    from mnist_cli.config.checks import validate

    for name, dataset, mirrored in (("mnist_best", "mnist", False), ("fashion_mnist_best", "fashion_mnist", True)):
        cfg = compose_train(f"experiment={name}")
        validate(cfg)
        assert (cfg.dataset.name, cfg.dataset.augment.flip, cfg.dataset.test_time_flip) == (dataset, mirrored, mirrored)
        assert (cfg.model.convs_per_block, cfg.precision) == (2, "bf16")
