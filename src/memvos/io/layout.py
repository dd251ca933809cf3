"""Dataset layout helpers: sequence folders that may be link files.

A DAVIS-layout dataset copied without symlink support (git with ``core.symlinks=false``, some archive
tools, some file systems) stores a symlinked sequence folder as a small text file holding the link's
target path. memvos follows such link files wherever it lists or opens a dataset's sequence folders.
"""

from __future__ import annotations

from pathlib import Path

#: A link file is at most this many bytes (a relative path); larger files are never read as links.
MAX_LINK_FILE_BYTES = 4096


def resolve_dir(path: str | Path) -> Path:
    """``path`` itself, or the folder that a link file at ``path`` names (relative to its own folder).

    Returns ``path`` unchanged when it is a folder, missing, or not a link file to an existing folder.
    """
    path = Path(path)
    if path.is_dir() or not path.is_file():
        return path
    try:
        if path.stat().st_size > MAX_LINK_FILE_BYTES:
            return path
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return path
    if not text or "\n" in text or "\0" in text:
        return path
    target = (path.parent / text).resolve()
    return target if target.is_dir() else path


def sequence_dirs(parent: str | Path) -> dict[str, Path]:
    """Name -> folder of every sequence under ``parent`` (folders and link files to folders)."""
    out = {}
    for entry in Path(parent).iterdir():
        if entry.name.startswith("."):
            continue
        folder = resolve_dir(entry)
        if folder.is_dir():
            out[entry.name] = folder
    return out
