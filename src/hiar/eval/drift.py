"""The drift metric suite (paper Sec. 4.1): how much a long video's statistics move over time.

Recipe, per video (the full formula, weights and scales are in ``docs/metrics.md``):

1. Split the frames into ``S = 5`` contiguous segments of (nearly) equal length.
2. Per segment compute one value per metric slot (per-frame statistics are averaged over the
   segment's frames; consecutive-frame statistics over the pairs inside the segment).
3. Per slot fit a least-squares line ``value ~ a + b * s`` over the segment indices ``s = 0..S-1``
   (on ``log(value)`` for slots marked ``log``); ``b`` is the slope *per segment*.
4. Normalise: ``n = b / scale``, where ``scale`` is the per-segment change that counts as one unit of
   drift for that backend (e.g. 0.02 of HSV saturation per segment).
5. Penalise by direction: ``|n|`` where either direction is a degradation, ``max(0, -n)`` where only
   a decrease is (perceptual quality), ``max(0, n)`` where only an increase is (colour shift).
6. Drift Score = ``sum_slot weight_slot * penalty_slot`` (weights sum to 1). Lower is better; 0 is
   a perfectly stationary video.

Slots and weights: the paper's six statistics plus a colour-cast slot (the paper's "hue drift"):
``quality_musiq`` 0.15, ``quality_clipiqa`` 0.15, ``coherence_dinov2`` 0.15, ``coherence_lpips``
0.15, ``saturation`` 0.15, ``sharpness`` 0.15, ``colour_shift`` 0.10. The four learned slots use
their network when its weights are given and a weight-free stand-in otherwise; the report names
the backend of every slot. Scores are only comparable between reports with the same backends.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from hiar.config import from_dict
from hiar.eval import stats

Penalise = Literal["both", "decrease", "increase"]

SLOT_WEIGHTS: dict[str, float] = {
    "quality_musiq": 0.15,
    "quality_clipiqa": 0.15,
    "coherence_dinov2": 0.15,
    "coherence_lpips": 0.15,
    "saturation": 0.15,
    "sharpness": 0.15,
    "colour_shift": 0.10,
}


@dataclass(frozen=True)
class MetricDefinition:
    """How one slot's backend is normalised and penalised."""

    slot: str
    backend: str
    learned: bool
    scale: float  # the slope per segment that counts as one unit of drift
    penalise: Penalise
    log: bool = False  # fit the line to log(value) (relative change) instead of value
    description: str = ""


# Backends. Stand-ins are always available; learned ones need weights (see hiar.eval.learned).
STANDIN_DEFINITIONS: dict[str, MetricDefinition] = {
    "quality_musiq": MetricDefinition("quality_musiq", "rms-contrast (stand-in)", False, 0.01, "decrease",
                                      description="std of the luma, per frame"),
    "quality_clipiqa": MetricDefinition("quality_clipiqa", "colourfulness (stand-in)", False, 0.01, "decrease",
                                        description="Hasler-Suesstrunk colourfulness, per frame"),
    "coherence_dinov2": MetricDefinition("coherence_dinov2", "pixel-cosine (stand-in)", False, 0.02, "both",
                                         description="cosine similarity of consecutive mean-removed frames"),
    "coherence_lpips": MetricDefinition("coherence_lpips", "pixel-abs-difference (stand-in)", False, 0.005, "both",
                                        description="mean |frame[t+1] - frame[t]| on [0, 1] pixels"),
}
LEARNED_DEFINITIONS: dict[str, MetricDefinition] = {
    "quality_musiq": MetricDefinition("quality_musiq", "musiq", True, 2.0, "decrease",
                                      description="MUSIQ score (KonIQ head, ~0-100), per frame"),
    "quality_clipiqa": MetricDefinition("quality_clipiqa", "clip-iqa (transformers CLIP)", True, 0.02, "decrease",
                                        description="CLIP-IQA 'Good photo.'/'Bad photo.' probability, per frame"),
    "coherence_dinov2": MetricDefinition("coherence_dinov2", "dinov2 (transformers)", True, 0.01, "both",
                                         description="cosine similarity of consecutive DINOv2 CLS features"),
    "coherence_lpips": MetricDefinition("coherence_lpips", "lpips (own network)", True, 0.01, "both",
                                        description="LPIPS between consecutive frames"),
}
FIXED_DEFINITIONS: dict[str, MetricDefinition] = {
    "saturation": MetricDefinition("saturation", "hsv-saturation", False, 0.02, "both",
                                   description="mean HSV saturation, per frame"),
    "sharpness": MetricDefinition("sharpness", "laplacian-variance", False, 0.20, "both", log=True,
                                  description="variance of the luma Laplacian (0..255 scale), per frame; slope of its log"),
    "colour_shift": MetricDefinition("colour_shift", "chroma-sliced-wasserstein", False, 0.005, "increase",
                                     description="sliced Wasserstein-1 distance of the segment's pixel chroma (rg, yb) from segment 0's"),
}


