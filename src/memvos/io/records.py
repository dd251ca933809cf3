"""Run records: the settings of a run, kept beside its outputs, so that results are never mixed in silence.

A command that writes masks into a folder (``segment --out``, ``run-dataset --out``) first *claims* it with
:func:`claim_output_folder`: the folder must be empty of masks, or hold masks of a run with the same
settings (``.memvos-run.json`` says so: a re-run or a resume). Anything else (masks of another run, or PNGs
no record speaks for) is refused with one line, unless the user passes ``--overwrite``: then those masks are
removed first, so the folder holds this run's masks only.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from memvos.errors import InputError

logger = logging.getLogger(__name__)

RECORD = ".memvos-run.json"
#: Keys of a record that describe it rather than the run's settings (not compared).
_INFO_KEYS = ("memvos", "created", "complete")


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, hex (the identity of a weights file in run records, exports and caches)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The record of ``folder``, or None if there is none or it cannot be read."""
    path = Path(folder) / RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _masks(folder: Path, nested: bool) -> list[Path]:
    pattern = "*/*.png" if nested else "*.png"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted((set(old) | set(new)) - set(_INFO_KEYS))
    return [k for k in keys if old.get(k) != new.get(k)]


def write_record(folder: str | Path, settings: dict[str, Any], complete: bool = False) -> Path:
    """Write ``settings`` as the record of ``folder`` (atomically)."""
    from memvos import __version__
    from memvos.io.atomic import atomic_write_text

    record = {
        **settings,
        "memvos": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "complete": complete,
    }
    return atomic_write_text(Path(folder) / RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")


def claim_output_folder(
    folder: str | Path,
    settings: dict[str, Any],
    *,
    overwrite: bool = False,
    nested: bool = False,
    done_marker: str | None = None,
) -> None:
    """Make ``folder`` this run's: refuse (or, with ``overwrite``, clear) masks of any other run.

    Args:
        folder: the output folder (created if missing).
        settings: JSON-able settings that make two runs the same run (input, model, weights, options).
        overwrite: remove masks of another run (or unrecorded PNGs) instead of refusing.
        nested: masks live in sub-folders (``run-dataset``: ``DIR/<seq>/<frame>.png``).
        done_marker: name of the per-sub-folder "finished" marker, removed along with the masks.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    masks = _masks(folder, nested)
    old = read_record(folder)
    settings = json.loads(json.dumps(settings))  # as it will read back (tuples -> lists)
    if old is not None and not _differences(old, settings):
        write_record(folder, settings)
        return
    if masks or old is not None:
        if old is None:
            why = f"{folder} already holds {len(masks)} PNG file(s) that no memvos run record speaks for"
        else:
            diff = ", ".join(_differences(old, settings))
            why = f"{folder} holds the masks of an earlier run with other settings ({diff})"
        if not overwrite:
            raise InputError(f"{why}; choose an empty --out, or pass --overwrite to replace them")
        for p in masks:
            p.unlink()
        if nested and done_marker:
            for marker in folder.glob(f"*/{done_marker}"):
                marker.unlink()
        logger.warning("--overwrite: removed %d mask(s) of an earlier run from %s", len(masks), folder)
    write_record(folder, settings)


def complete_record(folder: str | Path) -> None:
    """Mark the run recorded in ``folder`` as complete."""
    old = read_record(folder)
    if old is not None:
        write_record(folder, {k: v for k, v in old.items() if k not in _INFO_KEYS}, complete=True)
