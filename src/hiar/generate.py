"""Text-to-video generation: a model, its world (codec + text encoder), a sampler config, a writer.

The method is a setting (:data:`METHODS`): the same model and sampler run Self-Forcing's
block-first rollout or HiAR's hierarchical one. Blocks are decoded and written as soon as they are
final, so a long (or unbounded) video streams to disk at constant memory, and an interrupted run
leaves a playable file of what was made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import torch

from hiar.conditioning import GivenFrames, encode_given
from hiar.errors import UserError
from hiar.model import WanModel
from hiar.prompts import PromptScript
from hiar.sampling import ContextRule, GridReport, GridSampler, Hybrid, Order, SamplerConfig
from hiar.world.base import LatentCodec, TextEncoder, stream_decoder

# Inference settings of each method (all share the model, sampler and schedule).
METHODS: dict[str, dict] = {
    "hiar": dict(context=ContextRule.OUTPUT, order=Order.DIAGONAL),
    "self-forcing": dict(context=ContextRule.CLEAN, order=Order.BLOCK_FIRST),
    "causvid": dict(context=ContextRule.CLEAN, order=Order.BLOCK_FIRST),  # teacher forcing is a training matter
    "causal-forcing": dict(context=ContextRule.CLEAN, order=Order.BLOCK_FIRST),
    "hiar-input-context": dict(context=ContextRule.INPUT, order=Order.DIAGONAL),  # the t_c = t_j ablation
    # The released code's hybrids (a HiAR model, part block-first): the first K blocks (hybrid_block0,
    # --first-blocks) or the first M steps of every block (frame_first_steps, --first-steps).
    "hybrid-blocks": dict(context=Hybrid(first_blocks=1), order=Order.BLOCK_FIRST),
    "hybrid-steps": dict(context=Hybrid(first_steps=2), order=Order.BLOCK_FIRST),
}

SHAPES_FPS = 16
WAN_FPS = 16
WAN_SIZE = (480, 832)  # Wan2.1-T2V-1.3B's frames (height, width)
BUNDLED_DIR = "assets"
# The shapes model bundled for each method (``hiar/assets/<name>.safetensors``), trained and copied
# there by scripts/train_shapes_bundle.sh.
BUNDLED_MODELS = {"hiar": "shapes-hiar", "self-forcing": "shapes-self-forcing", "causvid": "shapes-causvid",
                  "hybrid-blocks": "shapes-hiar", "hybrid-steps": "shapes-hiar"}
REBUILD_HINT = "rebuild the bundled models with `bash scripts/train_shapes_bundle.sh` (about 2 h on a 2-core CPU)"


def method_config(method: str, *, first_blocks: int | None = None, first_steps: int | None = None,
                  **overrides) -> SamplerConfig:
    """The method's sampler settings; ``overrides`` (None: keep) and a hybrid's split (first K blocks / M steps)."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    cfg = replace(SamplerConfig(**METHODS[method]), **{k: v for k, v in overrides.items() if v is not None})
    split = {k: v for k, v in dict(first_blocks=first_blocks, first_steps=first_steps).items() if v is not None}
    if split:
        if not isinstance(cfg.context, Hybrid):
            raise ValueError(f"--first-blocks / --first-steps split a hybrid method (hybrid-blocks, hybrid-steps); "
                             f"--method {method} runs context {cfg.context.name}")
        cfg = replace(cfg, context=replace(cfg.context, **split))
    return cfg


def bundled_dir() -> Path:
    return Path(str(resources.files("hiar"))) / BUNDLED_DIR


def bundled_checkpoint(name: str) -> Path | None:
    """A model shipped inside the package (``hiar/assets/<name>.safetensors``), if present."""
    path = bundled_dir() / f"{name}.safetensors"
    return path if path.exists() else None


def bundled_model_path(method: str) -> Path:
    """The bundled shapes student of ``method``; a clear error when there is none or it is missing."""
    name = BUNDLED_MODELS.get(method)
    if name is None:
        raise ValueError(f"no bundled shapes model for --method {method} (bundled: {', '.join(BUNDLED_MODELS)}); "
                         f"pass --checkpoint with a model trained for it")
    path = bundled_checkpoint(name)
    if path is None:
        raise FileNotFoundError(f"the bundled model {bundled_dir() / (name + '.safetensors')} is missing; {REBUILD_HINT}, "
                                f"or pass --checkpoint")
    return path


def latent_frames(num_frames: int, codec: LatentCodec) -> int:
    """Latent frames needed for ``num_frames`` video frames (Wan's causal VAE: 1 + 4 (F - 1))."""
    f = codec.temporal_factor
    return num_frames if f == 1 else 1 + math.ceil((num_frames - 1) / f)


