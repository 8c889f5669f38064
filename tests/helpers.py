"""Small factories shared by tests (picklable, so spawned ranks can call them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from hiar.model import WanConfig, WanModel, get_config


def tiny_model(seed: int = 0, std: float = 0.1, **overrides) -> WanModel:
    """The `tiny` preset with non-trivial random weights (a zero head would hide bugs)."""
    torch.manual_seed(seed)
    model = WanModel(get_config("tiny", **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


class FailingModel(WanModel):
    """Raises on its `fail_call`-th forward when running as rank `fail_rank`."""

    def __init__(self, cfg: WanConfig, fail_rank: int, fail_call: int):
        super().__init__(cfg)
        self.fail_rank, self.fail_call, self.calls = fail_rank, fail_call, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        if dist.is_initialized() and dist.get_rank() == self.fail_rank and self.calls == self.fail_call:
            raise RuntimeError(f"boom on rank {self.fail_rank}")
        return super().forward(*args, **kwargs)


def failing_tiny_model(fail_rank: int, fail_call: int) -> WanModel:
    return FailingModel(get_config("tiny"), fail_rank, fail_call).eval()


class CopyModel(torch.nn.Module):
    """A known-answer stand-in for a trained model: it copies its context.

    For the block it denoises (the call's last k frames) it predicts as x0 the k frames just before
    it that attention lets it see (cached, or written in the same call), at whatever level they are;
    with no context, x0 = 0. So when a rule's last step reads clean context, every generated block
    is the block before it, and a continued clip repeats its last given block. The cache holds the
    written frames themselves (one token per frame), so windows and sinks act as in the real model.
    """

    def __init__(self, preset: str = "toy"):
        super().__init__()
        self.cfg = get_config(preset)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # device and dtype

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def new_cache(self, spec):
        from hiar.attention import KVCache

        return KVCache(spec, num_layers=1)

    def encode_text(self, text):
        return text

    def forward(self, x, timesteps, text, *, attention, cache=None, frames=None, write_frames=0):
        from hiar.attention import KVCache, visible

        B, C, F, H, W = x.shape
        k = attention.block_frames
        caches = [cache] if isinstance(cache, KVCache) else list(cache or [])
        G = max(1, len(caches))
        frames = torch.as_tensor(frames if frames is not None else torch.arange(F)).long()
        frames = frames[None].expand(G, F) if frames.ndim == 1 else frames
        sigma = torch.as_tensor(timesteps, dtype=torch.float64).expand(B, F) / 1000.0
        tokens = x.permute(0, 2, 1, 3, 4).reshape(B, F, 1, C * H * W)  # one token per frame
        out = torch.zeros_like(x)
        rows = B // G
        for g in range(G):
            r = slice(g * rows, (g + 1) * rows)
            keys, key_frames = tokens[r, : F - k], frames[g, : F - k]
            if caches and caches[g].layer(0) is not None:
                keys = torch.cat([caches[g].layer(0)[0], keys], dim=1)
                key_frames = torch.cat([caches[g].frames(), key_frames])
            q = int(frames[g, F - k])
            ok = visible(torch.tensor(q), key_frames, attention) & (key_frames < q)
            idx = ok.nonzero().squeeze(1)
            idx = idx[key_frames[idx].argsort()][-k:]
            x0 = torch.zeros(rows, k, C * H * W, dtype=x.dtype)
            if len(idx):
                x0[:, k - len(idx):] = keys[:, idx, 0]
                x0[:, : k - len(idx)] = keys[:, idx[:1], 0]
            x0 = x0.reshape(rows, k, C, H, W).permute(0, 2, 1, 3, 4)
            s = sigma[r, F - k:].to(x.dtype)[:, None, :, None, None]
            out[r, :, F - k:] = (x[r, :, F - k:] - x0) / s
        if write_frames:
            for g, c in enumerate(caches):
                written = frames[g, :write_frames].tolist()
                slots = c.plan(written)
                t = tokens[g * rows:(g + 1) * rows, :write_frames]
                c.store(0, t, t, slots, 1)
                c.commit(written, slots, 1)
        return out


def save_toy_checkpoint(path, seed: int = 0, poison: float | None = None):
    """A random `toy` model (the shapes world's size) saved as hiar safetensors at ``path``;
    ``poison`` (e.g. nan) is written into one weight of the output head."""
    from hiar.checkpoint import save_model
    from hiar.model import build_model

    torch.manual_seed(seed)
    model = build_model("toy")
    if poison is not None:
        with torch.no_grad():
            model.head.head.weight[0, 0] = poison
    return save_model(model, path)


class CausalFourCodec:
    """Wan's causal VAE in miniature: the video's first latent frame gives one pixel frame, each
    later one 4 (copies); the first 3 latent channels are the pixels, upsampled ``spatial_factor``
    times. Like Wan's, it decodes a video block by block through its stream decoder, which knows
    whether the first frame has passed; ``decode_calls`` counts its calls."""

    temporal_factor = 4

    def __init__(self, latent_channels: int = 3, spatial_factor: int = 1):
        self.latent_channels, self.spatial_factor = latent_channels, spatial_factor
        self.decode_calls = 0

    def encode(self, frames):
        assert self.latent_channels == 3 and self.spatial_factor == 1, "encodes only as its own pixels"
        return torch.cat([frames[:, :, :1], frames[:, :, 4::4]], dim=2)

    def decode(self, latents):
        return self.stream_decoder().decode(latents)

    def stream_decoder(self):
        return _CausalFourStream(self)


class _CausalFourStream:
    def __init__(self, codec: CausalFourCodec):
        self.codec = codec
        self.reset()

    def reset(self):
        self.started = False

    def decode(self, latents):
        self.codec.decode_calls += 1
        pixels = latents[:, :3].repeat_interleave(4, dim=2)
        if not self.started:  # the video's first latent frame is one pixel frame
            pixels, self.started = pixels[:, :, 3:], True
        s = self.codec.spatial_factor
        return pixels.repeat_interleave(s, dim=3).repeat_interleave(s, dim=4)


class ConstantText:
    """A text encoder that ignores the prompt (the `tiny` preset's sizes)."""

    dim, max_len = 16, 8

    def encode(self, prompts):
        return torch.ones(len(prompts), self.max_len, self.dim)


# -- tiny Wan components, saved the way a user's folders look (diffusers / transformers layouts) ----


def tiny_wan_vae(z_dim: int = 4, seed: int = 0, mean=None, std=None):
    """A randomly initialised ``AutoencoderKLWan`` with Wan's shape (temporal x4, spatial x8) and base
    width 8; ``latents_mean`` / ``latents_std`` default to values far from 0 / 1, one per channel."""
    from diffusers import AutoencoderKLWan

    mean = mean if mean is not None else [0.1 * ((i % 5) - 2) for i in range(z_dim)]
    std = std if std is not None else [0.5 + 0.25 * (i % 4) for i in range(z_dim)]
    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=mean, latents_std=std,
                            scale_factor_temporal=4, scale_factor_spatial=8).eval()


TINY_WORDS = "a red blue green circle square triangle fast slow on dark light background and the".split()


def save_tiny_umt5(root, d_model: int = 16, seed: int = 0) -> None:
    """A tiny ``UMT5EncoderModel`` in ``root/text_encoder`` and a word-level tokenizer over
    :data:`TINY_WORDS` in ``root/tokenizer`` (ends prompts with ``</s>`` as T5's does), built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(TINY_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # like T5
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=2,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
                     eos_token_id=1, decoder_start_token_id=0)
    UMT5EncoderModel(cfg).save_pretrained(root / "text_encoder")
    fast.save_pretrained(root / "tokenizer")


def save_tiny_wan_transformer(directory, in_channels: int = 16, text_dim: int = 16, seed: int = 0) -> None:
    """A tiny ``WanTransformer3DModel`` written by diffusers (``config.json`` + safetensors): one layer
    and one head of Wan's head size 128, random weights far from their initialisation."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128,
                                  in_channels=in_channels, out_channels=in_channels, text_dim=text_dim, freq_dim=32,
                                  ffn_dim=64, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    model.save_pretrained(directory)


@torch.no_grad()
def released_block_loop(model, bank, n: int, levels, text, spec, cache) -> torch.Tensor:
    """Block ``n`` as the released Self-Forcing loop makes it: S renoise steps reading ``cache``,
    then a clean re-run at t = 0 that writes the block into the cache. Returns its x0."""
    x = bank(n, 0)
    S = len(levels) - 1
    for j in range(S):
        sigma = float(levels[j])
        x0 = x - sigma * model(x, torch.tensor([1000 * sigma]), text, attention=spec, cache=cache)
        if j < S - 1:
            nxt = float(levels[j + 1])
            x = (1 - nxt) * x0 + nxt * bank(n, j + 1)
    model(x0, torch.tensor([0.0]), text, attention=spec, cache=cache, write_frames=x0.shape[2])
    return x0


@torch.no_grad()
def uncached_step_first_hiar(model, spec, n_blocks: int, block_frames: int, text_of, latent=(4, 8, 8), seed: int = 3):
    """Step-first HiAR recomputed with no cache: every cell runs the model over all earlier blocks at
    their output level plus its own block (the attention mask alone decides what it sees).
    ``text_of(n)`` is the text of block n's cells."""
    from hiar import schedule
    from hiar.sampling import NoiseBank

    levels = schedule.student_levels().tolist()
    K, (C, H, W) = block_frames, latent
    bank = NoiseBank([seed], (C, K, H, W))
    x = [bank(n, 0) for n in range(n_blocks)]
    for j in range(len(levels) - 1):
        outputs = []
        for n in range(n_blocks):
            seq = torch.cat(outputs + [x[n]], dim=2)
            t = torch.tensor([[1000 * levels[j + 1]] * K * n + [1000 * levels[j]] * K])
            x0 = x[n] - levels[j] * model(seq, t, text_of(n), attention=spec)[:, :, -K:]
            nxt = levels[j + 1]
            x[n] = x0 if nxt == 0 else (1 - nxt) * x0 + nxt * bank(n, j + 1)
            outputs.append(x[n])
    return torch.cat(x, dim=2)


def load_script(name: str):
    """A module of scripts/ (not a package) by file name, registered in sys.modules (dataclasses look
    their module up there)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
