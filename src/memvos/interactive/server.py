"""The local web UI of ``memvos ui``: a FastAPI app over one :class:`InteractiveVideo`.

JSON API (errors: HTTP 4xx with ``{"error": message}``; 404 unknown object/frame, 409 a propagation is
running, 422 bad input such as a click outside the frame or a frame that fails to decode):

* ``GET /api/state``: video, objects, annotated/propagated frames, version, propagation status.
* ``GET /api/frames/{i}.jpg``: the frame; ``GET /api/frames/{i}/labels``: (H*W) uint8 object ids, raw.
* ``GET /api/frames/{i}/annotations``; ``POST /api/frames/{i}/clicks`` ``{obj_id, x, y, positive}``;
  ``POST /api/frames/{i}/scribbles`` ``{obj_id, points, positive}``; ``POST /api/frames/{i}/box``
  ``{obj_id, box}``; ``DELETE /api/frames/{i}/annotations?obj_id=``.
* ``POST /api/objects`` ``{name?, color?}``; ``PATCH /api/objects/{id}``; ``DELETE /api/objects/{id}``.
* ``POST /api/propagate`` ``{frame, direction}`` starts a background job; ``GET /api/propagate`` polls it.
* ``POST /api/export`` ``{overlay}`` writes palette PNGs (and an overlay mp4) to the export folder;
  ``GET /api/export/masks.zip`` and ``GET /api/export/overlay.mp4`` download them.

The page (``/``) is plain HTML/JS/CSS from the package's ``static/`` folder: nothing is fetched from the
network.

The server talks only to its own page; :class:`RequestGuard` applies these rules to every request before
any route (so before anything of the project is read):

1. Host: the ``Host`` header must name an address the server serves (:class:`HostPolicy`): for a loopback
   bind ``127.0.0.1:PORT``, ``localhost:PORT`` or ``[::1]:PORT``; for a specific address that address;
   for a wildcard bind the machine's own names and addresses. Names given with ``allow_hosts``
   (``memvos ui --allow-host``) are added. Anything else is refused with 403 (DNS rebinding).
2. Origin: a POST/PUT/PATCH/DELETE must carry an ``Origin`` (else a ``Referer``) naming one of those
   addresses; 403 otherwise, also when both are missing.
3. Size: bodies above :data:`MAX_BODY_BYTES` are refused with 413 (``Content-Length`` is checked before
   reading, chunked bodies while reading); a stroke above :data:`MAX_STROKE_POINTS` points or a frame above
   :data:`MAX_FRAME_POINTS` annotation points is refused with 400.
4. Echo: error messages quote user input only up to :data:`MAX_ECHO_CHARS` characters per value
   (:func:`clip_echoes`).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memvos.errors import InputError, MemvosError
from memvos.interactive.annotations import UnknownObjectError
from memvos.interactive.video import InteractiveVideo

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

MAX_BODY_BYTES = 1 << 20  # 1 MiB; the largest legitimate body, a 10,000-point scribble, is ~150 kB
MAX_STROKE_POINTS = 10_000  # points in one scribble (a click is 1, a box 2)
MAX_FRAME_POINTS = 20_000  # click and scribble points of all objects on one frame
MAX_ECHO_CHARS = 80  # the most of one user-given value an error message quotes
MAX_ERROR_CHARS = 300  # the longest error message
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_HOST_NAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")
_QUOTED = re.compile(r"(?<!\w)(['\"])(?:(?!\1)[^\\]|\\.)*(?:\1|$)")
_OPEN, _CLOSE = "([{", ")]}"


class ConflictError(MemvosError):
    """The request conflicts with work in progress (a propagation)."""


class _NotFound(MemvosError):
    """A frame or file that does not exist (HTTP 404)."""


class _TooLarge(MemvosError):
    """An annotation with too many points (HTTP 400)."""


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quoted_at(text: str, i: int) -> int | None:
    """The end of the quoted string (a repr) that opens at ``text[i]``, or None if none opens there."""
    m = _QUOTED.match(text, i) if text[i] in "'\"" else None
    return m.end() if m else None


def _clip_quoted(quoted: str) -> str:
    if len(quoted) <= MAX_ECHO_CHARS:
        return quoted
    closed = len(quoted) > 1 and quoted[-1] == quoted[0]
    return clip(quoted[:-1] if closed else quoted, MAX_ECHO_CHARS - closed) + (quoted[0] if closed else "")


def _group_end(text: str, start: int) -> int:
    """The end of the bracketed group (nesting counted, quotes skipped) that opens at ``text[start]``."""
    depth, j = 0, start
    while j < len(text):
        end = _quoted_at(text, j)
        if end is not None:
            j = end
            continue
        if text[j] in _OPEN:
            depth += 1
        elif text[j] in _CLOSE:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return j


def clip_echoes(message: str) -> str:
    """``message`` on one line, with every quoted value, bracketed group (a list repr) and unbroken run
    longer than :data:`MAX_ECHO_CHARS` cut with an ellipsis, and the whole cut to :data:`MAX_ERROR_CHARS`:
    an error never echoes a long user value back."""
    text = " ".join(str(message).split())
    out, i = [], 0
    while i < len(text):
        end = _quoted_at(text, i)
        if end is not None:
            out.append(_clip_quoted(text[i:end]))
        elif text[i] in _OPEN:
            end = _group_end(text, i)
            group = text[i:end]
            closing = group[-1] if len(group) > 1 and group[-1] in _CLOSE else ""
            out.append(group if len(group) <= MAX_ECHO_CHARS else clip(group, MAX_ECHO_CHARS - 1) + closing)
        else:
            end = i + 1
            out.append(text[i])
        i = end
    text = " ".join(clip(word) for word in "".join(out).split(" "))
    return clip(text, MAX_ERROR_CHARS)


def split_authority(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (IPv6 in brackets) as (lower-case host, port or None); None when malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/@?#\\ "):
        return None
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[1:end], value[end + 1 :]
        if end < 0 or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = value.partition(":")
        if ":" in port_text:
            return None  # a bare IPv6 address
        port_text = port_text if colon else None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def parse_allowed_host(value: str) -> tuple[str, int | None]:
    """An ``--allow-host`` value, ``NAME`` or ``NAME:PORT`` (an IP address or a DNS name): (name, port);
    InputError when it is neither."""
    parts = split_authority(value)
    if parts is not None:
        name = parts[0]
        try:
            ipaddress.ip_address(name)
            return parts
        except ValueError:
            if _HOST_NAME.match(name) and not name.replace(".", "").isdigit():
                return parts
    raise InputError(f"--allow-host takes a host name or address, optionally with :PORT, got {clip(value)!r}")


def own_host_names() -> set[str]:
    """The loopback names and this machine's host names and addresses (for a wildcard bind)."""
    names = set(LOOPBACK_HOSTS)
    try:
        hostname = socket.gethostname()
        names.update({hostname.lower(), socket.getfqdn().lower()})
        names.update(a.lower() for a in socket.gethostbyname_ex(hostname)[2])
    except OSError as exc:
        logger.warning("cannot look up this machine's addresses (%s): only loopback names are served", exc)
    return {n for n in names if n}


