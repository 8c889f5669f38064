"""Timed prompt scripts (`hiar generate --prompt-script / --prompt-at`): times to blocks through
the world's fps and codec, one line per bad input, the Python API, and a bundled shapes model that
follows a switch (the per-segment semantic score against the second prompt rises after it)."""

from __future__ import annotations

import pytest
import torch

from hiar.cli.main import main
from hiar.generate import generate, method_config, shapes_world
from hiar.prompts import PromptScript, block_start_frame, first_block_at, prompt_at_script, read_prompt_script
from hiar.sampling import PromptSchedule, SwitchPolicy

RED, BLUE = "a red circle on a dark background", "a blue square on a dark background"


def test_a_script_file_is_seconds_and_prompts(tmp_path):
    path = tmp_path / "script.txt"
    path.write_text("# the story\n\n0.75: a blue square: big\n  2 : a green triangle \n")
    script = read_prompt_script(path, RED)
    assert script.prompts == [RED, "a blue square: big", "a green triangle"]
    assert script.switches[0][0] == 0.75 and script.switches[1][0] == 2.0
    assert script.sources == (f"{path} line 3", f"{path} line 4")


@pytest.mark.parametrize(
    "seconds, temporal_factor, continuing, block",
    [
        # shapes: 1 video frame per latent frame, blocks of 3 frames at 16 frames/s (every 0.1875 s)
        (0.75, 1, False, 4), (0.7, 1, False, 4), (0.01, 1, False, 1), (0.1875, 1, False, 1),
        # Wan's causal VAE: block n >= 1 starts at frame 1 + 4 (3n - 1) = 12 n - 3 (frame 9, 21, ...)
        (0.5, 4, False, 1), (0.5625, 4, False, 1), (0.57, 4, False, 2),
        # ... continuing given frames: each latent frame is 4 frames, block n starts at frame 12 n
        (0.5, 4, True, 1), (0.76, 4, True, 2),
    ],
)
def test_a_switch_is_at_the_first_block_starting_at_or_after_its_time(seconds, temporal_factor, continuing, block):
    n = first_block_at(seconds, fps=16, temporal_factor=temporal_factor, block_frames=3, continuing=continuing)
    assert n == block
    assert block_start_frame(n, temporal_factor, 3, continuing) >= seconds * 16 - 1e-9
    assert block_start_frame(n - 1, temporal_factor, 3, continuing) < seconds * 16


def test_the_schedule_of_a_script():
    script = prompt_at_script(RED, [("0.75", BLUE), ("1", "a green triangle")])
    assert script.schedule(48, fps=16, temporal_factor=1, block_frames=3) == PromptSchedule((0, 4, 6))
    assert PromptScript(RED).schedule(48, fps=16, temporal_factor=1, block_frames=3) == PromptSchedule()


@pytest.mark.parametrize(
    "switches, message",
    [
        ([(-1, BLUE)], "a switch time must be a number of seconds after 0"),
        ([(float("nan"), BLUE)], "a switch time must be a number of seconds after 0"),
        ([(1, BLUE), (0.5, RED)], "switch times must increase, got 0.5 s after 1 s"),
        ([(1, BLUE), (1, RED)], "switch times must increase"),
        ([(1, "  ")], "the prompt is empty"),
    ],
)
def test_bad_scripts_are_refused_naming_the_switch(switches, message):
    with pytest.raises(ValueError, match=message):
        PromptScript(RED, tuple(switches))


def test_a_switch_that_would_never_be_shown_is_refused():
    late = PromptScript(RED, ((2.9, BLUE),))  # 48 frames = 3 s; the last block starts at frame 45 (2.8125 s)
    with pytest.raises(ValueError, match="switch at 2.9 s: the video ends before 2.9 s"):
        late.schedule(48, fps=16, temporal_factor=1, block_frames=3)
    close = PromptScript(RED, ((0.2, BLUE), (0.3, RED)))  # both at block 2 (0.375 s)
    with pytest.raises(ValueError, match="switch at 0.3 s: no block starts between the previous switch and 0.3 s"):
        close.schedule(48, fps=16, temporal_factor=1, block_frames=3)


