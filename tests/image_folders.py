"""Image folders for the tests: synthetic glyphs written as PNG files, one folder per class."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

from PIL import Image

from conftest import synthetic_glyphs

CLASSES = ("null", "eins", "zwei", "drei")  # drawn as the glyphs 0 1 2 3
GLYPHS = "0123"


def write_image_folder(
    root: Path, per_class: int, parts: Sequence[str] = ("",), classes: Sequence[str] = CLASSES, seed: int = 7
) -> Dict[str, List[Path]]:
    """per_class images of each class in each part folder ("" for DIR/<class>/*), dark ink on white as a scan
    would be; returns the files written per class name."""
    written: Dict[str, List[Path]] = {name: [] for name in classes}
    for p, part in enumerate(parts):
        images, labels = synthetic_glyphs(per_class * len(classes) * 3, seed + p, GLYPHS[: len(classes)])
        for name, label in zip(classes, range(len(classes))):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images[labels == label][:per_class]):
                path = folder / f"{i:04d}.png"
                Image.fromarray(255 - image).save(path)
                written[name].append(path)
    return written
