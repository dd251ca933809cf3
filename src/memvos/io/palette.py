"""Colour palettes: the DAVIS 2017 annotation palette and a colour table for overlays.

``DAVIS_PALETTE`` is copied exactly from the palette stored in the DAVIS 2017 annotation PNGs
(e.g. ``schoolgirls/00000.png``): 22 colours from the usual bit-interleaving ("PASCAL VOC") colour map,
with 191 where that map has 192, followed by a grey ramp ``(i, i, i)`` for ``i = 22 … 255``.  It is *not*
the colour map that the DAVIS evaluation code generates (they differ in 240 entries), so it is hard-coded.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DAVIS_PALETTE", "OVERLAY_COLORS", "color_map", "palette_ids_for_colors"]

_DAVIS_HEAD = [
    (0, 0, 0),
    (128, 0, 0),
    (0, 128, 0),
    (128, 128, 0),
    (0, 0, 128),
    (128, 0, 128),
    (0, 128, 128),
    (128, 128, 128),
    (64, 0, 0),
    (191, 0, 0),
    (64, 128, 0),
    (191, 128, 0),
    (64, 0, 128),
    (191, 0, 128),
    (64, 128, 128),
    (191, 128, 128),
    (0, 64, 0),
    (128, 64, 0),
    (0, 191, 0),
    (128, 191, 0),
    (0, 64, 128),
    (128, 64, 128),
]

DAVIS_PALETTE: np.ndarray = np.array(
    _DAVIS_HEAD + [(i, i, i) for i in range(len(_DAVIS_HEAD), 256)], dtype=np.uint8
)
"""(256, 3) uint8: palette of the DAVIS 2017 annotation PNGs; entry ``k`` is the colour of object ``k``."""
DAVIS_PALETTE.setflags(write=False)


def color_map(n: int = 256) -> np.ndarray:
    """The standard bit-interleaving colour map (PASCAL VOC / DAVIS evaluation ``color_map``).

    Returns an (n, 3) uint8 array; entry 0 is black and every entry is distinct.
    """
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def _overlay_colors() -> np.ndarray:
    # DAVIS colours where the palette has distinct colours, the bit-interleaving map beyond (the DAVIS
    # palette turns into a grey ramp after id 21, which would make objects 22+ invisible in an overlay).
    table = color_map(256)
    table[: len(_DAVIS_HEAD)] = DAVIS_PALETTE[: len(_DAVIS_HEAD)]
    table.setflags(write=False)
    return table


OVERLAY_COLORS: np.ndarray = _overlay_colors()
"""(256, 3) uint8: colour of object ``k`` in overlays (DAVIS palette for ids 0-21, distinct colours after)."""


def palette_ids_for_colors(colors: np.ndarray) -> np.ndarray:
    """Map exact RGB colours to DAVIS palette ids.

    ``colors`` is (N, 3) uint8; returns (N,) int32 ids, -1 where the colour is not in the palette.  A colour
    that appears twice in the palette (e.g. (128, 128, 128) = ids 7 and 128) maps to the lower id.
    """
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    pal_keys = _rgb_key(DAVIS_PALETTE)
    lut: dict[int, int] = {}
    for idx in range(255, -1, -1):  # lowest id wins
        lut[int(pal_keys[idx])] = idx
    return np.array([lut.get(int(k), -1) for k in _rgb_key(colors)], dtype=np.int32)


def _rgb_key(colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) int64 key ``r << 16 | g << 8 | b``."""
    c = colors.astype(np.int64)
    return (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
