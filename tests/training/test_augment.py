"""Training-image augmentation (augment.py): each lever keeps shape, dtype and range, does what it
says, is a function of (seed, epoch) alone, gives a resumed epoch exactly its images, and never
touches evaluation."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch

from conftest import run_mnist, start_mnist, synthetic_glyphs
from mnist_cli.training.augment import Augment, apply, draw, erase, rotate_and_zoom
from mnist_cli.training.data import Split, epoch_generator, train_batches

LEVERS = {
    "shift": Augment(shift=2),
    "flip": Augment(flip=True),
    "rotate": Augment(rotate=15.0),
    "scale": Augment(scale=0.2),
    "erase": Augment(erase=1.0),
    "all": Augment(shift=2, flip=True, rotate=10.0, scale=0.1, erase=0.5),
}
ALL = [
    "dataset.augment.shift=2",
    "dataset.augment.flip=true",
    "dataset.augment.rotate=10",
    "dataset.augment.scale=0.1",
    "dataset.augment.erase=0.5",
    "model.augment=true",
]


def glyphs(n: int = 64) -> Split:
    images, labels = synthetic_glyphs(n, seed=3, glyphs="0123456789")
    return Split(torch.from_numpy(images), torch.from_numpy(labels).long())


def epoch_images(split: Split, augment: Augment, seed: int, epoch: int, skip: int = 0) -> torch.Tensor:
    return torch.cat([images for images, _ in train_batches(split, 16, epoch_generator(seed, epoch), augment, skip)])


@pytest.mark.parametrize("lever", LEVERS)
def test_each_lever_keeps_shape_dtype_and_range_and_changes_images(lever):
    split = glyphs()
    plain = epoch_images(split, Augment(), 0, 1)
    augmented = epoch_images(split, LEVERS[lever], 0, 1)
    assert augmented.shape == plain.shape and augmented.dtype == torch.uint8  # uint8: the range is 0..255 by type
    assert not torch.equal(augmented, plain)
    assert (augmented.float().mean() - plain.float().mean()).abs() < 40  # still the same kind of image


@pytest.mark.parametrize("lever", LEVERS)
def test_each_lever_is_a_function_of_seed_and_epoch_and_a_resumed_epoch_gets_its_images(lever):
    split, augment = glyphs(), LEVERS[lever]
    first = epoch_images(split, augment, 0, 1)
    assert torch.equal(first, epoch_images(split, augment, 0, 1))
    assert not torch.equal(first, epoch_images(split, augment, 0, 2))
    assert not torch.equal(first, epoch_images(split, augment, 1, 1))
    assert torch.equal(epoch_images(split, augment, 0, 1, skip=2), first[32:])  # resumed after 2 batches of 16


def test_two_processes_share_each_global_batch_as_one_would_see_it():
    split, augment = glyphs(), LEVERS["all"]
    whole = [images for images, _ in train_batches(split, 16, epoch_generator(0, 1), augment)]
    ranks = [
        [images for images, _ in train_batches(split, 16, epoch_generator(0, 1), augment, 0, rank, 2)]
        for rank in (0, 1)
    ]
    for batch, zero, one in zip(whole, *ranks):
        assert torch.equal(batch[0::2], zero) and torch.equal(batch[1::2], one)


def test_flip_mirrors_exactly_the_chosen_half():
    split = glyphs()
    params = draw(Augment(flip=True), len(split), torch.Generator().manual_seed(0), torch.device("cpu"))
    flipped = apply(Augment(flip=True), split.images, params)
    chosen = params["flip"]
    assert 0.3 < chosen.float().mean() < 0.7
    assert torch.equal(flipped[chosen], split.images[chosen].flip(-1)) and torch.equal(
        flipped[~chosen], split.images[~chosen]
    )


def test_rotation_and_zoom_are_exact_where_they_should_be():
    images = glyphs(8).images
    identity = rotate_and_zoom(images, torch.zeros(8), torch.ones(8))
    assert torch.equal(identity, images)
    quarter = rotate_and_zoom(images, torch.full((8,), torch.pi / 2), torch.ones(8))
    assert torch.equal(quarter, images.rot90(1, (1, 2))) or torch.equal(quarter, images.rot90(-1, (1, 2)))
    zoomed_out = rotate_and_zoom(images, torch.zeros(8), torch.full((8,), 0.5))
    assert (
        zoomed_out[:, :6, :].sum() == 0 and zoomed_out.float().sum() < images.float().sum()
    )  # smaller, with a blank border


def test_erase_blanks_one_rectangle_of_the_promised_size_in_the_chosen_images():
    images = torch.full((200, 28, 28), 255, dtype=torch.uint8)
    params = draw(Augment(erase=0.5), 200, torch.Generator().manual_seed(0), torch.device("cpu"))
    erased = erase(images, params["erase"], params["erase_hw"], params["erase_at"])
    blank = (erased == 0).sum((1, 2)).float() / (28 * 28)
    chosen = params["erase"]
    assert torch.all(blank[~chosen] == 0) and torch.all(blank[chosen] > 0.005) and torch.all(blank[chosen] < 0.45)
    for image in erased[chosen][:20]:  # one rectangle: its blank rows and columns are runs
        rows, cols = (image == 0).any(1).nonzero().flatten(), (image == 0).any(0).nonzero().flatten()
        assert (image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == 0).all()


@pytest.mark.slow
def test_evaluation_never_augments_and_a_resumed_run_with_every_lever_is_exact(tmp_path, cli_env):
    """Also with the moving average of the weights and test-time flip: eval measures the weights and
    the flips training chose, and a resume continues the average exactly."""
    common = [
        "model=lenet",
        "data.limit=300",
        "data.val_size=60",
        "batch_size=30",
        "epochs=3",
        "device=cpu",
        *ALL,
        "ema_decay=0.9",
        "dataset.test_time_flip=true",
    ]
    (tmp_path / "whole").mkdir()
    whole = run_mnist("train", *common, cwd=tmp_path / "whole", env=cli_env)
    assert whole.returncode == 0, whole.stderr
    reference = json.loads((tmp_path / "whole" / whole.stdout.strip().splitlines()[-1] / "summary.json").read_text())
    # the validation accuracy training recorded is what `mnist eval` measures on the same split, unaugmented
    run = tmp_path / "whole" / whole.stdout.strip().splitlines()[-1]
    evaluated = run_mnist(
        "eval", f"run={run}/checkpoints/last.pt", "split=val", "format=json", cwd=tmp_path / "whole", env=cli_env
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == reference["final"]["val_accuracy"]

    (tmp_path / "cut").mkdir()
    process = start_mnist("train", *common, "checkpoint.every_n_steps=3", cwd=tmp_path / "cut", env=cli_env)
    last = tmp_path / "cut" / "outputs" / "train" / "latest" / "checkpoints" / "last.pt"
    while process.poll() is None and not last.exists():
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)  # mid-epoch: last.pt holds the step reached
    process.communicate(timeout=60)
    assert process.returncode == 130
    resumed = run_mnist("train", f"resume={last.parent.parent.resolve()}", cwd=tmp_path / "cut", env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((last.parent.parent / "summary.json").read_text())
    assert again["final"] | {"seconds": 0} == reference["final"] | {"seconds": 0}  # trained and averaged weights alike
    assert {"trained_val_accuracy", "ema_val_accuracy", "weights"} <= set(reference["final"])


def test_shear_and_stroke_are_drawn_after_the_older_parameters_so_older_runs_see_the_same_images():
    before = draw(
        Augment(shift=2, rotate=10, scale=0.1, erase=0.5), 64, torch.Generator().manual_seed(3), torch.device("cpu")
    )
    after = draw(
        Augment(shift=2, rotate=10, scale=0.1, erase=0.5, shear=0.3, stroke=0.5),
        64,
        torch.Generator().manual_seed(3),
        torch.device("cpu"),
    )
    assert set(after) - set(before) == {"shear", "stroke", "thicker"}
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def test_a_shear_slants_an_upright_bar_and_stroke_changes_its_width_by_a_pixel():
    bar = torch.zeros(1, 28, 28, dtype=torch.uint8)
    bar[0, 4:24, 13:15] = 255  # two pixels wide, upright
    sheared = apply(Augment(shear=0.5), bar, {"shear": torch.tensor([0.5])})
    top_x = sheared[0, 6].float().argmax().item()
    bottom_x = sheared[0, 21].float().argmax().item()
    assert abs(top_x - bottom_x) >= 5  # a slant of about 0.5 px per row over 15 rows
    yes, thicker, thinner = torch.tensor([True]), torch.tensor([True]), torch.tensor([False])
    wider = apply(Augment(stroke=1.0), bar, {"stroke": yes, "thicker": thicker})
    narrower = apply(Augment(stroke=1.0), bar, {"stroke": yes, "thicker": thinner})
    assert (wider[0, 12] > 0).sum() == 3 and (narrower[0, 12] > 0).sum() == 1
    untouched = apply(Augment(stroke=1.0), bar, {"stroke": torch.tensor([False]), "thicker": thicker})
    assert torch.equal(untouched, bar)
