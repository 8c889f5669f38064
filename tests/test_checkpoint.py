"""Checkpoint formats: round trips, strict validation, safe loading."""

import argparse
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

import hiar.checkpoint as C
from hiar.checkpoint import CheckpointError
from hiar.model import PRESETS, WanModel

TINY = PRESETS["tiny"]


def random_model(cfg=TINY, seed=0) -> WanModel:
    torch.manual_seed(seed)
    model = WanModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


def assert_same_weights(model: WanModel, other: WanModel):
    a, b = model.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def no_temp_files(directory):
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


# -- round trips --------------------------------------------------------------------------------


def test_hiar_format_round_trip(tmp_path):
    model = random_model()
    path = C.save_model(model, tmp_path / "sub" / "model.safetensors", metadata={"step": 123})
    ckpt = C.read_checkpoint(path)
    assert ckpt.layout == "hiar" and ckpt.config == TINY
    assert ckpt.metadata["format"] == "hiar" and ckpt.metadata["format_version"] == str(C.FORMAT_VERSION)
    assert ckpt.metadata["step"] == "123"
    loaded = C.load_model(path)
    assert loaded.cfg == TINY
    assert_same_weights(model, loaded)
    assert no_temp_files(tmp_path)
    # a non-preset config survives too (it is stored, not inferred)
    odd = random_model(replace(TINY, num_heads=1, text_len=11, eps=1e-5, rope_theta=500.0), seed=1)
    C.save_model(odd, tmp_path / "odd.safetensors")
    again = C.load_model(tmp_path / "odd.safetensors")
    assert again.cfg == odd.cfg
    assert_same_weights(odd, again)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = random_model()
    path = C.save_model(model, tmp_path / "model.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # stopped mid-write

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(KeyboardInterrupt):
        C.save_model(random_model(seed=5), path)
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert no_temp_files(tmp_path)


def test_newer_hiar_format_refused(tmp_path):
    model = random_model()
    meta = {"format": "hiar", "format_version": str(C.FORMAT_VERSION + 1), "config": "{}"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="newer than this library reads"):
        C.load_model(tmp_path / "m.safetensors")


def test_wan_single_file_with_inferred_config(tmp_path):
    model = random_model()
    C.save_state_dict(model.state_dict(), tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = C.load_model(tmp_path / "diffusion_pytorch_model.safetensors")
    assert loaded.cfg == TINY  # sizes from the shapes, heads and text_len from the matching preset
    assert_same_weights(model, loaded)
    # the directory works too
    assert_same_weights(model, C.load_model(tmp_path))


def test_wan_sharded_with_index_and_config_json(tmp_path):
    model = random_model()
    sd = model.state_dict()
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, tmp_path / name)
    index = {"metadata": {"total_size": 0}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    # the official Wan folder's config.json (a diffusers-style config of Wan's own WanModel)
    (tmp_path / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v", "dim": 48, "ffn_dim": 96,
        "freq_dim": 32, "in_dim": 4, "num_heads": 2, "num_layers": 2, "out_dim": 4, "text_len": 8, "eps": 1e-6,
        "patch_size": [1, 2, 2], "text_dim": 16, "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True,
    }))
    ckpt = C.read_checkpoint(tmp_path)
    assert ckpt.layout == "wan" and ckpt.config == TINY
    assert_same_weights(model, C.load_model(tmp_path))
    assert_same_weights(model, C.load_model(tmp_path / "diffusion_pytorch_model.safetensors.index.json"))
    # a shard gone missing is named
    (tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors"):
        C.load_model(tmp_path)


def test_other_index_names_are_found(tmp_path):
    model = random_model()
    sd = model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "weights-1.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "weights-1.safetensors" for k in sd}}))
    assert_same_weights(model, C.load_model(tmp_path))


def test_diffusers_layout_detected_from_keys_and_config(tmp_path):
    model = random_model()
    C.save_state_dict(C.wan_to_diffusers(model.state_dict()), tmp_path / "flat.safetensors")
    ckpt = C.read_checkpoint(tmp_path / "flat.safetensors")
    assert ckpt.layout == "diffusers" and ckpt.config is None
    assert_same_weights(model, C.load_model(tmp_path / "flat.safetensors"))
    # a diffusers folder: config.json gives the config (text_len is Wan's 512: diffusers does not store it)
    C.save_diffusers(model, tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    loaded = C.load_model(tmp_path / "pipe")  # a pipeline folder: its transformer/ is used
    assert loaded.cfg == replace(TINY, text_len=512)
    assert_same_weights(model, loaded)
    assert no_temp_files(tmp_path)


def test_key_mapping_both_ways():
    sd = random_model().state_dict()
    diff = C.wan_to_diffusers(sd)
    assert C.diffusers_to_wan(diff).keys() == sd.keys()
    for ours, theirs in [
        ("time_embedding.0.weight", "condition_embedder.time_embedder.linear_1.weight"),
        ("text_embedding.2.bias", "condition_embedder.text_embedder.linear_2.bias"),
        ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
        ("head.modulation", "scale_shift_table"),
        ("head.head.weight", "proj_out.weight"),
        ("blocks.1.modulation", "blocks.1.scale_shift_table"),
        ("blocks.0.ffn.0.weight", "blocks.0.ffn.net.0.proj.weight"),
        ("blocks.0.ffn.2.bias", "blocks.0.ffn.net.2.bias"),
        ("blocks.0.self_attn.o.weight", "blocks.0.attn1.to_out.0.weight"),
        ("blocks.1.self_attn.norm_k.weight", "blocks.1.attn1.norm_k.weight"),
        ("blocks.0.cross_attn.q.bias", "blocks.0.attn2.to_q.bias"),
        ("blocks.0.norm3.weight", "blocks.0.norm2.weight"),  # Wan's norm3 (affine) is diffusers' norm2
        ("patch_embedding.weight", "patch_embedding.weight"),
    ]:
        assert diff[theirs] is sd[ours], (ours, theirs)
    assert C.wan_to_diffusers({"blocks.0.norm2.weight": 1})["blocks.0.norm3.weight"] == 1
    assert C.detect_layout(sd) == "wan" and C.detect_layout(diff) == "diffusers"


def test_layout_errors():
    with pytest.raises(CheckpointError, match="cannot tell the checkpoint's layout"):
        C.detect_layout(["foo.weight", "bar.bias"])
    with pytest.raises(CheckpointError, match="mixes Wan key names"):
        C.detect_layout(["blocks.0.self_attn.q.weight", "blocks.0.attn1.to_q.weight"])


# -- training checkpoints -----------------------------------------------------------------------


def _wrapped(sd, style):
    if style == "fsdp":  # Self-Forcing: WanDiffusionWrapper.model, FSDP-wrapped blocks, activation checkpointing
        out = {}
        for k, v in sd.items():
            if k.startswith("blocks."):
                i, rest = k.split(".", 2)[1:]
                k = f"blocks.{i}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"
            out[f"model._fsdp_wrapped_module.{k}"] = v
        return out
    if style == "compile":  # torch.compile(model) inside DDP
        return {f"module._orig_mod.model.{k}": v for k, v in sd.items()}
    return {f"model.{k}": v for k, v in sd.items()}


@pytest.mark.parametrize("style", ["plain", "fsdp", "compile"])
def test_self_forcing_style_checkpoint(tmp_path, style):
    gen, ema, critic = random_model(seed=1), random_model(seed=2), random_model(seed=3)
    obj = {"generator": _wrapped(gen.state_dict(), style), "generator_ema": _wrapped(ema.state_dict(), style),
           "critic": _wrapped(critic.state_dict(), style), "step": 1000}
    torch.save(obj, tmp_path / "checkpoint_model_001000.pt")
    path = tmp_path / "checkpoint_model_001000.pt"
    assert_same_weights(ema, C.load_model(path))  # default: the EMA weights
    assert_same_weights(ema, C.load_model(path, which="ema"))
    assert_same_weights(gen, C.load_model(path, which="generator"))
    assert C.read_checkpoint(path).entry == "generator_ema"
    target = random_model(seed=9)
    C.load_weights(target, path, which="generator")
    assert_same_weights(gen, target)


def test_generator_only_checkpoint_and_missing_entry(tmp_path):
    gen = random_model(seed=1)
    torch.save({"generator": _wrapped(gen.state_dict(), "plain")}, tmp_path / "causvid.pt")
    assert_same_weights(gen, C.load_model(tmp_path / "causvid.pt"))  # auto falls back to the generator
    with pytest.raises(CheckpointError, match="no 'generator_ema' entry; it holds: generator"):
        C.load_model(tmp_path / "causvid.pt", which="ema")
    with pytest.raises(CheckpointError, match="which must be one of"):
        C.load_model(tmp_path / "causvid.pt", which="best")


def test_plain_pth_state_dict(tmp_path):
    model = random_model()
    torch.save(model.state_dict(), tmp_path / "wan.pth")
    assert_same_weights(model, C.load_model(tmp_path / "wan.pth"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "lightning.ckpt")
    assert_same_weights(model, C.load_model(tmp_path / "lightning.ckpt"))


def test_pickled_objects_are_refused(tmp_path):
    model = random_model()
    torch.save({"generator": model.state_dict(), "args": argparse.Namespace(lr=1e-4)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load: the file holds pickled Python objects"):
        C.load_model(tmp_path / "evil.pt")


def test_strip_prefixes_only_strips_shared_leading_prefixes():
    sd = {"model.blocks.0.x": 1, "model.head.y": 2}
    assert C.strip_prefixes(sd) == {"blocks.0.x": 1, "head.y": 2}
    mixed = {"model.blocks.0.x": 1, "head.y": 2}
    assert C.strip_prefixes(mixed) == mixed
    assert C.strip_prefixes({"_orig_mod.a._fsdp_wrapped_module.b": 1}) == {"a.b": 1}


# -- strict validation --------------------------------------------------------------------------


def test_damaged_checkpoint_lists_exactly_the_bad_keys(tmp_path):
    model = random_model()
    sd = dict(model.state_dict())
    del sd["blocks.1.cross_attn.k.bias"]
    sd["blocks.0.self_attn.extra.weight"] = torch.zeros(3)
    sd["blocks.0.ffn.0.weight"] = torch.zeros(97, 48)
    C.save_state_dict(sd, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as err:
        C.load_model(tmp_path / "bad.safetensors", config="tiny")
    e = err.value
    assert isinstance(e, ValueError)
    assert e.missing == ["blocks.1.cross_attn.k.bias"]
    assert e.unexpected == ["blocks.0.self_attn.extra.weight"]
    assert e.mismatched == {"blocks.0.ffn.0.weight": ((97, 48), (96, 48))}
    msg = str(e)
    assert "1 missing key(s): blocks.1.cross_attn.k.bias" in msg
    assert "1 unexpected key(s): blocks.0.self_attn.extra.weight" in msg
    assert "1 shape mismatch(es): blocks.0.ffn.0.weight (checkpoint [97, 48] vs model [96, 48])" in msg
    # the same into an existing model, which is left untouched
    target = random_model(seed=4)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError):
        C.load_weights(target, tmp_path / "bad.safetensors")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_long_key_lists_are_truncated_with_a_count():
    model = random_model()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError) as err:
        C.check_state_dict(model, sd)
    n = len(err.value.missing)
    assert n > 20
    assert f"{n} missing key(s)" in str(err.value) and f"({n - 10} more)" in str(err.value)


def test_wrong_model_size_is_a_listed_mismatch(tmp_path):
    C.save_model(random_model(), tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError) as err:
        C.load_model(tmp_path / "tiny.safetensors", config="toy")
    msg = str(err.value)
    assert msg.startswith("the checkpoint is a different size (dim=48, ffn_dim=96, num_layers=2, in_dim=4, out_dim=4, "
                          "patch_size=(1, 2, 2), text_dim=16, freq_dim=32) from the requested config (dim=128, ")
    assert "blocks.0.cross_attn.k.weight (checkpoint [48, 48] vs model [128, 128])" in msg
    assert len(err.value.missing) == 2 * 27  # the toy's blocks 2 and 3


# -- config inference ---------------------------------------------------------------------------


def test_infer_config_from_shapes():
    assert C.infer_config(random_model().state_dict()) == TINY
    with torch.device("meta"):
        big = WanModel(PRESETS["wan2.1-t2v-1.3b"])
        toy = WanModel(PRESETS["toy"])
    assert C.infer_config(big.state_dict()) == PRESETS["wan2.1-t2v-1.3b"]
    assert C.infer_config(toy.state_dict()) == PRESETS["toy"]
    # no preset: Wan's head size of 128 when it divides dim; else the caller must say
    custom = replace(TINY, dim=256, num_heads=2, ffn_dim=64, num_layers=3, text_len=512)
    with torch.device("meta"):
        sd = WanModel(custom).state_dict()
    assert C.infer_config(sd) == custom
    odd = replace(TINY, dim=96, num_heads=4)
    with torch.device("meta"):
        sd = WanModel(odd).state_dict()
    with pytest.raises(CheckpointError, match="cannot infer the head count for dim=96"):
        C.infer_config(sd)
    assert C.infer_config(sd, num_heads=4, text_len=8) == odd
    with pytest.raises(CheckpointError, match="has no 'patch_embedding.weight'"):
        C.infer_config({"blocks.0.x": torch.zeros(1)})


def test_load_model_dtype_and_device(tmp_path):
    model = random_model().to(torch.bfloat16)
    C.save_model(model, tmp_path / "bf16.safetensors")
    assert load_file(tmp_path / "bf16.safetensors")["head.head.weight"].dtype == torch.bfloat16
    loaded = C.load_model(tmp_path / "bf16.safetensors")
    assert loaded.dtype == torch.float32  # float32 unless asked
    assert torch.equal(loaded.head.head.weight, model.head.head.weight.float())
    assert C.load_model(tmp_path / "bf16.safetensors", dtype=torch.bfloat16).dtype == torch.bfloat16
    assert not any(p.is_meta for p in loaded.parameters())
    # it runs
    out = loaded(torch.randn(1, 4, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 16))
    assert out.shape == (1, 4, 2, 4, 4) and torch.isfinite(out).all()


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        C.load_model(tmp_path / "nowhere.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        C.load_model(tmp_path / "junk.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown checkpoint kind"):
        C.load_model(tmp_path / "weights.npz")
    two = tmp_path / "two"
    two.mkdir()
    sd = random_model().state_dict()
    for name in ("a.safetensors", "b.safetensors"):
        C.save_state_dict(sd, two / name)
    with pytest.raises(CheckpointError, match="several safetensors weights .*a.safetensors, b.safetensors"):
        C.load_model(two)


@pytest.mark.parametrize("name", ["model", "generator"])
def test_training_step_folder_loads_its_ema_unless_asked_for_the_raw_weights(tmp_path, name):
    # a trainer's checkpoints/step-N: NAME.safetensors beside NAME_ema.safetensors (and a DMD critic)
    raw, ema, critic = random_model(seed=1), random_model(seed=2), random_model(seed=3)
    C.save_model(raw, tmp_path / f"{name}.safetensors")
    C.save_model(ema, tmp_path / f"{name}_ema.safetensors")
    C.save_model(critic, tmp_path / "critic.safetensors")
    (tmp_path / "complete.json").write_text("{}")

    def same(a, b):
        return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())

    assert same(C.load_model(tmp_path), ema)
    assert same(C.load_model(tmp_path, which="ema"), ema)
    assert same(C.load_model(tmp_path, which="generator"), raw)
    with pytest.raises(CheckpointError, match="which must be one of"):
        C.load_model(tmp_path, which="critic")


def test_the_prediction_setting_travels_with_the_weights(tmp_path):
    from hiar.model import get_config

    model = WanModel(get_config("tiny", prediction="sample"))
    path = C.save_model(model, tmp_path / "x0.safetensors")
    assert C.load_model(path).cfg.prediction == "sample"
