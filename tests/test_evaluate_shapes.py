"""scripts/evaluate_shapes.py on tiny runs: random `toy` models, 2 prompts, a few frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hiar.checkpoint import save_model
from hiar.model import build_model
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


ev = load_script("evaluate_shapes")


@pytest.fixture(scope="module")
def random_toy(tmp_path_factory) -> Path:
    """The shapes model size (`toy`, 3 channels) with random weights, in hiar's format."""
    torch.manual_seed(0)
    model = build_model("toy").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return save_model(model, tmp_path_factory.mktemp("models") / "random.safetensors",
                      metadata={"stage": "dmd", "step": "7", "commit": "abc123"})


@pytest.fixture(scope="module")
def tiny_run(random_toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    argv = ["--model", f"rnd={random_toy}:hiar", "--no-teacher", "--prompts", "2", "--frames", "6",
            "--out", str(out / "json"), "--figures", str(out / "fig"), "--no-progress"]
    assert ev.main(argv) == 0
    return out, argv


def test_held_out_specs_are_fixed_and_disjoint_from_training_draws():
    from hiar.world.shapes import ShapesDataset, default_world

    world = default_world()
    a = ev.held_out_specs(world, 4)
    assert a == ev.held_out_specs(world, 4) and len(a) == 4 and ev.DEFAULT_PROMPTS >= 32
    train = {ShapesDataset(seed=s).spec(i) for s in range(5) for i in range(4)}
    assert not set(a) & train


def test_tiny_run_writes_json_with_expected_keys(tiny_run, random_toy):
    out, _ = tiny_run
    files = sorted(p.name for p in (out / "json").glob("*.json"))
    assert files == ["real-f6.json", "rnd-f6.json"]
    d = json.loads((out / "json" / "rnd-f6.json").read_text())
    for key in ("schema", "label", "kind", "model_path", "model_sha256", "method", "frames", "prompts", "seeds",
                "model_metadata", "sampler", "prompt_specs", "code", "scores", "segments", "drift", "per_video"):
        assert key in d, key
    assert d["frames"] == 6 and d["method"] == "hiar" and d["seeds"] == [0, 1] and len(d["prompts"]) == 2
    assert d["prompt_specs"] == [[12345, 0], [12345, 1]]
    assert d["model_metadata"]["stage"] == "dmd" and d["model_metadata"]["steps"] == "7"
    assert d["model_metadata"]["commit"] == "abc123" and "commit" in d["code"]
    assert d["device"] == "cpu"  # where the videos were sampled (not part of a result's identity)
    assert d["sampler"]["window"] == 21 and d["sampler"]["context"] == "output" and d["sampler"]["order"] == "diagonal"
    for k in ("semantic", "dynamic", "quality", "total"):
        assert set(d["scores"][k]) == {"mean", "std"}
    # 6 frames: too short for 5 drift segments and for per-segment curves; said so, not faked
    assert d["drift"]["score"] is None and "too short" in d["drift"]["note"] and d["segments"] == {}
    assert all(b.endswith("(stand-in)") for s, b in d["drift"]["backends"].items() if s.startswith(("quality", "coherence")))
    video = np.load(out / "json" / "frames" / "rnd-f6.npz")["video"]
    assert video.shape == (6, 32, 32, 3) and video.dtype == np.uint8
    assert (out / "fig" / "contact-f6.png").is_file()


def test_real_clips_score_high_and_a_random_model_low(tiny_run):
    out, _ = tiny_run
    real = json.loads((out / "json" / "real-f6.json").read_text())
    rnd = json.loads((out / "json" / "rnd-f6.json").read_text())
    assert real["kind"] == "real" and real["seeds"] is None and real["model_path"] is None
    assert real["scores"]["semantic"]["mean"] > 0.85
    assert rnd["scores"]["semantic"]["mean"] < 0.3
    assert rnd["scores"]["total"]["mean"] < real["scores"]["total"]["mean"] - 0.4


def test_resume_skips_existing_and_refuses_other_settings(tiny_run, capsys):
    out, argv = tiny_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "json").glob("*.json")}
    assert ev.main(argv + ["--no-figures"]) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "json").glob("*.json")} == before
    with pytest.raises(SystemExit, match="other settings"):
        ev.main([*argv[:argv.index("--prompts")], "--prompts", "1", *argv[argv.index("--prompts") + 2:]])
    assert ev.main(argv + ["--force", "--no-real", "--no-figures"]) == 0
    assert "1 written, 0 skipped" in capsys.readouterr().err


