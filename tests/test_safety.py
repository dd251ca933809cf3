"""No code runs from a file; every failure is one line; SIGTERM is handled like SIGINT (issue 11, rules 2, 6).

A malicious pickle (an object whose ``__reduce__`` creates a marker file) is offered to every place where
memvos loads a ``.pth``: each refuses it with a one-line MemvosError that does not advise turning the safety
off, and the marker is never created.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memvos.cli import main
from memvos.errors import MemvosError, WeightsError
from memvos.interactive.embedding import load_embedder
from memvos.io.palette import DAVIS_PALETTE
from memvos.models.registry import load_model
from memvos.models.weights import check_loadable, load_torch_file, read_state_dict
from memvos.training.config import TrainConfig

from .conftest import TinyClip, render_tiny_clip

SRC = Path(__file__).resolve().parents[1] / "src" / "memvos"


class _Payload:
    """Unpickling this calls ``Path(marker).touch()``: code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _malicious(kind: str, marker: Path) -> object:
    """The payload alone, or hidden inside a file of each layout memvos reads."""
    evil = _Payload(marker)
    if kind == "bare":
        return evil
    if kind == "state_dict":
        return {"conv.weight": torch.zeros(2), "conv.bias": evil}
    if kind == "checkpoint":
        return {"stage": "memory", "model": {}, "iteration": 3, "torch_rng": evil, "config": {}}
    if kind == "pml":
        return {"format": "memvos-pml-1", "dim": 32, "hidden": 64, "coord_weight": 1.0, "backbone": evil}
    raise ValueError(kind)


KINDS = ["bare", "state_dict", "checkpoint", "pml"]


