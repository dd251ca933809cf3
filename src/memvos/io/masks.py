"""Reading annotation masks: DAVIS 2017 palette PNGs, DAVIS 2016 grayscale 0/255, variants met in the wild.

Rules (each decoded mask becomes an (H, W) int32 array of object ids, 0 = background):

* 255 is **void** (DAVIS: "unknown", e.g. object borders) wherever it is a label: it is read as background
  and never tracked (the one exception is the binary DAVIS 2016 form below, where 255 *is* the object);
* palette PNG (mode ``P``/``PA``): the pixel value is the object id (DAVIS 2017);
* 1-bit image: white = object 1;
* grayscale (``L``, ``LA`` with the alpha dropped, 16-bit ``I;16``/``I``): values {0, 255} (or {0, 65535})
  mean a single object with id 1 (DAVIS 2016); otherwise the values are the ids (255 void), provided the
  image has few distinct values, all small ids.  A grayscale mask with many distinct values, or with large
  values in 1-254, is anti-aliased (or a re-saved JPEG) and is refused;
* RGB/RGBA (alpha dropped): an all-grey image follows the grayscale rules; otherwise every colour must be a
  DAVIS palette colour exactly and maps to its id;
* lossy formats (JPEG, WebP) are refused: their compression noise would become extra objects;
* a mask whose size differs from the frames by at most ``SIZE_TOLERANCE`` pixels in each dimension is padded
  with background / cropped at the bottom and right, with a warning; larger differences are an error.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from memvos.errors import InputError
from memvos.io.palette import palette_ids_for_colors

__all__ = ["LOSSY_FORMATS", "MAX_GRAY_IDS", "SIZE_TOLERANCE", "VOID_ID", "open_masks", "read_mask"]

log = logging.getLogger(__name__)

SIZE_TOLERANCE = 2
"""Largest size difference in pixels (per dimension) between a mask and its frame fixed up with a warning."""

MAX_GRAY_IDS = 64
"""A grayscale mask with more distinct values than this is taken for an anti-aliased image, not an id map."""

VOID_ID = 255
"""The DAVIS void label: read as background, never tracked, never written."""

#: Image formats whose compression changes pixel values: never id maps.
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "JPEG2000", "WEBP"})

_READ_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read one mask image as an (H, W) int32 array of object ids.

    ``size`` is the frame size ``(H, W)``: a mask within ``SIZE_TOLERANCE`` px of it is padded/cropped to it
    (with a WARNING naming the file); a larger difference raises ``InputError``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mask file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            ids = _decode(im, path)
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read mask {path}: {exc}") from exc
    if size is not None:
        ids = _fit_size(ids, size, path)
    return ids


def _refuse_lossy(im: Image.Image, path: Path) -> None:
    if (im.format or "").upper() in LOSSY_FORMATS:
        raise InputError(
            f"mask {path} is a {im.format} image: lossy compression turns its edges into stray object ids; "
            "save masks as PNG"
        )


def _drop_void(ids: np.ndarray) -> np.ndarray:
    """Void (255) pixels -> background (0), in place."""
    void = ids == VOID_ID
    if void.any():
        ids[void] = 0
    return ids


def _decode(im: Image.Image, path: Path) -> np.ndarray:
    """Pillow image -> (H, W) int32 ids, following the module rules."""
    _refuse_lossy(im, path)
    mode = im.mode
    if mode in ("P", "PA"):
        arr = np.asarray(im)
        if arr.ndim == 3:
            arr = arr[..., 0]
        return _drop_void(arr.astype(np.int32))
    if mode == "1":
        return np.asarray(im).astype(np.int32)
    if mode in ("L", "LA", "I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(im)
        if arr.ndim == 3:
            arr = arr[..., 0]  # LA: drop the alpha channel
        return _gray_ids(arr, path)
    if mode in ("RGB", "RGBA", "RGBX"):
        arr = np.asarray(im)[..., :3]
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return _gray_ids(arr[..., 0], path)
        return _rgb_ids(arr, path)
    raise InputError(f"mask {path} has unsupported image mode {mode}; save it as a palette PNG")


def _gray_ids(arr: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) integer grayscale -> (H, W) int32 ids."""
    arr = np.asarray(arr)
    values = np.unique(arr)
    full = 65535 if arr.dtype != np.uint8 and values[-1] > 255 else 255
    if np.isin(values, (0, full)).all():
        return (arr == full).astype(np.int32)  # DAVIS 2016: one object
    between = values[(values > 0) & (values < full)]
    if len(values) > MAX_GRAY_IDS or (values[-1] == full and int(between.max()) > MAX_GRAY_IDS):
        raise InputError(
            f"mask {path} is a grayscale image with {len(values)} distinct values from {int(values[0])} to "
            f"{int(values[-1])} (anti-aliased or lossy?); use 0/255 for one object, or one small value "
            f"per object (1-{MAX_GRAY_IDS}, 255 = void), or a palette PNG"
        )
    ids = arr.astype(np.int32)
    if full != VOID_ID:
        ids[ids == full] = 0  # 16-bit: the full value is void too
    return _drop_void(ids)


