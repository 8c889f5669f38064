"""Drift Score: videos with drift built in score above a stationary clip, in order of strength."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiar.config import ConfigError
from hiar.eval import stats
from hiar.eval.drift import SLOT_WEIGHTS, DriftConfig, DriftSuite, drift_score, penalty
from hiar.world.shapes import ShapesWorld

FRAMES = 80


def _clip(seed: int) -> torch.Tensor:
    world = ShapesWorld()
    frames, _ = world.render(world.sample_spec(seed), FRAMES)
    return stats.as_unit_frames(frames)  # [F, 3, H, W] in [0, 1]


def _ramp(x: torch.Tensor) -> torch.Tensor:
    return (torch.arange(x.shape[0], dtype=torch.float32) / (x.shape[0] - 1)).view(-1, 1, 1, 1)


def saturation_rise(x, strength):
    """HSV saturation + strength * t (t from 0 to 1 over the video)."""
    hsv = stats.rgb_to_hsv(x)
    hsv[:, 1:2] = (hsv[:, 1:2] + strength * _ramp(x)).clamp(0, 1)
    return stats.hsv_to_rgb(hsv)


def growing_blur(x, strength):
    """Gaussian blur with sigma = strength * t."""
    return torch.cat([stats.gaussian_blur(x[i:i + 1], strength * i / (len(x) - 1)) for i in range(len(x))])


def colour_shift(x, strength):
    """A green cast growing linearly (CausVid's failure): + strength * t * (-0.5, 1, -0.5)."""
    return (x + strength * _ramp(x) * torch.tensor([-0.5, 1.0, -0.5]).view(1, 3, 1, 1)).clamp(0, 1)


DRIFTS = {
    "saturation": (saturation_rise, (0.1, 0.2, 0.4)),
    "blur": (growing_blur, (0.5, 1.0, 2.0)),
    "colour": (colour_shift, (0.05, 0.1, 0.2)),
}


@pytest.fixture(scope="module")
def suite():
    return DriftSuite()


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("kind", list(DRIFTS))
def test_built_in_drift_scores_above_stationary_in_order_of_strength(suite, seed, kind):
    x = _clip(seed)
    make, strengths = DRIFTS[kind]
    scores = [suite.evaluate_unit(x).score] + [suite.evaluate_unit(make(x, s)).score for s in strengths]
    assert all(a < b for a, b in zip(scores, scores[1:])), f"{kind}: {scores}"
    assert scores[-1] > 3 * scores[0]


def test_the_drifting_statistic_moves_the_right_way(suite):
    x = _clip(0)
    sat = suite.evaluate_unit(saturation_rise(x, 0.3))
    assert sat.slopes["saturation"] > 0 and np.diff(sat.segment_values["saturation"]).min() > 0
    blur = suite.evaluate_unit(growing_blur(x, 1.5))
    assert blur.slopes["sharpness"] < 0 and np.diff(blur.segment_values["sharpness"]).max() < 0
    shift = suite.evaluate_unit(colour_shift(x, 0.15))
    assert shift.segment_values["colour_shift"][0] == pytest.approx(0.0, abs=1e-9)
    assert np.diff(shift.segment_values["colour_shift"]).min() > 0


def test_a_still_video_has_no_drift(suite):
    still = _clip(1)[:1].repeat(40, 1, 1, 1)
    report = suite.evaluate_unit(still)
    assert report.score == pytest.approx(0.0, abs=1e-6)


def test_report_contents(suite):
    x = _clip(2)
    report = suite.evaluate_unit(saturation_rise(x, 0.2), name="clip")
    assert report.segments == 5 and report.num_frames == FRAMES and report.name == "clip"
    assert set(report.segment_values) == set(SLOT_WEIGHTS)
    assert all(len(v) == 5 for v in report.segment_values.values())
    assert report.score == pytest.approx(sum(report.contributions.values()))
    for slot, d in suite.definitions.items():
        assert report.normalised[slot] == pytest.approx(report.slopes[slot] / d.scale)
        assert report.contributions[slot] == pytest.approx(SLOT_WEIGHTS[slot] * penalty(report.normalised[slot], d.penalise))
    assert all(not learned for learned in report.learned.values())
    assert "stand-in" in report.backends["coherence_dinov2"] and "stand-in" in report.backends["quality_musiq"]
    assert report.to_dict()["backends"] == report.backends
    # the library layout [3, F, H, W] in [-1, 1] gives the same report as [F, 3, H, W] in [0, 1]
    assert suite.evaluate(x.permute(1, 0, 2, 3) * 2 - 1).score == pytest.approx(suite.evaluate_unit(x).score, rel=1e-5)


def test_slope_and_penalty_directions():
    assert stats.least_squares_slope([0, 1, 2, 3, 4]) == pytest.approx(1.0)
    assert stats.least_squares_slope([5, 5, 5, 5, 5]) == pytest.approx(0.0)
    assert stats.least_squares_slope([0, 2, 0, 2, 0]) == pytest.approx(0.0)
    assert penalty(-2.0, "both") == 2.0 and penalty(2.0, "both") == 2.0
    assert penalty(2.0, "decrease") == 0.0 and penalty(-2.0, "decrease") == 2.0
    assert penalty(-2.0, "increase") == 0.0 and penalty(2.0, "increase") == 2.0


def test_quality_that_improves_is_not_penalised(suite):
    x = _clip(4)
    # contrast rising over time: the rms-contrast stand-in (decrease is bad) must not count it
    sharpening = 0.5 + (x - 0.5) * (0.6 + 0.4 * _ramp(x))
    report = suite.evaluate_unit(sharpening)
    assert report.normalised["quality_musiq"] > 0 and report.contributions["quality_musiq"] == 0.0
    fading = 0.5 + (x - 0.5) * (1.0 - 0.4 * _ramp(x))
    assert suite.evaluate_unit(fading).contributions["quality_musiq"] > 0


def test_segments_and_errors(suite):
    assert stats.segment_bounds(84, 5) == [(0, 17), (17, 34), (34, 50), (50, 67), (67, 84)]
    with pytest.raises(ValueError, match="too short"):
        suite.evaluate_unit(_clip(0)[:9])
    with pytest.raises(ValueError, match="unknown drift slots"):
        DriftSuite(weights={"vibes": 1.0})
    with pytest.raises(ConfigError, match="segments"):
        DriftConfig.from_dict({"segments": 1})
    with pytest.raises(ConfigError, match="lpips_backbone"):
        DriftConfig.from_dict({"lpips": "alex.pth"})
    assert drift_score(_clip(0).permute(1, 0, 2, 3) * 2 - 1) >= 0


def test_aggregate_over_a_method(suite):
    reports = [suite.evaluate_unit(_clip(s), name=f"v{s}") for s in (0, 1)]
    method = suite.aggregate(reports, "method")
    assert method.num_videos == 2
    assert method.score == pytest.approx(np.mean([r.score for r in reports]))
    np.testing.assert_allclose(method.segment_values["saturation"],
                               np.mean([r.segment_values["saturation"] for r in reports], axis=0))
