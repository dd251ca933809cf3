"""The web API of ``memvos ui`` (FastAPI TestClient): objects, clicks, errors, propagation, export."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient  # the dev extras install fastapi and its test client (httpx2)
from PIL import Image

from memvos.cli import main as cli_main
from memvos.cli.ui import bind
from memvos.errors import InputError
from memvos.interactive.embedding import PixelEmbedder
from memvos.interactive.server import create_app
from memvos.interactive.video import InteractiveVideo
from memvos.models.lite import LiteMemoryNetwork

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lite() -> LiteMemoryNetwork:
    torch.manual_seed(0)
    return LiteMemoryNetwork(pretrained_backbone=False).eval()


PAGE = "http://127.0.0.1:8765"  # where the tests' server is served; its page's origin


def make_client(lite, frames_dir: Path, project: Path, **app_options) -> TestClient:
    """A client that sends what the server's own page sends in a browser: ``Host: 127.0.0.1:8765`` and
    ``Origin: http://127.0.0.1:8765``."""
    iv = InteractiveVideo(lite, PixelEmbedder.from_model(lite), session_options={"precision": "fp32"})
    iv.init_state(frames_dir, project_dir=project)
    return TestClient(create_app(iv, **app_options), base_url=PAGE, headers={"Origin": PAGE})


def wait_propagation(client: TestClient) -> dict:
    job = client.app.state.job
    if job.thread is not None:
        job.thread.join(timeout=120)
    status = client.get("/api/propagate").json()
    assert not status["running"]
    return status


