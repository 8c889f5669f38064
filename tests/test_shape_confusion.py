"""scripts/shape_confusion.py: real clips read as the asked shapes, a clip drawn with the wrong shapes
lands off the diagonal, and a missing checkpoint is named in one line."""

from __future__ import annotations

import dataclasses

import numpy as np

from hiar.eval.shapes_scores import ShapesScorer
from hiar.world.shapes import default_world
from tests.helpers import load_script

sc = load_script("shape_confusion")
WORLD = default_world()
SCORER = ShapesScorer(WORLD)


def specs(n):
    return [WORLD.sample_spec((sc.PROMPT_SEED, i)) for i in range(n)]


def test_real_clips_draw_the_asked_shapes():
    s = specs(8)
    r = sc.confusion(sc.videos_of("real", WORLD, s, 3, steps=0, shift=1.0, guidance=0.0), s, SCORER)
    counts = np.array(r["confusion"])
    assert counts.sum() == sum(3 * len(x.objects) for x in s) * (1 - r["missing"])
    assert r["accuracy"] > 0.7  # well above chance (1/3)
    f = r["fill_mean"]
    assert f["square"] > f["circle"] > f["triangle"]


def test_every_object_drawn_as_a_circle_lands_in_the_circle_column():
    s = specs(6)
    as_circles = [dataclasses.replace(x, objects=tuple(dataclasses.replace(o, shape="circle") for o in x.objects))
                  for x in s]
    videos = sc.videos_of("real", WORLD, as_circles, 3, steps=0, shift=1.0, guidance=0.0)
    counts = np.array(sc.confusion(videos, s, SCORER)["confusion"])  # scored against what was asked
    asked = np.array([sum(3 for x in s for o in x.objects if o.shape == name) for name in sc.SHAPES])
    assert (counts[1:].sum(axis=1) > 0).all()  # squares and triangles were asked
    assert (counts[:, 0] >= 0.7 * counts.sum(axis=1)).all()  # drawn: circle, whatever was asked
    assert (counts.sum(axis=1) <= asked).all()


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert sc.main([str(tmp_path / "none.safetensors"), "--prompts", "1", "--frames", "3"]) == 1
    assert capsys.readouterr().err.strip() == f"shape_confusion: {tmp_path / 'none.safetensors'}: no such checkpoint"


def test_the_teachers_clean_estimate_of_noised_real_clips_is_close_to_them():
    from hiar.generate import bundled_checkpoint

    s = specs(6)
    clips = sc.videos_of("real", WORLD, s, 3, steps=0, shift=1.0, guidance=0.0)
    real = sc.confusion(clips, s, SCORER)
    teacher = str(bundled_checkpoint("shapes-teacher"))
    # at sigma 0.02, x_t - sigma v is the clip up to 2 % of a velocity: the shapes stay
    barely = sc.videos_of(teacher, WORLD, s, 3, steps=0, shift=1.0, guidance=0.0, denoise=0.02)
    assert sc.confusion(barely, s, SCORER)["accuracy"] >= real["accuracy"] - 0.1
    # at sigma 0.3 the noisy input is ~45/255 off on average; the trained teacher's estimate is ~5 off
    # (a wrong sign or level would leave it farther off than the input)
    estimate = sc.videos_of(teacher, WORLD, s, 3, steps=0, shift=1.0, guidance=0.0, denoise=0.3)
    assert np.abs(estimate.astype(float) - clips).mean() < 20


def test_shape_words_asks_one_object_as_every_shape():
    per_shape = [sc.one_object_specs(WORLD, 4, shape) for shape in sc.SHAPES]
    for i in range(4):
        objs = [specs[i].objects for specs in per_shape]
        assert all(len(o) == 1 for o in objs)
        assert [o[0].shape for o in objs] == list(sc.SHAPES)
        assert len({dataclasses.replace(o[0], shape="circle") for o in objs}) == 1  # nothing else differs
    r = sc.shape_word_effect("real", WORLD, SCORER, 6, 3, steps=0, shift=1.0, guidance=0.0)
    assert np.array(r["confusion"]).sum(axis=1).tolist() == [18, 18, 18]  # 6 objects x 3 frames per asked shape
    assert r["accuracy"] > 0.9
    assert r["fill_mean"]["square"] > r["fill_mean"]["circle"] > r["fill_mean"]["triangle"]


def test_shape_words_sheet_pictures_each_asked_shape(tmp_path):
    rows = {}
    sc.shape_word_effect("real", WORLD, SCORER, 3, 3, rows, steps=0, shift=1.0, guidance=0.0)
    assert list(rows) == [f"real {s}" for s in sc.SHAPES]
    per_shape = [sc.one_object_specs(WORLD, 3, shape) for shape in sc.SHAPES]
    for shape, specs in zip(sc.SHAPES, per_shape):  # the middle frame of each object's clip, in order
        np.testing.assert_array_equal(rows[f"real {shape}"], sc.ev.real_clips(WORLD, specs, 3)[:, 1])
    out = tmp_path / "words.png"
    assert sc.main(["real", "--prompts", "2", "--frames", "3", "--shape-words", "--sheet", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).size[1] > 3 * 64  # three rows of 64-pixel cells


def test_sheet_needs_shape_words(capsys):
    assert sc.main(["real", "--sheet", "x.png"]) == 2
    assert "--sheet needs --shape-words" in capsys.readouterr().err
