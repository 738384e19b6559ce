"""Image files -> 28x28 uint8 arrays prepared the way the training images were.

MNIST: grey, light background inverted so ink is bright, cropped to the ink, longer side scaled
to 20 px, pasted into 28x28 with the centre of mass at the centre (LeCun et al.'s recipe).
FashionMNIST: grey, light background inverted, trimmed to the object, longer side scaled to 28 px,
centred (the recipe FashionMNIST itself was made with).
A dataset's `prepare` names its recipe: digit (MNIST's), object (FashionMNIST's) or resize (grey, scaled to
28x28 as it is: a 28x28 grey image stays exactly what it was).
Files on disk (`mnist predict`, an image folder's training images) and bytes in memory (`mnist serve`)
take the same path, prepare_file.
Every file either becomes an input or raises ImageError with one sentence: too many pixels are refused
from the header, and big images are reduced while still 8-bit grey, so memory stays bounded.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import BinaryIO, List, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
INK_THRESHOLD = 0.05  # ink: brighter than this fraction of the brightest pixel (0.01 mean change on real MNIST)
# Refused from the header, before decoding: the largest camera sensors (200 MP) still fit. Decoding holds
# the file's pixels plus a grey copy at most (1 byte a pixel for a grey PNG, 6 for RGBA); JPEGs decode at 1/2..1/8.
MAX_PIXELS = 200_000_000
WORK_SIDE = 2048  # longer side a bigger image is reduced to before float32 work (the model sees 20-28 px)
Image.MAX_IMAGE_PIXELS = None  # MAX_PIXELS, checked before decoding, replaces Pillow's bomb warning/error


class ImageError(Exception):
    """A file that could not be turned into a model input; the message says why."""


def find_images(inputs: List[str], recursive: bool) -> List[Path]:
    """Files as given, and the image files inside given folders (sorted), in input order."""
    found: List[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found += sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)  # missing or non-image files get their own error row
    return found


WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # 16-bit and 32-bit single-channel images


def _decode_grey(file: BinaryIO, reader: str) -> Image.Image:
    """The image in `file` (its first frame) as a Pillow "L" image at most WORK_SIDE px on its longer side,
    transparency composited onto white; a bigger image is reduced while it is still 8-bit."""
    with Image.open(file) as image:
        image.seek(0)
        width, height = image.size  # read from the header: nothing is decoded yet
        if width * height > MAX_PIXELS:
            raise ImageError(
                f"image is {width}×{height} pixels; {reader} reads at most {MAX_PIXELS // 10**6} megapixels"
            )
        if width == 0 or height == 0:
            raise ImageError("empty image")
        factor = -(-max(width, height) // WORK_SIDE)
        if factor > 1:
            image.draft("L", (max(1, width // factor), max(1, height // factor)))  # JPEG: decode at 1/2..1/8 scale
        alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
        mode = "LA" if alpha else "L"
        image.load()
        if image.mode in WIDE_MODES:  # Pillow's own conversion clips 16-bit and float values at 255: scale them
            wide = np.asarray(image, dtype=np.float64)
            peak = wide.max()
            top = (
                65535.0
                if image.mode.startswith("I;16") or peak > 255
                else (1.0 if image.mode == "F" and peak <= 1 else 255.0)
            )
            grey = Image.fromarray((wide * (255.0 / top)).round().clip(0, 255).astype(np.uint8), "L")
        else:
            grey = image if image.mode == mode else image.convert(mode)
    del image  # the full-size decoded pixels go now, unless they were grey already: 1-2 bytes a pixel are left
    factor = -(-max(grey.size) // WORK_SIDE)
    if factor > 1:
        grey = grey.reduce(factor)  # box average: all the ink survives, as thin strokes get fainter
    if alpha:
        white = Image.new("RGBA", grey.size, (255, 255, 255, 255))
        grey = Image.alpha_composite(white, grey.convert("RGBA")).convert("L")
    return grey


def read_grey(file: BinaryIO, reader: str = "mnist predict") -> np.ndarray:
    """The image in the open binary `file` as float32 grey 0..255 (see _decode_grey); raises ImageError saying
    why it cannot be read (`reader` names the command in the pixel-limit sentence)."""
    try:
        grey = _decode_grey(file, reader)
    except UnidentifiedImageError:
        file.seek(0, io.SEEK_END)
        raise ImageError("empty file" if file.tell() == 0 else "not an image file") from None
    except MemoryError:
        raise ImageError("not enough memory to decode this image") from None
    except ImageError:
        raise
    except Exception as error:  # a malformed file can make a decoder raise almost anything; it is that file's row
        raise ImageError(f"unreadable image ({str(error) or type(error).__name__})") from None
    return np.asarray(grey, dtype=np.float32)


def _background(grey: np.ndarray) -> float:
    """The background level: the median of the four corner patches (objects may touch the edges,
    as FashionMNIST items do, but rarely fill the corners)."""
    k = max(1, min(grey.shape) // 10)
    corners = [grey[:k, :k], grey[:k, -k:], grey[-k:, :k], grey[-k:, -k:]]
    return float(np.median(np.concatenate([c.ravel() for c in corners])))


def ink_on_black(grey: np.ndarray) -> np.ndarray:
    """Invert when the background is light, so ink is bright on black."""
    return 255.0 - grey if _background(grey) > 127 else grey


def _resize(array: np.ndarray, size: tuple) -> np.ndarray:
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    return np.asarray(image.resize(size, Image.LANCZOS), dtype=np.float32)


def _ink_crop(grey: np.ndarray) -> np.ndarray:
    """Bright-on-black ink cropped to its bounding box, background lifted to 0."""
    ink = ink_on_black(grey)
    ink = ink - _background(ink)  # a uniform, not-quite-black background becomes 0
    peak = ink.max()
    if peak <= 0:
        raise ImageError("blank image: no ink found")
    rows, cols = np.nonzero(ink > INK_THRESHOLD * peak)
    crop = np.clip(ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1], 0, None)
    return crop * (255.0 / peak)


def _scale_longer_side(crop: np.ndarray, side: int) -> np.ndarray:
    height, width = crop.shape
    scale = side / max(height, width)
    return _resize(crop, (max(1, round(width * scale)), max(1, round(height * scale))))


def _paste(crop: np.ndarray, top: int, left: int) -> np.ndarray:
    """`crop` placed at (top, left) on a black 28x28 uint8 image."""
    out = np.zeros((28, 28), dtype=np.float32)
    out[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    return np.clip(out, 0, 255).astype(np.uint8)


def mnist_style(grey: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale the longer side to 20 px, put the centre of mass at the centre of 28x28."""
    crop = _scale_longer_side(_ink_crop(grey), 20)
    total = crop.sum()
    if total <= 0:
        raise ImageError("blank image: no ink found")
    ys, xs = np.indices(crop.shape)
    top = int(np.clip(round(14 - (ys * crop).sum() / total), 0, 28 - crop.shape[0]))
    left = int(np.clip(round(14 - (xs * crop).sum() / total), 0, 28 - crop.shape[1]))
    return _paste(crop, top, left)