@dataclass(frozen=True)
class HostPolicy:
    """The addresses the server answers to: (host, port) pairs; port None means the port the request
    came in on (the listening socket's)."""

    hosts: frozenset[tuple[str, int | None]]

    @classmethod
    def for_bind(
        cls, host: str = "127.0.0.1", port: int | None = None, allow_hosts: Iterable[str] = ()
    ) -> HostPolicy:
        """The policy of a server bound to ``host:port`` (port None: whichever it listens on), plus the
        ``allow_hosts`` (``NAME`` or ``NAME:PORT``) the user allowed."""
        bound = host.strip("[]").lower()
        if bound in LOOPBACK_HOSTS:
            names = set(LOOPBACK_HOSTS)
        elif bound in WILDCARD_HOSTS:
            names = own_host_names()
        else:
            names = {bound}
        pairs = {(n, port) for n in names}
        for value in allow_hosts:
            name, allowed_port = parse_allowed_host(value)
            pairs.add((name, port if allowed_port is None else allowed_port))
        return cls(frozenset(pairs))

    def allows(self, authority: str | None, server_port: int | None, default_port: int = 80) -> bool:
        """Whether ``authority`` (a Host header, or the host:port of an Origin) is one of ours."""
        parts = split_authority(authority) if authority else None
        if parts is None:
            return False
        name, port = parts
        port = default_port if port is None else port
        return any(n == name and (p if p is not None else server_port) == port for n, p in self.hosts)

    def allows_origin(self, origin: str | None, server_port: int | None) -> bool:
        """Whether ``origin`` (an Origin or Referer URL) is ``http(s)://`` one of our addresses."""
        if not origin:
            return False
        try:
            url = urlsplit(origin.strip())
        except ValueError:
            return False
        if url.scheme not in ("http", "https") or "@" in url.netloc:
            return False
        return self.allows(url.netloc, server_port, default_port=443 if url.scheme == "https" else 80)


