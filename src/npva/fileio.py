"""Safe file writing: atomic, checked, confined to an output folder.

A crash leaves either the old file or the new one, never a partial file: each write goes to a temporary
file beside its target (named `.<stem>.<random>.npva-tmp<suffix>`) that is renamed onto the target once
it is complete and flushed to disk. Files get the mode the umask gives, as files created otherwise do.
Temporary files left by a killed process are removed by `remove_temporaries` on a later run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from npva.errors import NpvaError

TEMPORARY_MARK = ".npva-tmp"


class UnsafePathError(NpvaError):
    """A path to write that would lead outside its output folder."""


def inside(root: str | Path, path: str | Path) -> Path:
    """`path`, after checking that it lies lexically inside `root` and that no part of it below `root`
    is a symbolic link (which could lead a write anywhere); UnsafePathError otherwise."""
    root, path = Path(root), Path(path)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise UnsafePathError(f"{path}: outside its output folder {root}") from None
    current = root
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"{path}: '{part}' would lead outside its output folder {root}")
        current = current / part
        if current.is_symlink():
            raise UnsafePathError(f"{current}: a symbolic link inside the output folder {root}; remove it")
    return path


def _create_temporary(path: Path) -> Path:
    """A new empty file beside `path`, created with the umask's mode (0666 minus the umask)."""
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}{TEMPORARY_MARK}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(path: Path, check: Callable[[Path], None]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success `check(tmp)` runs and tmp replaces `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path)
    try:
        yield tmp
        check(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _written(tmp: Path) -> None:
    """Fail unless an outside writer really wrote `tmp` (some report success on a full disk)."""
    if tmp.stat().st_size == 0:
        raise OSError(f"nothing was written to {tmp} (is the disk full?)")
    _fsync(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that takes a file name (OpenCV, OpenEXR, ...);
    when the block ends without error and the file is not empty, it is renamed onto `path`.

    The temporary name keeps the final suffix so that writers which choose a format by extension
    behave as they would for the final name.
    """
    with _replacing(Path(path), _written) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing that replaces `path` when the block ends without error."""
    with _replacing(Path(path), lambda tmp: None) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def remove_temporaries(folder: str | Path, min_age_s: float = 0.0) -> int:
    """Delete the temporary files of unfinished writes under `folder` not modified for `min_age_s`
    seconds (a writer running beside this process keeps its file fresh); returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    now = time.time()
    for tmp in folder.rglob(f".*{TEMPORARY_MARK}*"):
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_file() and now - tmp.stat().st_mtime >= min_age_s:
                tmp.unlink()
                removed += 1
    return removed