def penalty(normalised: float, penalise: Penalise) -> float:
    if penalise == "both":
        return abs(normalised)
    if penalise == "decrease":
        return max(0.0, -normalised)
    return max(0.0, normalised)


@dataclass
class DriftReport:
    """Per-segment values (for plots), slopes, normalised slopes, penalties, the score and backends."""

    name: str
    num_frames: int
    segments: int
    segment_values: dict[str, list[float]]
    slopes: dict[str, float]  # per segment, of the value (or of its log for ``log`` slots)
    normalised: dict[str, float]  # slope / scale, signed
    contributions: dict[str, float]  # weight * penalty(normalised)
    score: float
    backends: dict[str, str]  # slot -> backend name, e.g. "dinov2 (transformers)" or "pixel-cosine (stand-in)"
    learned: dict[str, bool]
    num_videos: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class DriftConfig:
    """Which learned backends to load (local paths; None -> stand-in) and how to split the video."""

    segments: int = 5
    musiq: str | None = None  # MUSIQ weights (pyiqa's released .pth or .safetensors)
    clip_iqa: str | None = None  # local CLIP model folder (config.json, weights, tokenizer)
    dinov2: str | None = None  # local DINOv2 model folder
    lpips: str | None = None  # lpips v0.1 linear-layer file (alex.pth / vgg.pth)
    lpips_backbone: str | None = None  # torchvision AlexNet / VGG16 state dict
    lpips_net: Literal["alex", "vgg"] = "alex"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.segments < 2:
            raise ValueError(f"segments must be >= 2 to fit a slope, got {self.segments}")
        if (self.lpips is None) != (self.lpips_backbone is None):
            raise ValueError("LPIPS needs both lpips (linear layers) and lpips_backbone (AlexNet/VGG weights)")

    @classmethod
    def from_dict(cls, data: dict) -> "DriftConfig":
        return from_dict(cls, data)


