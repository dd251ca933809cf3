"""memvos.io: frames in (folders, video files), masks in (palette/grayscale/RGB PNGs), masks/overlays out."""

from memvos.io.frames import FrameSource, natural_key, open_frames
from memvos.io.masks import open_masks, read_mask
from memvos.io.overlay import OverlayWriter, overlay
from memvos.io.palette import DAVIS_PALETTE, OVERLAY_COLORS
from memvos.io.writers import MaskWriter, write_palette_png

__all__ = [
    "DAVIS_PALETTE",
    "OVERLAY_COLORS",
    "FrameSource",
    "MaskWriter",
    "OverlayWriter",
    "natural_key",
    "open_frames",
    "open_masks",
    "overlay",
    "read_mask",
    "write_palette_png",
]