def test_drift_and_segments_on_a_longer_video(random_toy, tmp_path):
    argv = ["--model", f"sf={random_toy}:self-forcing", "--no-teacher", "--no-real", "--prompts", "2", "--frames", "15",
            "--out", str(tmp_path / "json"), "--figures", str(tmp_path / "fig"), "--no-progress"]
    assert ev.main(argv) == 0
    d = json.loads((tmp_path / "json" / "sf-f15.json").read_text())
    assert d["sampler"]["context"] == "clean" and d["sampler"]["order"] == "block_first"
    assert d["drift"]["score"]["mean"] >= 0 and set(d["drift"]["slopes"]) == set(d["drift"]["backends"])
    assert all(len(v) == 5 for v in d["drift"]["segment_values"].values())
    assert all(len(d["segments"][k]) == 5 for k in ("semantic", "dynamic", "quality", "total"))
    assert (tmp_path / "fig" / "drift-f15.png").is_file() and (tmp_path / "fig" / "shapes-f15.png").is_file()


def test_sample_teacher_is_a_guided_euler_ode(random_toy):
    """Shape, seed determinism, and the step: one Euler step on the guided velocity (uncond = zeros)."""
    from hiar import schedule
    from hiar.checkpoint import load_model
    from hiar.sampling import NoiseBank

    model = load_model(random_toy).eval()
    text = torch.randn(2, 4, 64)
    x = ev.sample_teacher(model, text, [3, 4], (3, 32, 32), num_frames=3, steps=1, guidance=3.0)
    assert x.shape == (2, 3, 3, 32, 32)
    assert torch.equal(x, ev.sample_teacher(model, text, [3, 4], (3, 32, 32), num_frames=3, steps=1, guidance=3.0))
    noise = NoiseBank([3, 4], (3, 3, 32, 32))(0, 0)
    levels = schedule.uniform_levels(1, shift=5.0)
    with torch.no_grad():
        t = torch.full((2,), 1000.0)
        vc, vu = model(noise, t, text), model(noise, t, torch.zeros_like(text))
    expected = schedule.euler(noise, vu + 3.0 * (vc - vu), float(levels[0]), float(levels[1]))
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)
    assert len(schedule.uniform_levels(ev.TEACHER_STEPS, shift=ev.TEACHER_SHIFT)) == 31 and ev.TEACHER_GUIDANCE == 3.0


def test_sample_teacher_renoise_is_the_students_transition(random_toy):
    """transition="renoise": clean estimate, then the seed's own fresh noise (NoiseBank step j + 1) to the
    next level; one step (to sigma 0) is the Euler step, two are not; a bad name is refused."""
    from hiar import schedule
    from hiar.checkpoint import load_model
    from hiar.sampling import NoiseBank

    model = load_model(random_toy).eval()
    text = torch.randn(2, 4, 64)
    kw = dict(num_frames=3, guidance=3.0)
    one = [ev.sample_teacher(model, text, [3, 4], (3, 32, 32), steps=1, transition=tr, **kw) for tr in ("euler", "renoise")]
    torch.testing.assert_close(one[0], one[1], rtol=1e-5, atol=1e-5)
    x = ev.sample_teacher(model, text, [3, 4], (3, 32, 32), steps=2, transition="renoise", **kw)
    assert not torch.allclose(x, ev.sample_teacher(model, text, [3, 4], (3, 32, 32), steps=2, **kw), atol=1e-3)
    bank = NoiseBank([3, 4], (3, 3, 32, 32))
    s0, s1, _ = (float(s) for s in schedule.uniform_levels(2, shift=ev.TEACHER_SHIFT))
    with torch.no_grad():
        def guided(z, sigma):
            t = torch.full((2,), schedule.timestep(sigma))
            vc, vu = model(z, t, text), model(z, t, torch.zeros_like(text))
            return vu + 3.0 * (vc - vu)
        z = bank(0, 0)
        z = schedule.renoise(z - s0 * guided(z, s0), bank(0, 1), s1)
        expected = z - s1 * guided(z, s1)
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="transition must be euler or renoise, got 'ddim'"):
        ev.sample_teacher(model, text, [3, 4], (3, 32, 32), steps=1, transition="ddim", **kw)


