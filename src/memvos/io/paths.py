"""The one rule that keeps a user's inputs safe: nothing memvos writes may land on something it reads.

Every command lists the paths it reads and the paths it writes and calls :func:`check_outputs` before any
work starts. Paths are compared resolved (symlinks, ``..``, trailing slashes and relative spellings give the
same answer), and a clash is one :class:`~memvos.errors.InputError` line.

Rules:

* an output folder (where masks are written as ``<frame>.png``) is never an input folder, never inside an
  input folder, and never holds an input file directly (it would be overwritten or mixed with the outputs);
* an output file is never an input file or folder, and never inside an input folder, except in folders an
  input is read from loosely (``loose_reads``: e.g. ``memvos eval`` writes its CSVs beside the predictions,
  as the official evaluator does);
* nothing is written inside a dataset's own ``JPEGImages/`` or ``Annotations/`` folders;
* an output file that exists as a folder is refused; its parent folder is created if missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from memvos.errors import InputError

__all__ = ["DATASET_FOLDERS", "check_outputs", "resolved"]

#: Files of a loosely read folder that are its inputs (frames, masks): never overwritten by an output file.
_INPUT_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Sub-folders of a DAVIS/YouTube-VOS layout dataset that memvos never writes into.
DATASET_FOLDERS = ("JPEGImages", "Annotations")


def resolved(path: str | Path) -> Path:
    """``path`` made absolute with symlinks and ``..`` resolved (also for paths that do not exist yet)."""
    return Path(path).expanduser().resolve(strict=False)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _dataset_folder(path: Path) -> Path | None:
    """The dataset folder (``.../JPEGImages`` or ``.../Annotations``) that ``path`` is in, if any."""
    for folder in (path, *path.parents):
        if folder.name in DATASET_FOLDERS and any((folder.parent / d).is_dir() for d in DATASET_FOLDERS):
            return folder
    return None


def check_outputs(
    reads: Iterable[str | Path | None],
    out_dirs: Iterable[str | Path | None] = (),
    out_files: Iterable[str | Path | None] = (),
    *,
    loose_reads: Iterable[str | Path | None] = (),
) -> None:
    """Raise :class:`InputError` if an output would overwrite or mix with an input (see module rules).

    Args:
        reads: files and folders the command reads (None entries are skipped).
        out_dirs: folders the command writes masks into.
        out_files: single files the command writes (reports, overlay videos, weights, exports).
        loose_reads: input folders beside whose files output *files* may be written (they are still
            never overwritten, and output folders are still refused there).
    """
    strict = [(Path(p), resolved(p)) for p in reads if p is not None]
    loose = [(Path(p), resolved(p)) for p in loose_reads if p is not None]
    inputs = strict + loose
    for given in (p for p in out_dirs if p is not None):
        out = resolved(given)
        for name, src in inputs:
            if out == src:
                raise InputError(
                    f"output folder {given} is the input {name}: memvos never writes over its inputs"
                )
            if src.is_dir() and _inside(out, src):
                raise InputError(
                    f"output folder {given} is inside the input folder {name}; choose another --out"
                )
            if not src.is_dir() and src.parent == out:
                raise InputError(
                    f"output folder {given} holds the input {name}, which the outputs could overwrite; "
                    "choose another --out"
                )
        dataset = _dataset_folder(out)
        if dataset is not None:
            raise InputError(
                f"output folder {given} is inside the dataset folder {dataset}; memvos never writes into a "
                f"dataset's {' or '.join(DATASET_FOLDERS)}"
            )
    for given in (p for p in out_files if p is not None):
        out = resolved(given)
        if out.is_dir():
            raise InputError(f"output file {given} is a folder; give a file name")
        for name, src in inputs:
            if out == src:
                raise InputError(
                    f"output file {given} is the input {name}: memvos never writes over its inputs"
                )
        for name, src in loose:
            if src.is_dir() and _inside(out, src) and out.suffix.lower() in _INPUT_SUFFIXES:
                raise InputError(f"output file {given} is the input {out.name} of {name}; write it elsewhere")
        for name, src in strict:
            if src.is_dir() and _inside(out, src):
                raise InputError(f"output file {given} is inside the input folder {name}; write it elsewhere")
        dataset = _dataset_folder(out)
        if dataset is not None:
            raise InputError(
                f"output file {given} is inside the dataset folder {dataset}; write it elsewhere"
            )


def prepare_output_file(path: str | Path) -> Path:
    """Create the parent folder of an output file (before any work starts); one-line error if impossible."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder of {path}: {exc.strerror or exc}") from None
    return path
