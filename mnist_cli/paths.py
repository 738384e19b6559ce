"""Where mnist-cli keeps files of its own (the default dataset folder), paths made absolute before a run stores
them, and the file behind a SQLite URL (the Optuna studies and the MLflow store)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def cache_dir() -> str:
    """Return mnist-cli's per-user cache folder ($XDG_CACHE_HOME/mnist-cli or ~/.cache/mnist-cli)."""
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-cli")


def absolute_path(path: str, cwd: Optional[str] = None) -> str:
    """Return `path` (~ expanded) joined to `cwd` (default: the current folder) unless it is absolute: a run
    stores it, and a later command in another folder must find the same files. `..` is kept, not folded,
    so a path through a symbolic link keeps its meaning."""
    return os.path.join(cwd or os.getcwd(), os.path.expanduser(path))


def default_data_root() -> str:
    """Return $MNIST_DATA_ROOT (made absolute) if set, else the per-user cache folder for datasets."""
    return absolute_path(os.environ.get("MNIST_DATA_ROOT") or str(Path(cache_dir()) / "data"))


def sqlite_file(url: str) -> Optional[Path]:
    """The database file of a `sqlite:///path` URL; None for any other URL and for an in-memory database."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and url[len(prefix) :].split("?")[0] not in ("", ":memory:"):
        return Path(url[len(prefix) :])
    return None
