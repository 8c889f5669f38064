"""``hiar eval drift`` and ``hiar eval shapes`` end to end on mp4 files."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hiar.cli.main import main
from hiar.eval import stats
from hiar.video import write_video
from hiar.world.shapes import ShapesWorld


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two methods: 'good' (real clips) and 'drifty' (the same clips with a growing green cast)."""
    root = tmp_path_factory.mktemp("videos")
    world = ShapesWorld()
    prompts = []
    for method in ("good", "drifty"):
        (root / method).mkdir()
    for i in range(2):
        spec = world.sample_spec(40 + i)
        frames, _ = world.render(spec, 40)
        write_video(root / "good" / f"v{i}.mp4", frames)
        x = stats.as_unit_frames(frames)
        ramp = torch.linspace(0, 1, len(x)).view(-1, 1, 1, 1)
        tinted = (x + 0.2 * ramp * torch.tensor([-0.5, 1.0, -0.5]).view(1, 3, 1, 1)).clamp(0, 1)
        write_video(root / "drifty" / f"v{i}.mp4", tinted.permute(1, 0, 2, 3) * 2 - 1)
        prompts.append(world.prompt(spec))
    (root / "prompts.txt").write_text("# one per video\n" + "\n".join(prompts + prompts) + "\n")
    return root


def test_eval_drift_table_json_and_plot(videos, tmp_path, capsys):
    code = main(["eval", "drift", str(videos / "good"), str(videos / "drifty"), "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "drift" in out and "good/v0.mp4" in out and "[drifty] mean of 2" in out and "stand-in" in out
    data = json.loads((tmp_path / "drift.json").read_text())
    assert len(data["videos"]) == 4 and set(data["methods"]) == {"good", "drifty"}
    assert data["methods"]["drifty"]["score"] > data["methods"]["good"]["score"]
    assert data["backends"]["coherence_dinov2"].endswith("(stand-in)")
    assert data["weights"]["colour_shift"] == pytest.approx(0.1)
    assert Image.open(tmp_path / "drift.png").size[0] > 500


def test_eval_drift_with_a_learned_backend(videos, tmp_path, capsys):
    from transformers import Dinov2Config, Dinov2Model

    dino = tmp_path / "dino"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=224, patch_size=56)).save_pretrained(dino)
    code = main(["eval", "drift", str(videos / "good" / "v0.mp4"), "--dinov2", str(dino), "--json",
                 str(tmp_path / "d.json"), "--plot", str(tmp_path / "d.png"), "--no-progress"])
    assert code == 0
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["backends"]["coherence_dinov2"].startswith("dinov2")
    assert data["videos"][0]["learned"]["coherence_dinov2"] is True
    assert "dino=dinov2" in capsys.readouterr().out


def test_eval_shapes_table_json_and_plot(videos, tmp_path, capsys):
    code = main(["eval", "shapes", str(videos / "good"), str(videos / "drifty"), "--prompts",
                 str(videos / "prompts.txt"), "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "semantic" in out and "[good] mean of 2" in out
    data = json.loads((tmp_path / "shapes.json").read_text())
    good, drifty = data["methods"]["good"], data["methods"]["drifty"]
    assert min(good[k] for k in ("semantic", "dynamic", "quality", "total")) > 0.9
    assert drifty["quality"] < good["quality"]
    assert len(good["segments"]["total"]) == 5
    assert (tmp_path / "shapes.png").exists()


def test_eval_errors_are_clear(videos, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("a fast red circle\na slow blue dragon\n")
    assert main(["eval", "shapes", str(videos / "good"), "--prompts", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "dragon" in err and "vocabulary" in err
    one = tmp_path / "one.txt"
    one.write_text("a fast red circle\n")
    assert main(["eval", "shapes", str(videos / "good"), "--prompts", str(one), "--out", str(tmp_path)]) == 2
    assert "1 prompts for 2 videos" in capsys.readouterr().err
    assert main(["eval", "drift", str(tmp_path / "none.mp4"), "--out", str(tmp_path)]) == 2
    assert "none.mp4" in capsys.readouterr().err
    assert main(["eval", "drift", str(videos / "good"), "--dinov2", str(tmp_path / "no_dino"), "--out", str(tmp_path)]) == 2
    assert "no_dino" in capsys.readouterr().err
    assert main(["eval", "drift", str(videos / "good"), "--lpips", "x.pth", "--out", str(tmp_path)]) == 2
    assert "lpips_backbone" in capsys.readouterr().err
