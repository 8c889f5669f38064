"""scripts/bundle_model.py: a run's EMA weights by default, its raw weights with --raw, in float16 with
the run's provenance; a folder without a finished stage is one line, not a traceback."""

from __future__ import annotations

import torch

from hiar.checkpoint import load_model, read_checkpoint, save_model
from tests.helpers import load_script, tiny_model

bm = load_script("bundle_model")


def finished_run(tmp_path):
    """A run folder as a finished stage leaves it: EMA and raw weights that differ, and its config."""
    run = tmp_path / "run"
    run.mkdir()
    meta = {"stage": "dmd", "step": "161", "seed": "0", "commit": "feedbeef"}
    save_model(tiny_model(seed=1), run / "model.safetensors", metadata={**meta, "weights": "ema"})
    save_model(tiny_model(seed=2), run / "model_raw.safetensors", metadata={**meta, "weights": "raw"})
    (run / "config.yaml").write_text("stage: dmd\nsteps: 161\n")
    return run


def test_bundles_the_ema_weights_by_default_and_the_raw_ones_with_raw(tmp_path, monkeypatch):
    run = finished_run(tmp_path)
    monkeypatch.setattr(bm, "ASSETS", tmp_path / "assets")
    assert bm.main([str(run), "ema-bundle"]) == 0
    assert bm.main([str(run), "raw-bundle", "--raw"]) == 0
    for name, source, weights in (("ema-bundle", "model", "ema"), ("raw-bundle", "model_raw", "raw")):
        out = tmp_path / "assets" / f"{name}.safetensors"
        meta = read_checkpoint(out).metadata
        assert (meta["weights"], meta["steps"], meta["stage"], meta["dtype"]) == (weights, "161", "dmd", "float16")
        assert meta["recipe_config"] == "stage: dmd\nsteps: 161\n"
        assert meta["trained_by_commit"] == "feedbeef"
        bundled, expected = load_model(out).state_dict(), load_model(run / f"{source}.safetensors").state_dict()
        for key, value in expected.items():
            torch.testing.assert_close(bundled[key], value.half().float())


def test_a_folder_without_the_asked_weights_is_one_line(tmp_path, monkeypatch, capsys):
    run = finished_run(tmp_path)
    (run / "model_raw.safetensors").unlink()
    monkeypatch.setattr(bm, "ASSETS", tmp_path / "assets")
    assert bm.main([str(run), "raw-bundle", "--raw"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"bundle_model: {run} has no finished stage (model_raw.safetensors and config.yaml)"
    assert not (tmp_path / "assets").exists()
