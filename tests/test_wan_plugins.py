"""Wan's VAE and umT5 plug-ins on tiny, randomly initialised models saved to a temp folder.

What this covers: loading from local folders in the diffusers / transformers layouts (component
folder or pipeline folder), the latent normalisation against diffusers' own VAE calls, shapes and
frame-count rules, and the text encoder's padding/masking contract (zeros after each prompt, padding
that does not leak into the prompt's states, truncation) with a tiny word-level tokenizer built
here. What it does not: the real umT5 SentencePiece tokenizer or real weights (none on this machine).
"""

import pytest
import torch
from diffusers import AutoencoderKLWan
from transformers import UMT5EncoderModel

from hiar.model import WanConfig, WanModel
from hiar.wan import UMT5TextEncoder, WanVAE
from hiar.wan.text import clean_prompt
from hiar.world.base import LatentCodec, TextEncoder
from tests.helpers import save_tiny_umt5, tiny_wan_vae

MEAN = [0.1, -0.2, 0.3, 0.0]
STD = [1.5, 0.5, 2.0, 1.0]


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A Wan-shaped VAE (temporal x4, spatial x8) with 4 latent channels and base width 8."""
    root = tmp_path_factory.mktemp("wan_pipeline")
    tiny_wan_vae(z_dim=4, mean=MEAN, std=STD).save_pretrained(root / "vae")
    return root


def test_wan_vae_loads_and_normalises_like_wan(vae_dir):
    codec = WanVAE.from_pretrained(vae_dir / "vae")
    assert isinstance(codec, LatentCodec)
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (4, 4, 8)
    ref = AutoencoderKLWan.from_pretrained(vae_dir / "vae").eval()
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, 5, 16, 24, generator=g) * 2 - 1
    z = codec.encode(frames)
    assert z.shape == (2, 4, 2, 2, 3)  # 1 + 4 n frames -> 1 + n; 8x smaller
    mean, std = torch.tensor(MEAN).view(1, 4, 1, 1, 1), torch.tensor(STD).view(1, 4, 1, 1, 1)
    with torch.no_grad():
        mu = ref.encode(frames).latent_dist.mode()
        torch.testing.assert_close(z, (mu - mean) / std)
        # decode undoes the normalisation as WanPipeline does: latents / (1 / std) + mean
        video = codec.decode(z)
        torch.testing.assert_close(video, ref.decode(z / (1.0 / std) + mean).sample.clamp(-1, 1))
    assert video.shape == frames.shape and video.abs().max() <= 1
    # a pipeline folder works too
    assert WanVAE.from_pretrained(vae_dir).latent_channels == 4


def test_wan_vae_errors(vae_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no_vae")):
        WanVAE.from_pretrained(tmp_path / "no_vae")
    codec = WanVAE.from_pretrained(vae_dir)
    with pytest.raises(ValueError, match=r"needs 1 \+ 4 n pixel frames, got 4"):
        codec.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="multiple of 8"):
        codec.encode(torch.zeros(1, 3, 5, 12, 16))
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, F, H, W\]"):
        codec.decode(torch.zeros(1, 16, 2, 2, 2))
    assert codec.latent_frames(21) == 6


# -- umT5 ---------------------------------------------------------------------------------------

MAX_LEN = 12


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_pipeline_text")
    save_tiny_umt5(root, d_model=16)
    return root


def test_umt5_encoder_pads_with_zeros_after_each_prompt(text_dir):
    enc = UMT5TextEncoder.from_pretrained(text_dir, max_len=MAX_LEN)
    assert isinstance(enc, TextEncoder)
    assert (enc.dim, enc.max_len) == (16, MAX_LEN)
    prompts = ["a red circle", "a  fast blue\nsquare on a  dark zebra ", "slow " * 20]
    out = enc.encode(prompts)
    assert out.shape == (3, MAX_LEN, 16)
    lengths = [4, 9, MAX_LEN]  # words + </s> (the unknown word is <unk>); the last is truncated
    ref = UMT5EncoderModel.from_pretrained(text_dir / "text_encoder").eval()
    ids, _ = enc.tokenize(prompts)
    for i, n in enumerate(lengths):
        assert torch.all(out[i, n:] == 0)
        assert torch.all(out[i, :n].abs().sum(-1) > 0)
        # the prompt's states are those of the prompt encoded alone, without any padding
        with torch.no_grad():
            alone = ref(input_ids=ids[i:i + 1, :n]).last_hidden_state[0]
        torch.testing.assert_close(out[i, :n], alone, atol=1e-5, rtol=1e-5)
    assert ids[2, -1] == 1  # truncation keeps the end-of-sequence token
    # a prompt does not depend on the others in its batch
    torch.testing.assert_close(enc.encode(prompts[:1])[0], out[0], atol=1e-6, rtol=1e-6)


def test_umt5_encoder_feeds_the_model(text_dir):
    enc = UMT5TextEncoder.from_pretrained(text_dir / "text_encoder", tokenizer_path=text_dir / "tokenizer", max_len=MAX_LEN)
    model = WanModel(WanConfig(dim=48, ffn_dim=96, num_heads=2, num_layers=1, in_dim=4, out_dim=4, text_dim=enc.dim,
                               text_len=enc.max_len, freq_dim=32))
    ctx = model.encode_text(enc.encode(["a red circle", "the green triangle"]))
    assert ctx.tokens.shape == (2, MAX_LEN, 48)


def test_umt5_encoder_errors(text_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        UMT5TextEncoder.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        UMT5TextEncoder.from_pretrained(_copy_without_tokenizer(text_dir, tmp_path))
    enc = UMT5TextEncoder.from_pretrained(text_dir, max_len=MAX_LEN)
    with pytest.raises(TypeError, match="list of prompts"):
        enc.encode("a red circle")


def _copy_without_tokenizer(text_dir, tmp_path):
    import shutil

    dst = tmp_path / "only_model"
    shutil.copytree(text_dir / "text_encoder", dst)
    return dst


def test_clean_prompt():
    assert clean_prompt("  a   red\n\tcircle ") == "a red circle"
    assert clean_prompt("fish &amp;amp; chips") == "fish & chips"
