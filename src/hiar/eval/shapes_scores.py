"""Shapes scores: a generated video judged against its prompt by the shapes world's own truth.

Three scores in [0, 1] (higher is better) and their mean, the total (formulas in ``docs/metrics.md``):

* **semantic** -- are the asked colours, shapes, count and background there? Pixels are labelled with
  the nearest palette colour, objects are the 4-connected components of each colour, their soft
  coverage (projection of the pixel on the background->colour line) gives area, extent and centroid,
  and the shape is read from the fill ratio ``area / (widest row * tallest column)``: square ~1,
  circle ~pi/4, triangle ~1/2.
* **dynamic** -- does each object move at the asked speed (median centroid displacement per frame),
  does the video move as much as real clips of the same prompt (mean absolute frame difference
  against rendered reference clips: the analogue of VBench's dynamic degree), and is the motion
  smooth (centroid acceleration within what a bounce can produce)?
* **quality** -- edge sharpness against reference clips, the saturation of object cores against
  their palette colour's, and palette fidelity (share of pixels on the world's colours or their
  anti-aliased blends with the background) against reference clips.

Reference clips are rendered by the world for the parsed prompt (unstated speeds and sizes drawn at
random) with a fixed seed, so a score is a pure function of the video and its prompt.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from hiar.eval import stats
from hiar.world.shapes import (ObjectSpec, ObjectTarget, PromptTarget, ShapesSpec, ShapesWorld,
                               default_world)

SEMANTIC_WEIGHTS = {"colour": 0.3, "shape": 0.3, "count": 0.2, "background": 0.2}
DYNAMIC_WEIGHTS = {"speed": 0.4, "motion_degree": 0.3, "smoothness": 0.3}
QUALITY_WEIGHTS = {"sharpness": 0.4, "saturation": 0.3, "palette": 0.3}
TOTAL_WEIGHTS = {"semantic": 1 / 3, "dynamic": 1 / 3, "quality": 1 / 3}

FILL_TRIANGLE_BELOW = 0.66  # fill ratio < this: triangle (ideal 0.5)
FILL_SQUARE_ABOVE = 0.90  # fill ratio > this: square (ideal 1.0); in between: circle (ideal 0.785)
UNKNOWN_DISTANCE = 0.25  # a pixel farther than this (RGB in [0, 1]) from every palette colour is unlabelled
PALETTE_TOLERANCE = 0.08  # palette fidelity: distance to the nearest background->colour segment
SATURATION_TOLERANCE = 0.25  # saturation score falls to 0 at this mean |S - S(palette colour)| of object cores
SPEED_TOLERANCE = math.log(4.0)  # speed score falls to 0 at a factor 4 from the asked speed
SHAPE_AGREEMENT = 0.6  # full shape credit when this share of clean frames shows the asked shape
OWN_COLOUR_FIRST = 100.0  # assignment bonus: an asked object keeps its own colour's track when there is one
CORE_COVERAGE = 0.75  # object-core pixels (for saturation) have at least this coverage


@dataclass
class ShapesScores:
    semantic: float
    dynamic: float
    quality: float
    total: float
    details: dict[str, float]  # the components of each score (colour, shape, ..., palette)
    segments: dict[str, list[float]] = field(default_factory=dict)  # per-segment semantic/dynamic/quality/total

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _weighted(values: dict[str, float | None], weights: dict[str, float]) -> float:
    used = {k: w for k, w in weights.items() if values.get(k) is not None}
    return float(sum(values[k] * w for k, w in used.items()) / sum(used.values()))


def classify_fill(fill: float) -> str:
    if fill < FILL_TRIANGLE_BELOW:
        return "triangle"
    if fill > FILL_SQUARE_ABOVE:
        return "square"
    return "circle"


def _hsv_saturation_np(x: np.ndarray) -> np.ndarray:
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    return np.where(mx > 1e-6, (mx - mn) / np.maximum(mx, 1e-6), 0.0)


def label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a ``[F, H, W]`` boolean mask, vectorised over frames: each pixel of a
    component gets the smallest flat index + 1 in it, pixels outside the mask get 0."""
    big = np.iinfo(np.int64).max
    lab = np.where(mask, np.arange(1, mask.size + 1, dtype=np.int64).reshape(mask.shape), big)
    while True:
        new = lab.copy()
        np.minimum(new[:, 1:], lab[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], lab[:, 1:], out=new[:, :-1])
        np.minimum(new[:, :, 1:], lab[:, :, :-1], out=new[:, :, 1:])
        np.minimum(new[:, :, :-1], lab[:, :, 1:], out=new[:, :, :-1])
        new = np.where(mask, new, big)
        if np.array_equal(new, lab):
            break
        lab = new
    return np.where(mask, lab, 0)