def test_state_frames_and_objects(lite, tiny_clip, tmp_path) -> None:
    c = make_client(lite, tiny_clip.frames_dir, tmp_path / "proj")
    s = c.get("/api/state").json()
    assert s["video"]["num_frames"] == 8 and (s["video"]["width"], s["video"]["height"]) == (96, 64)
    assert s["objects"] == [] and s["annotated_frames"] == []
    r = c.get("/api/frames/3.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (96, 64)
    assert len(c.get("/api/frames/0/labels").content) == 96 * 64
    page = c.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert c.get("/static/app.js").status_code == 200 and c.get("/static/style.css").status_code == 200
    o = c.post("/api/objects", json={"name": "square"}).json()
    assert o["id"] == 1 and o["name"] == "square" and o["color"].startswith("#")
    assert c.patch("/api/objects/1", json={"name": "box", "color": "#00FF00"}).json()["color"] == "#00ff00"
    r = c.patch("/api/objects/1", json={"color": "green"})
    assert r.status_code == 422 and "#rrggbb" in r.json()["error"]
    assert c.delete("/api/objects/7").status_code == 404
    assert c.delete("/api/objects/1").status_code == 200
    assert c.get("/api/state").json()["objects"] == []


def test_click_and_bad_input(lite, tiny_clip, tmp_path) -> None:
    c = make_client(lite, tiny_clip.frames_dir, tmp_path / "proj")
    c.post("/api/objects", json={})
    r = c.post("/api/frames/0/clicks", json={"obj_id": 1, "x": 14, "y": 20})
    assert r.status_code == 200 and r.json()["annotated_frames"] == [0]
    labels = np.frombuffer(c.get("/api/frames/0/labels").content, np.uint8).reshape(64, 96)
    assert labels[20, 14] == 1
    before = c.get("/api/frames/0/annotations").json()
    assert before["1"]["points"] == [[14.0, 20.0, 1]]
    bad = [
        ("/api/frames/0/clicks", {"obj_id": 1, "x": 500, "y": 20}, 422, "outside the 96x64 frame"),
        ("/api/frames/0/clicks", {"obj_id": 5, "x": 5, "y": 5}, 404, "unknown object 5"),
        ("/api/frames/0/clicks", {"x": 5, "y": 5}, 422, "obj_id"),
        ("/api/frames/99/clicks", {"obj_id": 1, "x": 5, "y": 5}, 404, "frame 99 does not exist"),
        ("/api/frames/0/box", {"obj_id": 1, "box": [1, 2]}, 422, "a box is [x0, y0, x1, y1]"),
        ("/api/frames/0/scribbles", {"obj_id": 1, "points": [[1, 1], [1, 900]]}, 422, "outside"),
        ("/api/propagate", {"direction": "sideways"}, 422, "direction must be"),
    ]
    for url, body, status, message in bad:
        r = c.post(url, json=body)
        assert r.status_code == status, (url, body, r.text)
        assert message in r.json()["error"], r.json()
    assert c.get("/api/frames/0/annotations").json() == before  # nothing lost
    c.delete("/api/objects/1")
    r = c.post("/api/frames/0/clicks", json={"obj_id": 1, "x": 5, "y": 5})
    assert r.status_code == 404 and "unknown object 1" in r.json()["error"]
    r = c.post("/api/propagate", json={})
    assert r.status_code == 422 and "nothing to propagate" in r.json()["error"]


def test_propagate_export_and_restore(lite, tiny_clip, tmp_path) -> None:
    project = tmp_path / "proj"
    c = make_client(lite, tiny_clip.frames_dir, project)
    c.post("/api/objects", json={"name": "square"})
    c.post("/api/objects", json={"name": "disc"})
    c.post("/api/frames/0/box", json={"obj_id": 1, "box": [4, 10, 24, 30]})
    c.post("/api/frames/0/scribbles", json={"obj_id": 2, "points": [[76, 38], [86, 42]]})
    c.post("/api/frames/0/clicks", json={"obj_id": 2, "x": 40, "y": 55, "positive": False})
    assert c.post("/api/propagate", json={"frame": 0, "direction": "both"}).status_code == 202
    status = wait_propagation(c)
    assert status["error"] is None and status["done"] == status["total"] == 8
    assert c.get("/api/state").json()["propagated_frames"] == list(range(8))
    # a running propagation blocks edits with 409
    c.app.state.job.running = True
    r = c.post("/api/frames/0/clicks", json={"obj_id": 1, "x": 5, "y": 5})
    assert r.status_code == 409 and "propagation is running" in r.json()["error"]
    c.app.state.job.running = False
    r = c.post("/api/export", json={"overlay": True}).json()
    masks = sorted(Path(r["masks_dir"]).glob("*.png"))
    assert [m.stem for m in masks] == tiny_clip.names and r["not_segmented"] == 0
    first = Image.open(masks[0])
    assert first.mode == "P" and first.size == (96, 64)
    arr = np.asarray(first)
    assert arr[20, 14] == 1 and arr[40, 81] == 2 and not (arr[:, 30:][arr[:, 30:] == 1]).any()
    assert Path(r["overlay"]).is_file() and Path(r["overlay"]).stat().st_size > 0
    z = zipfile.ZipFile(io.BytesIO(c.get("/api/export/masks.zip").content))
    assert len(z.namelist()) == 8
    assert c.get("/api/export/overlay.mp4").status_code == 200
    labels = {i: c.get(f"/api/frames/{i}/labels").content for i in range(8)}
    # restart on the same project folder: everything is back
    c2 = make_client(lite, tiny_clip.frames_dir, project)
    s = c2.get("/api/state").json()
    assert [o["name"] for o in s["objects"]] == ["square", "disc"]
    assert s["annotated_frames"] == [0] and s["propagated_frames"] == list(range(8))
    assert c2.get("/api/frames/0/annotations").json() == c.get("/api/frames/0/annotations").json()
    assert all(c2.get(f"/api/frames/{i}/labels").content == labels[i] for i in range(8))


def test_frame_that_fails_to_decode(lite, tiny_clip, tmp_path) -> None:
    bad = tiny_clip.frames_dir / "00002.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    c = make_client(lite, tiny_clip.frames_dir, tmp_path / "proj")
    r = c.get("/api/frames/2.jpg")
    assert r.status_code == 422 and "cannot decode frame 2" in r.json()["error"]
    c.post("/api/objects", json={})
    r = c.post("/api/frames/2/clicks", json={"obj_id": 1, "x": 5, "y": 5})
    assert r.status_code == 422 and "cannot decode frame 2" in r.json()["error"]
    assert c.get("/api/state").json()["annotated_frames"] == []
    assert c.get("/api/frames/1.jpg").status_code == 200


def test_cli_ui_errors(tmp_path, capsys) -> None:
    assert cli_main(["ui", str(tmp_path / "missing.mp4")]) == 2
    assert "video or frame folder not found" in capsys.readouterr().err
    assert cli_main(["ui", str(tmp_path / "missing.mp4"), "--allow-host", "evil/x"]) == 2
    assert "--allow-host takes a host name" in capsys.readouterr().err
    sock = bind(0)
    try:
        with pytest.raises(InputError, match="is in use"):
            bind(sock.getsockname()[1])
    finally:
        sock.close()


def test_memvos_ui_command_serves_on_localhost(lite, tiny_clip, tmp_path) -> None:
    import http.client
    import json
    import os
    import selectors
    import subprocess
    import sys
    import time
    import urllib.request

    weights = tmp_path / "lite.pth"
    torch.save(lite.state_dict(), weights)
    cmd = [
        sys.executable,
        "-m",
        "memvos",
        "ui",
        str(tiny_clip.frames_dir),
        "--port",
        "0",
        "--weights",
        str(weights),
        "--project",
        str(tmp_path / "proj"),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--allow-host",
        "memvos-alias",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        try:
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline, line = time.monotonic() + 90, ""
            while "http://" not in line:
                assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
                assert time.monotonic() < deadline, "memvos ui printed no URL"
                if sel.select(timeout=1):
                    line = proc.stdout.readline()
            url = line.split("open ", 1)[1].split()[0]
            assert url.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(url + "api/state", timeout=30) as resp:
                state = json.loads(resp.read())
            assert state["video"]["num_frames"] == 8
            assert (tmp_path / "proj" / "project.json").is_file()
            port = int(url.rstrip("/").rsplit(":", 1)[1])
            for host, status in [(f"evil.example:{port}", 403), (f"memvos-alias:{port}", 200)]:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/api/state", headers={"Host": host})  # a rebinding page; --allow-host
                assert conn.getresponse().status == status, host
                conn.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