class DriftSuite:
    """Computes :class:`DriftReport` s. Pass loaded learned metrics (or None for the stand-ins)."""

    def __init__(self, segments: int = 5, musiq=None, clip_iqa=None, dinov2=None, lpips=None,
                 weights: dict[str, float] | None = None):
        self.segments = segments
        self.weights = dict(SLOT_WEIGHTS if weights is None else weights)
        unknown = set(self.weights) - set(SLOT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown drift slots {sorted(unknown)}; slots are {list(SLOT_WEIGHTS)}")
        self.musiq, self.clip_iqa, self.dinov2, self.lpips = musiq, clip_iqa, dinov2, lpips
        self.definitions: dict[str, MetricDefinition] = {}
        for slot, model in (("quality_musiq", musiq), ("quality_clipiqa", clip_iqa),
                            ("coherence_dinov2", dinov2), ("coherence_lpips", lpips)):
            d = LEARNED_DEFINITIONS[slot] if model is not None else STANDIN_DEFINITIONS[slot]
            if model is not None:
                d = dataclasses.replace(d, backend=getattr(model, "backend", d.backend))
            self.definitions[slot] = d
        self.definitions.update(FIXED_DEFINITIONS)

    @classmethod
    def from_config(cls, config: DriftConfig) -> "DriftSuite":
        from hiar.eval import learned

        return cls(
            segments=config.segments,
            musiq=learned.Musiq.from_file(config.musiq, config.device) if config.musiq else None,
            clip_iqa=learned.ClipIQA.from_pretrained(config.clip_iqa, config.device) if config.clip_iqa else None,
            dinov2=learned.DinoV2Features.from_pretrained(config.dinov2, config.device) if config.dinov2 else None,
            lpips=(learned.LPIPS.from_files(config.lpips, config.lpips_backbone, config.lpips_net, config.device)
                   if config.lpips else None),
        )

    @property
    def backends(self) -> dict[str, str]:
        return {slot: d.backend for slot, d in self.definitions.items()}

    # ------------------------------------------------------------------------- per-frame statistics
    def _per_frame(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-frame (``[F]``) and per-pair (``[F - 1]``) statistics of ``[F, 3, H, W]`` in [0, 1]."""
        out = {
            "quality_musiq": self.musiq.score(x) if self.musiq is not None else stats.rms_contrast(x),
            "quality_clipiqa": self.clip_iqa.score(x) if self.clip_iqa is not None else stats.colourfulness(x),
            "coherence_dinov2": (self.dinov2.consecutive_similarity(x) if self.dinov2 is not None
                                 else stats.consecutive_pixel_cosine(x)),
            "coherence_lpips": (self.lpips.consecutive_distance(x) if self.lpips is not None
                                else stats.consecutive_abs_difference(x)),
            "saturation": stats.mean_saturation(x),
            "sharpness": stats.laplacian_variance(x),
        }
        return {k: v.detach().double().cpu().numpy() for k, v in out.items()}

    def segment_values(self, x: torch.Tensor) -> dict[str, list[float]]:
        per = self._per_frame(x)
        bounds = stats.segment_bounds(x.shape[0], self.segments)
        values: dict[str, list[float]] = {}
        # sliced Wasserstein-1 distance of each segment's pixel chroma from the first segment's
        quantiles = [stats.projected_quantiles(stats.chroma_samples(x[a:b])) for a, b in bounds]
        values["colour_shift"] = [float(np.abs(q - quantiles[0]).mean()) for q in quantiles]
        for slot, v in per.items():
            if len(v) == x.shape[0] - 1:  # consecutive pairs (t, t + 1) inside the segment
                values[slot] = [float(v[a:b - 1].mean()) for a, b in bounds]
            else:
                values[slot] = [float(v[a:b].mean()) for a, b in bounds]
        return {slot: values[slot] for slot in self.definitions}

    # ------------------------------------------------------------------------- the report
    def evaluate(self, frames, name: str = "video") -> DriftReport:
        """Drift report of one video (any layout :func:`hiar.eval.stats.as_unit_frames` accepts)."""
        return self.evaluate_unit(stats.as_unit_frames(frames), name=name)

    def evaluate_unit(self, x: torch.Tensor, name: str = "video") -> DriftReport:
        """Drift report of ``[F, 3, H, W]`` frames in [0, 1]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected [F, 3, H, W] frames in [0, 1], got {tuple(x.shape)}")
        return self.report_from_values(self.segment_values(x.float()), name=name, num_frames=x.shape[0])

    def report_from_values(self, values: dict[str, list[float]], name: str, num_frames: int,
                           num_videos: int = 1) -> DriftReport:
        slopes, normalised, contributions = {}, {}, {}
        for slot, d in self.definitions.items():
            v = np.asarray(values[slot], dtype=np.float64)
            if d.log:
                v = np.log(np.maximum(v, 1e-6))
            slopes[slot] = stats.least_squares_slope(v)
            normalised[slot] = slopes[slot] / d.scale
            contributions[slot] = self.weights.get(slot, 0.0) * penalty(normalised[slot], d.penalise)
        score = float(sum(contributions.values()))
        return DriftReport(
            name=name, num_frames=num_frames, segments=self.segments, segment_values=values,
            slopes=slopes, normalised=normalised, contributions=contributions, score=score,
            backends=self.backends, learned={s: d.learned for s, d in self.definitions.items()},
            num_videos=num_videos,
        )

    def aggregate(self, reports: list[DriftReport], name: str) -> DriftReport:
        """A method's report: per-segment values averaged over its videos, score = mean of scores."""
        if not reports:
            raise ValueError(f"{name}: no videos to aggregate")
        return self.aggregate_values([r.segment_values for r in reports], [r.score for r in reports], name=name,
                                     num_frames=int(np.mean([r.num_frames for r in reports])))

    def aggregate_values(self, segment_values: list[dict[str, list[float]]], scores: list[float], name: str,
                         num_frames: int) -> DriftReport:
        """:meth:`aggregate` from what each video's report holds (e.g. read back from JSON)."""
        if not segment_values or len(segment_values) != len(scores):
            raise ValueError(f"{name}: need one score per video's segment values, got {len(scores)} and "
                             f"{len(segment_values)}")
        values = {slot: np.mean([v[slot] for v in segment_values], axis=0).tolist() for slot in self.definitions}
        out = self.report_from_values(values, name=name, num_frames=num_frames, num_videos=len(segment_values))
        # The score of a method is the mean of its videos' scores (drift of each video, then averaged),
        # the slopes shown are those of the averaged curves.
        out.score = float(np.mean(scores))
        return out


def drift_score(frames, suite: DriftSuite | None = None) -> float:
    """Shortcut: the Drift Score of one video with the given suite (stand-ins by default)."""
    return (suite or DriftSuite()).evaluate(frames).score
