"""``memvos ui`` talks only to its own page: Host and Origin checks, body and point caps, short errors."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from memvos.errors import InputError
from memvos.interactive.server import (
    MAX_BODY_BYTES,
    MAX_ECHO_CHARS,
    MAX_ERROR_CHARS,
    MAX_FRAME_POINTS,
    MAX_STROKE_POINTS,
    HostPolicy,
    clip_echoes,
    parse_allowed_host,
)
from memvos.models.lite import LiteMemoryNetwork
from tests.test_ui import PAGE, make_client

torch.set_num_threads(1)

EVIL_HOST = "evil.example:8765"  # a rebinding page's name, resolved to 127.0.0.1


@pytest.fixture(scope="module")
def lite() -> LiteMemoryNetwork:
    torch.manual_seed(0)
    return LiteMemoryNetwork(pretrained_backbone=False).eval()


class _Untouchable:
    """Stands in for the video: any use by a route fails the test."""

    def __getattr__(self, name: str) -> None:
        raise AssertionError(f"a refused request read the video ({name})")

    def __getitem__(self, i: int) -> None:
        raise AssertionError("a refused request read a frame")

    def __len__(self) -> int:
        raise AssertionError("a refused request read the video")


def project_bytes(c: TestClient) -> bytes:
    return (c.app.state.iv.project.root / "project.json").read_bytes()


def test_rebinding_host_is_refused_before_the_project_is_read(lite, tiny_clip, tmp_path) -> None:
    c = make_client(lite, tiny_clip.frames_dir, tmp_path / "proj")
    iv = c.app.state.iv
    before = project_bytes(c)
    frames, iv.frames = iv.frames, _Untouchable()
    try:
        for host in (EVIL_HOST, "evil.example", "127.0.0.1:9999", "localhost.:8765", "", "[::1"):
            for method, url in [
                ("GET", "/api/state"),
                ("GET", "/api/frames/0.jpg"),
                ("GET", "/api/frames/0/labels"),
                ("GET", "/"),
                ("GET", "/static/app.js"),
                ("POST", "/api/objects"),
                ("POST", "/api/frames/0/clicks"),
            ]:
                body = {"obj_id": 1, "x": 5, "y": 5} if method == "POST" else None
                r = c.request(method, url, json=body, headers={"Host": host, "Origin": f"http://{host}"})
                assert r.status_code == 403, (host, url, r.text)
                assert r.headers["content-type"].startswith("text/plain")
                assert "only to its own address" in r.text and len(r.text) < 300
    finally:
        iv.frames = frames
    assert project_bytes(c) == before
    for host in ("127.0.0.1:8765", "localhost:8765", "LocalHost:8765", "[::1]:8765"):
        assert c.get("/api/state", headers={"Host": host}).status_code == 200, host


def test_state_changes_need_our_origin(lite, tiny_clip, tmp_path) -> None:
    c = make_client(lite, tiny_clip.frames_dir, tmp_path / "proj")
    assert c.post("/api/objects", json={"name": "square"}).status_code == 200
    before, state = project_bytes(c), c.get("/api/state").json()
    bare = TestClient(c.app, base_url=PAGE)  # no Origin, no Referer
    attempts = [
        (c, "POST", "/api/objects", {"Origin": "http://evil.example"}),
        (c, "POST", "/api/frames/0/clicks", {"Origin": "http://evil.example:8765"}),
        (c, "POST", "/api/frames/0/clicks", {"Origin": "http://127.0.0.1:9999"}),
        (c, "PATCH", "/api/objects/1", {"Origin": "null"}),
        (c, "PATCH", "/api/objects/1", {"Origin": "http://user@127.0.0.1:8765"}),
        (c, "POST", "/api/export", {"Origin": "ftp://127.0.0.1:8765"}),
        (bare, "DELETE", "/api/objects/1", {"Referer": "http://evil.example/page.html"}),
        (bare, "DELETE", "/api/objects/1", {}),
        (bare, "POST", "/api/propagate", {}),
        (bare, "DELETE", "/api/frames/0/annotations", {}),
    ]
    bodies = {"/api/objects": {}, "/api/frames/0/clicks": {"obj_id": 1, "x": 5, "y": 5}}
    bodies |= {"/api/objects/1": {"color": "#ff0000"}, "/api/export": {}, "/api/propagate": {}}
    for client, method, url, headers in attempts:
        r = client.request(method, url, json=bodies.get(url), headers=headers)
        assert r.status_code == 403, (method, url, headers, r.text)
        assert "refused" in r.json()["error"]
    assert "without an Origin or Referer" in bare.delete("/api/objects/1").json()["error"]
    assert project_bytes(c) == before and c.get("/api/state").json() == state
    assert not (c.app.state.iv.project.root / "export").exists()
    # the page's own requests: Origin of any of our names, or only a Referer of our page
    assert bare.post("/api/objects", json={}, headers={"Referer": PAGE + "/"}).status_code == 200
    r = bare.patch("/api/objects/2", json={"name": "b"}, headers={"Origin": "http://localhost:8765"})
    assert r.status_code == 200
    assert (
        c.get("/api/state", headers={"Origin": "http://evil.example"}).status_code == 200
    )  # GETs: Host only


def test_oversized_bodies_are_refused(lite, tiny_clip, tmp_path) -> None:
    c = make_client(lite, tiny_clip.frames_dir, tmp_path / "proj")
    c.post("/api/objects", json={})
    before = project_bytes(c)
    point = "[12.5,20.5],"
    n = MAX_BODY_BYTES // len(point) + 1
    body = ('{"obj_id": 1, "points": [' + point * n + "[1,1]]}").encode()
    assert len(body) > MAX_BODY_BYTES
    headers = {"Content-Type": "application/json"}
    r = c.post("/api/frames/0/scribbles", content=body, headers=headers)
    assert r.status_code == 413 and "too large" in r.json()["error"]
    # without a Content-Length (chunked): counted while reading
    r = c.post("/api/frames/0/scribbles", content=iter([body[:600_000], body[600_000:]]), headers=headers)
    assert r.status_code == 413
    r = c.post("/api/objects", content=b"{}", headers={**headers, "Content-Length": "12x"})
    assert r.status_code == 400
    assert project_bytes(c) == before and c.get("/api/state").json()["annotated_frames"] == []


def test_too_many_points(lite, tiny_clip, tmp_path) -> None:
    c = make_client(lite, tiny_clip.frames_dir, tmp_path / "proj")
    c.post("/api/objects", json={})
    c.post("/api/objects", json={})
    stroke = [[float(k % 90), float(k % 60)] for k in range(MAX_STROKE_POINTS)]
    before = project_bytes(c)
    r = c.post("/api/frames/0/scribbles", json={"obj_id": 1, "points": [*stroke, [1.0, 1.0]]})
    assert r.status_code == 400 and "too many points" in r.json()["error"]
    assert project_bytes(c) == before
    per_frame = MAX_FRAME_POINTS // MAX_STROKE_POINTS
    for k in range(per_frame):  # up to the frame's total, over objects
        r = c.post("/api/frames/1/scribbles", json={"obj_id": 1 + k % 2, "points": stroke})
        assert r.status_code == 200, r.text
    full = project_bytes(c)
    for url, body in [
        ("/api/frames/1/clicks", {"obj_id": 2, "x": 5, "y": 5}),
        ("/api/frames/1/scribbles", {"obj_id": 1, "points": [[3, 3], [4, 4]]}),
    ]:
        r = c.post(url, json=body)
        assert r.status_code == 400 and f"at most {MAX_FRAME_POINTS}" in r.json()["error"], r.text
    assert project_bytes(c) == full
    assert c.post("/api/frames/2/clicks", json={"obj_id": 2, "x": 5, "y": 5}).status_code == 200  # per frame
    assert c.delete("/api/frames/1/annotations").status_code == 200  # clearing makes room again
    assert c.post("/api/frames/1/clicks", json={"obj_id": 2, "x": 5, "y": 5}).status_code == 200


def test_errors_do_not_echo_long_input(lite, tiny_clip, tmp_path) -> None:
    c = make_client(lite, tiny_clip.frames_dir, tmp_path / "proj")
    c.post("/api/objects", json={})
    colour = "#" + "z" * 500_000  # under the body cap: it reaches the colour check
    r = c.patch("/api/objects/1", json={"color": colour})
    assert r.status_code == 422
    message = r.json()["error"]
    assert "#rrggbb" in message and "…" in message and len(message) <= MAX_ERROR_CHARS
    assert "z" * MAX_ECHO_CHARS not in message
    assert len(r.content) < 1000
    r = c.patch("/api/objects/1", json={"color": "#" + "z" * 5_000_000})  # the size seen in the issue
    assert r.status_code == 413 and len(r.content) < 1000
    r = c.post("/api/frames/0/scribbles", json={"obj_id": 1, "points": [[1.0] * 50_000]})
    assert r.status_code == 422 and len(r.json()["error"]) <= MAX_ERROR_CHARS, r.text
    r = c.post("/api/frames/0/box", json={"obj_id": 1, "box": list(range(50_000))})
    assert r.status_code == 422 and "a box is [x0, y0, x1, y1]" in r.json()["error"]
    assert len(r.json()["error"]) <= MAX_ERROR_CHARS
    r = c.post(
        "/api/frames/0/clicks", json={"obj_id": 1, "x": 5, "y": 5}, headers={"Origin": "http://" + "e" * 9000}
    )
    assert r.status_code == 403 and len(r.content) < 400


def test_clip_echoes() -> None:
    assert clip_echoes("colour must look like '#rrggbb', got 'green'") == (
        "colour must look like '#rrggbb', got 'green'"
    )
    long = clip_echoes("got " + repr("a b " * 100) + " for object 1")
    assert long.endswith("…' for object 1") and len(long) < 4 + MAX_ECHO_CHARS + 20
    listed = clip_echoes("a point is [x, y], got " + repr([1.0] * 300) + " (frame 3)")
    assert listed.endswith("…] (frame 3)") and len(listed) < 30 + MAX_ECHO_CHARS + 20
    assert len(clip_echoes("x" * 10_000)) == MAX_ECHO_CHARS
    assert len(clip_echoes(" ".join(["word"] * 1000))) == MAX_ERROR_CHARS
    assert clip_echoes("a\n  b") == "a b"


def test_host_policy() -> None:
    local = HostPolicy.for_bind("127.0.0.1", 8765)
    for ok in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST:8765"):
        assert local.allows(ok, 8765), ok
    for bad in (
        "evil.example:8765",
        "127.0.0.1:80",
        "127.0.0.1",
        "::1:8765",
        "127.0.0.1:8765@evil",
        None,
        "",
    ):
        assert not local.allows(bad, 8765), bad
    assert local.allows_origin("http://localhost:8765", 8765) and local.allows_origin(PAGE + "/x?y", 8765)
    assert not local.allows_origin("http://evil.example:8765", 8765) and not local.allows_origin("null", 8765)
    any_port = HostPolicy.for_bind("127.0.0.1")  # the port of the socket the request came in on
    assert any_port.allows("127.0.0.1:4000", 4000) and not any_port.allows("127.0.0.1:4000", 4001)
    assert HostPolicy.for_bind("127.0.0.1", 80).allows("localhost", 80)  # no port: 80
    lan = HostPolicy.for_bind("192.168.1.5", 8765)
    assert lan.allows("192.168.1.5:8765", 8765) and not lan.allows("localhost:8765", 8765)
    v6 = HostPolicy.for_bind("::1", 8765)
    assert v6.allows("[::1]:8765", 8765) and v6.allows("127.0.0.1:8765", 8765)
    wild = HostPolicy.for_bind("0.0.0.0", 8765)
    assert wild.allows(f"{socket.gethostname()}:8765", 8765) and wild.allows("127.0.0.1:8765", 8765)
    assert not wild.allows("evil.example:8765", 8765)
    allowed = HostPolicy.for_bind("127.0.0.1", 8765, ["MyAlias", "localhost:9000", "10.0.0.7"])
    assert allowed.allows("myalias:8765", 8765) and allowed.allows("localhost:9000", 8765)
    assert allowed.allows("10.0.0.7:8765", 8765) and not allowed.allows("myalias:9000", 8765)
    assert allowed.allows_origin("http://localhost:9000", 8765)
    assert parse_allowed_host("[::1]:9000") == ("::1", 9000)
    for bad in ("*", "a/b", "evil.example:99999", "user@host", "-x", "1.2.3", "", "a b"):
        with pytest.raises(InputError, match="--allow-host"):
            parse_allowed_host(bad)


@pytest.fixture
def live_server(lite, tiny_clip, tmp_path) -> Iterator[tuple[int, Path]]:
    """The app under uvicorn on a real socket (port left to the socket, as in test_ui_browser.py)."""
    uvicorn = pytest.importorskip("uvicorn")
    from memvos.cli.ui import bind

    c = make_client(lite, tiny_clip.frames_dir, tmp_path / "proj")
    sock = bind(0)
    srv = uvicorn.Server(uvicorn.Config(c.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1], c.app.state.iv.project.root / "project.json"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _request(
    port: int, method: str, url: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    """(status, body) of one raw request: the headers exactly as given (``_`` for ``-``), no Host added."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k.replace("_", "-"), v)
        conn.endheaders()
        if body is not None:
            try:
                conn.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before the whole body was sent
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_live_server_host_origin_and_size(live_server) -> None:
    port, project_file = live_server
    ours = f"127.0.0.1:{port}"
    status, data = _request(port, "GET", "/api/state", Host=ours)
    assert status == 200 and json.loads(data)["video"]["num_frames"] == 8
    assert _request(port, "GET", "/api/state", Host=f"evil.example:{port}")[0] == 403
    assert _request(port, "GET", "/api/frames/0.jpg", Host=f"localhost:{port + 1}")[0] == 403
    before = project_file.read_bytes()
    ok = {"Host": ours, "Origin": f"http://{ours}", "Content_Type": "application/json"}
    status, data = _request(port, "POST", "/api/objects", b"{}", **{**ok, "Content_Length": "2"})
    assert status == 200 and json.loads(data)["id"] == 1
    after = project_file.read_bytes()
    status, _ = _request(
        port, "POST", "/api/objects", b"{}", **{**ok, "Origin": "http://evil", "Content_Length": "2"}
    )
    assert status == 403
    # a Content-Length above the cap: refused before the body is sent
    status, data = _request(
        port, "POST", "/api/objects", None, **{**ok, "Content_Length": str(10 * MAX_BODY_BYTES)}
    )
    assert status == 413 and b"too large" in data
    # a chunked body that grows past the cap
    chunk = b"x" * 65536
    stream = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (MAX_BODY_BYTES // len(chunk) + 2) + b"0\r\n\r\n"
    status, _ = _request(port, "POST", "/api/objects", stream, **{**ok, "Transfer_Encoding": "chunked"})
    assert status == 413
    assert project_file.read_bytes() == after != before
