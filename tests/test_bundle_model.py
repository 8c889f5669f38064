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


def test_bundles_a_checkpoint_folder_with_the_runs_provenance(tmp_path, monkeypatch):
    """A step a comparison chose ships as it is: the generator's EMA (or raw weights) of that checkpoint,
    whose files carry the run's seed and commit like the exported model does, and the run's config."""
    from hiar.training import run_stage, stage_config
    from tests.training_helpers import dmd_config, prepared

    out = tmp_path / "dmd"
    run_stage(stage_config("dmd", dmd_config(prepared(), out, steps=2, checkpoint_every=1)))
    step = out / "checkpoints" / "step-0000001"
    monkeypatch.setattr(bm, "ASSETS", tmp_path / "assets")
    assert bm.main([str(step), "ema-bundle"]) == 0
    assert bm.main([str(step), "raw-bundle", "--raw"]) == 0
    for name, source, weights in (("ema-bundle", "generator_ema", "ema"), ("raw-bundle", "generator", "raw")):
        meta = read_checkpoint(tmp_path / "assets" / f"{name}.safetensors").metadata
        trained = read_checkpoint(step / f"{source}.safetensors").metadata
        assert (meta["weights"], meta["steps"], meta["stage"], meta["seed"]) == (weights, "1", "dmd", "0")
        assert meta["trained_by_commit"] == trained["commit"] and not meta["trained_by_commit"].startswith("unrecorded")
        assert meta["recipe_config"] == (out / "config.yaml").read_text()
        bundled = load_model(tmp_path / "assets" / f"{name}.safetensors").state_dict()
        for key, value in load_model(step / f"{source}.safetensors").state_dict().items():
            torch.testing.assert_close(bundled[key], value.half().float())
    ema, raw = (load_model(tmp_path / "assets" / f"{n}.safetensors").state_dict() for n in ("ema-bundle", "raw-bundle"))
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)


def test_an_incomplete_checkpoint_folder_is_one_line(tmp_path, monkeypatch, capsys):
    from hiar.training import run_stage, stage_config
    from tests.training_helpers import dmd_config, prepared

    out = tmp_path / "dmd"
    run_stage(stage_config("dmd", dmd_config(prepared(), out, steps=1, checkpoint_every=1)))
    step = out / "checkpoints" / "step-0000001"
    (step / "generator_ema.safetensors").unlink()
    monkeypatch.setattr(bm, "ASSETS", tmp_path / "assets")
    assert bm.main([str(step), "shapes-x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"bundle_model: {step} is an incomplete checkpoint: generator_ema.safetensors is missing"
    assert not (tmp_path / "assets").exists()


def test_meta_states_what_an_older_run_did_not_record_and_says_so(tmp_path, monkeypatch, capsys):
    run = tmp_path / "old"
    run.mkdir()
    save_model(tiny_model(seed=3), run / "model.safetensors", metadata={"stage": "dmd", "step": "10"})
    (run / "config.yaml").write_text("stage: dmd\nseed: 0\n")
    monkeypatch.setattr(bm, "ASSETS", tmp_path / "assets")
    assert bm.main([str(run), "plain"]) == 0
    plain = read_checkpoint(tmp_path / "assets" / "plain.safetensors").metadata
    assert plain["seed"] == "?" and plain["trained_by_commit"].startswith("unrecorded") and "given_by_hand" not in plain
    assert bm.main([str(run), "stated", "--meta", "seed=0", "--meta", "started_from=a b=c"]) == 0
    stated = read_checkpoint(tmp_path / "assets" / "stated.safetensors").metadata
    assert (stated["seed"], stated["started_from"], stated["given_by_hand"]) == ("0", "a b=c", "seed,started_from")
    assert stated["steps"] == "10" and stated["stage"] == "dmd"  # what the run recorded stays
    capsys.readouterr()
    assert bm.main([str(run), "bad", "--meta", "seed"]) == 2
    assert capsys.readouterr().err.strip() == "bundle_model: --meta wants KEY=VALUE, got 'seed'"
    assert not (tmp_path / "assets" / "bad.safetensors").exists()