@dataclass
class World:
    """A latent space, a text encoder and the frame geometry that go with a model."""

    name: str
    codec: LatentCodec
    text_encoder: TextEncoder
    height: int  # pixels
    width: int
    fps: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.codec.spatial_factor
        return self.codec.latent_channels, self.height // s, self.width // s


def shapes_world(model: WanModel) -> World:
    from hiar.world.shapes import IdentityCodec, ShapesTextEncoder, default_world

    world = default_world()
    enc = ShapesTextEncoder(dim=model.cfg.text_dim, max_len=model.cfg.text_len, world=world)
    side = world.config.side
    return World("shapes", IdentityCodec(), enc, side, side, SHAPES_FPS)


def wan_world(vae_dir: str, text_encoder_dir: str, height: int = WAN_SIZE[0], width: int = WAN_SIZE[1],
              device="cpu") -> World:
    from hiar.wan import UMT5TextEncoder, WanVAE

    vae = WanVAE.from_pretrained(vae_dir, device=device)
    text = UMT5TextEncoder.from_pretrained(text_encoder_dir, device=device)
    return World("wan", vae, text, height, width, WAN_FPS)


def load_shapes_model(checkpoint: str | None, method: str = "hiar", device: str = "cpu") -> tuple[WanModel, str]:
    """The given checkpoint, else the bundled shapes student of ``method``."""
    from hiar.checkpoint import load_model

    path = checkpoint or bundled_model_path(method)
    return load_model(path, device=device).eval(), str(path)


