"""Every file memvos writes is atomic; a failed write is one line, exit 2 (issue 11, rule 6).

A full disk is simulated by making ``fsync`` (after the data went to the temporary file) or the write itself
fail with ENOSPC: the target must then be absent or still hold its older content, and no temporary file or
0-byte file may be left.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memvos.cli import main
from memvos.io import atomic
from memvos.io.atomic import atomic_write, atomic_write_bytes, atomic_write_many, atomic_write_text


def _no_space(*_args, **_kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------- the helper
def test_text_bytes_and_callable_writes(tmp_path: Path) -> None:
    assert atomic_write_text(tmp_path / "a.txt", "é\nb\n").read_bytes() == "é\nb\n".encode()
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "c.bin", lambda fh: (fh.write(b"x"), fh.write(b"y")))
    assert (tmp_path / "c.bin").read_bytes() == b"xy"
    atomic_write_text(tmp_path / "a.txt", "new")  # replaces
    assert (tmp_path / "a.txt").read_text() == "new"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", ["fsync", "write"])
def test_full_disk_keeps_the_old_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("good")
    if failure == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", _no_space)
        writer = lambda fh: fh.write(b"partial data")  # noqa: E731
    else:

        def writer(fh) -> None:
            fh.write(b"partial")
            _no_space()

    for target in (old, new):
        with pytest.raises(OSError) as info:
            atomic_write(target, writer)
        assert info.value.errno == errno.ENOSPC
    assert old.read_text() == "good" and not new.exists()
    assert _leftovers(tmp_path) == []


def test_interrupt_inside_the_writer_stays_an_interrupt(tmp_path: Path) -> None:
    """torch.save's zip writer turns an interrupt into a RuntimeError in its cleanup: still an interrupt."""

    class Stop(KeyboardInterrupt):
        pass

    def writer(fh) -> None:
        try:
            fh.write(b"half")
            raise Stop()
        finally:
            raise RuntimeError("unexpected pos 10 vs 4")  # noqa: B012 - what torch's __exit__ does

    with pytest.raises(Stop):
        atomic_write(tmp_path / "f.pth", writer)
    assert list(tmp_path.iterdir()) == []


