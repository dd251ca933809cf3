"""``memvos export``: ONNX graphs of the per-frame networks, their manifest, and the check against torch.

Random weights and tiny frames: memvos-lite exports in about a second, stm-r50 (ResNet-50) in a few.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from memvos import export as export_module
from memvos.cli import export_cmd
from memvos.errors import MemvosError, OptionError
from memvos.export import INSTALL_HINT, OnnxModel, export_model, export_network
from memvos.inference.session import InferenceSession
from memvos.models.backbones.efficientnet_lite import INPUT_MEAN, INPUT_STD
from memvos.models.base import MemoryNetwork, QueryEncoding
from memvos.models.lite import LiteMemoryNetwork
from memvos.models.registry import load_model, shipped_weights_path
from memvos.models.stm import STM

from .conftest import render_tiny_clip

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ATOL = 1e-4
#: Probability margin under which two labels are a tie that float rounding may decide either way.
TIE = 1e-5


def _randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, as trained weights have."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> tuple[LiteMemoryNetwork, Path]:
    """A randomly initialised memvos-lite and its weights file."""
    torch.manual_seed(0)
    model = _randomise_bn(LiteMemoryNetwork(pretrained_backbone=False))
    path = tmp_path_factory.mktemp("weights") / "lite-random.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def lite_export(lite, tmp_path_factory) -> Path:
    _, weights = lite
    return export_model("memvos-lite", weights, tmp_path_factory.mktemp("lite-onnx"))


def _names(specs: list[dict]) -> list[str]:
    return [s["name"] for s in specs]


def _shapes(specs: list[dict]) -> dict[str, list]:
    return {s["name"]: s["shape"] for s in specs}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memvos")
    export_cmd.register(parser.add_subparsers(dest="command"))
    return parser


def _segment(model: MemoryNetwork, frames: np.ndarray, first_mask: np.ndarray) -> list:
    session = InferenceSession(model, precision="fp32", device="cpu")
    return [session.step(frame, first_mask if i == 0 else None) for i, frame in enumerate(frames)]


# ---------------------------------------------------------------------------------------------- manifest
def test_manifest_describes_the_lite_graphs(lite, lite_export: Path) -> None:
    _, weights = lite
    manifest = json.loads(lite_export.read_text())
    folder = lite_export.parent
    assert lite_export.name == "manifest.json"
    assert manifest["format"] == "memvos-onnx" and manifest["format_version"] == 1
    assert manifest["memvos_version"] and manifest["opset"] == 17
    assert manifest["model"] == "memvos-lite" and manifest["model_class"] == "LiteMemoryNetwork"
    assert manifest["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["weights"]["file"] == weights.name and manifest["weights"]["shipped"] is False
    assert manifest["stride"] == 16
    norm = manifest["input"]["normalisation"]
    assert norm["inside_graphs"] is True
    assert norm["mean"] == [INPUT_MEAN] * 3 and norm["std"] == [INPUT_STD] * 3
    assert "RGB" in manifest["input"]["image"] and "[0, 1]" in manifest["input"]["image"]
    memory = manifest["memory"]
    assert memory["key"] == "query_encoder.key" and memory["shared_key"] is True
    assert memory["similarity"] == "l2"

    graphs = manifest["graphs"]
    assert list(graphs) == ["query_encoder", "value_encoder", "decoder"]
    for name, spec in graphs.items():
        data = (folder / spec["file"]).read_bytes()
        assert spec["file"] == f"{name}.onnx" and spec["sha256"] == hashlib.sha256(data).hexdigest()
        assert all(t["dtype"] == "float32" for t in spec["inputs"] + spec["outputs"])
    q = graphs["query_encoder"]
    assert _shapes(q["inputs"]) == {"image": [1, 3, "H", "W"]}
    assert _names(q["outputs"]) == ["key", "qv", "s8", "s4", "i4", "i8", "i16"]
    assert _shapes(q["outputs"])["key"] == [1, 64, "H/16", "W/16"]
    assert _shapes(q["outputs"])["s4"] == [1, 32, "H/4", "W/4"]
    v = graphs["value_encoder"]
    assert _names(v["inputs"]) == ["i4", "i8", "i16", "masks", "others"]  # the key is the query key
    assert _shapes(v["inputs"])["masks"] == ["N", "H", "W"]
    assert _shapes(v["outputs"]) == {"mem_value": ["N", 128, "H/16", "W/16"]}
    d = graphs["decoder"]
    assert _names(d["inputs"]) == ["qv", "s8", "s4", "readout"]
    assert _shapes(d["inputs"])["readout"] == ["N", 128, "H/16", "W/16"]
    assert _shapes(d["outputs"]) == {"probs": ["N", "H", "W"]}

    check = manifest["check"]
    assert check["status"] == "passed" and check["tolerance"] == 1e-3
    assert check["sizes"] == [[64, 96], [96, 128]] and check["objects"] == [1, 5]
    for name in graphs:
        assert 0 <= check["graphs"][name]["max_abs_error"] < 1e-4


def test_onnx_files_have_dynamic_axes(lite_export: Path) -> None:
    import onnx

    proto = onnx.load(str(lite_export.parent / "value_encoder.onnx"))
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input
    }
    assert dims["masks"] == ["N", "H", "W"] and dims["i16"] == [1, 128, "H/16", "W/16"]
    assert {p.key: p.value for p in proto.metadata_props}["model"] == "memvos-lite"


# ---------------------------------------------------------------------------------------------- numbers
def test_exported_graphs_match_torch_at_a_new_size(lite, lite_export: Path) -> None:
    """At 48x80 with 3 objects (neither used by the export), every graph matches the torch module."""
    model, _ = lite
    onnx_model = OnnxModel(lite_export.parent)
    g = torch.Generator().manual_seed(7)
    image = torch.rand(1, 3, 48, 80, generator=g)
    masks = torch.rand(3, 48, 80, generator=g)
    others = (masks.sum(0, keepdim=True) - masks).clamp(0, 1)
    with torch.no_grad():
        q_ref, q_got = model.encode_query(image), onnx_model.encode_query(image)
        torch.testing.assert_close(q_got.key, q_ref.key, atol=ATOL, rtol=0)
        assert list(q_got.features) == list(q_ref.features)
        for name, ref in q_ref.features.items():
            torch.testing.assert_close(q_got.features[name], ref, atol=ATOL, rtol=0)
        k_ref, v_ref = model.encode_memory(image, q_ref, masks, others)
        k_got, v_got = onnx_model.encode_memory(image, q_got, masks, others)
        torch.testing.assert_close(k_got, k_ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(v_got, v_ref, atol=ATOL, rtol=0)
        k_none, v_none = onnx_model.encode_memory(image, None, masks, others)  # the session may pass None
        torch.testing.assert_close(v_none, v_ref, atol=ATOL, rtol=0)
        readout = torch.randn(v_ref.shape, generator=g)
        torch.testing.assert_close(
            onnx_model.decode(q_got, readout), model.decode(q_ref, readout), atol=ATOL, rtol=0
        )


def test_a_clip_segmented_with_the_graphs_equals_torch(tmp_path: Path) -> None:
    """A 3-frame 72x100 clip (padded to 80x112) through InferenceSession: the same label maps with torch and
    with the exported graphs. With the shipped weights: random ones leave the two objects' probabilities
    within 1e-6 of each other on most pixels, where float rounding decides the argmax."""
    shipped = shipped_weights_path("memvos-lite")
    if shipped is None or not shipped.is_file():
        pytest.skip("the shipped memvos-lite weights are not in this build")
    manifest_path = export_model("memvos-lite", None, tmp_path / "shipped", check=False)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["weights"]["shipped"] is True and manifest["weights"]["file"] == "memvos-lite.pth"
    assert manifest["weights"]["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    frames, labels = render_tiny_clip(num_frames=3, height=72, width=100)
    ref = _segment(load_model("memvos-lite"), frames, labels[0])
    got = _segment(OnnxModel(manifest_path), frames, labels[0])
    for r, o in zip(ref, got, strict=True):
        assert r.object_ids == o.object_ids == [1, 2]
        np.testing.assert_array_equal(o.labels, r.labels)
        torch.testing.assert_close(o.probs, r.probs, atol=ATOL, rtol=0)
    assert set(np.unique(ref[-1].labels)) == {0, 1, 2}


def test_stm_exports_and_segments_like_torch(tmp_path: Path) -> None:
    """stm-r50 (own key per object, image into the memory encoder, ImageNet normalisation)."""
    torch.manual_seed(0)
    model = _randomise_bn(STM())
    manifest_path = export_network(model, tmp_path / "stm", model_name="stm-r50")
    manifest = json.loads(manifest_path.read_text())
    graphs = manifest["graphs"]
    assert _names(graphs["query_encoder"]["outputs"]) == ["key", "value", "r3", "r2"]
    assert _names(graphs["value_encoder"]["inputs"]) == ["image", "masks", "others"]
    assert _shapes(graphs["value_encoder"]["outputs"]) == {
        "mem_key": ["N", 128, "H/16", "W/16"],
        "mem_value": ["N", 512, "H/16", "W/16"],
    }
    assert _names(graphs["decoder"]["inputs"]) == ["value", "r3", "r2", "readout"]
    assert manifest["memory"]["key"] == "value_encoder.mem_key" and manifest["memory"]["shared_key"] is False
    assert manifest["input"]["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["check"]["status"] == "passed"
    assert model.object_batch == 4  # the export's unbatched objects were restored

    frames, labels = render_tiny_clip(num_frames=3, height=64, width=96)
    ref = _segment(model, frames, labels[0])
    got = _segment(OnnxModel(manifest_path.parent), frames, labels[0])
    for r, o in zip(ref, got, strict=True):
        torch.testing.assert_close(o.probs, r.probs, atol=ATOL, rtol=0)
        # random weights: the same labels wherever torch's decision is not a float-rounding tie
        top2 = r.probs.topk(2, dim=0).values
        decided = (top2[0] - top2[1] > TIE).numpy()
        np.testing.assert_array_equal(o.labels[decided], r.labels[decided])


class TinyNet(MemoryNetwork):
    """A model memvos export knows nothing about: own key per object, features at /16 and /4, and (with
    ``loop``) a Python loop over the objects, which a trace unrolls for the traced object count."""

    stride = 16
    shared_key = False
    similarity = "dot"

    def __init__(self, loop: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.loop = loop
        self.enc = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.key = torch.nn.Conv2d(8, 4, 1)
        self.mem = torch.nn.Conv2d(10, 4 + 6, 1)
        self.dec = torch.nn.Conv2d(6 + 8, 1, 3, padding=1)

    def encode_query(self, image):
        f4 = torch.relu(self.enc(image))
        f16 = torch.nn.functional.avg_pool2d(f4, 4)
        return QueryEncoding(key=self.key(f16), features={"f16": f16, "f4": f4})

    def _memory(self, f16, masks, others):
        m = torch.stack([masks, others], 1)
        x = torch.cat([f16.expand(masks.shape[0], -1, -1, -1), torch.nn.functional.avg_pool2d(m, 16)], 1)
        return self.mem(x).split([4, 6], dim=1)

    def encode_memory(self, image, query, masks, others):
        query = self.encode_query(image) if query is None else query
        if not self.loop:
            return self._memory(query.features["f16"], masks, others)
        parts = [
            self._memory(query.features["f16"], masks[i : i + 1], others[i : i + 1])
            for i in range(len(masks))
        ]
        return torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts])

    def decode(self, query, readout):
        up = torch.nn.functional.interpolate(readout, scale_factor=4, mode="bilinear", align_corners=False)
        x = torch.cat([up, query.features["f4"].expand(readout.shape[0], -1, -1, -1)], 1)
        logit = self.dec(x)
        return torch.sigmoid(torch.nn.functional.interpolate(logit, scale_factor=4, mode="bilinear")[:, 0])


def test_any_memory_network_exports_through_its_interface(tmp_path: Path) -> None:
    model = TinyNet().eval()
    manifest_path = export_network(model, tmp_path / "tiny", model_name="tiny")
    manifest = json.loads(manifest_path.read_text())
    graphs = manifest["graphs"]
    assert _shapes(graphs["query_encoder"]["outputs"]) == {
        "key": [1, 4, "H/16", "W/16"],
        "f16": [1, 8, "H/16", "W/16"],
        "f4": [1, 8, "H/4", "W/4"],
    }
    assert _names(graphs["value_encoder"]["inputs"]) == ["f16", "masks", "others"]
    assert _names(graphs["value_encoder"]["outputs"]) == ["mem_key", "mem_value"]
    assert _names(graphs["decoder"]["inputs"]) == ["f4", "readout"]
    assert manifest["memory"]["key"] == "value_encoder.mem_key" and manifest["check"]["status"] == "passed"
    assert manifest["input"]["normalisation"]["mean"] is None  # not known for a model memvos does not ship
    frames, labels = render_tiny_clip(num_frames=3, height=64, width=96)
    ref = _segment(model, frames, labels[0])
    got = _segment(OnnxModel(manifest_path), frames, labels[0])
    for r, o in zip(ref, got, strict=True):
        torch.testing.assert_close(o.probs, r.probs, atol=ATOL, rtol=0)


def test_a_loop_over_objects_fails_the_check(tmp_path: Path) -> None:
    """Traced with 2 objects, checked with 1 and 5: an unrolled loop over objects cannot pass."""
    with pytest.raises(MemvosError, match="the exported value_encoder of tiny differs from torch"):
        export_network(TinyNet(loop=True).eval(), tmp_path / "loop", model_name="tiny")
    assert not (tmp_path / "loop" / "manifest.json").exists()


def test_a_graph_that_differs_from_torch_fails_the_export(lite, tmp_path: Path, monkeypatch) -> None:
    """Without the export preparation the TF-SAME padding freezes at the traced size: the check says so and
    nothing is written."""
    _, weights = lite
    monkeypatch.setattr(export_module, "export_ready", lambda model: contextlib.nullcontext())
    out = tmp_path / "bad"
    with pytest.raises(MemvosError, match="the exported query_encoder of memvos-lite differs from torch"):
        export_model("memvos-lite", weights, out)
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------------------ missing packages
def test_missing_runtime_exports_unchecked_with_one_warning(
    lite, tmp_path: Path, monkeypatch, caplog
) -> None:
    _, weights = lite
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with caplog.at_level(logging.WARNING, logger="memvos.export"):
        path = export_model("memvos-lite", weights, tmp_path / "unchecked")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "onnxruntime is not installed" in warnings[0].getMessage()
    assert json.loads(path.read_text())["check"] == {"status": "skipped (onnxruntime not installed)"}
    assert (tmp_path / "unchecked" / "decoder.onnx").is_file()


def test_missing_runtime_to_run_the_graphs_is_one_line(lite_export: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MemvosError) as info:
        OnnxModel(lite_export.parent)
    message = str(info.value)
    assert "\n" not in message and "onnxruntime" in message and INSTALL_HINT in message


def test_missing_onnx_is_one_line(lite, tmp_path: Path, monkeypatch) -> None:
    _, weights = lite
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MemvosError) as info:
        export_model("memvos-lite", weights, tmp_path / "x")
    message = str(info.value)
    assert "\n" not in message and "package onnx" in message and INSTALL_HINT in message
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_exports_and_refuses_an_existing_export(lite, tmp_path: Path, capsys) -> None:
    _, weights = lite
    out = tmp_path / "cli"
    parser = _parser()
    args = parser.parse_args(["export", "--weights", str(weights), "--out", str(out), "--no-check"])
    assert args.model == "memvos-lite" and args.opset == 17 and args.func is export_cmd.run
    assert args.func(args) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(out / "manifest.json")
    assert json.loads(Path(printed).read_text())["check"] == {"status": "skipped (not asked)"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    with pytest.raises(MemvosError, match="already holds an export .*--overwrite"):
        args.func(args)
    again = parser.parse_args(
        ["export", "--weights", str(weights), "--out", str(out), "--no-check", "--overwrite", "--opset", "18"]
    )
    assert again.func(again) == 0
    assert json.loads((out / "manifest.json").read_text())["opset"] == 18


def test_cli_errors_are_memvos_errors(lite, tmp_path: Path) -> None:
    _, weights = lite
    parser = _parser()
    bad_opset = parser.parse_args(
        ["export", "--weights", str(weights), "--out", str(tmp_path), "--opset", "5"]
    )
    with pytest.raises(OptionError, match="--opset must be between 11 and"):
        bad_opset.func(bad_opset)
    unknown = parser.parse_args(["export", "--model", "nope", "--out", str(tmp_path)])
    with pytest.raises(MemvosError, match="unknown model 'nope'"):
        unknown.func(unknown)
    no_weights = parser.parse_args(["export", "--model", "stm-r50", "--out", str(tmp_path)])
    with pytest.raises(MemvosError, match="ships without weights"):
        no_weights.func(no_weights)
    assert not (tmp_path / "manifest.json").exists()


def test_memvos_export_errors_are_one_line_with_status_2(lite, tmp_path: Path, monkeypatch, capsys) -> None:
    """Through ``memvos.cli.main`` (with export_cmd among the commands, as the package registers it)."""
    from memvos import cli

    monkeypatch.setattr(cli, "_COMMANDS", [c for c in cli._COMMANDS if c != "export_cmd"] + ["export_cmd"])
    _, weights = lite
    assert cli.main(["export", "--model", "nope", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memvos export: error: unknown model 'nope'") and "\n" not in err
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert cli.main(["export", "--weights", str(weights), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "memvos export: error: memvos export needs the package onnx, which is not installed: " + (
        INSTALL_HINT
    )
