"""The shapes world: procedural clips with prompts and ground truth, a frozen toy text encoder, and
the identity pixel codec.

A clip is a solid background and 1-3 objects (circle, square, triangle), each with a palette colour,
a size and a speed, moving in a straight line and bouncing off the walls. The prompt is generated
from the same attributes ("a fast red circle and a slow blue square on a dark background"), and
:func:`ShapesWorld.parse_prompt` reads a prompt back into a :class:`PromptTarget` that the shapes
scores (:mod:`hiar.eval.shapes_scores`) judge videos against.

Everything is deterministic (seeded numpy) and fast: objects are drawn from cached anti-aliased
sprites (coverage supersampled 8x8 per pixel, positions quantised to 1/4 pixel), vectorised over
frames, so a 21-frame 32x32 clip renders in well under a millisecond.

Conventions: sizes and speeds are fractions of the frame's shorter side (so the world looks the
same at 32x32 or 64x64); positions in :class:`ClipAnnotations` are pixel coordinates of the object's
bounding-box centre, x to the right and y down, pixel ``i`` covering ``[i, i + 1)``. Objects of one
clip have distinct colours (this keeps each object identifiable by colour when scoring).
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from hiar.config import from_dict

SHAPES = ("circle", "square", "triangle")

DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 47),
    "green": (60, 180, 75),
    "blue": (45, 105, 230),
    "yellow": (240, 205, 40),
    "purple": (150, 70, 200),
    "white": (235, 235, 235),
}
DEFAULT_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "dark": (20, 22, 30),
    "gray": (105, 105, 110),
}

# Words that may appear in a prompt but carry no attribute: accepted, then dropped before encoding
# (so a three-object prompt fits the text encoder's 16 tokens).
FILLER_WORDS = ("a", "an", "the", "on", "with")
CONNECTORS = ("and", ",")
BACKGROUND_WORD = "background"


@dataclass
class ShapesWorldConfig:
    """What the world contains. Sizes and speeds are fractions of the frame's shorter side."""

    height: int = 32
    width: int = 32
    colors: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(DEFAULT_COLORS))
    backgrounds: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(DEFAULT_BACKGROUNDS))
    shapes: tuple[str, ...] = SHAPES
    sizes: dict[str, float] = field(default_factory=lambda: {"small": 0.25, "large": 0.375})  # extent / side
    speeds: dict[str, float] = field(default_factory=lambda: {"slow": 0.016, "fast": 0.05})  # side per frame
    min_objects: int = 1
    max_objects: int = 3
    prompt_sizes: bool = False  # name each object's size in generated prompts ("a small fast red circle")

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"frame size {self.height}x{self.width} is too small (at least 8x8)")
        self.colors = {str(k): _rgb(v, f"colors.{k}") for k, v in self.colors.items()}
        self.backgrounds = {str(k): _rgb(v, f"backgrounds.{k}") for k, v in self.backgrounds.items()}
        self.shapes = tuple(self.shapes)
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad or not self.shapes:
            raise ValueError(f"shapes must be a non-empty subset of {list(SHAPES)}, got {list(self.shapes)}")
        if not self.colors or not self.backgrounds or not self.sizes or not self.speeds:
            raise ValueError("colors, backgrounds, sizes and speeds must each name at least one entry")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if self.max_objects > len(self.colors):
            raise ValueError(f"max_objects={self.max_objects} exceeds the {len(self.colors)} colours (objects have distinct colours)")
        for name, value in self.sizes.items():
            if not 0.05 <= float(value) <= 0.6:
                raise ValueError(f"sizes.{name}={value} must be in [0.05, 0.6] (fraction of the frame side)")
        for name, value in self.speeds.items():
            if not 0.0 <= float(value) <= 0.3:
                raise ValueError(f"speeds.{name}={value} must be in [0, 0.3] (frame sides per frame)")
        groups = {"colors": self.colors, "backgrounds": self.backgrounds, "shapes": self.shapes,
                  "sizes": self.sizes, "speeds": self.speeds}
        reserved = set(FILLER_WORDS) | set(CONNECTORS) | {BACKGROUND_WORD}
        seen: dict[str, str] = {}
        for group, names in groups.items():
            for name in names:
                if not re.fullmatch(r"[a-z]+", name) or name in reserved:
                    raise ValueError(f"{group}: '{name}' must be a lowercase word, not one of {sorted(reserved)}")
                if name in seen:
                    raise ValueError(f"'{name}' is used both in {seen[name]} and in {group}")
                seen[name] = group

    @property
    def side(self) -> int:
        return min(self.height, self.width)

    def extent_px(self, size: str) -> float:
        return float(self.sizes[size]) * self.side

    def speed_px(self, speed: str) -> float:
        return float(self.speeds[speed]) * self.side

    @classmethod
    def from_dict(cls, data: dict) -> "ShapesWorldConfig":
        return from_dict(cls, data)


