"""Writers for evaluation results: the official DAVIS CSV files, JSON, and a printable table."""

from __future__ import annotations

import json
import math
from pathlib import Path

from memvos.errors import MemvosError
from memvos.evaluation.evaluator import GLOBAL_COLUMNS, EvaluationResult
from memvos.io.atomic import atomic_write_many, atomic_write_text

__all__ = [
    "format_table",
    "global_csv_text",
    "per_sequence_csv_text",
    "write_csvs",
    "write_json",
]


def _fmt(value: float | None) -> str:
    """``%.3f`` as pandas' ``float_format`` writes it; NaN/None -> empty field (pandas' ``na_rep``)."""
    if value is None or math.isnan(value):
        return ""
    return "%.3f" % value  # noqa: UP031 - the exact format of the official CSV files


def global_csv_text(result: EvaluationResult) -> str:
    """Text of ``global_results-<set>.csv``: header ``J&F-Mean,J-Mean,...,F-Decay`` and one row."""
    row = result.global_row().as_dict()
    return ",".join(GLOBAL_COLUMNS) + "\n" + ",".join(_fmt(row[c]) for c in GLOBAL_COLUMNS) + "\n"


def per_sequence_csv_text(result: EvaluationResult) -> str:
    """Text of ``per-sequence_results-<set>.csv``: ``Sequence,J-Mean,F-Mean``, one row per object."""
    lines = ["Sequence,J-Mean,F-Mean"]
    lines += [f"{o.name},{_fmt(o.J_mean)},{_fmt(o.F_mean)}" for o in result.objects]
    return "\n".join(lines) + "\n"


def _write_error(what: str, path: Path, exc: OSError) -> MemvosError:
    """One line for a failed write: the file and the system's reason (e.g. "No space left on device")."""
    if isinstance(exc, IsADirectoryError):
        return MemvosError(f"cannot write {what} {exc.filename or path}: it is a folder")
    return MemvosError(f"cannot write {what} {path}: {exc.strerror or exc}")


def write_csvs(result: EvaluationResult, out_dir: str | Path, set_name: str = "val") -> tuple[Path, Path]:
    """Write ``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv`` to ``out_dir``.

    Both files are written atomically and together: on a failure (unwritable folder, full disk) neither is
    replaced, so older results stay whole and no empty or partial CSV is left.

    Raises:
        MemvosError: one line naming the folder or file that could not be written and why.
    """
    out = Path(out_dir)
    g_path = out / f"global_results-{set_name}.csv"
    s_path = out / f"per-sequence_results-{set_name}.csv"
    g_text, s_text = global_csv_text(result).encode(), per_sequence_csv_text(result).encode()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MemvosError(f"cannot write the CSV results to {out}: it is a file, not a folder") from None
    except OSError as exc:
        raise _write_error("the results folder", out, exc) from None
    try:
        atomic_write_many([(g_path, lambda fh: fh.write(g_text)), (s_path, lambda fh: fh.write(s_text))])
    except OSError as exc:
        raise _write_error("the CSV results", out, exc) from None
    return g_path, s_path


def _json_safe(obj: object) -> object:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(result: EvaluationResult, path: str | Path, per_frame: bool = True) -> Path:
    """Write the result (global row, per-object statistics, per-frame J/F) as JSON; NaN -> null.

    Written atomically: on a failure an older file stays as it was and no partial file is left.

    Raises:
        MemvosError: one line naming the file that could not be written and why.
    """
    p = Path(path)
    text = json.dumps(_json_safe(result.to_dict(per_frame)), indent=1) + "\n"
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, text)
    except OSError as exc:
        raise _write_error("the JSON results", p, exc) from None
    return p


def format_table(result: EvaluationResult, set_name: str = "val") -> str:
    """Human-readable table: the global row, then one row per object (J-Mean, F-Mean, and T if computed)."""
    g = result.global_row().as_dict()
    cols = list(g)
    widths = [max(10, len(c) + 2) for c in cols]
    header = "".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))
    values = "".join(f"{_fmt(g[c]) or 'nan':>{w}}" for c, w in zip(cols, widths, strict=True))
    title = f" Global results for {set_name} ({result.year} protocol, {len(result.objects)} objects) "
    lines = [title.center(len(header), "-"), header, values, ""]
    with_t = any(o.T_mean is not None for o in result.objects)
    name_w = max([len("Sequence"), *(len(o.name) for o in result.objects)]) + 2
    seq_cols = ["J-Mean", "F-Mean"] + (["T-Mean (approx.)"] if with_t else [])
    seq_header = f"{'Sequence':<{name_w}}" + "".join(f"{c:>{max(10, len(c) + 2)}}" for c in seq_cols)
    lines += [f" Per sequence results for {set_name} ".center(len(seq_header), "-"), seq_header]
    for o in result.objects:
        vals = [o.J_mean, o.F_mean] + ([o.T_mean] if with_t else [])
        cells = "".join(
            f"{_fmt(v) or 'nan':>{max(10, len(c) + 2)}}" for c, v in zip(seq_cols, vals, strict=True)
        )
        lines.append(f"{o.name:<{name_w}}{cells}")
    return "\n".join(lines)