@dataclass
class Detections:
    """Objects found in each frame, per palette colour: the largest components first."""

    colors: list[str]  # object palette names, index = colour id
    background: str  # the dominant background label over the video
    frame_background: np.ndarray  # [F] background id (into world backgrounds) dominant in each frame
    # per component: frame, colour id, soft area, centroid (x, y), fill ratio, extent
    frame: np.ndarray
    color: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    fill: np.ndarray
    extent: np.ndarray
    touching: np.ndarray  # the component borders an object of another colour (occlusion likely)
    core_saturation_error: np.ndarray  # [F] mean |S - S(palette colour)| over object-core pixels (nan: none)
    num_frames: int
    by_frame: list[list[np.ndarray]] = field(default_factory=list)  # [F][colour] component ids, largest first

    def __post_init__(self) -> None:
        K = len(self.colors)
        order = np.lexsort((-self.area, self.color, self.frame))
        self.by_frame = [[np.zeros(0, np.int64) for _ in range(K)] for _ in range(self.num_frames)]
        for i in order:
            f, k = int(self.frame[i]), int(self.color[i])
            self.by_frame[f][k] = np.append(self.by_frame[f][k], i)

    def in_frame(self, f: int, color: int) -> np.ndarray:
        return self.by_frame[f][color]


class ShapesScorer:
    """Scores videos of a :class:`ShapesWorld` against prompts (see the module docstring)."""

    def __init__(self, world: ShapesWorld | None = None, reference_clips: int = 8, seed: int = 0,
                 segments: int = 5):
        self.world = world or default_world()
        self.reference_clips, self.seed, self.segments = reference_clips, seed, segments
        c = self.world.config
        self.color_names = list(c.colors)
        self.bg_names = list(c.backgrounds)
        self.palette = np.array([c.colors[n] for n in self.color_names], np.float32) / 255.0  # [K, 3]
        self.bg_palette = np.array([c.backgrounds[n] for n in self.bg_names], np.float32) / 255.0  # [B, 3]
        smallest = min(c.extent_px(s) for s in c.sizes)
        self.min_area = 0.25 * 0.5 * smallest ** 2  # a quarter of the smallest triangle
        self._reference_cache: dict[tuple, dict[str, float]] = {}

    # ------------------------------------------------------------------------- detection
    def detect(self, x: np.ndarray, background: str | None = None) -> Detections:
        """Find the objects of ``[F, H, W, 3]`` frames in [0, 1]."""
        F, H, W, _ = x.shape
        K = len(self.color_names)
        all_colors = np.concatenate([self.palette, self.bg_palette])  # [K + B, 3]
        dist = np.linalg.norm(x[..., None, :] - all_colors, axis=-1)  # [F, H, W, K + B]
        labels = dist.argmin(axis=-1)
        labels[dist.min(axis=-1) > UNKNOWN_DISTANCE] = -1
        bg_counts = np.stack([(labels == K + b).sum(axis=(1, 2)) for b in range(len(self.bg_names))], axis=1)  # [F, B]
        frame_bg = bg_counts.argmax(axis=1)
        bg_id = int(np.bincount(frame_bg, minlength=len(self.bg_names)).argmax()) if background is None \
            else self.bg_names.index(background)
        bg = self.bg_palette[bg_id]
        objects = (labels >= 0) & (labels < K)
        # components of the same colour: label within the per-colour masks (offset so colours never merge)
        comp = np.zeros((F, H, W), np.int64)
        for k in range(K):
            m = labels == k
            if m.any():
                lab = label_components(m)
                comp = np.where(m, lab, comp)
        # grow each component by one pixel (8-neighbourhood) into background / unlabelled pixels: its anti-aliased rim
        rim_ok = ~objects
        grown = comp.copy()
        padded = np.pad(comp, ((0, 0), (1, 1), (1, 1)))
        for dy, dx in itertools.product((-1, 0, 1), repeat=2):
            if dy == dx == 0:
                continue
            neighbour = padded[:, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
            take = rim_ok & (grown == 0) & (neighbour > 0)
            grown[take] = neighbour[take]
        sel = grown > 0
        ids, inverse = np.unique(grown[sel], return_inverse=True)
        n = len(ids)
        # colour of each component: the label of its seed pixel (flat index id - 1)
        comp_color = labels.reshape(-1)[ids - 1]
        comp_frame = (ids - 1) // (H * W)
        col = self.palette[comp_color[inverse]]  # [P, 3]
        pix = x[sel]
        direction = col - bg
        alpha = np.clip(((pix - bg) * direction).sum(-1) / np.maximum((direction ** 2).sum(-1), 1e-6), 0.0, 1.0)
        ff, yy, xx = np.nonzero(sel)
        area = np.bincount(inverse, weights=alpha, minlength=n)
        cx = np.bincount(inverse, weights=alpha * (xx + 0.5), minlength=n) / np.maximum(area, 1e-6)
        cy = np.bincount(inverse, weights=alpha * (yy + 0.5), minlength=n) / np.maximum(area, 1e-6)
        rows = np.bincount(inverse * H + yy, weights=alpha, minlength=n * H).reshape(n, H).max(axis=1)
        cols = np.bincount(inverse * W + xx, weights=alpha, minlength=n * W).reshape(n, W).max(axis=1)
        fill = area / np.maximum(rows * cols, 1e-6)
        # occlusion: a pixel of the component next to a pixel of another object colour
        obj_label = np.where(objects, labels, -1)
        padded_l = np.pad(obj_label, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
        own = np.full((F, H, W), -1)
        own[sel] = comp_color[inverse]
        other = np.zeros((F, H, W), bool)
        for dy, dx in itertools.product((-1, 0, 1), repeat=2):
            nb = padded_l[:, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
            other |= (nb >= 0) & (nb != own)
        touching = np.bincount(inverse, weights=other[sel].astype(np.float64), minlength=n) > 0
        # saturation of object cores (coverage >= 0.75) against their palette colour's saturation
        sat = _hsv_saturation_np(x)
        pal_sat = _hsv_saturation_np(self.palette[None, None])[0, 0]
        core = np.zeros((F, H, W), bool)
        core[sel] = alpha >= CORE_COVERAGE
        err = np.full((F, H, W), np.nan)
        err[sel] = np.abs(sat[sel] - pal_sat[comp_color[inverse]])
        err[~core] = np.nan
        counts = core.sum(axis=(1, 2))
        core_err = np.where(counts > 0, np.nansum(err, axis=(1, 2)) / np.maximum(counts, 1), np.nan)
        keep = area >= self.min_area
        return Detections(
            colors=self.color_names, background=self.bg_names[bg_id], frame_background=frame_bg,
            frame=comp_frame[keep], color=comp_color[keep], area=area[keep],
            centroid=np.stack([cx, cy], axis=1)[keep], fill=fill[keep],
            extent=np.maximum(rows, cols)[keep], touching=touching[keep],
            core_saturation_error=core_err, num_frames=F,
        )

    # ------------------------------------------------------------------------- references
    def _reference(self, target: PromptTarget, num_frames: int) -> dict[str, float]:
        """Statistics of real clips for this prompt: mean frame difference, edge sharpness, palette fidelity."""
        frames = min(num_frames, 48)
        key = (target, frames)
        if key in self._reference_cache:
            return self._reference_cache[key]
        c = self.world.config
        rng = np.random.default_rng([self.seed, frames])
        acc: dict[str, list[float]] = {"motion": [], "sharpness": [], "palette": []}
        for _ in range(self.reference_clips):
            objects = tuple(ObjectSpec(
                shape=o.shape, color=o.color,
                size=o.size or list(c.sizes)[int(rng.integers(len(c.sizes)))],
                speed=o.speed or list(c.speeds)[int(rng.integers(len(c.speeds)))],
                position=(float(rng.random()), float(rng.random())),
                direction=float(rng.uniform(0, 2 * math.pi)),
            ) for o in target.objects)
            bg = target.background or self.bg_names[int(rng.integers(len(self.bg_names)))]
            clip, _ = self.world.render_numpy(ShapesSpec(bg, objects), frames)
            per = self._per_frame_stats(clip / 255.0, self.bg_palette[self.bg_names.index(bg)])
            for k, v in self._range_stats(per, 0, frames).items():
                acc[k].append(v)
        ref = {k: float(np.mean(v)) for k, v in acc.items()}
        self._reference_cache[key] = ref
        return ref

    def _per_frame_stats(self, x: np.ndarray, bg: np.ndarray) -> dict[str, np.ndarray]:
        """Per-frame statistics of ``[F, H, W, 3]`` in [0, 1]: ``motion`` [F - 1] (mean |difference| of
        consecutive frames), ``sharpness`` [F] (edge sharpness, see :func:`hiar.eval.stats.edge_sharpness`),
        ``palette`` [F] (palette fidelity)."""
        y = x @ np.asarray(stats.LUMA, np.float32)  # [F, H, W]
        lap = np.abs(y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4 * y[:, 1:-1, 1:-1]).sum(axis=(1, 2))
        gx = (y[:, 1:-1, 2:] - y[:, 1:-1, :-2]) / 2
        gy = (y[:, 2:, 1:-1] - y[:, :-2, 1:-1]) / 2
        grad = np.sqrt(gx * gx + gy * gy).sum(axis=(1, 2))
        return {
            "motion": np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3)),
            "sharpness": lap / (grad + 1e-6),
            "palette": self._palette_fidelity(x, bg),
        }

    @staticmethod
    def _range_stats(per: dict[str, np.ndarray], a: int, b: int) -> dict[str, float]:
        return {"motion": float(per["motion"][a:b - 1].mean()) if b - a > 1 else 0.0,
                "sharpness": float(per["sharpness"][a:b].mean()),
                "palette": float(per["palette"][a:b].mean())}

    def _palette_fidelity(self, x: np.ndarray, bg: np.ndarray) -> np.ndarray:
        """``[F]`` share of pixels within PALETTE_TOLERANCE of a background->colour segment (or the background)."""
        p = x.reshape(-1, 3)
        best = np.linalg.norm(p - bg, axis=-1)
        for c in self.palette:
            d = c - bg
            t = np.clip(((p - bg) @ d) / max(float(d @ d), 1e-6), 0, 1)
            best = np.minimum(best, np.linalg.norm(p - (bg + t[:, None] * d), axis=-1))
        return (best <= PALETTE_TOLERANCE).reshape(x.shape[0], -1).mean(axis=1)

    # ------------------------------------------------------------------------- scoring
    def score(self, frames, prompt: str | PromptTarget) -> ShapesScores:
        """Scores of one video (any layout :func:`hiar.eval.stats.as_unit_frames` accepts) against
        a prompt (text, parsed with the world's grammar) or a :class:`PromptTarget`."""
        return self.score_unit(stats.as_unit_frames(frames), prompt)

    def score_unit(self, x: torch.Tensor, prompt: str | PromptTarget) -> ShapesScores:
        """Like :meth:`score` for ``[F, 3, H, W]`` frames in [0, 1]."""
        target = self.world.parse_prompt(prompt) if isinstance(prompt, str) else prompt
        c = self.world.config
        if tuple(x.shape[-2:]) != (c.height, c.width):
            raise ValueError(f"video frames are {x.shape[-2]}x{x.shape[-1]}, the shapes world's are {c.height}x{c.width}")
        if x.shape[0] < 3:
            raise ValueError(f"a video needs at least 3 frames to score motion, got {x.shape[0]}")
        arr = x.permute(0, 2, 3, 1).numpy().astype(np.float32)
        det = self.detect(arr, target.background)
        bg = self.bg_palette[self.bg_names.index(target.background or det.background)]
        per = self._per_frame_stats(arr, bg)
        whole = self._score_range(per, det, target, 0, arr.shape[0])
        per_segment: dict[str, list[float]] = {k: [] for k in ("semantic", "dynamic", "quality", "total")}
        if arr.shape[0] >= 3 * self.segments:
            for a, b in stats.segment_bounds(arr.shape[0], self.segments):
                s = self._score_range(per, det, target, a, b)
                for k in per_segment:
                    per_segment[k].append(getattr(s, k))
        whole.segments = per_segment
        return whole

    def _tracks(self, det: Detections, target: PromptTarget, a: int, b: int) -> list[np.ndarray]:
        """One track per asked object: ``[F, 2]`` centroids of the largest component of one colour (nan
        where absent). An object follows its own colour when that colour is in the video; the others
        are assigned to the remaining colour tracks so as to best fit their asked speeds (so that the
        motion of a video with wrong colours is still judged)."""
        K, F = len(self.color_names), b - a
        tracks = {}
        for k in range(K):
            t = np.full((F, 2), np.nan)
            for f in range(F):
                ids = det.in_frame(a + f, k)
                if len(ids):
                    t[f] = det.centroid[ids[0]]
            if np.isfinite(t[:, 0]).sum() >= 2:
                tracks[k] = t
        keys = list(tracks)
        asked = [self.color_names.index(o.color) for o in target.objects]
        fit = np.array([[self._speed_score(o, tracks[k])[0] + (OWN_COLOUR_FIRST if k == asked[i] else 0.0) for k in keys]
                        for i, o in enumerate(target.objects)]).reshape(len(asked), len(keys))
        best, best_perm = -1.0, ()
        n = min(len(asked), len(keys))
        for rows in itertools.combinations(range(len(asked)), n):
            for perm in itertools.permutations(range(len(keys)), n):
                total = sum(fit[r, p] for r, p in zip(rows, perm))
                if total > best:
                    best, best_perm = total, tuple(zip(rows, perm))
        out = [np.full((F, 2), np.nan) for _ in asked]
        for r, p in best_perm:
            out[r] = tracks[keys[p]]
        return out

    def _speed_score(self, obj: ObjectTarget, track: np.ndarray) -> tuple[float, float]:
        """(speed score, smoothness) of one track for one asked object."""
        c = self.world.config
        step = np.linalg.norm(track[1:] - track[:-1], axis=1)
        step = step[~np.isnan(step)]
        if len(step) == 0:
            return 0.0, 0.0
        speeds = [c.speed_px(obj.speed)] if obj.speed else [c.speed_px(s) for s in c.speeds]
        v = max(float(np.median(step)), 1e-3)
        speed = max(max(0.0, 1 - abs(math.log(v / max(s, 1e-3))) / SPEED_TOLERANCE) for s in speeds)
        acc = np.linalg.norm(track[2:] - 2 * track[1:-1] + track[:-2], axis=1)
        acc = acc[~np.isnan(acc)]
        limit = 2 * max(speeds) + 0.5  # a bounce off a wall changes the velocity by at most 2 v
        return speed, float((acc <= limit).mean()) if len(acc) else 0.0

    def _score_range(self, per: dict[str, np.ndarray], det: Detections, target: PromptTarget, a: int, b: int) -> ShapesScores:
        c = self.world.config
        F = b - a
        n_obj = len(target.objects)

        # ---- semantic
        groups: dict[int, list[ObjectTarget]] = {}
        for o in target.objects:
            groups.setdefault(self.color_names.index(o.color), []).append(o)
        colour_sum = shape_sum = 0.0
        sizes: dict[int, list[float]] = {}
        for k, asked in groups.items():
            m = len(asked)
            found_total, votes, clean_votes = 0, [], []
            for f in range(a, b):
                found = det.in_frame(f, k)[:m]
                if not len(found):
                    continue
                found_total += len(found)
                best = max(sum(self._matches(asked[j], det, i) for j, i in zip(perm, found))
                           for perm in itertools.permutations(range(m), len(found)))
                votes.append(best / len(found))
                if not det.touching[found].any():
                    clean_votes.append(best / len(found))
                sizes.setdefault(k, []).append(float(det.extent[found[0]]))
            presence = found_total / (m * F)
            agree = float(np.mean(clean_votes if clean_votes else votes)) if votes else 0.0
            colour_sum += presence * m
            shape_sum += presence * min(1.0, agree / SHAPE_AGREEMENT) * m
        counts_ok = []
        for f in range(a, b):
            ids = np.concatenate(det.by_frame[f])
            occluded = bool(det.touching[ids].any()) if len(ids) else False
            counts_ok.append(len(ids) == n_obj or (len(ids) < n_obj and occluded))
        background = None
        if target.background is not None:
            background = float(np.mean(det.frame_background[a:b] == self.bg_names.index(target.background)))
        semantic_parts = {"colour": colour_sum / n_obj, "shape": shape_sum / n_obj,
                          "count": float(np.mean(counts_ok)), "background": background}
        semantic = _weighted(semantic_parts, SEMANTIC_WEIGHTS)

        # ---- dynamic
        moves = [self._speed_score(o, t) for o, t in zip(target.objects, self._tracks(det, target, a, b))]
        # reference clips with the asked attributes; unstated sizes read off the video
        measured = {k: float(np.median(v)) for k, v in sizes.items()}
        objects = []
        for o in target.objects:
            size = o.size
            k = self.color_names.index(o.color)
            if size is None and k in measured:
                size = min(c.sizes, key=lambda s: abs(c.extent_px(s) - measured[k]))
            objects.append(dataclasses.replace(o, size=size))
        ref = self._reference(PromptTarget(tuple(objects), target.background), det.num_frames)
        own = self._range_stats(per, a, b)
        dynamic_parts = {"speed": float(np.mean([m[0] for m in moves])),
                         "motion_degree": min(1.0, own["motion"] / max(ref["motion"], 1e-6)),
                         "smoothness": float(np.mean([m[1] for m in moves]))}
        dynamic = _weighted(dynamic_parts, DYNAMIC_WEIGHTS)

        # ---- quality
        ratio = own["sharpness"] / max(ref["sharpness"], 1e-6)
        sat_err = det.core_saturation_error[a:b]
        sat_err = float(np.nanmean(sat_err)) if np.isfinite(sat_err).any() else SATURATION_TOLERANCE
        quality_parts = {
            "sharpness": float(min(ratio, 1 / max(ratio, 1e-6))),
            "saturation": max(0.0, 1 - sat_err / SATURATION_TOLERANCE),
            "palette": min(1.0, own["palette"] / max(ref["palette"], 1e-6)),
        }
        quality = _weighted(quality_parts, QUALITY_WEIGHTS)
        total = _weighted({"semantic": semantic, "dynamic": dynamic, "quality": quality}, TOTAL_WEIGHTS)
        details = {**{k: v for k, v in semantic_parts.items() if v is not None}, **dynamic_parts, **quality_parts}
        return ShapesScores(semantic=semantic, dynamic=dynamic, quality=quality, total=total, details=details)

    def _matches(self, asked: ObjectTarget, det: Detections, i: int) -> bool:
        if classify_fill(float(det.fill[i])) != asked.shape:
            return False
        if asked.size is not None:
            c = self.world.config
            nearest = min(c.sizes, key=lambda s: abs(c.extent_px(s) - float(det.extent[i])))
            return nearest == asked.size
        return True


def score_video(frames, prompt: str, world: ShapesWorld | None = None) -> ShapesScores:
    """Shortcut: :meth:`ShapesScorer.score` with a fresh scorer."""
    return ShapesScorer(world).score(frames, prompt)