def _rgb(value, where: str) -> tuple[int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in value):
        raise ValueError(f"{where}: expected [r, g, b] with integers in 0..255, got {value!r}")
    return tuple(int(c) for c in value)


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str
    size: str
    speed: str
    position: tuple[float, float]  # initial centre, fraction of the free range along x and y, in [0, 1]
    direction: float  # radians; 0 = moving right, pi/2 = moving down


@dataclass(frozen=True)
class ShapesSpec:
    """Everything that determines a clip."""

    background: str
    objects: tuple[ObjectSpec, ...]


@dataclass(frozen=True)
class ObjectTarget:
    """One object a prompt asks for; ``size``/``speed`` are None when the prompt does not say."""

    shape: str
    color: str
    speed: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class PromptTarget:
    """What a prompt asks for (the parse of a prompt)."""

    objects: tuple[ObjectTarget, ...]
    background: str | None = None


@dataclass
class ClipAnnotations:
    """Ground truth of a rendered clip, per frame."""

    background: str
    shapes: list[str]
    colors: list[str]
    sizes: list[str]
    speeds: list[str]
    extents: np.ndarray  # [K] object extent in pixels (diameter / side / triangle base and height)
    centers: np.ndarray  # [F, K, 2] bounding-box centre (x, y) in pixels
    frame_indices: np.ndarray  # [F] absolute frame index of each frame (start .. start + F - 1)

    @property
    def num_objects(self) -> int:
        return len(self.shapes)


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect unbounded positions back into [lo, hi] (a ball bouncing off two walls)."""
    length = hi - lo
    if length <= 0:
        return np.full_like(p, lo)
    u = np.mod(p - lo, 2 * length)
    return lo + np.where(u <= length, u, 2 * length - u)


class ShapesWorld:
    """Samples specs, renders clips, writes and parses prompts for one :class:`ShapesWorldConfig`."""

    QUANT = 4  # sub-pixel positions per pixel
    SUPERSAMPLE = 8  # coverage samples per pixel side when building sprites

    def __init__(self, config: ShapesWorldConfig | None = None):
        self.config = config or ShapesWorldConfig()
        self._sprites: dict[tuple[str, float], tuple[np.ndarray, int]] = {}

    # ----------------------------------------------------------------------------- vocabulary
    @functools.cached_property
    def vocabulary(self) -> tuple[str, ...]:
        c = self.config
        words = [*FILLER_WORDS, *CONNECTORS, *c.sizes, *c.speeds, *c.colors, *c.shapes, *c.backgrounds, BACKGROUND_WORD]
        return tuple(dict.fromkeys(words))

    def tokenize(self, prompt: str) -> list[str]:
        """Lower-case words and commas; refuses unknown words with the vocabulary in the message."""
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
        words = re.sub(r",", " , ", prompt.strip().lower().rstrip(".")).split()
        vocab = set(self.vocabulary)
        unknown = [w for w in words if w not in vocab]
        if unknown:
            raise ValueError(
                f"unknown word{'s' if len(set(unknown)) > 1 else ''} {', '.join(repr(u) for u in dict.fromkeys(unknown))} "
                f"in prompt {prompt!r}; the shapes world's vocabulary is: {' '.join(self.vocabulary)}"
            )
        return words

    # ----------------------------------------------------------------------------- specs and prompts
    def sample_spec(self, seed: int | np.random.Generator | tuple[int, ...]) -> ShapesSpec:
        """A random spec; the same seed always gives the same spec."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        c = self.config
        count = int(rng.integers(c.min_objects, c.max_objects + 1))
        colors = list(c.colors)
        chosen = rng.choice(len(colors), size=count, replace=False)
        objects = []
        for k in range(count):
            objects.append(ObjectSpec(
                shape=c.shapes[int(rng.integers(len(c.shapes)))],
                color=colors[int(chosen[k])],
                size=list(c.sizes)[int(rng.integers(len(c.sizes)))],
                speed=list(c.speeds)[int(rng.integers(len(c.speeds)))],
                position=(float(rng.random()), float(rng.random())),
                direction=float(rng.uniform(0, 2 * math.pi)),
            ))
        background = list(c.backgrounds)[int(rng.integers(len(c.backgrounds)))]
        return ShapesSpec(background=background, objects=tuple(objects))

    def prompt(self, spec: ShapesSpec | PromptTarget) -> str:
        """"a fast red circle, a slow blue square and a fast green triangle on a dark background"."""
        phrases = []
        for obj in spec.objects:
            words = ["a"]
            if self.config.prompt_sizes and obj.size is not None:
                words.append(obj.size)
            if obj.speed is not None:
                words.append(obj.speed)
            words += [obj.color, obj.shape]
            phrases.append(" ".join(words))
        text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        if spec.background is not None:
            text += f" on a {spec.background} background"
        return text

    def parse_prompt(self, prompt: str) -> PromptTarget:
        """Read a prompt back into what it asks for. Adjectives (size, speed) may come in any order
        before the colour; each object is ``[size] [speed] colour shape``; objects are separated by
        ``,`` or ``and``; ``on a <background> background`` is optional and comes last."""
        c = self.config
        words = [w for w in self.tokenize(prompt) if w not in FILLER_WORDS]
        background = None
        if BACKGROUND_WORD in words:
            at = words.index(BACKGROUND_WORD)
            if at != len(words) - 1 or at == 0 or words[at - 1] not in c.backgrounds:
                raise ValueError(f"prompt {prompt!r}: expected '... on a <{'|'.join(c.backgrounds)}> background' at the end")
            background = words[at - 1]
            words = words[: at - 1]
        phrases: list[list[str]] = [[]]
        for w in words:
            if w in CONNECTORS:
                phrases.append([])
            else:
                phrases[-1].append(w)
        objects = []
        for phrase in phrases:
            if not phrase:
                raise ValueError(f"prompt {prompt!r}: an empty object description (check the commas and 'and's)")
            size = speed = color = shape = None
            for w in phrase:
                if w in c.backgrounds:
                    raise ValueError(f"prompt {prompt!r}: '{w}' is a background; end the prompt with 'on a {w} background'")
                if shape is not None:
                    raise ValueError(f"prompt {prompt!r}: '{w}' after the shape '{shape}' (an object is [size] [speed] colour shape)")
                if w in c.sizes and size is None and color is None:
                    size = w
                elif w in c.speeds and speed is None and color is None:
                    speed = w
                elif w in c.colors and color is None:
                    color = w
                elif w in c.shapes and color is not None:
                    shape = w
                else:
                    raise ValueError(f"prompt {prompt!r}: cannot place '{w}' in '{' '.join(phrase)}' (an object is [size] [speed] colour shape)")
            if shape is None:
                raise ValueError(f"prompt {prompt!r}: '{' '.join(phrase)}' names no shape after its colour (one of {', '.join(c.shapes)})")
            objects.append(ObjectTarget(shape=shape, color=color, speed=speed, size=size))
        return PromptTarget(objects=tuple(objects), background=background)

    def target(self, spec: ShapesSpec) -> PromptTarget:
        """The full truth of a spec as a target (sizes and speeds included)."""
        return PromptTarget(
            objects=tuple(ObjectTarget(o.shape, o.color, o.speed, o.size) for o in spec.objects),
            background=spec.background,
        )

    # ----------------------------------------------------------------------------- rendering
    def _sprite(self, shape: str, extent: float) -> tuple[np.ndarray, int]:
        """Coverage of ``shape`` for every quarter-pixel offset: ``[Q, Q, n, n]`` (y offset, x offset)
        and the offset ``r0`` of the sprite's first pixel relative to the centre's pixel."""
        key = (shape, round(extent, 4))
        if key in self._sprites:
            return self._sprites[key]
        q, ss = self.QUANT, self.SUPERSAMPLE
        half = extent / 2
        r0 = -int(math.ceil(half)) - 1
        n = 2 * int(math.ceil(half)) + 3
        sub = (np.arange(n * ss) + 0.5) / ss + r0  # sample positions relative to the centre pixel's origin
        offsets = np.arange(q) / q
        out = np.empty((q, q, n, n), np.float32)
        for iy, oy in enumerate(offsets):
            y = (sub - oy)[:, None]
            for ix, ox in enumerate(offsets):
                x = (sub - ox)[None, :]
                if shape == "circle":
                    inside = x * x + y * y <= half * half
                elif shape == "square":
                    inside = (np.abs(x) <= half) & (np.abs(y) <= half)
                else:  # upright isosceles triangle: apex at the top, base at the bottom
                    inside = (y <= half) & (np.abs(x) <= (y + half) / 2)
                out[iy, ix] = inside.reshape(n, ss, n, ss).mean(axis=(1, 3))
        self._sprites[key] = (out, r0)
        return out, r0

    def trajectory(self, obj: ObjectSpec, frames: np.ndarray) -> np.ndarray:
        """Centres ``[len(frames), 2]`` (x, y) in pixels at the given absolute frame indices."""
        c = self.config
        half = c.extent_px(obj.size) / 2
        lo_x, hi_x = half, c.width - half
        lo_y, hi_y = half, c.height - half
        x0 = lo_x + obj.position[0] * (hi_x - lo_x)
        y0 = lo_y + obj.position[1] * (hi_y - lo_y)
        v = c.speed_px(obj.speed)
        t = frames.astype(np.float64)
        x = _fold(x0 + v * math.cos(obj.direction) * t, lo_x, hi_x)
        y = _fold(y0 + v * math.sin(obj.direction) * t, lo_y, hi_y)
        return np.stack([x, y], axis=-1)

    def render(self, spec: ShapesSpec, num_frames: int, start: int = 0) -> tuple[torch.Tensor, ClipAnnotations]:
        """Frames ``start .. start + num_frames - 1`` of the clip: ``[3, F, H, W]`` float32 in [-1, 1]
        and their :class:`ClipAnnotations`. Rendering in pieces gives the same frames as at once."""
        frames, ann = self.render_numpy(spec, num_frames, start)
        tensor = torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()
        return tensor.mul_(2.0 / 255.0).sub_(1.0), ann

    def render_numpy(self, spec: ShapesSpec, num_frames: int, start: int = 0) -> tuple[np.ndarray, ClipAnnotations]:
        """Like :meth:`render` but ``[F, H, W, 3]`` float32 in [0, 255]."""
        c = self.config
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if spec.background not in c.backgrounds:
            raise ValueError(f"unknown background '{spec.background}' (one of {', '.join(c.backgrounds)})")
        H, W, F = c.height, c.width, num_frames
        t = np.arange(start, start + F)
        margin = int(math.ceil(max(c.extent_px(s) for s in c.sizes) / 2)) + 3
        canvas = np.empty((F, H + 2 * margin, W + 2 * margin, 3), np.float32)
        canvas[:] = np.asarray(c.backgrounds[spec.background], np.float32)
        fidx = np.arange(F)[:, None, None]
        centers = np.zeros((F, len(spec.objects), 2))
        for k, obj in enumerate(spec.objects):
            for name, group in (("shape", c.shapes), ("color", c.colors), ("size", c.sizes), ("speed", c.speeds)):
                if getattr(obj, name) not in group:
                    raise ValueError(f"object {k}: unknown {name} '{getattr(obj, name)}' (one of {', '.join(group)})")
            sprites, r0 = self._sprite(obj.shape, c.extent_px(obj.size))
            n = sprites.shape[-1]
            centers[:, k] = xy = self.trajectory(obj, t)
            q = np.round(xy * self.QUANT).astype(np.int64)
            ix, fx = np.divmod(q[:, 0], self.QUANT)
            iy, fy = np.divmod(q[:, 1], self.QUANT)
            alpha = sprites[fy, fx][..., None]  # [F, n, n, 1]
            rows = (iy + r0 + margin)[:, None, None] + np.arange(n)[None, :, None]
            cols = (ix + r0 + margin)[:, None, None] + np.arange(n)[None, None, :]
            region = canvas[fidx, rows, cols]
            canvas[fidx, rows, cols] = region + alpha * (np.asarray(c.colors[obj.color], np.float32) - region)
        frames = np.ascontiguousarray(canvas[:, margin:margin + H, margin:margin + W])
        ann = ClipAnnotations(
            background=spec.background,
            shapes=[o.shape for o in spec.objects],
            colors=[o.color for o in spec.objects],
            sizes=[o.size for o in spec.objects],
            speeds=[o.speed for o in spec.objects],
            extents=np.array([c.extent_px(o.size) for o in spec.objects]),
            centers=centers,
            frame_indices=t,
        )
        return frames, ann


