"""Interactive video object segmentation (shape of SAM 2's video predictor).

Example::

    iv = InteractiveVideo(load_model("memvos-lite")).init_state("video.mp4", project_dir="proj")
    car = iv.add_object("car")
    iv.add_new_points_or_box(frame_idx=0, obj_id=car.id, points=[[120, 80]], labels=[1])
    iv.add_new_points_or_box(frame_idx=0, obj_id=car.id, box=[100, 60, 200, 140])
    for frame_idx, obj_ids, labels in iv.propagate_in_video(0):          # forward from frame 0
        ...                                                              # labels: (H, W) int32 ids
    iv.add_new_points_or_box(frame_idx=40, obj_id=car.id, points=[[10, 10]], labels=[0])  # correction
    iv.propagate(40, direction="both")                                   # from 40 forward and backward

Clicks, scribbles and boxes become a mask by nearest-neighbour retrieval in the pixel-embedding space of
:class:`memvos.interactive.embedding.PixelEmbedder` (embeddings are computed once per frame and kept in an
LRU cache; a new click re-runs the retrieval only). To propagate, an
:class:`memvos.inference.session.InferenceSession` runs over the frames in order (or in reverse); every
annotated frame is a permanent memory entry: those outside the pass are fed to the session first, those
inside it when the pass reaches them. With a project folder, every change is saved at once (atomically)
and restored by the next ``init_state`` on the same folder.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from memvos.errors import InputError
from memvos.inference.session import InferenceSession
from memvos.interactive.annotations import (
    ObjectAnnotation,
    ObjectInfo,
    ObjectRegistry,
    ProjectStore,
    Scribble,
    check_box,
    check_point,
)
from memvos.interactive.embedding import PixelEmbedder, default_embedder
from memvos.interactive.frames import FrameStore
from memvos.interactive.retrieval import references, retrieve
from memvos.io.overlay import OverlayWriter
from memvos.io.writers import MaskWriter

logger = logging.getLogger(__name__)

Direction = Literal["forward", "backward", "both"]
CLICK_RADIUS = 2  # a click labels the (2r+1)^2 pixels around it as it says (positive: the object)


class InteractiveVideo:
    """Objects, per-frame annotations, retrieval and propagation for one video (see module docstring).

    Args:
        model: the propagation :class:`memvos.models.base.MemoryNetwork` (weights loaded).
        embedder: pixel embedder for clicks/scribbles/boxes (default: the shipped PML weights, sharing
            ``model``'s backbone, or an untrained head when they are missing).
        device: torch device for both.
        embedding_cache: frames whose embeddings are kept (LRU).
        session_options: keyword arguments of :class:`InferenceSession` (``memory_read``, ``size``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        embedder: PixelEmbedder | None = None,
        *,
        device: str = "cpu",
        embedding_cache: int = 32,
        session_options: dict | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.embedder = (embedder if embedder is not None else default_embedder(model)).to(self.device).eval()
        self.session_options = {"precision": "auto", **(session_options or {}), "device": str(self.device)}
        self.lock = threading.RLock()
        self.frames: FrameStore | None = None
        self.project: ProjectStore | None = None
        self.objects = ObjectRegistry()
        self.annotations: dict[int, dict[int, ObjectAnnotation]] = {}
        self.version = 0  # bumped by every change, so a UI knows when to refresh
        self._predicted: dict[int, np.ndarray] = {}  # frame -> (H, W) uint8 propagated labels
        self._user_masks: dict[int, np.ndarray] = {}  # frame -> (H, W) int32 labels from annotations
        self._embeddings: OrderedDict[int, Tensor] = OrderedDict()
        self._embedding_cache = max(1, embedding_cache)

    # ------------------------------------------------------------------ state
    def init_state(
        self, video: str | Path | FrameStore, project_dir: str | Path | None = None
    ) -> InteractiveVideo:
        """Open ``video`` (frame folder, video file or :class:`FrameStore`); restore ``project_dir`` if it
        holds a project. Raises InputError for a video that cannot be opened/decoded or a project that
        belongs to another video."""
        with self.lock:
            project = ProjectStore(project_dir) if project_dir is not None else None
            cache_dir = project.root / "frames" if project is not None else None
            frames = video if isinstance(video, FrameStore) else FrameStore(video, cache_dir=cache_dir)
            self.close()
            self.frames, self.project = frames, project
            self.objects, self.annotations = ObjectRegistry(), {}
            self._predicted, self._user_masks, self._embeddings = {}, {}, OrderedDict()
            if project is not None and project.exists():
                self._restore()
            elif project is not None:
                self._save()
            self.version += 1
        return self

    def _video_info(self) -> dict:
        f = self._frames()
        return {"path": str(f.path), "num_frames": len(f), "width": f.width, "height": f.height}

    def _restore(self) -> None:
        assert self.project is not None
        f = self._frames()
        info, objects, annotations = self.project.load((f.height, f.width))
        mine = self._video_info()
        if any(info.get(k) != mine[k] for k in ("num_frames", "width", "height")):
            raise InputError(
                f"project {self.project.root} belongs to another video ({info.get('path')}: "
                f"{info.get('num_frames')} frames {info.get('width')}x{info.get('height')}), this one has "
                f"{mine['num_frames']} frames {mine['width']}x{mine['height']}; use another --project folder"
            )
        if info.get("path") != mine["path"]:
            logger.warning(
                "project %s was made for %s, now used with %s",
                self.project.root,
                info.get("path"),
                mine["path"],
            )
        self.objects = objects
        self.annotations = {
            i: {o: a for o, a in per.items() if o in objects} for i, per in annotations.items() if i < len(f)
        }
        self._predicted = self.project.load_predictions(f.names, (f.height, f.width))
        n_ann = sum(len(v) for v in self.annotations.values())
        logger.info("restored project %s: %d objects, %d annotations", self.project.root, len(objects), n_ann)

    def _save(self) -> None:
        if self.project is not None:
            self.project.save(self._video_info(), self.objects, self.annotations, self._frames().names)

    def _changed(self, frame_idx: int | None = None) -> None:
        if frame_idx is not None:
            self._user_masks.pop(frame_idx, None)
        else:
            self._user_masks.clear()
        self.version += 1
        self._save()

    def _frames(self) -> FrameStore:
        if self.frames is None:
            raise InputError("no video: call init_state(video) first")
        return self.frames

    def close(self) -> None:
        if self.frames is not None:
            self.frames.close()

    @property
    def num_frames(self) -> int:
        return len(self._frames())

    @property
    def frame_hw(self) -> tuple[int, int]:
        f = self._frames()
        return f.height, f.width

    def reset_state(self) -> None:
        """Forget all annotations and propagated masks (objects stay)."""
        with self.lock:
            self.annotations.clear()
            self._predicted.clear()
            if self.project is not None:
                self.project.clear_predictions()
            self._changed()

    # ------------------------------------------------------------------ objects
    def add_object(
        self, name: str | None = None, color: str | None = None, obj_id: int | None = None
    ) -> ObjectInfo:
        with self.lock:
            info = self.objects.add(name, color, obj_id)
            self._changed(None)
            return info

    def update_object(self, obj_id: int, name: str | None = None, color: str | None = None) -> ObjectInfo:
        with self.lock:
            info = self.objects.update(obj_id, name, color)
            self.version += 1
            self._save()
            return info

    def remove_object(self, obj_id: int) -> None:
        """Delete an object, its annotations on every frame and its propagated masks."""
        with self.lock:
            info = self.objects.remove(obj_id)
            for per in self.annotations.values():
                per.pop(info.id, None)
            for i, labels in self._predicted.items():
                if (labels == info.id).any():
                    labels[labels == info.id] = 0
                    if self.project is not None:
                        self.project.save_prediction(self._frames().names[i], labels)
            self._changed(None)

    # ------------------------------------------------------------------ annotations
    def _annotation(self, frame_idx: int, obj_id: int, embed: bool = True) -> tuple[int, ObjectAnnotation]:
        """The annotation to change, after every check that can fail (index, object, the frame decodes)."""
        i = self._frames().check_index(frame_idx)
        info = self.objects.get(obj_id)
        if embed:
            self.embedding(i)  # decodes the frame: a frame that fails to decode changes nothing
        return i, self.annotations.setdefault(i, {}).setdefault(info.id, ObjectAnnotation())

    def add_new_points_or_box(
        self,
        frame_idx: int,
        obj_id: int,
        points: Sequence[Sequence[float]] | None = None,
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        clear_old_points: bool = False,
    ) -> tuple[int, list[int], np.ndarray]:
        """Add clicks ``points`` (K, 2) of (x, y) pixels with ``labels`` (K,) 1 = positive / 0 = negative,
        and/or a ``box`` (x0, y0, x1, y1), for object ``obj_id`` on ``frame_idx``.

        Returns (frame_idx, object ids, (H, W) int32 labels of the frame). Raises InputError (nothing is
        changed) for an unknown object, a click outside the frame, or mismatched points/labels.
        """
        with self.lock:
            hw = self.frame_hw
            pts: list[tuple[float, float, int]] = []
            if points is not None:
                points = [list(p) for p in points]
                labels = [1] * len(points) if labels is None else list(labels)
                if len(labels) != len(points):
                    raise InputError(f"{len(points)} points but {len(labels)} labels")
                for p, lab in zip(points, labels, strict=True):
                    if len(p) != 2:
                        raise InputError(f"a point is [x, y], got {p!r}")
                    if lab not in (0, 1, True, False):
                        raise InputError(f"click labels are 1 (positive) or 0 (negative), got {lab!r}")
                    x, y = check_point(p[0], p[1], hw)
                    pts.append((x, y, int(lab)))
            checked_box = check_box(box, hw) if box is not None else None
            if not pts and checked_box is None and not clear_old_points:
                raise InputError("give points or a box")
            i, ann = self._annotation(frame_idx, obj_id)
            if clear_old_points:
                ann.points, ann.scribbles, ann.box = [], [], None
            ann.points.extend(pts)
            if checked_box is not None:
                ann.box = checked_box
            self._changed(i)
            return i, self.objects.ids, self.labels(i)

    def add_scribble(
        self, frame_idx: int, obj_id: int, points: Sequence[Sequence[float]], positive: bool = True
    ) -> tuple[int, list[int], np.ndarray]:
        """Add a scribble: a polyline (K, 2) of (x, y) pixels on ``frame_idx``, positive or negative."""
        with self.lock:
            hw = self.frame_hw
            pts = []
            for p in points:
                if len(p) != 2:
                    raise InputError(f"a scribble point is [x, y], got {p!r}")
                pts.append(check_point(p[0], p[1], hw, what="scribble point"))
            if not pts:
                raise InputError("a scribble needs at least one point")
            i, ann = self._annotation(frame_idx, obj_id)
            ann.scribbles.append(Scribble(pts, bool(positive)))
            self._changed(i)
            return i, self.objects.ids, self.labels(i)

    def add_new_mask(
        self, frame_idx: int, obj_id: int, mask: np.ndarray
    ) -> tuple[int, list[int], np.ndarray]:
        """Give the (H, W) mask (bool / 0-1) of ``obj_id`` on ``frame_idx``; replaces its clicks there."""
        with self.lock:
            m = np.asarray(mask)
            if m.shape != self.frame_hw:
                h, w = self.frame_hw
                raise InputError(
                    f"mask is {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]}, frame is {w}x{h}"
                )
            i, ann = self._annotation(frame_idx, obj_id, embed=False)
            ann.points, ann.scribbles, ann.box = [], [], None
            ann.mask, ann.mask_saved = m.astype(bool), False
            self._changed(i)
            return i, self.objects.ids, self.labels(i)

    def clear_annotations(self, frame_idx: int, obj_id: int | None = None) -> None:
        """Remove the annotations of ``obj_id`` (default: of every object) on ``frame_idx``."""
        with self.lock:
            i = self._frames().check_index(frame_idx)
            if obj_id is None:
                self.annotations.pop(i, None)
            else:
                info = self.objects.get(obj_id)
                self.annotations.get(i, {}).pop(info.id, None)
            self._changed(i)

    def annotated_frames(self) -> list[int]:
        with self.lock:
            return sorted(
                i for i, per in self.annotations.items() if any(not a.is_empty() for a in per.values())
            )

    def frame_objects(self, frame_idx: int) -> list[int]:
        """Objects annotated on ``frame_idx``."""
        per = self.annotations.get(frame_idx, {})
        return sorted(o for o, a in per.items() if not a.is_empty())

    # ------------------------------------------------------------------ retrieval
    def embedding(self, frame_idx: int) -> Tensor:
        """(D, ceil(H/8), ceil(W/8)) pixel embeddings of a frame (computed once, LRU-cached)."""
        i = self._frames().check_index(frame_idx)
        with self.lock:
            if i in self._embeddings:
                self._embeddings.move_to_end(i)
                return self._embeddings[i]
        emb = self.embedder.embed_frame(self._frames()[i]).cpu()
        with self.lock:
            self._embeddings[i] = emb
            while len(self._embeddings) > self._embedding_cache:
                self._embeddings.popitem(last=False)
        return emb

    def annotation_mask(self, frame_idx: int) -> np.ndarray | None:
        """(H, W) int32 labels the annotations of ``frame_idx`` give (None: no annotation there)."""
        with self.lock:
            i = self._frames().check_index(frame_idx)
            ids = self.frame_objects(i)
            if not ids:
                return None
            if i in self._user_masks:
                return self._user_masks[i]
            per = self.annotations[i]
            hw = self.frame_hw
            grid = (-(-hw[0] // 8), -(-hw[1] // 8))
            refs = [references(o, per[o], grid) for o in ids]
            labels = np.zeros(hw, np.int32)
            if any(r.retrieve for r in refs):
                labels = retrieve(self.embedding(i), refs, hw, self.embedder.threshold)
            for o in ids:  # objects given by a mask alone keep it exactly
                if not per[o].uses_retrieval() and per[o].mask is not None:
                    labels[per[o].mask] = o
            for o in ids:  # the pixels the user clicked are what they said, whatever the retrieval
                for x, y, positive in per[o].points:
                    r0, r1 = max(0, int(y) - CLICK_RADIUS), min(hw[0], int(y) + CLICK_RADIUS + 1)
                    c0, c1 = max(0, int(x) - CLICK_RADIUS), min(hw[1], int(x) + CLICK_RADIUS + 1)
                    patch = labels[r0:r1, c0:c1]
                    if positive:
                        patch[:] = o
                    else:
                        patch[patch == o] = 0
            self._user_masks[i] = labels
            return labels

    def labels(self, frame_idx: int) -> np.ndarray:
        """(H, W) int32 current labels of a frame: the annotated objects from the annotations, the others
        from the last propagation (outside the annotated pixels)."""
        with self.lock:
            i = self._frames().check_index(frame_idx)
            pred = self._predicted.get(i)
            out = np.zeros(self.frame_hw, np.int32) if pred is None else pred.astype(np.int32)
            user = self.annotation_mask(i)
            if user is not None:
                out[np.isin(out, self.frame_objects(i))] = 0
                out[user > 0] = user[user > 0]
            return out

    def has_prediction(self, frame_idx: int) -> bool:
        return frame_idx in self._predicted

    # ------------------------------------------------------------------ propagation
    def propagate_in_video(
        self,
        start_frame_idx: int | None = None,
        reverse: bool = False,
        max_frame_num_to_track: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, list[int], np.ndarray]]:
        """Propagate from ``start_frame_idx`` (default: the first annotated frame, the last one when
        ``reverse``) to the end of the video (to frame 0 when ``reverse``), yielding
        (frame_idx, object ids, (H, W) int32 labels) per frame; results are stored (and saved)."""
        with self.lock:
            annotated = self.annotated_frames()
            if not annotated:
                raise InputError("nothing to propagate: annotate an object on some frame first")
            n = self.num_frames
            start = (
                (annotated[-1] if reverse else annotated[0]) if start_frame_idx is None else start_frame_idx
            )
            start = self._frames().check_index(start)
            order = list(range(start, -1, -1)) if reverse else list(range(start, n))
            if max_frame_num_to_track is not None:
                order = order[: max_frame_num_to_track + 1]
            given = {i: (self.annotation_mask(i).copy(), self.frame_objects(i)) for i in annotated}
        in_pass = set(order)
        # annotated frames outside the pass enter memory first, the closest to the start last
        primes = sorted((i for i in given if i not in in_pass), key=lambda i: -abs(i - start))
        session = InferenceSession(self.model, **self.session_options)
        frames = self._frames()
        for i in primes:
            mask, ids = given[i]
            session.step(frames[i], mask=mask, objects=ids)
        for i in order:
            if should_stop is not None and should_stop():
                return
            mask, ids = given.get(i, (None, None))
            result = session.step(frames[i], mask=mask, objects=ids)
            with self.lock:
                labels = result.labels
                labels = np.where(np.isin(labels, self.objects.ids), labels, 0).astype(np.uint8)
                self._predicted[i] = labels
                if self.project is not None:
                    self.project.save_prediction(frames.names[i], labels)
                self.version += 1
                out = self.labels(i)
            yield i, self.objects.ids, out

    def propagate(
        self,
        start_frame_idx: int | None = None,
        direction: Direction = "both",
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> int:
        """Propagate forward and/or backward from ``start_frame_idx`` (default: the first annotated frame);
        ``progress(done, total)`` is called after each frame. Returns the number of frames segmented."""
        if direction not in ("forward", "backward", "both"):
            raise InputError(f"direction must be forward, backward or both, got {direction!r}")
        with self.lock:
            annotated = self.annotated_frames()
            if not annotated:
                raise InputError("nothing to propagate: annotate an object on some frame first")
            start = annotated[0] if start_frame_idx is None else self._frames().check_index(start_frame_idx)
            n = self.num_frames
        passes = []
        if direction in ("forward", "both"):
            passes.append((False, n - start))
        if direction in ("backward", "both") and (start > 0 or direction == "backward"):
            passes.append((True, start + 1))
        total = sum(k for _, k in passes)
        done = 0
        for reverse, _ in passes:
            for _ in self.propagate_in_video(start, reverse=reverse, should_stop=should_stop):
                done += 1
                if progress is not None:
                    progress(done, total)
        return done

    # ------------------------------------------------------------------ export
    def export_masks(self, out_dir: str | Path) -> int:
        """Write ``out_dir/<frame stem>.png`` (DAVIS palette, pixel = object id) for every frame."""
        frames = self._frames()
        with MaskWriter(out_dir) as writer:
            for i, stem in enumerate(frames.names):
                writer.submit(stem, self.labels(i))
        return len(frames)

    def export_overlay(self, path: str | Path, alpha: float = 0.5) -> Path:
        """Write an overlay video (object colours of :mod:`memvos.io.palette` blended over the frames)."""
        frames = self._frames()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with OverlayWriter(path, fps=frames.fps, alpha=alpha) as writer:
            for i in range(len(frames)):
                writer.write(frames[i], self.labels(i))
        return path
