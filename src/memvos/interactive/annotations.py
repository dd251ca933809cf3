"""What the user said on each frame (clicks, scribbles, a box, a mask), the objects, and their persistence.

A project folder holds ``project.json`` (objects and annotations, written atomically), ``masks/`` (masks
given with ``add_new_mask``) and ``predictions/`` (propagated label maps), both DAVIS palette PNGs written
atomically by :func:`memvos.io.writers.write_palette_png`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memvos.errors import InputError
from memvos.io.atomic import atomic_write_text
from memvos.io.masks import read_mask
from memvos.io.palette import OVERLAY_COLORS
from memvos.io.writers import write_palette_png

logger = logging.getLogger(__name__)

PROJECT_FILE = "project.json"
PROJECT_FORMAT = "memvos-interactive-1"
MAX_OBJECT_ID = 255  # label maps are palette PNGs
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


class UnknownObjectError(InputError):
    """An object id that is not (or no longer) in the project."""


@dataclass
class ObjectInfo:
    """An object the user segments: id (1..255, the pixel value of exported masks), name and UI colour."""

    id: int
    name: str
    color: str

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "color": self.color}


def default_color(obj_id: int) -> str:
    r, g, b = (int(c) for c in OVERLAY_COLORS[obj_id % 256])
    return f"#{r:02x}{g:02x}{b:02x}"


def _check_color(color: str) -> str:
    if not isinstance(color, str) or not _COLOR.match(color):
        raise InputError(f"colour must look like '#rrggbb', got {color!r}")
    return color.lower()


class ObjectRegistry:
    """Object ids -> :class:`ObjectInfo`; ids are handed out as the smallest free id."""

    def __init__(self) -> None:
        self._objects: dict[int, ObjectInfo] = {}

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    @property
    def ids(self) -> list[int]:
        return sorted(self._objects)

    def all(self) -> list[ObjectInfo]:
        return [self._objects[i] for i in self.ids]

    def get(self, obj_id: int) -> ObjectInfo:
        try:
            return self._objects[int(obj_id)]
        except (KeyError, TypeError, ValueError):
            raise UnknownObjectError(
                f"unknown object {obj_id!r} (objects: {self.ids or 'none'}); add it first"
            ) from None

    def add(self, name: str | None = None, color: str | None = None, obj_id: int | None = None) -> ObjectInfo:
        if obj_id is None:
            obj_id = next((i for i in range(1, MAX_OBJECT_ID + 1) if i not in self._objects), None)
            if obj_id is None:
                raise InputError(f"at most {MAX_OBJECT_ID} objects")
        obj_id = int(obj_id)
        if not 1 <= obj_id <= MAX_OBJECT_ID:
            raise InputError(f"object ids are 1..{MAX_OBJECT_ID}, got {obj_id}")
        if obj_id in self._objects:
            raise InputError(f"object {obj_id} already exists")
        info = ObjectInfo(
            obj_id,
            _check_name(name) if name is not None else f"object {obj_id}",
            _check_color(color) if color is not None else default_color(obj_id),
        )
        self._objects[obj_id] = info
        return info

    def update(self, obj_id: int, name: str | None = None, color: str | None = None) -> ObjectInfo:
        info = self.get(obj_id)
        if name is not None:
            info.name = _check_name(name)
        if color is not None:
            info.color = _check_color(color)
        return info

    def remove(self, obj_id: int) -> ObjectInfo:
        info = self.get(obj_id)
        del self._objects[info.id]
        return info


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InputError("object names must be 1-100 characters")
    return name.strip()


@dataclass
class Scribble:
    """A polyline (K, 2) of (x, y) pixel coordinates; positive: belongs to the object, else not."""

    points: list[tuple[float, float]]
    positive: bool = True


@dataclass
class ObjectAnnotation:
    """What the user said about one object on one frame (coordinates in pixels of the original frame)."""

    points: list[tuple[float, float, int]] = field(default_factory=list)  # (x, y, 1 positive / 0 negative)
    scribbles: list[Scribble] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1)
    mask: np.ndarray | None = None  # (H, W) bool, from add_new_mask
    mask_saved: bool = field(default=False, compare=False)  # the mask is in the project folder

    def is_empty(self) -> bool:
        return not self.points and not self.scribbles and self.box is None and self.mask is None

    def uses_retrieval(self) -> bool:
        return bool(self.points or self.scribbles or self.box is not None)

    def to_json(self, mask_file: str | None) -> dict:
        return {
            "points": [[float(x), float(y), int(lab)] for x, y, lab in self.points],
            "scribbles": [
                {"points": [[float(x), float(y)] for x, y in s.points], "positive": s.positive}
                for s in self.scribbles
            ],
            "box": None if self.box is None else [float(v) for v in self.box],
            "mask": mask_file,
        }


def check_point(x: float, y: float, hw: tuple[int, int], what: str = "click") -> tuple[float, float]:
    """A point inside an (H, W) frame, as floats; else InputError."""
    try:
        xf, yf = float(x), float(y)
    except (TypeError, ValueError):
        raise InputError(f"{what} coordinates must be numbers, got ({x!r}, {y!r})") from None
    h, w = hw
    if not (math.isfinite(xf) and math.isfinite(yf)) or not (0 <= xf < w and 0 <= yf < h):
        raise InputError(f"{what} at ({x}, {y}) is outside the {w}x{h} frame")
    return xf, yf


def check_box(box: object, hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in any corner order, clipped to the frame; InputError if empty or outside."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"a box is [x0, y0, x1, y1], got {box!r}") from None
    h, w = hw
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InputError(f"box {box!r} has non-finite coordinates")
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
    if cx1 - cx0 < 2 or cy1 - cy0 < 2:
        raise InputError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or outside the {w}x{h} frame")
    return cx0, cy0, cx1, cy1


# ---------------------------------------------------------------------------- persistence
class ProjectStore:
    """Reads and writes a project folder (see module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            (self.root / "masks").mkdir(parents=True, exist_ok=True)
            (self.root / "predictions").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create project folder {self.root}: {exc}") from exc

    @property
    def file(self) -> Path:
        return self.root / PROJECT_FILE

    def exists(self) -> bool:
        return self.file.is_file()

    def save(
        self,
        video: dict,
        objects: ObjectRegistry,
        annotations: dict[int, dict[int, ObjectAnnotation]],
        names: list[str],
    ) -> None:
        """Write masks not yet on disk, then ``project.json`` atomically."""
        ann_json: dict[str, dict[str, dict]] = {}
        for frame, per_obj in sorted(annotations.items()):
            entry = {}
            for oid, ann in sorted(per_obj.items()):
                if ann.is_empty():
                    continue
                mask_file = None
                if ann.mask is not None:
                    mask_file = f"masks/{names[frame]}_{oid}.png"
                    path = self.root / mask_file
                    if not ann.mask_saved or not path.is_file():
                        write_palette_png(path, ann.mask.astype(np.uint8) * oid)
                        ann.mask_saved = True
                entry[str(oid)] = ann.to_json(mask_file)
            if entry:
                ann_json[str(frame)] = entry
        data = {
            "format": PROJECT_FORMAT,
            "video": video,
            "objects": [o.to_dict() for o in objects.all()],
            "annotations": ann_json,
        }
        try:
            atomic_write_text(self.file, json.dumps(data, indent=1))
        except OSError as exc:
            raise InputError(f"cannot save project {self.file}: {exc}") from exc

    def load(
        self, hw: tuple[int, int]
    ) -> tuple[dict, ObjectRegistry, dict[int, dict[int, ObjectAnnotation]]]:
        """(video info, objects, annotations) from ``project.json``; InputError if it cannot be used."""
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            if data.get("format") != PROJECT_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {PROJECT_FORMAT!r}")
            objects = ObjectRegistry()
            for o in data["objects"]:
                objects.add(o["name"], o["color"], obj_id=int(o["id"]))
            annotations: dict[int, dict[int, ObjectAnnotation]] = {}
            for frame, per_obj in data["annotations"].items():
                for oid, a in per_obj.items():
                    mask = None
                    if a.get("mask"):
                        mask = read_mask(self.root / a["mask"], hw) == int(oid)
                    ann = ObjectAnnotation(
                        points=[(float(x), float(y), int(lab)) for x, y, lab in a.get("points", [])],
                        scribbles=[
                            Scribble([(float(x), float(y)) for x, y in s["points"]], bool(s["positive"]))
                            for s in a.get("scribbles", [])
                        ],
                        box=None if a.get("box") is None else tuple(float(v) for v in a["box"]),
                        mask=mask,
                        mask_saved=mask is not None,
                    )
                    annotations.setdefault(int(frame), {})[int(oid)] = ann
        except InputError as exc:
            raise InputError(f"cannot restore project {self.file}: {exc}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot restore project {self.file}: {exc}") from exc
        return data.get("video", {}), objects, annotations

    def prediction_path(self, stem: str) -> Path:
        return self.root / "predictions" / f"{stem}.png"

    def save_prediction(self, stem: str, labels: np.ndarray) -> None:
        write_palette_png(self.prediction_path(stem), labels)

    def load_predictions(self, names: list[str], hw: tuple[int, int]) -> dict[int, np.ndarray]:
        out = {}
        for i, stem in enumerate(names):
            p = self.prediction_path(stem)
            if p.is_file():
                try:
                    out[i] = read_mask(p, hw).astype(np.uint8)
                except InputError as exc:
                    logger.warning("ignoring unreadable prediction %s: %s", p, exc)
        return out

    def clear_predictions(self) -> None:
        for p in (self.root / "predictions").glob("*.png"):
            p.unlink(missing_ok=True)
