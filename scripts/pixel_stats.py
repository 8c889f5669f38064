"""Where the students' quality goes: pixel statistics of sampled videos against the real clips'.

    python scripts/pixel_stats.py results/eval/frames/*.npz

For each video file (``video``: uint8 [F, H, W, 3], as scripts/evaluate_shapes.py keeps them): the mean
colour of the dark pixels (max channel < 0.3: the background and shadows), the share of near-black
pixels (max channel < 0.02, which the world never draws: its backgrounds are at least 0.08) and the
share of bright pixels (max channel > 0.8: object cores). A student whose background is clipped to black
and whose objects are oversized loses the quality score's palette and saturation terms
(docs/metrics.md), whatever its semantic score.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def stats(video: np.ndarray) -> dict:
    x = video.astype(np.float64) / 255.0
    peak = x.max(-1)
    dark = x[peak < 0.3]
    return {"dark_rgb": dark.mean(0) if len(dark) else np.full(3, np.nan),
            "black": float((peak < 0.02).mean()), "bright": float((peak > 0.8).mean())}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"{'video':40s} {'frames':>6s}  {'dark pixels (rgb)':>20s}  {'black':>6s}  {'bright':>6s}")
    for name in argv:
        path = Path(name)
        if not path.is_file():
            print(f"pixel_stats: {path}: no such file", file=sys.stderr)
            return 1
        video = np.load(path)["video"]
        s = stats(video)
        rgb = " ".join(f"{v:.3f}" for v in s["dark_rgb"])
        print(f"{path.stem:40s} {len(video):6d}  {rgb:>20s}  {s['black']:6.2f}  {s['bright']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
