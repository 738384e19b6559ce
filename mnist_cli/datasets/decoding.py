"""An image folder's files decoded into 28x28 uint8 images: on every core, with a progress bar, and cached.

The cache holds one file per folder and recipe under <mnist-cli cache>/decoded/, named by a hash of every
file's path, size, mtime and ctime (ctime changes when a file is replaced, even by `cp -p`): one change
anywhere, and the folder is decoded again, so it is never stale. A cache that cannot be read or written
(a read-only home, a full disk) only costs the decoding. Nothing here imports torch: the decoding processes
start without it.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from mnist_cli import console
from mnist_cli.datasets.images import prepare_many
from mnist_cli.errors import WriteFailed
from mnist_cli.paths import cache_dir
from mnist_cli.runs.atomic import atomic_write

CACHE_FORMAT = 2  # raise when what a recipe makes of a file changes: older cache files are then never read
CHUNK = 256  # files per task a decoding process takes
IN_PROCESS_BELOW = 2 * CHUNK  # fewer files than this are decoded without starting processes
PR_SET_PDEATHSIG = 1  # Linux prctl: the signal a process gets when its parent dies


@dataclass
class Decoded:
    """An image folder's files as prepare_many makes them, one row each, in the listing's order."""

    images: np.ndarray  # uint8 (N, 28, 28); black where the file is no image
    reasons: List[str]  # why a file is no image; "" where it is one
    digests: List[str]  # BLAKE2b of each file's bytes ("" where it could not be read): what the run trained on

    def add(self, start: int, chunk: Tuple[np.ndarray, List[str], List[str]]) -> int:
        images, reasons, digests = chunk
        self.images[start : start + len(images)] = images
        self.reasons[start : start + len(images)] = reasons
        self.digests[start : start + len(images)] = digests
        return len(images)


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


def _read_cache(path: Path, count: int) -> Optional[Decoded]:
    """What a cache file holds, if it is there, whole and of `count` files."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            images, reasons, digests = stored["images"], stored["reasons"], stored["digests"]
            if (
                images.shape != (count, 28, 28)
                or images.dtype != np.uint8
                or {reasons.shape, digests.shape} != {(count,)}
            ):
                return None
            return Decoded(images, [str(r) for r in reasons], [str(d) for d in digests])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, damaged or foreign: decode again
        return None


def _write_cache(path: Path, decoded: Decoded) -> None:
    """Store the decoded folder (atomically) and remove the folder's older cache files; failures are ignored."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "images": decoded.images,
            "reasons": np.asarray(decoded.reasons, dtype=str),
            "digests": np.asarray(decoded.digests, dtype=str),
        }
        atomic_write(path, lambda f: np.savez(f, **arrays))  # straight to the file: no second copy in memory
        for older in path.parent.glob(f"{path.name.split('-')[0]}-*.npz"):
            if older != path:
                older.unlink(missing_ok=True)
    except (OSError, WriteFailed):
        pass  # the next start decodes again


def _tell(message: str) -> None:
    """A line about decoding, on stderr: eval and predict may be printing one JSON document on stdout."""
    print(message, file=sys.stderr, flush=True)


def _decoding_process() -> None:
    """A decoding process leaves Ctrl-C to the command (which stops it), and dies with its parent: a
    command killed with -9 leaves no process behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the process ends when it next reads from its parent
        pass


def _stop(pool: ProcessPoolExecutor) -> None:
    """End the decoding processes now, not after their current chunk: Ctrl-C is answered at once."""
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _decode(paths: List[str], how: str, workers: int) -> Decoded:
    """prepare_many over `paths` in chunks on `workers` processes, with a progress bar in a terminal."""
    decoded = Decoded(np.zeros((len(paths), 28, 28), dtype=np.uint8), [""] * len(paths), [""] * len(paths))
    starts = range(0, len(paths), CHUNK)
    with console.batch_progress("decoding images", len(paths)) as advance:

        def here(chunk_starts) -> None:  # decode in this process
            for start in chunk_starts:
                advance(decoded.add(start, prepare_many(paths[start : start + CHUNK], how)))

        if workers <= 1 or len(paths) < IN_PROCESS_BELOW:
            here(starts)
            return decoded
        context = multiprocessing.get_context("spawn")  # a fork of a process holding torch's threads may hang
        done = set()
        try:
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_decoding_process)
            try:
                futures = [pool.submit(prepare_many, paths[start : start + CHUNK], how) for start in starts]
                for start, future in zip(starts, futures):
                    advance(decoded.add(start, future.result()))
                    done.add(start)
            except BaseException:
                _stop(pool)
                raise
            pool.shutdown()
        except BrokenProcessPool as error:  # a process killed (out of memory?) or unable to start
            _tell(f"note: a decoding process stopped ({error}); decoding the rest in this process")
            here([s for s in starts if s not in done])
    return decoded


def decoded(listing, how: str, cache: bool, workers: Optional[int]) -> Decoded:
    """Every file of `listing` (image_folder.Listing) prepared by recipe `how`; from the cache when it holds
    this very folder."""
    path = _cache_file(listing, how) if cache else None
    found = _read_cache(path, len(listing.files)) if path is not None else None
    if found is not None:
        return found
    workers = max(1, min(workers or cores(), cores() * 4))
    count = len(listing.files)
    if count >= IN_PROCESS_BELOW:
        _tell(f"decoding {count:,} images of {listing.root} on {workers} processes")
    started = time.perf_counter()
    result = _decode([str(listing.root / name) for name in listing.files], how, workers)
    if count >= IN_PROCESS_BELOW:
        _tell(f"decoded {count:,} images in {time.perf_counter() - started:.1f} s")
    if path is not None:
        _write_cache(path, result)
    return result
