"""Where training clips and prompts come from, indexed by *global sample index*.

A source maps an index to ``(latents [C, F, H, W] or None, prompt)`` deterministically, so a step's
batch is fixed by ``(step, global batch)`` alone: resuming needs only the step, and rank r of W takes
indices ``step * b * W + r * b + i`` (2 ranks x b == 1 rank x 2b). Text states come from the
source's encoder (``[B, L, D]``, zero after each prompt); the *null prompt* for classifier-free
guidance is all zeros (the encoding of the empty prompt), or a negative prompt's encoding
(:meth:`ClipSource.unconditional_text`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hiar.training.configs import DataSection
from hiar.training.trajectories import TrajectoryDataset


def rank_indices(step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Global sample indices of this rank's slice of step ``step``'s global batch."""
    start = step * batch_size * world_size + rank * batch_size
    return list(range(start, start + batch_size))


class ClipSource:
    """Base: ``clip(i)``, ``prompt(i)``, ``text(prompts)`` and the latent shape."""

    latent_shape: tuple[int, int, int]  # (C, H, W)
    num_frames: int
    has_clips = True

    def prompt(self, index: int) -> str:
        raise NotImplementedError

    def clip(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def text(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def batch(self, indices: list[int], *, clips: bool = True) -> tuple[torch.Tensor | None, torch.Tensor, list[str]]:
        """``(latents [B, C, F, H, W] or None, text [B, L, D], prompts)`` for these indices."""
        prompts = [self.prompt(i) for i in indices]
        x = torch.stack([self.clip(i) for i in indices]) if clips else None
        return x, self.text(prompts), prompts

    @property
    def text_shape(self) -> tuple[int, int]:
        """``(L, D)`` of one prompt's text states: what the encoder returns."""
        return self.encoder.max_len, self.encoder.dim

    def unconditional_text(self, batch_size: int, negative_prompt: str | None = None) -> torch.Tensor:
        """``[B, L, D]`` text states of guidance's unconditional branch.

        ``None``: the null prompt (all zeros). A string: its encoding by this source's encoder, one
        row expanded to the batch - stages call this once at setup (the encoder may be a large umT5)
        and reuse the result. A prompt the encoder refuses raises a ValueError naming the setting.
        """
        if negative_prompt is None:
            return torch.zeros(batch_size, *self.text_shape)
        try:
            encoded = self.text([negative_prompt])
        except ValueError as err:
            raise ValueError(f"negative_prompt: {err}") from None
        return encoded.expand(batch_size, -1, -1)


class ShapesSource(ClipSource):
    """The shapes world: pixels are the latents (identity codec), the toy text encoder."""

    def __init__(self, cfg: DataSection, text_dim: int, text_len: int):
        from hiar.world.shapes import ShapesDataset, ShapesTextEncoder, ShapesWorldConfig

        world_cfg = ShapesWorldConfig.from_dict(dict(cfg.shapes))
        self.dataset = ShapesDataset(num_frames=cfg.num_frames, seed=cfg.seed, config=world_cfg)
        self.encoder = ShapesTextEncoder(dim=text_dim, max_len=text_len, world=self.dataset.world)
        self.latent_shape = (3, world_cfg.height, world_cfg.width)
        self.num_frames = cfg.num_frames

    def prompt(self, index: int) -> str:
        ds = self.dataset
        return ds.world.prompt(ds.spec(index))

    def clip(self, index: int) -> torch.Tensor:
        return self.dataset.clip(index)[0]

    def text(self, prompts: list[str]) -> torch.Tensor:
        return self.encoder.encode(prompts)

    def batch(self, indices: list[int], *, clips: bool = True) -> tuple[torch.Tensor | None, torch.Tensor, list[str]]:
        if not clips:
            return super().batch(indices, clips=False)
        items = [self.dataset.clip(i) for i in indices]  # each spec drawn once, for its clip and its prompt
        prompts = [prompt for _, prompt in items]
        return torch.stack([frames for frames, _ in items]), self.text(prompts), prompts


class PromptSource(ClipSource):
    """Prompts from a text file (cycled), encoded by umT5; no clips."""

    has_clips = False

    def __init__(self, cfg: DataSection, device=None):
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"data.prompts_file not found: {path}")
        self.prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not self.prompts:
            raise ValueError(f"data.prompts_file {path} holds no prompt")
        from hiar.wan import UMT5TextEncoder

        self.encoder = UMT5TextEncoder.from_pretrained(cfg.text_encoder, device=device or "cpu")
        self.latent_shape = tuple(cfg.latent_shape)
        self.num_frames = cfg.num_frames

    def prompt(self, index: int) -> str:
        return self.prompts[index % len(self.prompts)]

    def clip(self, index: int) -> torch.Tensor:
        raise ValueError("data.kind=prompts has no clips (use kind shapes or trajectories for this stage)")

    def text(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder.encode(prompts).float().cpu()


class TrajectorySource(ClipSource):
    """Clips = the clean endpoints x_ref[S] of stored trajectories; text = their stored states."""

    def __init__(self, cfg: DataSection):
        self.store = TrajectoryDataset(cfg.trajectories)
        C, F, H, W = self.store.sample_shape
        self.latent_shape = (C, H, W)
        self.num_frames = F
        if cfg.num_frames != F:
            raise ValueError(f"data.num_frames={cfg.num_frames} but the trajectories in {cfg.trajectories} have {F} frames")

    def prompt(self, index: int) -> str:
        return self.store.prompt(index % len(self.store))

    def clip(self, index: int) -> torch.Tensor:
        return self.store.latents(index % len(self.store))[-1]

    def batch(self, indices, *, clips=True):
        items = [self.store[i % len(self.store)] for i in indices]
        x = torch.stack([it["latents"][-1] for it in items]) if clips else None
        return x, torch.stack([it["text"] for it in items]), [it["prompt"] for it in items]

    def text(self, prompts: list[str]) -> torch.Tensor:
        raise ValueError("trajectory data stores text states, not an encoder: use batch()")

    @property
    def text_shape(self) -> tuple[int, int]:
        return tuple(self.store[0]["text"].shape)

    def unconditional_text(self, batch_size: int, negative_prompt: str | None = None) -> torch.Tensor:
        """The null prompt only: stored text states come without the encoder a negative prompt needs."""
        if negative_prompt is not None:
            raise ValueError("negative_prompt needs a text encoder, which data.kind=trajectories does not have "
                             "(it stores text states): use data.kind shapes or prompts, or negative_prompt: null")
        return super().unconditional_text(batch_size)


_WORKER_SOURCE: ShapesSource | None = None  # the source of a PrefetchingSource's worker process


def _start_worker(cfg: DataSection, text_dim: int, text_len: int) -> None:
    import signal

    global _WORKER_SOURCE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle, not each worker's
    torch.set_num_threads(1)
    _WORKER_SOURCE = ShapesSource(cfg, text_dim, text_len)


def _worker_batch(indices: list[int]):
    return _WORKER_SOURCE.batch(indices)


class PrefetchingSource(ShapesSource):
    """A :class:`ShapesSource` whose next batches are rendered ahead in ``workers`` processes.

    Its batches are the source's own (an item depends only on its index): a batch that was not started
    ahead is made here. After each batch it starts the next ``depth``, stepping by the distance between
    the last two batches' first indices (the trainer's batches step by batch size x processes).
    """

    def __init__(self, cfg: DataSection, text_dim: int, text_len: int, depth: int = 2):
        import multiprocessing
        import weakref
        from concurrent.futures import ProcessPoolExecutor

        super().__init__(cfg, text_dim, text_len)
        self.workers, self.depth = cfg.workers, depth
        # spawn: the trainer may hold a CUDA context, which a forked child must not inherit
        self.pool = ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker, initargs=(cfg, text_dim, text_len))
        weakref.finalize(self, self.pool.shutdown, wait=False, cancel_futures=True)
        self.ahead: dict[tuple[int, ...], list] = {}
        self.last_first: int | None = None

    def batch(self, indices: list[int], *, clips: bool = True):
        if not clips or not indices:
            return super().batch(indices, clips=clips)
        futures = self.ahead.pop(tuple(indices), None)
        if futures is None:
            result = super().batch(indices)
        else:
            parts = [f.result() for f in futures]
            result = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), sum((p[2] for p in parts), []))
        self._start_next(indices)
        return result

    def _start_next(self, indices: list[int]) -> None:
        first, last = indices[0], self.last_first
        self.last_first = first
        stride = first - last if last is not None else 0
        wanted = [tuple(i + k * stride for i in indices) for k in range(1, self.depth + 1)] if stride > 0 else []
        for key in [k for k in self.ahead if k not in wanted]:  # after a jump: not coming any more
            for f in self.ahead.pop(key):
                f.cancel()
        chunk = -(-len(indices) // self.workers)
        for key in wanted:
            if key not in self.ahead:
                self.ahead[key] = [self.pool.submit(_worker_batch, list(key[j:j + chunk]))
                                   for j in range(0, len(key), chunk)]


def make_source(cfg: DataSection, *, text_dim: int, text_len: int, device=None) -> ClipSource:
    if cfg.kind == "shapes":
        return PrefetchingSource(cfg, text_dim, text_len) if cfg.workers else ShapesSource(cfg, text_dim, text_len)
    if cfg.kind == "prompts":
        return PromptSource(cfg, device)
    return TrajectorySource(cfg)
