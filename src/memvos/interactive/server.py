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
"""

from __future__ import annotations

import io
import logging
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from memvos.errors import InputError, MemvosError
from memvos.interactive.annotations import UnknownObjectError
from memvos.interactive.video import InteractiveVideo

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


class ConflictError(MemvosError):
    """The request conflicts with work in progress (a propagation)."""


class _NotFound(MemvosError):
    """A frame or file that does not exist (HTTP 404)."""


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


def create_app(iv: InteractiveVideo, export_dir: str | Path | None = None) -> FastAPI:
    """The web app for ``iv`` (already ``init_state``-ed). Exports go to ``export_dir`` (default: the
    project folder's ``export/``)."""
    if export_dir is None:
        if iv.project is None:
            raise ValueError("give export_dir when the video has no project folder")
        export_dir = iv.project.root / "export"
    export_root = Path(export_dir)
    app = FastAPI(title="memvos interactive", docs_url=None, redoc_url=None)
    job = PropagationJob()
    job_lock = threading.Lock()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    @app.exception_handler(UnknownObjectError)
    async def _unknown(_: Request, exc: UnknownObjectError) -> JSONResponse:
        return error(404, str(exc))

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
        iv.add_new_points_or_box(i, body.obj_id, points=[[body.x, body.y]], labels=[int(body.positive)])
        return frame_reply(i)

    @app.post("/api/frames/{i}/scribbles")
    def post_scribble(i: int, body: ScribbleIn) -> dict:
        not_while_propagating()
        i = frame_index(i)
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