def test_model_argument_parsing(random_toy):
    e = ev.parse_model_arg(f"mine={random_toy}:causvid")
    assert (e.label, e.path, e.method, e.kind) == ("mine", str(random_toy), "causvid", "student")
    for bad, match in ((f"mine={random_toy}", "LABEL=PATH:METHOD"), (f"mine={random_toy}:nope", "unknown method"),
                       (f"real={random_toy}:hiar", "reserved"), (f"a/b={random_toy}:hiar", "label")):
        with pytest.raises(ValueError, match=match):
            ev.parse_model_arg(bad)
    with pytest.raises(FileNotFoundError):
        ev.parse_model_arg("mine=/nonexistent.safetensors:hiar")


def test_a_shorter_length_is_the_first_frames_of_the_longest_run(random_toy):
    """What lets run_job sample a student once at the longest length: the sampler is causal."""
    from hiar.checkpoint import load_model
    from hiar.generate import shapes_world

    model = load_model(random_toy).eval()
    world = shapes_world(model)
    prompts, seeds = ["a red circle", "a fast blue square"], [3, 4]
    for method in ("hiar", "self-forcing"):
        long = ev.sample_students(model, world, prompts, seeds, 15, method, window=3)
        short = ev.sample_students(model, world, prompts, seeds, 7, method, window=3)
        assert torch.equal(long[:, :, :7], short)