def test_generate_takes_a_prompt_a_script_or_pairs():
    from hiar.checkpoint import load_model
    from hiar.generate import bundled_model_path

    model = load_model(bundled_model_path("hiar")).eval()  # a random toy model's zero head ignores the text
    world = shapes_world(model)
    cfg = method_config("hiar", window=21)
    plain, _ = generate(model, world, RED, num_frames=12, config=cfg, progress=False)
    pairs, report = generate(model, world, [(0, RED), (0.5, BLUE)], num_frames=12, config=cfg, progress=False)
    script, _ = generate(model, world, PromptScript(RED, ((0.5, BLUE),)), num_frames=12, config=cfg, progress=False)
    assert torch.equal(pairs, script)
    assert torch.equal(pairs[:, :9], plain[:, :9])  # blocks 0-2; block 3 (frame 9 = 0.5625 s) is the first under BLUE
    assert not torch.equal(pairs, plain)
    _, h, w = world.latent_shape
    per_frame = (h // model.cfg.patch_size[1]) * (w // model.cfg.patch_size[2])
    assert report.recache_calls == 4 and report.recache_tokens == 4 * 2 * 3 * per_frame  # blocks 0, 1 again in each stage
    with pytest.raises(ValueError, match="starts with the prompt at 0 s"):
        generate(model, world, [(0.5, BLUE)], num_frames=12, config=cfg, progress=False)


@pytest.mark.parametrize("switch", ["kv-recache", "kv-keep"])
def test_cli_switches_prompts_and_reports_the_cost(tmp_path, capsys, toy_checkpoint, switch):
    script = tmp_path / "script.txt"
    script.write_text(f"0.5: {BLUE}\n")
    out = tmp_path / "v.mp4"
    code = main(["generate", RED, "--prompt-script", str(script), "--switch", switch, "--frames", "15", "--quiet",
                 "--checkpoint", str(toy_checkpoint), "-o", str(out)])
    printed = capsys.readouterr().err
    assert code == 0 and out.exists(), printed
    assert f"prompt 2 from block 3: '{BLUE}' (caches at the switch: {switch})" in printed
    if switch == "kv-recache":
        assert "KV re-cache emptied 4 caches and ran 1536 query tokens again" in printed
    else:
        assert "caches kept (kv-keep): no extra model calls or tokens" in printed


def test_a_bundled_model_follows_a_switch_in_its_per_segment_semantic_score():
    """Red circle for 12 frames, then blue square: against the blue square, the second half scores
    higher than the first; against the red circle, lower (means over four seeds: one seed's video
    can miss its first prompt's object)."""
    import numpy as np

    from hiar.checkpoint import load_model
    from hiar.eval.shapes_scores import ShapesScorer
    from hiar.generate import bundled_model_path

    model = load_model(bundled_model_path("hiar")).eval()
    config = method_config("hiar", window=21, switch=SwitchPolicy.KV_RECACHE)
    scorer = ShapesScorer(segments=2)  # frames 0-11 (red circle), 12-23 (blue square from block 4 on)
    blue, red = [], []
    for seed in range(4):
        video, _ = generate(model, shapes_world(model), [(0, RED), (0.75, BLUE)], num_frames=24, config=config,
                            seed=seed, progress=False)
        blue.append(scorer.score(video, BLUE).segments["semantic"])
        red.append(scorer.score(video, RED).segments["semantic"])
    (before_blue, after_blue), (before_red, after_red) = np.mean(blue, axis=0), np.mean(red, axis=0)
    assert after_blue > before_blue + 0.3, (before_blue, after_blue)  # measured: 0.40 -> 0.87
    assert after_red < before_red - 0.4, (before_red, after_red)  # measured: 1.00 -> 0.39


def test_cli_pipelined_switch_reports_the_planned_cost(tmp_path, capsys, toy_checkpoint):
    out = tmp_path / "v.mp4"
    code = main(["generate", RED, "--prompt-at", "0.5", BLUE, "--pipeline", "--frames", "15", "--quiet",
                 "--checkpoint", str(toy_checkpoint), "-o", str(out)])
    printed = capsys.readouterr().err
    assert code == 0 and out.exists(), printed
    assert "KV re-cache emptied 4 caches (one per rank and switch) and ran 1536 query tokens again" in printed