def fashion_style(grey: np.ndarray) -> np.ndarray:
    """Trim to the object, scale the longer side to 28 px, centre it (Zalando's FashionMNIST recipe)."""
    crop = _scale_longer_side(_ink_crop(grey), 28)
    return _paste(crop, (28 - crop.shape[0]) // 2, (28 - crop.shape[1]) // 2)


def plain_resize(grey: np.ndarray) -> np.ndarray:
    """Grey 0..255 scaled to 28x28 as it is (no inversion, no crop); a 28x28 image is kept exactly."""
    if grey.shape != (28, 28):
        grey = _resize(grey, (28, 28))
    return np.clip(grey.round(), 0, 255).astype(np.uint8)


RECIPES = {"digit": mnist_style, "object": fashion_style, "resize": plain_resize}  # config.schema.PREPARATIONS


def prepare_file(file: BinaryIO, how: str, reader: str = "mnist predict") -> np.ndarray:
    """The image in the open binary `file` (a file on disk, or bytes in memory: io.BytesIO) as a 28x28 uint8
    model input prepared by recipe `how` (RECIPES); raises ImageError. The one path from bytes to model input."""
    return RECIPES[how](read_grey(file, reader))


def _unopenable(error: OSError) -> ImageError:
    """Why a file could not be opened or read, as its row says it."""
    if isinstance(error, FileNotFoundError):
        return ImageError("no such file")
    if isinstance(error, IsADirectoryError):
        return ImageError("is a folder")
    if isinstance(error, PermissionError):
        return ImageError("permission denied")
    return ImageError(f"unreadable image ({error})")  # any other reason is that file's row too


def prepare(path: Path, how: str, reader: str = "mnist predict") -> np.ndarray:
    """The image file at `path` as a 28x28 uint8 model input (prepare_file); raises ImageError."""
    try:
        with open(path, "rb") as file:
            return prepare_file(file, how, reader)
    except OSError as error:
        raise _unopenable(error) from None


def prepare_many(paths: List[str], how: str) -> Tuple[np.ndarray, List[str], List[str]]:
    """(uint8 images (N, 28, 28), one reason per file: "" where it was prepared, one content digest per file:
    BLAKE2b of its bytes, "" where it could not be read) for image files, as `prepare` makes them; a file
    that cannot be prepared is a black image and its reason. What a decoding process runs."""
    images = np.zeros((len(paths), 28, 28), dtype=np.uint8)
    reasons, digests = [""] * len(paths), [""] * len(paths)
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as file:
                data = file.read()
            digests[i] = hashlib.blake2b(data, digest_size=16).hexdigest()
            images[i] = prepare_file(io.BytesIO(data), how, "mnist train")
        except OSError as error:
            reasons[i] = str(_unopenable(error))
        except ImageError as error:
            reasons[i] = str(error) or "unreadable image"
    return images, reasons, digests
