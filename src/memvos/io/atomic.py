"""Atomic file writes: complete or absent, never a 0-byte or half-written file.

Each write goes to a temporary file in the target's folder (so that the final rename stays on one file
system), is flushed and ``fsync``-ed, then moved over the target with :func:`os.replace`. On any failure
(a full disk, an unwritable folder, an interrupt) the temporary file is removed and an existing target is
left as it was.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_many", "atomic_write_text", "temporary_path"]

logger = logging.getLogger(__name__)

Writer = Callable[[BinaryIO], object]


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name beside ``path`` (``.NAME.<random>.tmp``) for writing before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def _refuse_folder(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))


def _write_temp(path: Path, write: Writer, fsync: bool) -> Path:
    """Write a temporary file beside ``path`` with ``write(fh)``; remove it on any failure."""
    _refuse_folder(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        interrupt = _interrupt_behind(exc)
        if interrupt is not None and interrupt is not exc:
            # Ctrl-C / SIGTERM inside the writer, then its cleanup failed (torch.save's zip writer does):
            # report the interrupt, not the writer's follow-up error
            raise interrupt from None
        raise
    return tmp


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that ``exc`` is, or was raised while handling, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__context__
    return None


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every file system can ``fsync`` a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Writer, *, fsync: bool = True) -> Path:
    """Write ``path`` atomically with ``write(fh)`` (``fh`` a binary file object); returns the path.

    ``fsync=False`` skips the flush to disk (for many small files whose loss on a power cut is harmless,
    e.g. masks that are re-created by re-running); the rename is atomic either way.

    Raises:
        OSError: as raised by the file system (the target is then unchanged and no temporary file is left);
            :class:`IsADirectoryError` when ``path`` is a folder.
    """
    return atomic_write_many([(path, write)], fsync=fsync)[0]


def atomic_write_many(
    items: Sequence[tuple[str | os.PathLike[str], Writer]], *, fsync: bool = True
) -> list[Path]:
    """Write several files so that either all of them are replaced or (on a write failure) none is.

    Every temporary file is written first; the renames follow only when all writes succeeded.
    """
    paths = [Path(p) for p, _ in items]
    temps: list[Path] = []
    try:
        for path, (_, write) in zip(paths, items, strict=True):
            temps.append(_write_temp(path, write, fsync))
        for i, (tmp, path) in enumerate(zip(temps, paths, strict=True)):
            os.replace(tmp, path)
            temps[i] = path
    except BaseException:
        for tmp, path in zip(temps, paths, strict=False):
            if tmp != path:
                tmp.unlink(missing_ok=True)
        raise
    if fsync:
        for folder in dict.fromkeys(p.parent for p in paths):
            _sync_folder(folder)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("wrote %s", ", ".join(map(str, paths)))
    return paths


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data), fsync=fsync)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = True
) -> Path:
    """Write ``text`` to ``path`` atomically, without newline translation (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)
