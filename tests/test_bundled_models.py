"""The bundled shapes models (src/hiar/assets/) are trained: they draw what the prompt asks, and it moves.

Random weights of the same model fail every one of these checks (asserted below, so the test cannot
pass on a model that has not learned). The thresholds are set well below what the trained students
score and far above what random weights score: see docs/results.md for the held-out numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiar.checkpoint import load_model, read_checkpoint
from hiar.eval.shapes_scores import ShapesScorer
from hiar.generate import BUNDLED_MODELS, bundled_dir, bundled_model_path, generate, method_config, shapes_world
from hiar.model import build_model

PROMPTS = [
    "a fast red circle on a dark background",
    "a slow blue square on a dark background",
    "a yellow triangle on a gray background",
    "a fast white circle and a slow green square on a dark background",
]
# Means over PROMPTS (seeds 0-3). Measured: random weights 0.20 semantic / 0.30 dynamic; the HiAR
# student 0.56 / 0.78; the Self-Forcing student 0.46 / 0.66; the CausVid student 0.49 / 0.70 (the
# students of real_guidance 0.0: Self-Forcing's and CausVid's draw fewer of the asked objects than at
# 2.0, where they scored 0.57 and 0.60, and keep the palette; docs/training.md).
SEMANTIC_MIN = 0.4
MOTION_MIN = 0.5


def scores_of(model, method: str) -> tuple[float, float]:
    world = shapes_world(model)
    scorer = ShapesScorer(world=None)
    sem, dyn = [], []
    for i, prompt in enumerate(PROMPTS):
        video, _ = generate(model, world, prompt, num_frames=21, config=method_config(method, window=21), seed=i,
                            progress=False)
        s = scorer.score(video, prompt)
        sem.append(s.semantic)
        dyn.append(s.dynamic)
    return float(np.mean(sem)), float(np.mean(dyn))


@pytest.fixture(scope="module")
def random_scores():
    torch.manual_seed(0)
    return scores_of(build_model("toy").eval(), "hiar")


SHIPPED = ("hiar", "self-forcing", "causvid")


@pytest.mark.parametrize("method", SHIPPED)
def test_bundled_student_draws_the_prompt_and_moves(method, random_scores):
    model = load_model(bundled_model_path(method)).eval()
    semantic, dynamic = scores_of(model, method)
    assert semantic >= SEMANTIC_MIN, f"{method}: semantic {semantic:.3f}"
    assert dynamic >= MOTION_MIN, f"{method}: dynamic {dynamic:.3f}"
    # the same checks fail on random weights of the same model
    assert random_scores[0] < SEMANTIC_MIN and random_scores[1] < MOTION_MIN, random_scores


def test_bundled_models_record_where_they_come_from():
    names = sorted(p.stem for p in bundled_dir().glob("*.safetensors"))
    assert set(names) >= {BUNDLED_MODELS[m] for m in SHIPPED} | {"shapes-teacher"}
    for name in names:
        meta = read_checkpoint(bundled_dir() / f"{name}.safetensors").metadata
        assert meta["dtype"] == "float16" and int(meta["steps"]) > 0 and "stage:" in meta["recipe_config"]
        assert meta["trained_by_commit"] and meta["seed"].isdigit()
    assert sum(p.stat().st_size for p in bundled_dir().iterdir()) < 30 * 2**20  # the package stays small


def continuation_details(model, specs) -> tuple[float, float]:
    """Mean colour and shape scores of the first generated segment (3 frames) after 6 real frames."""
    from hiar.eval.shapes_scores import score_video
    from hiar.world.shapes import default_world, render_clip

    shapes = default_world()
    world = shapes_world(model)
    colour, shape = [], []
    for i, spec in enumerate(specs):
        prompt = shapes.prompt(spec)
        clip, _ = render_clip(spec, 6)
        video, _ = generate(model, world, prompt, num_frames=3, config=method_config("hiar", window=21), seed=i,
                            init_frames=clip, progress=False)
        assert torch.equal(video[:, :6], clip)  # the given frames come first, unchanged
        details = score_video(video[:, 6:9], prompt).details
        colour.append(details["colour"])
        shape.append(details["shape"])
    return float(np.mean(colour)), float(np.mean(shape))


def test_bundled_hiar_continues_a_real_clip_with_its_objects():
    """Video extension (issue 12): after a real clip of the world, the first generated segment keeps
    the clip's colours and shapes; random weights of the same model do not."""
    from hiar.world.shapes import default_world

    specs = [default_world().sample_spec((12345, i)) for i in range(6)]  # held-out prompts
    trained = continuation_details(load_model(bundled_model_path("hiar")).eval(), specs)
    torch.manual_seed(0)
    random = continuation_details(build_model("toy").eval(), specs)
    # measured: trained colour 0.54, shape 0.18; random 0.11, 0.06 (the student of real_guidance 2.0
    # kept more of the clip's colours, 0.72: guidance on the real score pulled harder to the prompt's)
    assert trained[0] >= 0.4 and random[0] < 0.25, (trained, random)
    assert trained[1] > random[1] + 0.1, (trained, random)
