"""Writing a file so that a crash leaves the old one or the new one, never half of one.

Everything a later command reads is written this way: a temp file in the same folder, fsync,
rename, fsync of the folder. JSON is written strict (no NaN or Infinity), CSV with every file name
printable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from mnist_cli.errors import WriteFailed

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _os_error(error: Optional[BaseException]) -> Optional[OSError]:
    """The OSError behind `error`, if any: torch.save's zip writer meets a full disk as an OSError and
    raises a RuntimeError while closing ("unexpected pos ..."), with the OSError as its context."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


NAME_MAX = 255  # bytes in one file name (Linux, macOS)


def _temp_name(name: str) -> str:
    """`.<name>.<pid>.tmp`, with `name` shortened (and a hash of it kept) where that would pass NAME_MAX,
    so any valid file name can be written atomically."""
    tail = f".{os.getpid()}.tmp"
    raw = os.fsencode(name)
    if 1 + len(raw) + len(tail) > NAME_MAX:
        digest = hashlib.sha1(raw).hexdigest()[:8]
        kept = raw[: NAME_MAX - 1 - len(tail) - 9].decode("utf-8", "ignore")  # no character cut in half
        return f".{kept}~{digest}{tail}"  # lock_run's `.*.tmp` still finds it
    return f".{name}{tail}"


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call write(file) on a temp file next to `path` (_temp_name: .<name>.<pid>.tmp; one a kill -9 leaves is
    removed by the next lock_run), fsync it, then rename it over `path`.

    An OSError (a full disk, no permission) raises WriteFailed naming the path; `path` keeps
    its previous content. An existing `path` that is no regular file (a device, a FIFO) is refused the same
    way: the rename would replace it, and as root /dev/null with it.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/null, a FIFO: the rename would replace it
        raise WriteFailed(f"{path} is not a regular file; give the path of a file to write.")
    tmp = path.with_name(_temp_name(path.name))
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        cause = _os_error(error)
        if cause is not None:
            kept = "its previous version is kept" if path.exists() else "nothing was written"
            reason = cause.strerror or str(cause)
            raise WriteFailed(f"could not write {path} ({reason}); {kept}.") from None
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def strict_json(data: Any, indent: Optional[int] = None) -> str:
    """`data` as strict JSON: an infinite or NaN number becomes null, never `Infinity`."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    """`data` as one indented strict-JSON document, written atomically."""
    atomic_write(path, lambda f: f.write((strict_json(data, indent=2) + "\n").encode()))


def write_jsonl(path: Path, rows: Iterable[Dict]) -> None:
    """One strict-JSON object per line, written atomically."""
    atomic_write(path, lambda f: f.write("".join(strict_json(row) + "\n" for row in rows).encode()))


def readable(text: str) -> str:
    """`text` with the bytes of a non-UTF-8 file name (Python's surrogate escapes) written as `\\xe9`:
    printable and encodable, and two such names stay apart."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte: \udxxx
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable(name: str) -> str:
    """A file name as readable() writes it, its control characters too written as `\x1b`: a name holding ESC
    or a newline must not drive the terminal or split a row."""
    return CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", readable(name))


def write_csv(path: Path, rows: Iterable[Dict], columns: Sequence[str]) -> None:
    """A header of `columns`, then one line per row (keys not in `columns` left out), written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    # a file name that is not UTF-8 (surrogate escapes) is written as \\xe9, never a crash
    atomic_write(path, lambda f: f.write(readable(text.getvalue()).encode()))


def copy_atomically(source: Path, target: Path) -> None:
    """Copy `source` to `target` atomically (best.pt from last.pt)."""
    with open(source, "rb") as src:
        atomic_write(target, lambda f: shutil.copyfileobj(src, f))
