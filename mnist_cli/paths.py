"""Where mnist-cli keeps files of its own: the per-user cache and the default dataset folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> str:
    """Return mnist-cli's per-user cache folder ($XDG_CACHE_HOME/mnist-cli or ~/.cache/mnist-cli)."""
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-cli")


def default_data_root() -> str:
    """Return $MNIST_DATA_ROOT if set, else the per-user cache folder for datasets."""
    return os.environ.get("MNIST_DATA_ROOT") or str(Path(cache_dir()) / "data")