def test_student_progress_counts_every_block_of_every_batch(random_toy, monkeypatch):
    """A long student job shows its blocks (batches of prompts run one after the other), only when
    asked, and the bar does not change the videos."""
    import tqdm as tqdm_module

    from hiar.checkpoint import load_model
    from hiar.generate import shapes_world

    bars = []

    class Recorder(tqdm_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.shown = not self.disable  # closing a bar disables it
            bars.append(self)

    monkeypatch.setattr(tqdm_module, "tqdm", Recorder)
    model = load_model(random_toy).eval()
    world = shapes_world(model)
    prompts, seeds = ["a red circle", "a fast blue square", "a green triangle"], [3, 4, 5]
    quiet = ev.sample_students(model, world, prompts, seeds, 7, "hiar", window=3, batch_size=2)
    shown = ev.sample_students(model, world, prompts, seeds, 7, "hiar", window=3, batch_size=2, progress=True)
    assert torch.equal(quiet, shown)
    assert [b.shown for b in bars] == [False, True]
    # 7 frames are 3 blocks of 3 frames, for each of the 2 batches
    assert (bars[1].total, bars[1].n, bars[1].desc) == (6, 6, "hiar blocks")


def test_a_kv_sink_is_read_from_the_third_block_on_and_recorded(random_toy, tmp_path):
    """--sink reaches the sampler: with a 6-frame window (a block and the one before it) the first two
    blocks read the same context with or without a 3-frame sink, and from the third block on the sink
    changes what is drawn (a trained model: random weights' zero-initialised head ignores its context);
    the JSON records it."""
    from hiar.checkpoint import load_model
    from hiar.generate import bundled_model_path, shapes_world

    model = load_model(bundled_model_path("hiar")).eval()
    world = shapes_world(model)
    plain, sunk = (ev.sample_students(model, world, ["a red circle"], [0], 9, "hiar", window=6, sink=sink)
                   for sink in (0, 3))
    assert torch.equal(plain[:, :, :6], sunk[:, :, :6])
    assert not torch.equal(plain[:, :, 6:], sunk[:, :, 6:])
    argv = ["--model", f"rnd={random_toy}:hiar", "--no-teacher", "--no-real", "--prompts", "1", "--frames", "6",
            "--window", "6", "--sink", "3", "--out", str(tmp_path), "--no-figures", "--no-progress"]
    assert ev.main(argv) == 0
    sampler = json.loads((tmp_path / "rnd-f6.json").read_text())["sampler"]
    assert (sampler["window"], sampler["sink"]) == (6, 3)


def test_transition_reaches_the_sampler_and_is_recorded(random_toy, tmp_path):
    """--transition euler: the students step between levels by Euler (the paper's Eq. 3) instead of
    renoising their x0 estimate; the videos are those of GridSampler with that setting, differ from the
    default's, and the JSON records it."""
    from hiar.checkpoint import load_model
    from hiar.generate import method_config, shapes_world
    from hiar.sampling import GridSampler, Transition

    model = load_model(random_toy).eval()
    world = shapes_world(model)
    renoised, stepped = (ev.sample_students(model, world, ["a red circle"], [0], 3, "hiar", transition=tr)
                         for tr in (None, "euler"))
    assert not torch.equal(renoised, stepped)
    text = world.text_encoder.encode(["a red circle"])
    with torch.no_grad():
        sampler = GridSampler(model, method_config("hiar", transition=Transition.EULER), text, seeds=[0],
                              latent_shape=world.latent_shape)
        reference = world.codec.decode(sampler.sample(1).float()).clamp(-1, 1)
    torch.testing.assert_close(stepped, reference[:, :, :3])
    argv = ["--model", f"rnd={random_toy}:hiar", "--no-teacher", "--no-real", "--prompts", "1", "--frames", "3",
            "--transition", "euler", "--out", str(tmp_path), "--no-figures", "--no-progress"]
    assert ev.main(argv) == 0
    assert json.loads((tmp_path / "rnd-f3.json").read_text())["sampler"]["transition"] == "euler"


def test_given_latents_are_each_videos_own_context(random_toy):
    """initial_latents: each prompt's video continues its own given block (sliced per batch), as
    GridSampler does with them, and reads it (a trained model: random weights ignore their context)."""
    from hiar.checkpoint import load_model
    from hiar.generate import bundled_model_path, shapes_world
    from hiar.sampling import GridSampler

    model = load_model(bundled_model_path("hiar")).eval()
    world = shapes_world(model)
    prompts, seeds = ["a red circle", "a fast blue square"], [3, 4]
    torch.manual_seed(0)
    given = torch.randn(2, world.latent_shape[0], 3, *world.latent_shape[1:])
    plain = ev.sample_students(model, world, prompts, seeds, 3, "hiar")
    continued = ev.sample_students(model, world, prompts, seeds, 3, "hiar", batch_size=1, initial_latents=given)
    assert not torch.equal(plain, continued)
    config = ev.student_config("hiar", window=ev.KV_WINDOW, sink=0, transition=None)
    for b in range(2):
        text = world.text_encoder.encode([prompts[b]])
        with torch.no_grad():
            sampler = GridSampler(model, config, text, seeds=[seeds[b]], latent_shape=world.latent_shape,
                                  initial_latents=given[b:b + 1])
            reference = world.codec.decode(sampler.sample(1).float()).clamp(-1, 1)
        torch.testing.assert_close(continued[b:b + 1], reference)


def test_parts_over_prompt_ranges_merge_into_the_whole_run(random_toy, tmp_path, capsys):
    """--first-prompt parts merged with --merge give the JSON one run over all the prompts writes
    (each prompt sampled alone, --batch-size 1, so batching cannot change a number)."""
    common = ["--model", f"sf={random_toy}:self-forcing", "--no-teacher", "--frames", "15", "--batch-size", "1",
              "--no-progress", "--no-figures"]
    assert ev.main([*common, "--prompts", "3", "--out", str(tmp_path / "whole")]) == 0
    assert ev.main([*common, "--prompts", "2", "--out", str(tmp_path / "a")]) == 0
    assert ev.main([*common, "--prompts", "1", "--first-prompt", "2", "--out", str(tmp_path / "b")]) == 0
    b = json.loads((tmp_path / "b" / "sf-f15.json").read_text())
    assert b["seeds"] == [2] and b["prompt_specs"] == [[12345, 2]]  # prompt 2 keeps its own spec and seed
    for label in ("sf", "real"):
        parts = [str(tmp_path / part / f"{label}-f15.json") for part in ("b", "a")]  # any order
        assert ev.main(["--merge", *parts, "--out", str(tmp_path / "merged"), "--no-figures"]) == 0
        whole = json.loads((tmp_path / "whole" / f"{label}-f15.json").read_text())
        merged = json.loads((tmp_path / "merged" / f"{label}-f15.json").read_text())
        for key in ("prompts", "seeds", "prompt_specs", "num_prompts", "scores", "segments", "drift", "per_video",
                    "model_sha256", "sampler"):
            assert merged[key] == whole[key], key  # the same sums in the same order: equal, not close
        assert [p["prompt_specs"] for p in merged["parts"]] == [[[12345, 2], [12345, 2]], [[12345, 0], [12345, 1]]]
        np.testing.assert_array_equal(np.load(tmp_path / "merged" / "frames" / f"{label}-f15.npz")["video"],
                                      np.load(tmp_path / "whole" / "frames" / f"{label}-f15.npz")["video"])
    # the merged file stands for the whole job: a run over all 3 prompts skips it
    assert ev.main([*common, "--prompts", "3", "--no-real", "--out", str(tmp_path / "merged")]) == 0
    assert "0 written, 1 skipped" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"prompt \[12345, 0\] is in both"):
        ev.merge_parts([tmp_path / "a" / "sf-f15.json", tmp_path / "whole" / "sf-f15.json"])
    with pytest.raises(SystemExit, match=r"differs from .* in label, kind, model_path, model_sha256, method"):
        ev.merge_parts([tmp_path / "a" / "sf-f15.json", tmp_path / "b" / "real-f15.json"])
    with pytest.raises(SystemExit, match=r"cannot read .*missing.json"):
        ev.merge_parts([tmp_path / "a" / "sf-f15.json", tmp_path / "missing.json"])