@pytest.fixture(params=KINDS)
def evil_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    """(a malicious .pth, the marker file its unpickling would create)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(_malicious(request.param, marker), path)
    return path, marker


def _assert_refused(exc: BaseException, path: Path, marker: Path) -> None:
    msg = str(exc)
    assert isinstance(exc, MemvosError), repr(exc)
    assert "\n" not in msg and str(path) in msg, msg
    assert "weights_only" not in msg and "trust" not in msg, msg  # never advise turning the safety off
    assert not marker.exists(), "code ran from the file"


def _tiny_config(**kw) -> TrainConfig:
    base = dict(
        davis_roots=[],
        val_root=None,
        pretrained_backbone=False,
        static_photos=False,
        crop_size=48,
        batch_size=2,
        iterations=2,
        warmup_iters=1,
        num_workers=0,
        precision="fp32",
        log_every=1,
        checkpoint_minutes=1000.0,
        freeze_backbone_stride=4,
    )
    base.update(kw)
    return TrainConfig(**base)


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"memvos {command}: error: "), err
    return lines[-1]


# ---------------------------------------------------------------------------- the payload is real
def test_the_payload_runs_code_when_loaded_unsafely(tmp_path: Path) -> None:
    """Control: with weights_only=False the file does run code (so the refusals below mean something)."""
    marker = tmp_path / "control"
    torch.save(_malicious("bare", marker), tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert marker.exists()


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    calls = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
            ):
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    safe = (
                        isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    )
                    calls.append((f"{path.relative_to(SRC)}:{node.lineno}", safe))
    assert calls, "no torch.load found: the scan is broken"
    assert all(safe for _, safe in calls), [where for where, safe in calls if not safe]


# ---------------------------------------------------------------------------- every load site refuses it
def test_load_torch_file_refuses(evil_file: tuple[Path, Path]) -> None:
    path, marker = evil_file
    with pytest.raises(WeightsError) as info:
        load_torch_file(path)
    _assert_refused(info.value, path, marker)
    assert "it holds Python objects that memvos will not load" in str(info.value)


def test_read_state_dict_and_load_model_refuse(evil_file: tuple[Path, Path]) -> None:
    path, marker = evil_file
    with pytest.raises(WeightsError) as info:
        read_state_dict(path)
    _assert_refused(info.value, path, marker)
    for model in ("memvos-lite", "stm-r50"):
        with pytest.raises(WeightsError) as info:
            load_model(model, weights=path)
        _assert_refused(info.value, path, marker)


def test_pml_embedder_load_refuses(evil_file: tuple[Path, Path]) -> None:
    path, marker = evil_file
    with pytest.raises(WeightsError) as info:
        load_embedder(path)
    _assert_refused(info.value, path, marker)
    assert "pixel-embedding" in str(info.value)


def test_backbone_weights_load_refuses(evil_file: tuple[Path, Path]) -> None:
    from memvos.models.backbones.efficientnet_lite import load_state_dict_file

    path, marker = evil_file
    with pytest.raises(WeightsError):
        load_state_dict_file(path)
    assert not marker.exists()


def test_backbone_weights_error_is_one_line_without_advice(evil_file: tuple[Path, Path]) -> None:
    from memvos.models.backbones.efficientnet_lite import load_state_dict_file

    path, marker = evil_file
    with pytest.raises(WeightsError) as info:
        load_state_dict_file(path)
    _assert_refused(info.value, path, marker)


@pytest.mark.parametrize("stage", ["memory", "pml"])
def test_trainer_resume_refuses(evil_file: tuple[Path, Path], tmp_path: Path, stage: str) -> None:
    from memvos.training.pml import PMLTrainer
    from memvos.training.trainer import Trainer

    path, marker = evil_file
    out = tmp_path / "run"
    out.mkdir()
    ckpt = out / "checkpoint.pth"
    path.replace(ckpt)
    cfg = _tiny_config(stage=stage, pml={"backbone_init": "random"})
    with pytest.raises(MemvosError) as info:
        (PMLTrainer if stage == "pml" else Trainer)(cfg, out, device="cpu", progress=False)
    _assert_refused(info.value, ckpt, marker)
    assert "training checkpoint" in str(info.value)


@pytest.mark.parametrize("kind", ["bare", "state_dict"])
def test_cli_segment_refuses_malicious_weights(
    kind: str, tiny_clip: TinyClip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "w.pth"
    torch.save(_malicious(kind, marker), path)
    args = [tiny_clip.frames_dir, "--mask", tiny_clip.mask_path, "--out", tmp_path / "out", "--weights", path]
    capsys.readouterr()
    rc = main(["segment", *map(str, args), "--device", "cpu", "--precision", "fp32", "--quiet"])
    line = _one_error_line(capsys.readouterr().err, "segment")
    assert rc == 2 and str(path) in line and "Python objects" in line and "weights_only" not in line
    assert not marker.exists()


def test_cli_ui_refuses_malicious_pml_weights(
    tiny_clip: TinyClip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("uvicorn")
    marker, path = tmp_path / "pwned", tmp_path / "pml.pth"
    torch.save(_malicious("pml", marker), path)
    weights = tmp_path / "lite.pth"
    from memvos.models.lite import LiteMemoryNetwork

    torch.save(LiteMemoryNetwork(pretrained_backbone=False).state_dict(), weights)
    args = [tiny_clip.frames_dir, "--weights", weights, "--pml-weights", path, "--project", tmp_path / "p"]
    capsys.readouterr()
    rc = main(["ui", *map(str, args), "--device", "cpu", "--port", "0"])
    line = _one_error_line(capsys.readouterr().err, "ui")
    assert rc == 2 and str(path) in line and "Python objects" in line and "weights_only" not in line
    assert not marker.exists()


def test_cli_train_refuses_malicious_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker, out = tmp_path / "pwned", tmp_path / "run"
    out.mkdir()
    torch.save(_malicious("checkpoint", marker), out / "checkpoint.pth")
    capsys.readouterr()
    rc = main(_train_args(out))
    line = _one_error_line(capsys.readouterr().err, "train")
    assert rc == 2 and str(out / "checkpoint.pth") in line and "Python objects" in line
    assert "weights_only" not in line and not marker.exists()


def _train_args(out: Path, *extra: str) -> list[str]:
    sets = ["pretrained_backbone=false", "precision=fp32", "num_workers=0", "crop_size=48", "batch_size=1"]
    return ["train", "--out", str(out), *(a for s in sets for a in ("--set", s)), "--device", "cpu"] + [
        "--no-val",
        "--quiet",
        *extra,
    ]


# ---------------------------------------------------------------------------- malformed checkpoints
def _saved_checkpoint(out: Path, stage: str = "memory") -> dict:
    """Write a real checkpoint of ``stage`` (iteration 0) to ``out`` and return its content."""
    from memvos.training.pml import PMLTrainer
    from memvos.training.trainer import Trainer

    cfg = _tiny_config(stage=stage, pml={"backbone_init": "random"})
    (PMLTrainer if stage == "pml" else Trainer)(cfg, out, device="cpu", progress=False).save_checkpoint()
    return torch.load(out / "checkpoint.pth", weights_only=True)


def test_checkpoints_hold_only_tensors_and_plain_types(tmp_path: Path) -> None:
    state = _saved_checkpoint(tmp_path / "run")
    check_loadable(state)
    assert {"stage", "model", "optimizer", "scaler", "iteration", "torch_rng", "config"} <= set(state)
    assert state["config"]["scale_range"] == (1.0, 1.4) and state["iteration"] == 0
    assert not list((tmp_path / "run").glob(".*.tmp"))
    with pytest.raises(TypeError, match=r"state\['x'\]\[0\] is a numpy.float64"):
        check_loadable({"x": [np.float64(1.0)]})


def _corrupt(kind: str, ckpt: Path, good: dict) -> None:
    if kind == "truncated":
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "text":
        ckpt.write_text("not a checkpoint\n")
    elif kind == "weights":  # someone copied last.pth over it
        torch.save(good["model"], ckpt)
    elif kind == "no_optimizer":
        torch.save({k: v for k, v in good.items() if k != "optimizer"}, ckpt)
    elif kind == "wrong_shapes":
        model = {k: torch.zeros(1) if v.is_floating_point() else v for k, v in good["model"].items()}
        torch.save({**good, "model": model}, ckpt)
    elif kind == "bad_rng":
        torch.save({**good, "torch_rng": torch.zeros(3)}, ckpt)
    elif kind == "bad_iteration":
        torch.save({**good, "iteration": "twelve"}, ckpt)
    elif kind == "pml_stage":
        torch.save({**good, "stage": "pml"}, ckpt)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("truncated", "truncated or corrupt"),
        ("empty", "truncated or corrupt"),
        ("text", "not a PyTorch file"),
        ("weights", "memvos-lite weights"),
        ("no_optimizer", "no 'optimizer' entry"),
        ("wrong_shapes", "does not fit"),
        ("bad_rng", "does not fit"),
        ("bad_iteration", "iteration 'twelve'"),
        ("pml_stage", "not a memory-stage checkpoint"),
    ],
)
def test_malformed_checkpoint_is_one_line_error(
    kind: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from memvos.training.trainer import Trainer

    out = tmp_path / "run"
    good = _saved_checkpoint(out)
    ckpt = out / "checkpoint.pth"
    _corrupt(kind, ckpt, good)
    with pytest.raises(MemvosError) as info:
        Trainer(_tiny_config(), out, device="cpu", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and str(ckpt) in msg and expected in msg and "weights_only" not in msg, msg
    if kind in ("truncated", "weights"):  # and through the command line: exit 2, one line
        capsys.readouterr()
        assert main(_train_args(out)) == 2
        assert expected in _one_error_line(capsys.readouterr().err, "train")


def test_wrong_kind_of_weights_says_what_it_is(tmp_path: Path) -> None:
    from memvos.interactive.embedding import PixelEmbedder, save_embedder
    from memvos.models.lite import LiteMemoryNetwork

    lite = LiteMemoryNetwork(pretrained_backbone=False)
    pml = save_embedder(tmp_path / "pml.pth", PixelEmbedder.from_model(lite), 1.0, "test")
    with pytest.raises(WeightsError, match=r"pml\.pth .*it looks like pml-lite embeddings"):
        load_model("memvos-lite", pml)
    lite_path = tmp_path / "lite.pth"
    torch.save(lite.state_dict(), lite_path)
    with pytest.raises(WeightsError, match=r"looks like memvos-lite weights.*expected keys: format, dim"):
        load_embedder(lite_path)
    with pytest.raises(WeightsError, match=r"looks like memvos-lite weights \(use --model memvos-lite\)"):
        load_model("stm-r50", lite_path)
    run = tmp_path / "run"
    _saved_checkpoint(run, stage="pml")  # a pml run's checkpoint given as model weights
    with pytest.raises(WeightsError, match=r"training checkpoint of the pml stage \(use --pml-weights RUN/"):
        load_model("memvos-lite", run / "checkpoint.pth")
    stm_like = tmp_path / "stm.pth"
    torch.save({"Encoder_M.conv1.weight": torch.zeros(1), "Encoder_Q.conv1.weight": torch.zeros(1)}, stm_like)
    with pytest.raises(WeightsError, match=r"looks like an STM checkpoint \(use --model stm-r50\)"):
        load_model("memvos-lite", stm_like)


# ---------------------------------------------------------------------------- SIGTERM like SIGINT
_SLOW_COMMAND = """
import sys, time
from pathlib import Path
import memvos.cli.eval_cmd as eval_cmd
from memvos.cli import main

