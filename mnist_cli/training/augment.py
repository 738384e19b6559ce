"""Training-image augmentation on whole batches on the device: random shifts, horizontal flips, small
random rotations, zooms and shears (one affine_grid / grid_sample call per batch), thicker or thinner
strokes (a 2x2 grey dilation or erosion), and random erasing.

Every random number of an epoch is drawn up front from that epoch's generator (data.epoch_generator),
for every image of the split, in a fixed order: the same (seed, epoch) gives the same images, a run
resumed mid-epoch gets exactly the images it would have had, and no per-sample Python runs. What
`model.augment=true` does is `dataset.augment` (digits and clothes want different things); evaluation
never augments. Images stay uint8, as the rest of the pipeline expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F

ERASE_AREA = (0.02, 0.33)  # the erased rectangle's share of the image (random erasing's usual range)
ERASE_ASPECT = (0.3, 3.3)  # its height / width, drawn log-uniformly


@dataclass(frozen=True)
class Augment:
    """What happens to each training image (all off: the image as it is)."""

    shift: int = 0  # translate by up to N pixels in each direction
    flip: bool = False  # mirror left-right, half of the images
    rotate: float = 0.0  # rotate by up to ± degrees
    scale: float = 0.0  # zoom by a factor in 1 ± scale
    erase: float = 0.0  # probability of blanking one random rectangle
    shear: float = 0.0  # slant by a horizontal shear factor in ± shear (x' = x + s y)
    stroke: float = 0.0  # probability of a thicker (half) or thinner (half) stroke: a 2x2 dilation or erosion

    @property
    def active(self) -> bool:
        return bool(self.shift or self.flip or self.rotate or self.scale or self.erase or self.shear or self.stroke)

    @property
    def affine(self) -> bool:
        return bool(self.rotate or self.scale or self.shear)


def from_config(augment_cfg, enabled: bool) -> Augment:
    """The Augment of `dataset.augment` when `model.augment` is true, else one that does nothing."""
    if not enabled or augment_cfg is None:
        return Augment()
    return Augment(
        int(augment_cfg.shift),
        bool(augment_cfg.flip),
        float(augment_cfg.rotate),
        float(augment_cfg.scale),
        float(augment_cfg.erase),
        float(augment_cfg.get("shear", 0.0)),  # absent from runs older than the keys: none
        float(augment_cfg.get("stroke", 0.0)),
    )


def draw(augment: Augment, n: int, generator: torch.Generator, device: torch.device) -> Dict[str, torch.Tensor]:
    """The epoch's random parameters for `n` images, on `device`. Shifts are drawn first, as they
    always were, so a run with only shifts sees the images earlier versions gave it."""
    params: Dict[str, torch.Tensor] = {}
    if augment.shift:
        params["shifts"] = torch.randint(-augment.shift, augment.shift + 1, (n, 2), generator=generator)
    if augment.flip:
        params["flip"] = torch.rand(n, generator=generator) < 0.5
    if augment.rotate or augment.scale:
        params["angle"] = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(augment.rotate)
        params["zoom"] = 1 + (torch.rand(n, generator=generator) * 2 - 1) * augment.scale
    if augment.erase:
        params["erase"] = torch.rand(n, generator=generator) < augment.erase
        area = ERASE_AREA[0] + torch.rand(n, generator=generator) * (ERASE_AREA[1] - ERASE_AREA[0])
        aspect = torch.exp(
            math.log(ERASE_ASPECT[0]) + torch.rand(n, generator=generator) * math.log(ERASE_ASPECT[1] / ERASE_ASPECT[0])
        )
        params["erase_hw"] = torch.stack([(area * aspect).sqrt(), (area / aspect).sqrt()], 1).clamp(max=1.0)
        params["erase_at"] = torch.rand(n, 2, generator=generator)  # where its corner goes, as a share of the room left
    # drawn after the others: a run without them sees the images it saw before they existed
    if augment.shear:
        params["shear"] = (torch.rand(n, generator=generator) * 2 - 1) * augment.shear
    if augment.stroke:
        params["stroke"] = torch.rand(n, generator=generator) < augment.stroke
        params["thicker"] = torch.rand(n, generator=generator) < 0.5
    return {name: value.to(device) for name, value in params.items()}


def shift_images(images: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image by its own (dy, dx) in [-pad, pad], filling with background (0): one gather."""
    b, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = torch.arange(h, device=images.device) + pad - shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=images.device) + pad - shifts[:, 1:]  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def rotate_and_zoom(
    images: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor, shear: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Rotate each image by its angle (radians), zoom it by its factor and shear it by its factor about the
    centre (bilinear, background 0), rounded back to uint8."""
    cos, sin = angle.cos() / zoom, angle.sin() / zoom  # the output-to-input map: the inverse transform
    zeros = torch.zeros_like(cos)
    if shear is not None:  # input x = output x - shear * output y, before the rotation's inverse
        theta = torch.stack(
            [torch.stack([cos, -sin - cos * shear, zeros], 1), torch.stack([sin, cos - sin * shear, zeros], 1)], 1
        )
    else:
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, (len(images), 1, *images.shape[1:]), align_corners=False)
    moved = F.grid_sample(images.unsqueeze(1).float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)


def erase(images: torch.Tensor, chosen: torch.Tensor, hw: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Blank (set to 0) one rectangle in each chosen image: height and width as shares of the image
    (hw), its corner as a share of the room left (at). Built as a mask from two comparisons."""
    b, h, w = images.shape
    size = torch.stack([(hw[:, 0] * h).round().clamp(1, h), (hw[:, 1] * w).round().clamp(1, w)], 1).long()
    corner = (at * (torch.tensor([h, w], device=images.device) - size + 1)).floor().long()
    rows = torch.arange(h, device=images.device)[None, :]
    cols = torch.arange(w, device=images.device)[None, :]
    inside_rows = (rows >= corner[:, :1]) & (rows < corner[:, :1] + size[:, :1])  # (B, H)
    inside_cols = (cols >= corner[:, 1:]) & (cols < corner[:, 1:] + size[:, 1:])  # (B, W)
    mask = inside_rows[:, :, None] & inside_cols[:, None, :] & chosen[:, None, None]
    return images.masked_fill(mask, 0)


def restroke(images: torch.Tensor, chosen: torch.Tensor, thicker: torch.Tensor) -> torch.Tensor:
    """Chosen images with their strokes a pixel thicker (2x2 grey dilation) or thinner (2x2 erosion)."""
    padded = F.pad(images.unsqueeze(1).float(), (0, 1, 0, 1))
    dilated = F.max_pool2d(padded, 2, stride=1).squeeze(1)
    eroded = -F.max_pool2d(-F.pad(images.unsqueeze(1).float(), (0, 1, 0, 1), value=255.0), 2, stride=1).squeeze(1)
    changed = torch.where(thicker[:, None, None], dilated, eroded).to(torch.uint8)
    return torch.where(chosen[:, None, None], changed, images)


def apply(augment: Augment, images: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
    """`images` (B, 28, 28) uint8 augmented with `params` (draw's, one row per image of the batch)."""
    if "shifts" in params:
        images = shift_images(images, params["shifts"], augment.shift)
    if "flip" in params:
        images = torch.where(params["flip"][:, None, None], images.flip(-1), images)
    if "angle" in params or "shear" in params:
        some = params.get("angle", params.get("shear"))
        angle = params["angle"] if "angle" in params else torch.zeros_like(some)
        zoom = params["zoom"] if "zoom" in params else torch.ones_like(some)
        images = rotate_and_zoom(images, angle, zoom, params.get("shear"))
    if "stroke" in params:
        images = restroke(images, params["stroke"], params["thicker"])
    if "erase" in params:
        images = erase(images, params["erase"], params["erase_hw"], params["erase_at"])
    return images
