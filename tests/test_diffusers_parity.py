"""hiar's WanModel (bidirectional mode) against diffusers' WanTransformer3DModel.

Both get the same random weights, moved across by hiar's key mapping (both directions), so a wrong
mapping (e.g. the norm2/norm3 swap) or a wrong piece of the block shows up as a large difference.
"""

import json
import math

import pytest
import torch
from diffusers import WanTransformer3DModel  # the `dev` extra installs diffusers
from safetensors.torch import load_file

from hiar.checkpoint import diffusers_to_wan, load_model, save_diffusers, wan_to_diffusers
from hiar.model import WanConfig, WanModel

HEADS, HEAD_DIM = 2, 24  # Wan's RoPE split of 24: 8 / 8 / 8
DIFFUSERS_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=32, ffn_dim=72, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
)
CFG = WanConfig(dim=HEADS * HEAD_DIM, ffn_dim=72, num_heads=HEADS, num_layers=2, in_dim=4, out_dim=4,
                patch_size=(1, 2, 2), text_dim=16, text_len=8, freq_dim=32)


def randomize(module: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2 and "scale_shift_table" not in name and "modulation" not in name:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1, 0.2)  # affine norms and q/k RMS norms, far from identity
            elif "norm" in name:
                p.normal_(0, 0.2)
            else:
                p.normal_(0, 0.2)


def data(batch=2, frames=3, height=6, width=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, height, width, generator=g)
    text = torch.zeros(batch, CFG.text_len, CFG.text_dim)
    text[:, :5] = torch.randn(batch, 5, CFG.text_dim, generator=g)  # zero-padded as Wan's pipeline does
    return x, text


def pair(seed=0, direction="from_diffusers"):
    theirs = WanTransformer3DModel(**DIFFUSERS_CONFIG).eval()
    ours = WanModel(CFG).eval()
    if direction == "from_diffusers":
        randomize(theirs, seed)
        ours.load_state_dict(diffusers_to_wan(theirs.state_dict()), strict=True)
    else:
        randomize(ours, seed)
        theirs.load_state_dict(wan_to_diffusers(ours.state_dict()), strict=True)
    return ours, theirs


@torch.no_grad()
@pytest.mark.parametrize("direction", ["from_diffusers", "to_diffusers"])
def test_bidirectional_forward_matches_diffusers(direction):
    ours, theirs = pair(direction=direction)
    x, text = data()
    t = torch.tensor([937.5, 250.0])
    want = theirs(x, t, text, return_dict=False)[0]
    got = ours(x, t, text)
    assert want.abs().mean() > 0.1  # non-trivial
    assert (got - want).abs().max() <= 1e-4


@torch.no_grad()
def test_the_comparison_can_fail():
    """A deliberately wrong mapping (norm2/norm3 not swapped) must give a large difference."""
    theirs = WanTransformer3DModel(**DIFFUSERS_CONFIG).eval()
    randomize(theirs, 1)
    sd = diffusers_to_wan(theirs.state_dict())
    ours = WanModel(CFG).eval()
    ours.load_state_dict(sd)
    x, text = data(seed=1)
    t = torch.tensor([500.0, 500.0])
    good = (ours(x, t, text) - theirs(x, t, text, return_dict=False)[0]).abs().max()
    with torch.no_grad():
        for blk in ours.blocks:
            blk.norm3.weight.mul_(0.5)  # as if a norm had been mapped wrongly
    bad = (ours(x, t, text) - theirs(x, t, text, return_dict=False)[0]).abs().max()
    assert good <= 1e-4 < 1e-2 < bad


@torch.no_grad()
def test_per_frame_timesteps_match_diffusers_per_token_timesteps():
    """diffusers' Wan 2.2 path takes ``timestep`` [B, seq_len] (one per token) and modulates each
    token with its own embedding - the same math as hiar's per-frame timesteps, repeated over the
    tokens of a frame."""
    ours, theirs = pair(seed=2)
    x, text = data(frames=3, seed=2)
    per_frame = torch.tensor([[900.0, 500.0, 100.0], [20.0, 20.0, 700.0]])
    tokens_per_frame = (x.shape[3] // 2) * (x.shape[4] // 2)
    want = theirs(x, per_frame.repeat_interleave(tokens_per_frame, dim=1), text, return_dict=False)[0]
    got = ours(x, per_frame, text)
    assert (got - want).abs().max() <= 1e-4


@torch.no_grad()
def test_loading_a_diffusers_folder(tmp_path):
    """save_pretrained (sharded) -> hiar.load_model with the config read from config.json."""
    theirs = WanTransformer3DModel(**DIFFUSERS_CONFIG).eval()
    randomize(theirs, 3)
    theirs.save_pretrained(tmp_path / "transformer", max_shard_size="40KB")
    assert list((tmp_path / "transformer").glob("*.index.json")), "expected a sharded save"
    ours = load_model(tmp_path / "transformer")
    assert ours.cfg.dim == CFG.dim and ours.cfg.num_heads == HEADS and ours.cfg.ffn_dim == 72
    assert ours.cfg.text_len == 512  # diffusers configs do not store it; Wan's is 512
    x, short = data(seed=3)
    text = torch.nn.functional.pad(short, (0, 0, 0, 512 - short.shape[1]))  # Wan pads prompts to 512 tokens
    t = torch.tensor([100.0, 800.0])
    assert (ours(x, t, short) - ours(x, t, text)).abs().max() == 0  # hiar pads the same way itself
    assert (ours(x, t, text) - theirs(x, t, text, return_dict=False)[0]).abs().max() <= 1e-4
    # and back: hiar -> diffusers folder -> diffusers' class from that config.json, weights loaded
    # strictly (from_pretrained itself would need `accelerate` for this class, not a test dependency)
    save_diffusers(ours, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    again = WanTransformer3DModel.from_config(config).eval()
    again.load_state_dict(load_file(tmp_path / "export" / "diffusion_pytorch_model.safetensors"), strict=True)
    assert (again(x, t, text, return_dict=False)[0] - theirs(x, t, text, return_dict=False)[0]).abs().max() == 0
