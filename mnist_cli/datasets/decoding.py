"""An image folder's files decoded into 28x28 uint8 images: on every core, with a progress bar, and cached.

The cache holds one file per folder and recipe under <mnist-cli cache>/decoded/, named by a hash of every
file's path, size, mtime and ctime (ctime changes when a file is replaced, even by `cp -p`): one change
anywhere, and the folder is decoded again, so it is never stale. A cache that cannot be read or written
(a read-only home, a full disk) only costs the decoding. Nothing here imports torch: the decoding processes
start without it.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import signal
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from mnist_cli import console
from mnist_cli.datasets.images import prepare_many
from mnist_cli.errors import WriteFailed
from mnist_cli.paths import cache_dir
from mnist_cli.runs.atomic import atomic_write

CACHE_FORMAT = 1  # raise when what a recipe makes of a file changes: older cache files are then never read
CHUNK = 256  # files per task a decoding process takes
IN_PROCESS_BELOW = 2 * CHUNK  # fewer files than this are decoded without starting processes


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _cache_file(listing, how: str) -> Path:
    """<cache>/decoded/<folder key>-<content key>.npz: the folder key names the folder and recipe (one
    cache file is kept per pair), the content key every file's path, size and times."""
    folder = hashlib.sha256(f"{CACHE_FORMAT}\0{how}\0{listing.root}".encode("utf-8", "surrogateescape")).hexdigest()
    content = hashlib.sha256()
    for name, size, mtime, ctime in zip(listing.files, listing.sizes, listing.mtimes, listing.ctimes):
        content.update(f"{name}\0{size}\0{mtime}\0{ctime}\n".encode("utf-8", "surrogateescape"))
    return Path(cache_dir()) / "decoded" / f"{folder[:16]}-{content.hexdigest()[:32]}.npz"


def _read_cache(path: Path, count: int) -> Optional[Tuple[np.ndarray, List[str]]]:
    """The images and reasons a cache file holds, if it is there, whole and of `count` files."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            images, reasons = stored["images"], stored["reasons"]
            if images.shape != (count, 28, 28) or images.dtype != np.uint8 or reasons.shape != (count,):
                return None
            return images, [str(r) for r in reasons]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, damaged or foreign: decode again
        return None


def _write_cache(path: Path, images: np.ndarray, reasons: List[str]) -> None:
    """Store the decoded folder (atomically) and remove the folder's older cache files; failures are ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, images=images, reasons=np.asarray(reasons, dtype=str))
        atomic_write(path, lambda f: f.write(buffer.getbuffer()))
        for older in path.parent.glob(f"{path.name.split('-')[0]}-*.npz"):
            if older != path:
                older.unlink(missing_ok=True)
    except (OSError, WriteFailed):
        pass  # the next start decodes again


def _tell(message: str) -> None:
    """A line about decoding, on stderr: eval and predict may be printing one JSON document on stdout."""
    print(message, file=sys.stderr, flush=True)


def _quiet_worker() -> None:
    """A decoding process leaves Ctrl-C to the command, which stops the pool and says one sentence."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode(paths: List[str], how: str, workers: int) -> Tuple[np.ndarray, List[str]]:
    """prepare_many over `paths` in chunks on `workers` processes, with a progress bar in a terminal."""
    images = np.zeros((len(paths), 28, 28), dtype=np.uint8)
    reasons: List[str] = [""] * len(paths)
    starts = range(0, len(paths), CHUNK)
    with console.batch_progress("decoding images", len(paths)) as advance:
        if workers <= 1 or len(paths) < IN_PROCESS_BELOW:
            for start in starts:
                images[start : start + CHUNK], reasons[start : start + CHUNK] = prepare_many(
                    paths[start : start + CHUNK], how
                )
                advance(len(paths[start : start + CHUNK]))
            return images, reasons
        context = multiprocessing.get_context("spawn")  # a fork of a process holding torch's threads may hang
        done = set()
        try:
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker) as pool:
                futures = [pool.submit(prepare_many, paths[start : start + CHUNK], how) for start in starts]
                try:
                    for start, future in zip(starts, futures):
                        chunk, why = future.result()
                        images[start : start + len(chunk)], reasons[start : start + len(chunk)] = chunk, why
                        done.add(start)
                        advance(len(chunk))
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        except BrokenProcessPool as error:  # a process killed (out of memory?) or unable to start
            _tell(f"note: a decoding process stopped ({error}); decoding the rest in this process")
            for start in (s for s in starts if s not in done):
                images[start : start + CHUNK], reasons[start : start + CHUNK] = prepare_many(
                    paths[start : start + CHUNK], how
                )
                advance(len(paths[start : start + CHUNK]))
    return images, reasons


def decoded(listing, how: str, cache: bool, workers: Optional[int]) -> Tuple[np.ndarray, List[str]]:
    """(uint8 images (N, 28, 28), one reason per file: "" where it is an image) for every file of `listing`
    (image_folder.Listing), prepared by recipe `how`; from the cache when it holds this very folder."""
    path = _cache_file(listing, how) if cache else None
    found = _read_cache(path, len(listing.files)) if path is not None else None
    if found is not None:
        return found
    workers = max(1, min(workers or cores(), cores() * 4))
    count = len(listing.files)
    if count >= IN_PROCESS_BELOW:
        _tell(f"decoding {count:,} images of {listing.root} on {workers} processes")
    started = time.perf_counter()
    images, reasons = _decode([str(listing.root / name) for name in listing.files], how, workers)
    if count >= IN_PROCESS_BELOW:
        _tell(f"decoded {count:,} images in {time.perf_counter() - started:.1f} s")
    if path is not None:
        _write_cache(path, images, reasons)
    return images, reasons
