"""Shapes scores: real clips score near the top; each corruption lowers the score it should hit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hiar.eval import stats
from hiar.eval.shapes_scores import ShapesScorer, classify_fill, label_components
from hiar.world.shapes import ShapesSpec, ShapesWorld, ShapesWorldConfig

FRAMES = 60
SEEDS = range(100, 106)


@pytest.fixture(scope="module")
def world():
    return ShapesWorld()


@pytest.fixture(scope="module")
def scorer(world):
    return ShapesScorer(world)


def _render(world, spec, frames=FRAMES):
    return stats.as_unit_frames(world.render(spec, frames)[0])  # [F, 3, H, W] in [0, 1]


def _recoloured(world, spec: ShapesSpec) -> ShapesSpec:
    """The same clip with every object in a colour the prompt does not name."""
    unused = [c for c in world.config.colors if c not in {o.color for o in spec.objects}]
    objects = tuple(dataclasses.replace(o, color=unused[i]) for i, o in enumerate(spec.objects))
    return dataclasses.replace(spec, objects=objects)


def _corrupt(world, spec, kind):
    x = _render(world, spec)
    if kind == "real":
        return x
    if kind == "frozen":
        return x[:1].repeat(len(x), 1, 1, 1)
    if kind == "shuffled":
        return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    if kind == "blurred":
        return stats.gaussian_blur(x, 1.0)
    if kind == "wrong_colours":
        return _render(world, _recoloured(world, spec))
    raise ValueError(kind)


@pytest.fixture(scope="module")
def results(world, scorer):
    out = {}
    for seed in SEEDS:
        spec = world.sample_spec(seed)
        prompt = world.prompt(spec)
        for kind in ("real", "frozen", "shuffled", "blurred", "wrong_colours"):
            s = scorer.score_unit(_corrupt(world, spec, kind), prompt)
            out.setdefault(kind, []).append([s.semantic, s.dynamic, s.quality, s.total])
    return {k: np.array(v) for k, v in out.items()}  # [videos, (semantic, dynamic, quality, total)]


SEM, DYN, QUA, TOT = range(4)


def test_real_clips_score_near_the_top(results):
    real = results["real"]
    assert real.min() >= 0.85, real
    assert real.mean(axis=0).min() >= 0.93, real.mean(axis=0)


@pytest.mark.parametrize("kind, hit", [("frozen", DYN), ("shuffled", DYN), ("blurred", QUA), ("wrong_colours", SEM)])
def test_each_corruption_lowers_the_score_it_should_hit(results, kind, hit):
    real, bad = results["real"], results[kind]
    assert (bad[:, hit] < real[:, hit] - 0.15).all(), (kind, real[:, hit], bad[:, hit])
    assert bad[:, hit].mean() < real[:, hit].mean() - 0.2
    assert (bad[:, TOT] < real[:, TOT]).all()


def test_corruptions_spare_the_other_scores(results):
    real = results["real"].mean(axis=0)
    assert results["wrong_colours"].mean(axis=0)[DYN] > real[DYN] - 0.1  # motion judged apart from colour
    assert results["wrong_colours"].mean(axis=0)[QUA] > real[QUA] - 0.1
    assert results["shuffled"].mean(axis=0)[QUA] > real[QUA] - 0.05  # same frames, other order
    assert results["shuffled"].mean(axis=0)[SEM] > real[SEM] - 0.05
    assert results["frozen"].mean(axis=0)[SEM] > real[SEM] - 0.1


def test_wrong_shapes_and_wrong_speeds(world, scorer):
    spec = world.sample_spec(7)
    x = _render(world, spec)
    target = world.target(spec)
    right = scorer.score_unit(x, target)
    other_shape = {"circle": "square", "square": "triangle", "triangle": "circle"}
    wrong_shape = dataclasses.replace(target, objects=tuple(dataclasses.replace(o, shape=other_shape[o.shape]) for o in target.objects))
    other_speed = {"slow": "fast", "fast": "slow"}
    wrong_speed = dataclasses.replace(target, objects=tuple(dataclasses.replace(o, speed=other_speed[o.speed]) for o in target.objects))
    other_size = {"small": "large", "large": "small"}
    wrong_size = dataclasses.replace(target, objects=tuple(dataclasses.replace(o, size=other_size[o.size]) for o in target.objects))
    assert scorer.score_unit(x, wrong_shape).details["shape"] < right.details["shape"] - 0.5
    assert scorer.score_unit(x, wrong_speed).details["speed"] < right.details["speed"] - 0.5
    assert scorer.score_unit(x, wrong_size).details["shape"] < right.details["shape"] - 0.5
    assert right.details["shape"] > 0.9 and right.details["speed"] > 0.9


def test_extra_or_missing_objects_lower_the_count(world, scorer):
    spec = world.sample_spec(0)
    while len(spec.objects) < 2:
        spec = world.sample_spec(np.random.default_rng(len(spec.objects)).integers(1000))
    x = _render(world, spec)
    target = world.target(spec)
    fewer = dataclasses.replace(target, objects=target.objects[:1])
    assert scorer.score_unit(x, target).details["count"] > 0.9
    assert scorer.score_unit(x, fewer).details["count"] < 0.1


def test_scores_have_per_segment_curves_and_are_deterministic(world, scorer):
    spec = world.sample_spec(3)
    x = _render(world, spec)
    a = scorer.score_unit(x, world.prompt(spec))
    b = ShapesScorer(world).score(x.permute(1, 0, 2, 3) * 2 - 1, world.prompt(spec))
    assert a.total == pytest.approx(b.total) and a.details == pytest.approx(b.details)
    assert set(a.segments) == {"semantic", "dynamic", "quality", "total"}
    assert all(len(v) == 5 for v in a.segments.values())
    assert all(0.0 <= v <= 1.0 for v in (a.semantic, a.dynamic, a.quality, a.total))
    assert a.total == pytest.approx((a.semantic + a.dynamic + a.quality) / 3)


def test_shape_classifier_on_clean_frames(world, scorer):
    correct = total = 0
    for seed in range(40):
        spec = world.sample_spec(seed)
        frames, ann = world.render_numpy(spec, 4)
        det = scorer.detect(frames / 255.0)
        for f in range(4):
            for obj in spec.objects:
                ids = det.in_frame(f, scorer.color_names.index(obj.color))
                if len(ids) and not det.touching[ids[0]]:
                    total += 1
                    correct += classify_fill(float(det.fill[ids[0]])) == obj.shape
    assert total > 100 and correct / total > 0.95, (total, correct)


def test_label_components():
    mask = np.zeros((2, 6, 6), bool)
    mask[0, :2, :2] = True
    mask[0, 4:, 3:] = True
    mask[1, 1:5, 2] = True
    lab = label_components(mask)
    assert len(np.unique(lab[0][lab[0] > 0])) == 2
    assert len(np.unique(lab[1][lab[1] > 0])) == 1
    assert (lab[~mask] == 0).all()


def test_errors(world, scorer):
    x = _render(world, world.sample_spec(0), 10)
    with pytest.raises(ValueError, match="unknown word 'hexagon'"):
        scorer.score_unit(x, "a red hexagon")
    with pytest.raises(ValueError, match="32x32"):
        scorer.score_unit(torch.zeros(10, 3, 16, 16), "a red circle")
    small = ShapesWorld(ShapesWorldConfig(height=16, width=16))
    assert 0 <= ShapesScorer(small).score_unit(stats.as_unit_frames(small.render(small.sample_spec(1), 20)[0]),
                                                small.prompt(small.sample_spec(1))).total <= 1