@functools.lru_cache(maxsize=1)
def default_world() -> ShapesWorld:
    return ShapesWorld(ShapesWorldConfig())


def render_clip(spec: ShapesSpec, num_frames: int, start: int = 0, world: ShapesWorld | None = None):
    """``[3, F, H, W]`` frames in [-1, 1] and annotations, in the default world unless one is given."""
    return (world or default_world()).render(spec, num_frames, start)


# --------------------------------------------------------------------------------- training data
class ShapesDataset(torch.utils.data.IterableDataset):
    """Endless seeded stream of ``(frames [3, F, H, W] in [-1, 1], prompt)``.

    Item ``i`` depends only on ``(seed, i)``, so runs are reproducible and resumable (``start``).
    The stream is split without overlap over DDP ranks (``rank``/``world_size``) and DataLoader
    workers: shard ``rank * num_workers + worker`` takes indices ``start + shard, start + shard +
    shards, ...``. ``length`` makes it finite (the items ``start .. start + length - 1``).
    """

    def __init__(self, num_frames: int = 21, seed: int = 0, config: ShapesWorldConfig | None = None,
                 rank: int = 0, world_size: int = 1, start: int = 0, length: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.world = ShapesWorld(config)
        self.num_frames, self.seed = num_frames, seed
        self.rank, self.world_size, self.start, self.length = rank, world_size, start, length

    def spec(self, index: int) -> ShapesSpec:
        return self.world.sample_spec(np.random.default_rng([self.seed, index]))

    def clip(self, index: int) -> tuple[torch.Tensor, str]:
        spec = self.spec(index)
        frames, _ = self.world.render(spec, self.num_frames)
        return frames, self.world.prompt(spec)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        shards = self.world_size * workers
        index = self.start + self.rank * workers + worker
        end = None if self.length is None else self.start + self.length
        while end is None or index < end:
            yield self.clip(index)
            index += shards


# --------------------------------------------------------------------------------- text encoder
class ShapesTextEncoder:
    """Frozen toy text encoder (the stand-in for umT5): ``[B, max_len, dim]``.

    Token ``i`` of a prompt is ``word_vector(word) + 0.5 * sinusoid(i)`` (so word order matters),
    and positions after the last token are zero (Wan's convention). Filler words (a, an, the, on,
    with) are accepted and dropped. Each word's vector is drawn from
    ``numpy.random.default_rng([SEED, crc32(word)])`` -- a fixed function of the word, the same on
    every machine, torch version and vocabulary. Unknown words raise ValueError listing the vocabulary.
    """

    SEED = 20250601
    POSITION_SCALE = 0.5

    def __init__(self, dim: int = 64, max_len: int = 16, world: ShapesWorld | None = None):
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even number >= 2, got {dim}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.dim, self.max_len = dim, max_len
        self.world = world or default_world()
        self.vocabulary = tuple(w for w in self.world.vocabulary if w not in FILLER_WORDS)
        table = np.stack([np.random.default_rng([self.SEED, zlib.crc32(w.encode())]).standard_normal(dim)
                          for w in self.vocabulary])
        self.word_vectors = torch.from_numpy(table.astype(np.float32))  # [V, dim]
        self.index = {w: i for i, w in enumerate(self.vocabulary)}
        pos = np.arange(max_len)[:, None]
        freq = np.exp(-math.log(10000.0) * np.arange(0, dim, 2) / dim)[None, :]
        code = np.zeros((max_len, dim))
        code[:, 0::2], code[:, 1::2] = np.sin(pos * freq), np.cos(pos * freq)
        self.position_code = torch.from_numpy((self.POSITION_SCALE * code).astype(np.float32))

    def token_ids(self, prompt: str) -> list[int]:
        ids = [self.index[w] for w in self.world.tokenize(prompt) if w not in FILLER_WORDS]
        if len(ids) > self.max_len:
            raise ValueError(f"prompt {prompt!r} has {len(ids)} tokens (fillers dropped); this encoder takes at most max_len={self.max_len}")
        return ids

    def encode(self, prompts: list[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        out = torch.zeros(len(prompts), self.max_len, self.dim)
        for b, prompt in enumerate(prompts):
            ids = self.token_ids(prompt)
            if ids:
                out[b, : len(ids)] = self.word_vectors[ids] + self.position_code[: len(ids)]
        return out


# --------------------------------------------------------------------------------- codec
class IdentityCodec:
    """The shapes world's latent space is its pixels: ``[B, 3, F, H, W]`` in [-1, 1] both ways."""

    latent_channels = 3
    temporal_factor = 1
    spatial_factor = 1

    @staticmethod
    def _check(x: torch.Tensor, what: str) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"IdentityCodec.{what} expects [B, 3, F, H, W], got {tuple(x.shape)}")
        return x

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self._check(frames, "encode")

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._check(latents, "decode")