def check_device(name: str, flag: str = "--device") -> torch.device:
    """``name`` as a torch device this machine has; else a one-line error naming ``flag``."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {name!r} is not a device (cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: CUDA is not available here (torch {torch.__version__}); use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"{flag} {name}: hiar runs on cpu or cuda")
    return device


def fit_attention(config: SamplerConfig, num_blocks: int) -> tuple[SamplerConfig, dict[str, str]]:
    """Cut a KV window or sink longer than the video to the video's latent frames; a note for each
    (keyed ``window`` / ``sink``).

    A block never sees more than the whole video, so the output is the same; the caches (``sink +
    window - k`` frames, allocated at the first write) are then no bigger than the video.
    """
    frames = num_blocks * config.block_frames
    changes, notes = {}, {}
    for name in ("window", "sink"):
        value = getattr(config, name)
        if value is not None and value > frames:
            changes[name] = frames
            notes[name] = f"--{name} {value} is longer than the video ({frames} latent frames): using {frames}"
    return replace(config, **changes), notes


def kv_cache_bytes(model: WanModel, config: SamplerConfig, latent_shape: tuple[int, int, int], batch: int = 1) -> int | None:
    """Bytes of all KV caches of a run (keys and values, every layer and stage); None when unbounded."""
    frames = config.attention.cache_frames
    if frames is None:
        return None
    _, H, W = latent_shape
    pt, ph, pw = model.cfg.patch_size
    tokens = frames * (H // ph) * (W // pw) // pt
    stages = _num_caches(config)
    element = torch.empty(0, dtype=model.dtype).element_size()
    return stages * model.cfg.num_layers * 2 * batch * tokens * model.cfg.dim * element


def _num_caches(config: SamplerConfig) -> int:
    """KV caches of a run: one per group of steps that read the same context levels."""
    from hiar.grid import Planner

    return len(Planner(config.context, config.num_steps).stages)


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (CPU: MemAvailable), or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def human_bytes(n: float) -> str:
    """``1.5 GiB``, ``977 TiB``: bytes in the largest binary unit that keeps the number at least 1."""
    units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.3g} {units[i]}"


def check_cache_fits(model: WanModel, config: SamplerConfig, latent_shape: tuple[int, int, int], device: torch.device) -> None:
    """Refuse, before anything is allocated, KV caches bigger than the memory free on ``device``."""
    need, free = kv_cache_bytes(model, config, latent_shape), free_memory_bytes(device)
    if need is None or free is None or need <= 0.9 * free:
        return
    raise ValueError(
        f"--window {config.window} with --sink {config.sink} needs {human_bytes(need)} of KV caches "
        f"({config.attention.cache_frames} frames x {model.cfg.num_layers} layers x {_num_caches(config)} caches), "
        f"but only {human_bytes(free)} is free on {device}: lower --window or --sink")


def num_blocks_for(num_frames: int, codec: LatentCodec, block_frames: int, continuing: bool = False) -> int:
    """Blocks of ``block_frames`` latent frames that cover ``num_frames`` video frames (``continuing``
    given frames: a causal VAE's first latent frame is then not a lone pixel frame)."""
    latents = math.ceil(num_frames / codec.temporal_factor) if continuing else latent_frames(num_frames, codec)
    return math.ceil(latents / block_frames)


class NonFiniteOutputError(UserError):
    """The model gave NaN or infinite values: a broken checkpoint, not a video."""


def write_blocks(
    blocks: Iterable[tuple[int, torch.Tensor]],
    world: World,
    num_frames: int,
    *,
    writer=None,
    progress: bool = True,
    status: Callable[[], str] | None = None,
    given: GivenFrames | None = None,
) -> torch.Tensor | None:
    """Decode latent blocks ``(n, [1, C, k, h, w])`` and hand the pixels to ``writer`` as they come.

    Each block is decoded as soon as it arrives, through the codec's stream decoder (Wan's causal
    VAE carries its cache from block to block: the same frames as decoding the whole video at once,
    at a memory that does not grow with the length). The last block may overshoot: the video is cut
    to ``num_frames``. On Ctrl-C or an error, every block decoded before is written. Returns the
    pixels ``[3, F, H, W]`` in [-1, 1] when no writer is given, else None. ``given`` frames come
    first, unchanged (then ``num_frames`` generated ones); their latents go through the stream
    decoder first, so the generated blocks continue them, and their decoded pixels are dropped. A
    block with NaN or infinite values (a broken checkpoint) is not written:
    :class:`NonFiniteOutputError` names it, and the blocks before it stay.
    """
    from tqdm.auto import tqdm

    decoder = stream_decoder(world.codec)
    kept: list[torch.Tensor] = []
    put = writer.write if writer is not None else kept.append
    written = 0
    if given is not None:
        put(given.pixels)
        decoder.decode(given.latents.float())  # the decoder's state after them; their pixels are the given ones
    with tqdm(total=num_frames, unit="frame", desc="generating", disable=not progress) as bar:
        for n, block in blocks:
            if not bool(torch.isfinite(block).all()):
                raise NonFiniteOutputError(f"the output is not finite (NaN or inf) in block {n}")
            pixels = decoder.decode(block.float())[0].clamp(-1, 1).cpu()[:, : num_frames - written]
            written += pixels.shape[1]
            put(pixels)
            bar.update(pixels.shape[1])
            if status is not None:
                bar.set_postfix(fps=status())
    return torch.cat(kept, dim=1) if kept else None


def generate(
    model: WanModel,
    world: World,
    prompt: str | PromptScript | list[tuple[float, str]],
    *,
    num_frames: int,
    config: SamplerConfig,
    seed: int = 0,
    writer=None,
    progress: bool = True,
    init_frames: torch.Tensor | GivenFrames | None = None,
) -> tuple[torch.Tensor | None, GridReport]:
    """Generate ``num_frames`` video frames for ``prompt`` (see :func:`write_blocks`).

    ``prompt``: one prompt, or prompts switching mid-stream: a :class:`~hiar.prompts.PromptScript`
    (the prompt at 0 s and ``(seconds, prompt)`` switches), or a list of ``(seconds, prompt)`` pairs
    whose first is at 0 s. Each switch takes effect at the first block starting at or after its time;
    ``config.switch`` says whether the KV caches are kept or re-cached under the new prompt.
    ``init_frames`` (pixels ``[3, P, H, W]`` in [-1, 1], or already encoded
    :class:`~hiar.conditioning.GivenFrames`): the video starts with them, unchanged, and continues
    (image-to-video with one frame, video extension with more). Returns the pixel video
    ``[3, P + num_frames, H, W]`` in [-1, 1] when no writer is given (else None) and the sampler's report.
    """
    given = init_frames
    if isinstance(init_frames, torch.Tensor):
        given = encode_given(init_frames, world.codec, config.block_frames)
    script = prompt_script(prompt)
    schedule = script.schedule(num_frames, fps=world.fps, temporal_factor=world.codec.temporal_factor,
                               block_frames=config.block_frames, continuing=given is not None)
    texts = [world.text_encoder.encode([p]).to(model.device, model.dtype) for p in script.prompts]
    sampler = GridSampler(model, config, texts, seeds=[seed], latent_shape=world.latent_shape,
                          initial_latents=None if given is None else given.latents, prompts=schedule)
    blocks = sampler.stream(num_blocks_for(num_frames, world.codec, config.block_frames, continuing=given is not None))
    video = write_blocks(blocks, world, num_frames, writer=writer, progress=progress,
                         status=lambda: f"{sampler.report.frames_per_s:.1f}", given=given)
    return video, sampler.report


def prompt_script(prompt: str | PromptScript | list[tuple[float, str]]) -> PromptScript:
    """A prompt, a script, or ``[(0, first), (seconds, prompt), ...]`` as a :class:`PromptScript`."""
    if isinstance(prompt, PromptScript):
        return prompt
    if isinstance(prompt, str):
        return PromptScript(prompt)
    pairs = list(prompt)
    if not pairs or float(pairs[0][0]) != 0:
        raise ValueError(f"a list of (seconds, prompt) starts with the prompt at 0 s, got {pairs[:1]}")
    return PromptScript(pairs[0][1], tuple(pairs[1:]))