def test_rows_follow_their_model_to_a_copy_or_a_restated_copy_and_refuse_other_weights(tiny_run, tmp_path, capsys):
    """--moved-to points rows at a copy of the file they evaluated (so a run naming the copy skips them),
    or at a copy with the same weights and config but other metadata (taking its sha256 and metadata),
    and refuses other weights, or a move whose row file is gone; where the row was made is kept."""
    import shutil

    from hiar.checkpoint import load_model

    out, argv = tiny_run
    rows = tmp_path / "json"
    shutil.copytree(out / "json", rows)
    row = rows / "rnd-f6.json"
    source = Path(argv[argv.index("--model") + 1].split("=", 1)[1].rsplit(":", 1)[0])
    moved = tmp_path / "bundled" / "student.safetensors"
    moved.parent.mkdir()
    shutil.copyfile(source, moved)
    before = json.loads(row.read_text())
    assert ev.main(["--moved-to", str(moved), str(row)]) == 0
    after = json.loads(row.read_text())
    assert after["model_path"] == ev.display_path(str(moved)) != before["model_path"]
    assert after["moved_from"] == {"model_path": before["model_path"], "model_sha256": before["model_sha256"]}
    assert {k: v for k, v in after.items() if k not in ("model_path", "moved_from")} == \
        {k: v for k, v in before.items() if k != "model_path"}
    capsys.readouterr()
    moved_argv = [a.replace(str(source), str(moved)) for a in argv]
    assert ev.main([*moved_argv[:moved_argv.index("--out")], "--out", str(rows), "--no-real", "--no-figures",
                    "--no-progress"]) == 0
    assert "0 written, 1 skipped" in capsys.readouterr().err

    model = load_model(source)
    restated = save_model(model, tmp_path / "restated.safetensors", metadata={"stage": "dmd", "step": "7", "seed": "0"})
    assert ev.main(["--moved-to", str(restated), str(row)]) == 0
    again = json.loads(row.read_text())
    assert again["model_sha256"] == ev.file_sha256(str(restated)) != before["model_sha256"]
    assert again["model_metadata"]["seed"] == "0" and before["model_metadata"]["seed"] is None
    assert again["moved_from"] == after["moved_from"] and again["scores"] == before["scores"]

    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    other = save_model(model, tmp_path / "other.safetensors", metadata={"stage": "dmd", "step": "7"})
    with pytest.raises(SystemExit, match=r"sha256 [0-9a-f]{12}, .*other.safetensors has [0-9a-f]{12} and other weights"):
        ev.main(["--moved-to", str(other), str(row)])
    restated.unlink()
    with pytest.raises(SystemExit, match=r"restated.safetensors \(the row's file\) is gone or changed"):
        ev.main(["--moved-to", str(moved), str(row)])
    with pytest.raises(SystemExit, match="is not a .* row of a model"):
        ev.main(["--moved-to", str(moved), str(rows / "real-f6.json")])
    with pytest.raises(SystemExit, match="model file not found"):
        ev.main(["--moved-to", str(tmp_path / "nowhere.safetensors"), str(row)])