def test_folder_target_is_refused_before_writing(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write_text(tmp_path / "d", "x")
    assert _leftovers(tmp_path) == [] and (tmp_path / "d").is_dir()


def test_many_files_are_replaced_all_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    b.write_text("old b")
    calls = []

    def second_fails(fh) -> None:
        calls.append(1)
        fh.write(b"new b")
        _no_space()

    with pytest.raises(OSError):
        atomic_write_many([(a, lambda fh: fh.write(b"new a")), (b, second_fails)])
    assert a.read_text() == "old a" and b.read_text() == "old b" and calls == [1]
    assert _leftovers(tmp_path) == []
    atomic_write_many([(a, lambda fh: fh.write(b"new a")), (b, lambda fh: fh.write(b"new b"))])
    assert a.read_text() == "new a" and b.read_text() == "new b"


def test_palette_png_is_written_through_the_helper_without_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memvos.io.writers import write_palette_png

    monkeypatch.setattr(atomic.os, "fsync", _no_space)  # masks are not fsynced: unaffected
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    write_palette_png(tmp_path / "m.png", labels)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and np.array_equal(np.asarray(im), labels)
    assert _leftovers(tmp_path) == []


def test_weights_and_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from memvos.models.weights import save_weights

    path = save_weights({"w": torch.ones(2)}, tmp_path / "w.pth")
    monkeypatch.setattr(atomic.os, "fsync", _no_space)
    with pytest.raises(OSError):
        save_weights({"w": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- memvos eval outputs
def _save_palette(label: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0] + [0] * (768 - 6))
    img.save(path)


@pytest.fixture()
def toy(tmp_path: Path) -> tuple[Path, Path]:
    """(predictions, ground truth): one sequence of four 16x16 frames with one object."""
    for t in range(4):
        gt = np.zeros((16, 16), np.uint8)
        gt[2 + t : 9 + t, 3:10] = 1
        _save_palette(gt, tmp_path / "gt" / "s" / f"{t:05d}.png")
        _save_palette(gt, tmp_path / "pred" / "s" / f"{t:05d}.png")
    return tmp_path / "pred", tmp_path / "gt"


def _eval(capsys: pytest.CaptureFixture[str], toy: tuple[Path, Path], *extra: object) -> tuple[int, str]:
    pred, gt = toy
    capsys.readouterr()
    rc = main(["eval", str(pred), "--gt", str(gt), "--workers", "1", "--quiet", *map(str, extra)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("INFO:")]
    assert len(lines) == 1 and lines[0].startswith("memvos eval: error: "), err
    return lines[0]


def test_eval_json_is_a_folder(tmp_path: Path, toy, capsys) -> None:
    (tmp_path / "j").mkdir()
    rc, err = _eval(capsys, toy, "--out", tmp_path / "o", "--json", tmp_path / "j")
    assert rc == 2 and f"--json {tmp_path / 'j'} is a folder" in _error_line(err)
    assert not (tmp_path / "o").exists()  # refused before evaluating and writing anything


def test_eval_out_is_a_file_or_under_a_file(tmp_path: Path, toy, capsys) -> None:
    (tmp_path / "f").write_text("keep")
    for out, expected in ((tmp_path / "f", "is a file, not a folder"), (tmp_path / "f" / "sub", "is a file")):
        rc, err = _eval(capsys, toy, "--out", out)
        assert rc == 2 and str(out) in _error_line(err) and expected in err
    rc, err = _eval(capsys, toy, "--out", tmp_path / "o", "--json", tmp_path / "f" / "r.json")
    assert rc == 2 and "r.json" in _error_line(err)
    assert (tmp_path / "f").read_text() == "keep"


def test_eval_unwritable_folder(tmp_path: Path, toy, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import memvos.cli.eval_cmd as eval_cmd

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = eval_cmd.os.access
    monkeypatch.setattr(eval_cmd.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    rc, err = _eval(capsys, toy, "--out", locked / "o")
    assert rc == 2 and f"folder {locked} is not writable" in _error_line(err)
    monkeypatch.undo()
    # a write refused by the file system itself (root passes os.access, so simulate EACCES at open)
    real_open = open

    def no_permission(file, *args, **kw):
        if str(file).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kw)

    monkeypatch.setattr("builtins.open", no_permission)
    rc, err = _eval(capsys, toy, "--out", locked)
    assert rc == 2 and f"{locked}: Permission denied" in _error_line(err)
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("target", ["csv", "json"])
def test_eval_full_disk_keeps_older_results(
    tmp_path: Path, toy, capsys, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    out, js = tmp_path / "o", tmp_path / "o" / "r.json"
    rc, _ = _eval(capsys, toy, "--out", out, "--json", js)
    assert rc == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"global_results-val.csv", "per-sequence_results-val.csv", "r.json"}
    assert all(before.values())
    if target == "csv":
        monkeypatch.setattr(atomic.os, "fsync", _no_space)
    else:  # the CSVs succeed, the JSON hits the full disk
        from memvos.evaluation import report

        real_write = report.atomic_write_text

        def full_disk_json(path, text, **kw):
            with monkeypatch.context() as m:
                m.setattr(atomic.os, "fsync", _no_space)
                return real_write(path, text, **kw)

        monkeypatch.setattr(report, "atomic_write_text", full_disk_json)
    _save_palette(np.zeros((16, 16), np.uint8), toy[0] / "s" / "00001.png")  # other (worse) results
    rc, err = _eval(capsys, toy, "--out", out, "--json", js)
    line = _error_line(err)
    assert rc == 2 and "No space left on device" in line
    assert ("CSV results" if target == "csv" else "JSON results") in line
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(after) == set(before), "a temporary or extra file was left"
    if target == "csv":
        assert after == before  # neither CSV replaced: old results whole
    else:
        assert (
            after["r.json"] == before["r.json"]
            and after["global_results-val.csv"] != before["global_results-val.csv"]
        )
    assert all(after.values()), "a 0-byte file was left"
