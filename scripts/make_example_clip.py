"""Generate the example clip shipped in ``examples/horse-and-coin/`` from photos bundled with scikit-image.

A camera pans and zooms slowly over a photo of an espresso cup on a wooden table (``skimage.data.coffee``);
a horse (the ``skimage.data.horse`` silhouette, textured with the fur of ``skimage.data.chelsea``) walks
left to right and grows as it approaches, while a Greek coin cut from ``skimage.data.coins`` rolls right to
left in front of it, partly occluding it.  Because the objects are composited, their masks are known
exactly: ``gt/`` holds every frame's ground truth (DAVIS palette PNGs: 1 = horse, 2 = coin) and ``mask.png``
the first frame's, the input a semi-supervised VOS method gets.

Run: ``.venv/bin/python scripts/make_example_clip.py`` (writes ``examples/horse-and-coin``; deterministic).
Needs scikit-image (the ``dev`` extra); the library itself does not.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
try:
    from memvos.io.writers import write_palette_png
except ModuleNotFoundError:  # running from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
    from memvos.io.writers import write_palette_png

log = logging.getLogger("make_example_clip")

NAME = "horse-and-coin"
SEED = 20240607


def _affine(scale: float, angle_deg: float, center_src: tuple[float, float], center_dst: tuple[float, float]):
    """2x3 matrix mapping src -> dst: rotate by ``angle_deg`` and scale about ``center_src``, then move it to
    ``center_dst``."""
    m = cv2.getRotationMatrix2D(center_src, angle_deg, scale)
    m[:, 2] += np.asarray(center_dst) - np.asarray(center_src)
    return m


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x3 affine ``a`` applied after ``b``."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def _sprites() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Horse and coin sprites: (RGB float32 (h, w, 3), alpha float32 (h, w)) each."""
    from scipy import ndimage as ndi
    from skimage import data
    from skimage.filters import threshold_otsu

    # Horse: the silhouette (True = background in skimage's image) filled with the cat's forehead fur.
    horse_alpha = (~data.horse()).astype(np.float32)
    fur = data.chelsea()[0:85, 40:330]  # striped fur above the eyes
    h, w = horse_alpha.shape
    horse_rgb = cv2.resize(fur, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    # Coin: the largest coin of the Pompeii coins photo, cut out with an Otsu threshold, tinted bronze.
    coins = data.coins()
    fg = ndi.binary_fill_holes(coins > threshold_otsu(coins))
    labels, _ = ndi.label(fg)
    y0, y1, x0, x1 = 150, 224, 309, 386  # around the big coin at rows 156-218, cols 315-380
    crop_lab = labels[y0:y1, x0:x1]
    ids, counts = np.unique(crop_lab[crop_lab > 0], return_counts=True)
    coin_mask = crop_lab == ids[np.argmax(counts)]
    coin_mask = ndi.binary_opening(ndi.binary_fill_holes(coin_mask), iterations=1)
    coin_alpha = cv2.GaussianBlur(coin_mask.astype(np.float32), (3, 3), 0.7)  # soft edge for compositing
    gray = coins[y0:y1, x0:x1].astype(np.float32)
    coin_rgb = np.clip(gray[..., None] * np.array([1.15, 0.95, 0.65], np.float32) + 10, 0, 255)
    return horse_rgb, horse_alpha, coin_rgb, coin_alpha


def render(num_frames: int = 48, width: int = 480, height: int = 270) -> tuple[np.ndarray, np.ndarray]:
    """Render the clip: (T, H, W, 3) uint8 frames and (T, H, W) uint8 labels (1 = horse, 2 = coin)."""
    from skimage import data

    rng = np.random.default_rng(SEED)
    background = data.coffee().astype(np.float32)  # (400, 600, 3)
    horse_rgb, horse_alpha, coin_rgb, coin_alpha = _sprites()
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    labels = np.zeros((num_frames, height, width), np.uint8)
    shake = rng.normal(0, 0.6, size=(num_frames, 2))  # slight hand-held camera shake (px in world)
    flicker = 1.0 + rng.normal(0, 0.01, size=num_frames)
    for t in range(num_frames):
        s = t / max(1, num_frames - 1)
        ease = 0.5 - 0.5 * np.cos(np.pi * s)
        # camera: a window of the table photo, panning right/up and zooming in (560 -> 470 px wide)
        win_w = 560 - 90 * ease
        cam_c = np.array([290 + 45 * ease, 215 - 15 * ease]) + shake[t]
        zoom = width / win_w
        cam = _affine(zoom, 0.0, (float(cam_c[0]), float(cam_c[1])), (width / 2, height / 2))
        img = cv2.warpAffine(
            background, cam, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        # horse: walks right, grows from 150 to 215 px wide, bobs up and down
        hh, hw = horse_alpha.shape
        h_scale = (150 + 65 * s) / hw
        h_pos = (140 + 270 * s, 250 + 6 * np.sin(2 * np.pi * 3 * s))
        h_m = _compose(cam, _affine(h_scale, 2 * np.sin(2 * np.pi * 3 * s), (hw / 2, hh / 2), h_pos))
        # coin: rolls left (spinning) and grows from 80 to 120 px
        ch, cw = coin_alpha.shape
        c_scale = (80 + 40 * s) / cw
        c_pos = (512 - 300 * s, 300 - 10 * s)
        c_m = _compose(cam, _affine(c_scale, 300 * s, (cw / 2, ch / 2), c_pos))
        lab = np.zeros((height, width), np.uint8)
        for oid, (rgb, alpha, m) in enumerate(
            ((horse_rgb, horse_alpha, h_m), (coin_rgb, coin_alpha, c_m)), 1
        ):
            a = cv2.warpAffine(alpha, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
            fg = cv2.warpAffine(rgb, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
            img = img * (1 - a[..., None]) + fg * a[..., None]
            lab[a >= 0.5] = oid
        frames[t] = np.clip(img * flicker[t] + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)
        labels[t] = lab
    return frames, labels


SOURCE_MD = """# Example clip: {name}

{frames} frames, {width}x{height}, JPEG quality {quality}; two objects: 1 = horse, 2 = coin.

- `frames/`: the video, `00000.jpg` …
- `mask.png`: the first frame's annotation (DAVIS palette PNG; the input of semi-supervised VOS)
- `gt/`: ground truth of every frame (DAVIS palette PNGs), exact because the clip is composited

## How it was made

A synthetic composite of real photographs bundled with scikit-image {skimage_version}
(`skimage.data`): a camera window pans and zooms slowly over `coffee` (an espresso cup on a wooden table);
the `horse` silhouette, textured with the fur of `chelsea` (the cat) cropped from above its eyes, walks left
to right and grows; the largest coin cut (Otsu threshold, holes filled) from `coins` rolls right to left,
spinning and growing, in front of the horse and partly occluding it. Small camera shake, brightness
flicker and sensor noise come from a seeded generator (seed {seed}), so the clip is reproducible.

Regenerate with:

    .venv/bin/python scripts/make_example_clip.py

## Source images and licences

As stated in the docstrings of scikit-image's `skimage.data` functions (checked in the installed package):

- `coffee`: photo courtesy of Pikolo Espresso Bar, photographer Rachel Michetti. "No copyright
  restrictions. CC0 by the photographer (Rachel Michetti)."
- `chelsea`: Chelsea the cat, photographer Stefan van der Walt. "No copyright restrictions. CC0 by the
  photographer (Stefan van der Walt)."
- `horse`: openclipart, <http://openclipart.org/detail/158377/horse-by-marauder>. "No copyright
  restrictions. CC0 given by owner (Andreas Preuss (marauder))."
- `coins`: Greek coins from Pompeii, downloaded from the Brooklyn Museum Collection. "No known copyright
  restrictions."

Nothing else went into the clip (in particular no DAVIS data).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / NAME, help="output folder")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import skimage

    frames, labels = render(args.frames, args.width, args.height)
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "frames").mkdir(parents=True)
    (out / "gt").mkdir()
    for t, (frame, lab) in enumerate(zip(frames, labels, strict=True)):
        Image.fromarray(frame).save(out / "frames" / f"{t:05d}.jpg", quality=args.quality, optimize=True)
        write_palette_png(out / "gt" / f"{t:05d}.png", lab)
    write_palette_png(out / "mask.png", labels[0])
    (out / "SOURCE.md").write_text(
        SOURCE_MD.format(
            name=NAME,
            frames=args.frames,
            width=args.width,
            height=args.height,
            quality=args.quality,
            skimage_version=skimage.__version__,
            seed=SEED,
        )
    )
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    areas = [(labels == k).sum(axis=(1, 2)) for k in (1, 2)]
    log.info("wrote %s: %d frames, %.2f MB", out, len(frames), total / 1e6)
    log.info(
        "object areas (px) min/max: horse %d/%d, coin %d/%d",
        areas[0].min(),
        areas[0].max(),
        areas[1].min(),
        areas[1].max(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