class RequestGuard:
    """ASGI middleware applying the Host, Origin and body-size rules (module docstring) to every request
    before the app sees it."""

    def __init__(self, app: ASGIApp, policy: HostPolicy, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.policy = policy
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        server = scope.get("server") or (None, None)
        server_port = server[1]
        host = headers.get("host")
        if not self.policy.allows(host, server_port):
            logger.warning("refused a request for Host %r (DNS rebinding?)", clip(host or ""))
            await self._refuse_host(scope, receive, send, host)
            return
        if scope["type"] == "websocket":
            if not self.policy.allows_origin(headers.get("origin"), server_port):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        if method in STATE_CHANGING_METHODS:
            origin = headers.get("origin")
            source = origin if origin is not None else headers.get("referer")
            if not self.policy.allows_origin(source, server_port):
                what = "Origin" if origin is not None else "Referer" if source is not None else None
                logger.warning("refused %s %s from %s %r", method, scope["path"], what, clip(source or ""))
                message = (
                    f"{method} from another site ({what} {clip(source)!r}) is refused"
                    if what
                    else f"{method} without an Origin or Referer header is refused"
                )
                await JSONResponse({"error": message}, status_code=403)(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await JSONResponse({"error": "bad Content-Length"}, status_code=400)(scope, receive, send)
                return
            if int(length) > self.max_body:
                await self._too_large(scope, receive, send)
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse_host(self, scope: Scope, receive: Receive, send: Send, host: str | None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        text = (
            f"403 Forbidden: this server answers only to its own address, not to Host {clip(host or '')!r} "
            "(memvos ui --allow-host NAME adds a name)\n"
        )
        await PlainTextResponse(text, status_code=403)(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        logger.warning("refused %s %s: body above %d bytes", scope["method"], scope["path"], self.max_body)
        message = f"request body too large: at most {self.max_body} bytes"
        await JSONResponse({"error": message}, status_code=413, headers={"Connection": "close"})(
            scope, receive, send
        )


class Click(BaseModel):
    obj_id: int
    x: float
    y: float
    positive: bool = True


class ScribbleIn(BaseModel):
    obj_id: int
    points: list[list[float]]
    positive: bool = True


class BoxIn(BaseModel):
    obj_id: int
    box: list[float]


class ObjectIn(BaseModel):
    name: str | None = None
    color: str | None = None


class PropagateIn(BaseModel):
    frame: int | None = None
    direction: str = "both"


class ExportIn(BaseModel):
    overlay: bool = True


@dataclass
class PropagationJob:
    """State of the (single) background propagation."""

    running: bool = False
    done: int = 0
    total: int = 0
    error: str | None = None
    started: float = 0.0
    finished: float = 0.0
    runs: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)

    def status(self) -> dict:
        return {
            "running": self.running,
            "done": self.done,
            "total": self.total,
            "error": self.error,
            "runs": self.runs,
            "seconds": round((time.monotonic() if self.running else self.finished) - self.started, 2)
            if self.started
            else 0.0,
        }


def create_app(
    iv: InteractiveVideo,
    export_dir: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    allow_hosts: Iterable[str] = (),
) -> FastAPI:
    """The web app for ``iv`` (already ``init_state``-ed), to be served on ``host:port`` (port None:
    whichever port the listening socket has); it answers only to those addresses and to ``allow_hosts``
    (``NAME`` or ``NAME:PORT``), see the module docstring. Exports go to ``export_dir`` (default: the
    project folder's ``export/``)."""
    policy = HostPolicy.for_bind(host, port, allow_hosts)
    if export_dir is None:
        if iv.project is None:
            raise ValueError("give export_dir when the video has no project folder")
        export_dir = iv.project.root / "export"
    export_root = Path(export_dir)
    app = FastAPI(title="memvos interactive", docs_url=None, redoc_url=None)
    app.add_middleware(RequestGuard, policy=policy)
    job = PropagationJob()
    job_lock = threading.Lock()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": clip_echoes(message)}, status_code=status)

    @app.exception_handler(UnknownObjectError)
    async def _unknown(_: Request, exc: UnknownObjectError) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(_TooLarge)
    async def _too_large(_: Request, exc: _TooLarge) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return error(409, str(exc))

    @app.exception_handler(MemvosError)
    async def _input(_: Request, exc: MemvosError) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return error(422, "invalid request: " + "; ".join(parts))

    def frame_index(i: int) -> int:
        try:
            return iv.frames.check_index(i)  # type: ignore[union-attr]
        except InputError as exc:
            raise _NotFound(str(exc)) from None

    @app.exception_handler(_NotFound)
    async def _not_found(_: Request, exc: _NotFound) -> JSONResponse:
        return error(404, str(exc))

    def not_while_propagating() -> None:
        if job.running:
            raise ConflictError("a propagation is running; wait for it to finish")

    def state() -> dict:
        f = iv.frames
        assert f is not None
        with iv.lock:
            return {
                "video": {
                    "path": str(f.path),
                    "num_frames": len(f),
                    "width": f.width,
                    "height": f.height,
                    "fps": f.fps,
                    "names": f.names,
                },
                "objects": [o.to_dict() for o in iv.objects.all()],
                "annotated_frames": iv.annotated_frames(),
                "propagated_frames": sorted(i for i in range(len(f)) if iv.has_prediction(i)),
                "version": iv.version,
                "project": str(iv.project.root) if iv.project is not None else None,
                "propagation": job.status(),
                "trained_embeddings": iv.embedder.threshold is not None,
            }

    def check_point_budget(i: int, new_points: int) -> None:
        """400 when a stroke of ``new_points`` points, or the points of frame ``i`` with it, are too many."""
        if new_points > MAX_STROKE_POINTS:
            raise _TooLarge(f"too many points: {new_points} in one stroke, at most {MAX_STROKE_POINTS}")
        with iv.lock:
            have = sum(
                len(a.points) + sum(len(s.points) for s in a.scribbles)
                for a in iv.annotations.get(i, {}).values()
            )
        if have + new_points > MAX_FRAME_POINTS:
            raise _TooLarge(
                f"too many points on frame {i}: it has {have}, at most {MAX_FRAME_POINTS}; clear some first"
            )

    def frame_reply(i: int) -> dict:
        return {"frame": i, "version": iv.version, "annotated_frames": iv.annotated_frames()}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/state")
    def get_state() -> dict:
        return state()

    @app.get("/api/frames/{i}.jpg")
    def get_frame(i: int) -> Response:
        rgb = iv.frames[frame_index(i)]  # type: ignore[index]
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise InputError(f"cannot encode frame {i}")
        return Response(buf.tobytes(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/frames/{i}/labels")
    def get_labels(i: int) -> Response:
        labels = iv.labels(frame_index(i))
        return Response(
            labels.astype(np.uint8).tobytes(),
            media_type="application/octet-stream",
            headers={"Cache-Control": "no-store", "X-Version": str(iv.version)},
        )

    @app.get("/api/frames/{i}/annotations")
    def get_annotations(i: int) -> dict:
        i = frame_index(i)
        with iv.lock:
            per = iv.annotations.get(i, {})
            return {
                str(o): {**a.to_json(None), "mask": a.mask is not None}
                for o, a in sorted(per.items())
                if not a.is_empty()
            }

    @app.post("/api/frames/{i}/clicks")
    def post_click(i: int, body: Click) -> dict:
        not_while_propagating()
        i = frame_index(i)
        check_point_budget(i, 1)
        iv.add_new_points_or_box(i, body.obj_id, points=[[body.x, body.y]], labels=[int(body.positive)])
        return frame_reply(i)

    @app.post("/api/frames/{i}/scribbles")
    def post_scribble(i: int, body: ScribbleIn) -> dict:
        not_while_propagating()
        i = frame_index(i)
        check_point_budget(i, len(body.points))
        iv.add_scribble(i, body.obj_id, body.points, body.positive)
        return frame_reply(i)

    @app.post("/api/frames/{i}/box")
    def post_box(i: int, body: BoxIn) -> dict:
        not_while_propagating()
        i = frame_index(i)
        iv.add_new_points_or_box(i, body.obj_id, box=body.box)
        return frame_reply(i)

    @app.delete("/api/frames/{i}/annotations")
    def delete_annotations(i: int, obj_id: int | None = None) -> dict:
        not_while_propagating()
        i = frame_index(i)
        iv.clear_annotations(i, obj_id)
        return frame_reply(i)

    @app.post("/api/objects")
    def post_object(body: ObjectIn) -> dict:
        return iv.add_object(body.name, body.color).to_dict()

    @app.patch("/api/objects/{obj_id}")
    def patch_object(obj_id: int, body: ObjectIn) -> dict:
        return iv.update_object(obj_id, body.name, body.color).to_dict()

    @app.delete("/api/objects/{obj_id}")
    def delete_object(obj_id: int) -> dict:
        not_while_propagating()
        iv.remove_object(obj_id)
        return {"deleted": obj_id, "version": iv.version}

    @app.post("/api/propagate", status_code=202)
    def post_propagate(body: PropagateIn) -> dict:
        if body.direction not in ("forward", "backward", "both"):
            raise InputError(f"direction must be forward, backward or both, got {body.direction!r}")
        start = None if body.frame is None else frame_index(body.frame)
        if not iv.annotated_frames():
            raise InputError("nothing to propagate: click on an object first")
        with job_lock:
            not_while_propagating()
            job.running, job.done, job.total, job.error = True, 0, 0, None
            job.started, job.runs = time.monotonic(), job.runs + 1

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        def work() -> None:
            try:
                iv.propagate(start, body.direction, progress=progress)  # type: ignore[arg-type]
            except MemvosError as exc:
                job.error = str(exc)
            except Exception as exc:  # noqa: BLE001 - reported to the UI, logged with the traceback
                logger.exception("propagation failed")
                job.error = f"propagation failed: {exc}"
            finally:
                job.finished = time.monotonic()
                job.running = False

        job.thread = threading.Thread(target=work, name="memvos-propagate", daemon=True)
        job.thread.start()
        return job.status()

    @app.get("/api/propagate")
    def get_propagate() -> dict:
        return {**job.status(), "version": iv.version}

    @app.post("/api/export")
    def post_export(body: ExportIn) -> dict:
        not_while_propagating()
        masks_dir = export_root / "masks"
        n = iv.export_masks(masks_dir)
        overlay = None
        if body.overlay:
            overlay = str(iv.export_overlay(export_root / "overlay.mp4"))
        missing = [
            i for i in range(iv.num_frames) if not iv.has_prediction(i) and i not in iv.annotated_frames()
        ]
        return {"masks_dir": str(masks_dir), "frames": n, "overlay": overlay, "not_segmented": len(missing)}

    @app.get("/api/export/masks.zip")
    def get_masks_zip() -> Response:
        masks_dir = export_root / "masks"
        files = sorted(masks_dir.glob("*.png")) if masks_dir.is_dir() else []
        if not files:
            raise _NotFound("no exported masks yet: press Export first")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for f in files:
                zf.write(f, f"masks/{f.name}")
        return Response(
            buf.getvalue(),
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="masks.zip"'},
        )

    @app.get("/api/export/overlay.mp4")
    def get_overlay() -> FileResponse:
        path = export_root / "overlay.mp4"
        if not path.is_file():
            raise _NotFound("no exported overlay video yet: press Export with 'overlay video' ticked")
        return FileResponse(path, media_type="video/mp4", filename="overlay.mp4")

    app.state.iv = iv
    app.state.job = job
    return app
