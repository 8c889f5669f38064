"""The shapes world: rendering, specs, prompts, dataset, toy text encoder and identity codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiar.config import ConfigError
from hiar.world import LatentCodec, TextEncoder
from hiar.world.shapes import (IdentityCodec, ObjectTarget, PromptTarget, ShapesDataset, ShapesTextEncoder,
                               ShapesWorld, ShapesWorldConfig, render_clip)


@pytest.fixture(scope="module")
def world():
    return ShapesWorld()


def test_render_shape_range_and_determinism(world):
    spec = world.sample_spec(3)
    a, ann = world.render(spec, 21)
    b, _ = world.render(world.sample_spec(3), 21)
    assert a.shape == (3, 21, 32, 32) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert ann.centers.shape == (21, len(spec.objects), 2)
    assert render_clip(spec, 21)[0].equal(a)


def test_render_in_pieces_equals_render_at_once(world):
    spec = world.sample_spec(11)
    whole, ann = world.render(spec, 40)
    piece, ann2 = world.render(spec, 15, start=25)
    assert torch.equal(whole[:, 25:], piece)
    np.testing.assert_allclose(ann.centers[25:], ann2.centers)


def test_objects_bounce_and_stay_inside(world):
    c = world.config
    for seed in range(12):
        spec = world.sample_spec(seed)
        _, ann = world.render(spec, 150)
        for k, obj in enumerate(spec.objects):
            half = ann.extents[k] / 2
            xy = ann.centers[:, k]
            assert (xy[:, 0] >= half - 1e-9).all() and (xy[:, 0] <= c.width - half + 1e-9).all()
            assert (xy[:, 1] >= half - 1e-9).all() and (xy[:, 1] <= c.height - half + 1e-9).all()
            step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
            # straight-line motion at the asked speed, shortened only at a bounce
            assert np.median(step) == pytest.approx(c.speed_px(obj.speed), rel=1e-6)
            assert step.max() <= c.speed_px(obj.speed) + 1e-6


def test_objects_drawn_where_annotated_with_antialiasing(world):
    spec = world.sample_spec(5)
    frames, ann = world.render_numpy(spec, 6)
    bg = np.asarray(world.config.backgrounds[spec.background], np.float32)
    for k, obj in enumerate(spec.objects):
        colour = np.asarray(world.config.colors[obj.color], np.float32)
        # the bounding-box centre of squares and circles is inside the object
        if obj.shape != "triangle":
            x, y = ann.centers[0, k]
            assert np.abs(frames[0, int(y), int(x)] - colour).max() < 1.0 or len(spec.objects) > 1
    # anti-aliased: some pixels are strictly between the background and an object colour
    distance_to_palette = np.min([np.abs(frames - np.asarray(c, np.float32)).max(-1)
                                  for c in [*world.config.colors.values(), bg]], axis=0)
    assert (distance_to_palette > 20).any()


def test_spec_sampling_covers_the_world(world):
    specs = [world.sample_spec(s) for s in range(300)]
    counts = {len(s.objects) for s in specs}
    assert counts == {1, 2, 3}
    assert {o.shape for s in specs for o in s.objects} == set(world.config.shapes)
    assert {o.color for s in specs for o in s.objects} == set(world.config.colors)
    assert {s.background for s in specs} == set(world.config.backgrounds)
    assert all(len({o.color for o in s.objects}) == len(s.objects) for s in specs)  # distinct colours


def test_prompt_round_trip(world):
    for seed in range(50):
        spec = world.sample_spec(seed)
        prompt = world.prompt(spec)
        target = world.parse_prompt(prompt)
        assert target.background == spec.background
        assert [(o.shape, o.color, o.speed, o.size) for o in target.objects] == \
            [(o.shape, o.color, o.speed, None) for o in spec.objects]
    assert world.prompt(world.sample_spec(0)).endswith("background")


def test_prompt_grammar_examples(world):
    t = world.parse_prompt("a fast red circle and a slow blue square on a dark background")
    assert t == PromptTarget((ObjectTarget("circle", "red", "fast"), ObjectTarget("square", "blue", "slow")), "dark")
    t = world.parse_prompt("A large green triangle, a white circle and a small slow yellow square.")
    assert [o.size for o in t.objects] == ["large", None, "small"] and t.background is None
    with_sizes = ShapesWorld(ShapesWorldConfig(prompt_sizes=True))
    spec = with_sizes.sample_spec(4)
    assert with_sizes.parse_prompt(with_sizes.prompt(spec)) == with_sizes.target(spec)


@pytest.mark.parametrize("prompt, fragment", [
    ("a red dog", "unknown word 'dog'"),
    ("a red circle on a dark", "background"),
    ("a red and a blue square", "names no shape"),
    ("a circle red", "cannot place"),
    ("a red circle and", "empty object"),
])
def test_bad_prompts_are_refused_clearly(world, prompt, fragment):
    with pytest.raises(ValueError, match=fragment):
        world.parse_prompt(prompt)


def test_unknown_word_lists_the_vocabulary(world):
    with pytest.raises(ValueError) as err:
        world.tokenize("a purple elephant")
    message = str(err.value)
    assert "elephant" in message
    for word in ("circle", "square", "triangle", "red", "fast", "background"):
        assert word in message


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="frame_size"):
        ShapesWorldConfig.from_dict({"frame_size": 32})
    with pytest.raises(ConfigError, match="colors"):
        ShapesWorldConfig.from_dict({"colors": {"red": [300, 0, 0]}})
    with pytest.raises(ConfigError, match="max_objects"):
        ShapesWorldConfig.from_dict({"max_objects": 9})
    cfg = ShapesWorldConfig.from_dict({"height": 48, "width": 64})
    frames, _ = ShapesWorld(cfg).render(ShapesWorld(cfg).sample_spec(0), 5)
    assert frames.shape == (3, 5, 48, 64)


def test_dataset_is_seeded_and_shards_without_overlap():
    ds = ShapesDataset(num_frames=6, seed=7)
    first = [item[1] for _, item in zip(range(8), ds)]
    again = [item[1] for _, item in zip(range(8), ShapesDataset(num_frames=6, seed=7))]
    other = [item[1] for _, item in zip(range(8), ShapesDataset(num_frames=6, seed=8))]
    assert first == again and first != other
    frames, prompt = ds.clip(3)
    assert frames.shape == (3, 6, 32, 32) and prompt == first[3]
    # two ranks: disjoint, and together the single-process stream
    r0 = [x[1] for x in ShapesDataset(6, seed=7, rank=0, world_size=2, length=8)]
    r1 = [x[1] for x in ShapesDataset(6, seed=7, rank=1, world_size=2, length=8)]
    assert r0 == first[0::2] and r1 == first[1::2]
    # resumable: start skips ahead
    assert [p for _, p in ShapesDataset(6, seed=7, start=5, length=3)] == first[5:8]
    with pytest.raises(ValueError, match="rank"):
        ShapesDataset(rank=2, world_size=2)


def test_dataset_with_dataloader_workers():
    ds = ShapesDataset(num_frames=4, seed=1, length=12)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    prompts = [p for _, batch in loader for p in batch]
    frames = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))[0]
    assert frames.shape == (3, 3, 4, 32, 32)
    assert sorted(prompts) == sorted(ds.clip(i)[1] for i in range(12))


def test_text_encoder_shapes_padding_and_order():
    enc = ShapesTextEncoder()
    assert isinstance(enc, TextEncoder)
    out = enc.encode(["a fast red circle on a dark background", "a slow red circle on a dark background",
                      "a red fast circle on a dark background"])
    assert out.shape == (3, 16, 64)
    # fillers dropped: fast red circle dark background = 5 tokens, zero after
    assert (out[0, :5].abs().sum(-1) > 0).all() and (out[0, 5:] == 0).all()
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[0], out[2])  # word order matters
    assert torch.equal(out, ShapesTextEncoder().encode([
        "a fast red circle on a dark background", "a slow red circle on a dark background",
        "a red fast circle on a dark background"]))


def test_text_encoder_tables_are_fixed_numbers():
    # Drawn with numpy's default_rng([SEED, crc32(word)]): the same numbers on every machine, torch
    # version and vocabulary. A change here silently invalidates every trained shapes model.
    enc = ShapesTextEncoder(dim=8, max_len=4)
    np.testing.assert_allclose(enc.word_vectors[enc.index["red"]][:4].numpy(),
                               [0.2855624, 0.7448601, -0.1656525, 1.8949594], rtol=1e-6)
    np.testing.assert_allclose(enc.word_vectors[enc.index["circle"]][:4].numpy(),
                               [-1.747445, -0.2503504, 0.5895184, -2.1773567], rtol=1e-6)
    bigger = ShapesTextEncoder(dim=8, max_len=4, world=ShapesWorld(ShapesWorldConfig(colors={"red": (200, 0, 0), "cyan": (0, 200, 200)}, max_objects=2)))
    assert torch.equal(bigger.word_vectors[bigger.index["red"]], enc.word_vectors[enc.index["red"]])


def test_text_encoder_errors():
    enc = ShapesTextEncoder(max_len=4)
    with pytest.raises(ValueError, match="vocabulary"):
        enc.encode(["a red zebra"])
    with pytest.raises(ValueError, match="max_len=4"):
        enc.encode(["a fast red circle and a slow blue square"])
    longest = "a small fast red circle, a small slow blue square and a large fast green triangle on a dark background"
    assert ShapesTextEncoder().encode([longest]).shape == (1, 16, 64)


def test_identity_codec():
    codec = IdentityCodec()
    assert isinstance(codec, LatentCodec)
    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    assert torch.equal(codec.decode(codec.encode(x)), x)
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (3, 1, 1)
    with pytest.raises(ValueError, match="B, 3, F, H, W"):
        codec.encode(torch.zeros(3, 5, 32, 32))