def _rgb_ids(arr: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) int32 DAVIS palette ids."""
    flat = arr.reshape(-1, 3).astype(np.int64)
    keys = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    uniq, inverse = np.unique(keys, return_inverse=True)
    colors = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1).astype(np.uint8)
    ids = palette_ids_for_colors(colors)
    missing = int((ids < 0).sum())
    if missing:
        raise InputError(
            f"mask {path} is an RGB image with {missing} colours not in the DAVIS palette (anti-aliased?); "
            "save it as a palette PNG"
        )
    return _drop_void(ids[inverse].reshape(arr.shape[:2]).astype(np.int32))


def _check_size(mask_hw: tuple[int, int], size: tuple[int, int], path: Path) -> bool:
    """True if the sizes differ but within tolerance; raises ``InputError`` beyond it."""
    (h, w), (fh, fw) = mask_hw, size
    if (h, w) == (fh, fw):
        return False
    if abs(h - fh) > SIZE_TOLERANCE or abs(w - fw) > SIZE_TOLERANCE:
        raise InputError(f"mask {path} is {w}x{h} pixels but the frames are {fw}x{fh}")
    return True


def _fit_size(ids: np.ndarray, size: tuple[int, int], path: Path) -> np.ndarray:
    """Pad with 0 / crop at the bottom-right so that ``ids`` is exactly ``size`` = (H, W)."""
    fh, fw = int(size[0]), int(size[1])
    h, w = ids.shape
    if not _check_size((h, w), (fh, fw), path):
        return ids
    log.warning(
        "mask %s is %dx%d pixels but the frames are %dx%d; padded/cropped at the bottom/right to fit",
        path,
        w,
        h,
        fw,
        fh,
    )
    out = np.zeros((fh, fw), dtype=ids.dtype)
    ch, cw = min(h, fh), min(w, fw)
    out[:ch, :cw] = ids[:ch, :cw]
    return out


def _digits(stem: str) -> int | None:
    """The integer value of an all-digit stem (``"00012"`` -> 12), else None."""
    return int(stem) if re.fullmatch(r"\d+", stem) else None


def open_masks(
    path: str | Path, frame_names: list[str], size: tuple[int, int] | None = None
) -> dict[str, Path]:
    """Locate the annotation masks for a video; returns ``{frame stem: mask path}`` in frame order.

    ``path`` is one image (the mask of the first frame) or a folder of PNGs named like the frames (sparse: any
    subset of frames; an all-digit stem also matches by number, e.g. ``5.png`` -> frame ``00005``).  Only the
    headers are read: unreadable files and sizes beyond ``SIZE_TOLERANCE`` of ``size`` = (H, W) raise
    ``InputError`` here, before any processing starts.
    """
    path = Path(path)
    if not frame_names:
        raise InputError(f"no frames to match the masks in {path} against")
    if not path.exists():
        raise InputError(f"mask path not found: {path}")
    found: dict[str, Path] = {}
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
        if not files:
            raise InputError(f"no PNG masks in folder {path}")
        exact = set(frame_names)
        by_number: dict[int, str] = {}
        for name in frame_names:
            num = _digits(name)
            if num is not None:
                by_number.setdefault(num, name)
        for f in files:
            stem = f.stem
            if stem in exact:
                name = stem
            elif _digits(stem) is not None and _digits(stem) in by_number:
                name = by_number[_digits(stem)]  # type: ignore[index]
            else:
                raise InputError(
                    f"mask {f} matches no frame (frames are named {frame_names[0]} … {frame_names[-1]})"
                )
            if name in found:
                raise InputError(f"masks {found[name]} and {f} are both for frame {name}")
            found[name] = f
    else:
        found[frame_names[0]] = path
    for f in found.values():
        _check_header(f, size)
    order = {n: i for i, n in enumerate(frame_names)}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


def _check_header(path: Path, size: tuple[int, int] | None) -> None:
    """Open ``path``'s header only: InputError if unreadable or too far from ``size`` = (H, W)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            _refuse_lossy(im, path)
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read mask {path}: {exc}") from exc
    if size is not None:
        _check_size((h, w), (int(size[0]), int(size[1])), path)