def slow(args):
    try:
        print("ready", file=sys.stderr, flush=True)
        time.sleep(60)
    finally:
        Path(sys.argv[1]).write_text("cleaned up")
    return 0

eval_cmd.run = slow
sys.exit(main(["eval", "results", "--gt", "gt"]))
"""


def _wait_for(proc: subprocess.Popen, condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited early with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the command to start")
        time.sleep(0.05)


@pytest.mark.parametrize(
    "sig, status, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_signals_run_cleanup_and_exit_with_one_line(tmp_path: Path, sig: int, status: int, word: str) -> None:
    script, cleaned = tmp_path / "slow.py", tmp_path / "cleaned"
    script.write_text(textwrap.dedent(_SLOW_COMMAND))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cleaned)], stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stderr.readline().strip() == "ready"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert err.strip().splitlines() == [f"memvos eval: {word}"], err
    assert cleaned.read_text() == "cleaned up"


def test_sigterm_handler_is_restored_after_main(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    main(["eval", str(tmp_path / "none"), "--gt", str(tmp_path), "--quiet"])
    assert signal.getsignal(signal.SIGTERM) is before


def _write_dataset(root: Path) -> Path:
    for s in range(2):
        rgb, labels = render_tiny_clip(num_frames=6, height=64, width=80, seed=s)
        img_dir, ann_dir = root / "JPEGImages" / f"seq{s}", root / "Annotations" / f"seq{s}"
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for t in range(6):
            Image.fromarray(rgb[t]).save(img_dir / f"{t:05d}.jpg", quality=95)
            m = Image.fromarray(labels[t].astype(np.uint8), mode="P")
            m.putpalette(DAVIS_PALETTE.tobytes())
            m.save(ann_dir / f"{t:05d}.png")
    return root


def test_sigterm_stops_a_real_training_run(tmp_path: Path) -> None:
    """``python -m memvos train`` under SIGTERM (what timeout and job schedulers send): status 143, one line,
    and the checkpoint written before stays whole and loadable."""
    data, out = _write_dataset(tmp_path / "data"), tmp_path / "run"
    cfg = _tiny_config(davis_roots=[str(data)], iterations=100000, checkpoint_minutes=0.0, log_every=1)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "memvos", "train", "--config", str(tmp_path / "cfg.json"), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--device", "cpu", "--no-val", "--quiet"], stderr=subprocess.PIPE, text=True, env=env
    )
    log = out / "log.jsonl"
    _wait_for(proc, lambda: log.is_file() and len(log.read_text().splitlines()) >= 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "memvos train: terminated", err
    state = load_torch_file(out / "checkpoint.pth", kind="memvos training checkpoint")
    assert isinstance(state, dict) and state["iteration"] >= 1
