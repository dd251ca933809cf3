"""Average the weights of several snapshots of one training run (stochastic weight averaging, uniform).

BatchNorm statistics are frozen during memvos-lite training, so the averaged weights need no
re-estimation. Float tensors are averaged in float32 and saved as fp16 like the shipped weights; integer
buffers are taken from the first file. The snapshots must share their keys and shapes.

    .venv/bin/python scripts/average_weights.py OUT.pth SNAPSHOT.pth [SNAPSHOT.pth ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from memvos.models.weights import fp16_state_dict, read_state_dict, save_weights  # noqa: E402


def average(paths: list[Path]) -> dict:
    """The uniform average of the state dicts in ``paths`` (float tensors), first file's other tensors."""
    dicts = [read_state_dict(p) for p in paths]
    keys = dicts[0].keys()
    for p, d in zip(paths[1:], dicts[1:], strict=True):
        if d.keys() != keys or any(d[k].shape != dicts[0][k].shape for k in keys):
            raise SystemExit(f"{p} does not have the keys and shapes of {paths[0]}")
    out = {}
    for k in keys:
        first = dicts[0][k]
        if first.is_floating_point():
            out[k] = sum(d[k].float() for d in dicts) / len(dicts)
        else:
            out[k] = first.clone()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("snapshots", type=Path, nargs="+")
    args = ap.parse_args(argv)
    if args.out.resolve() in {p.resolve() for p in args.snapshots}:
        raise SystemExit("the output must not be one of the snapshots")
    save_weights(fp16_state_dict(average(args.snapshots)), args.out)
    print(f"averaged {len(args.snapshots)} snapshots into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
