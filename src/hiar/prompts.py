"""Timed prompt scripts: which prompt the video shows from when, as a block schedule for the sampler.

A script is the prompt at 0 s and later ``(seconds, prompt)`` switches, from a file of
``seconds: prompt`` lines (``hiar generate --prompt-script``) or from ``--prompt-at SECONDS PROMPT``.
Seconds count from the first generated frame (after any given frames). A switch takes effect at
the first block that starts at or after its time: video frames -> latent frames through the
world's codec (Wan's causal VAE: latent 0 is frame 0, latent l >= 1 starts at frame 1 + 4 (l - 1)),
latent frames -> blocks of ``block_frames``. A time at which no block starts before the video ends,
or two times that land on the same block, are refused: that prompt would never be shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hiar.grid import PromptSchedule


@dataclass(frozen=True)
class PromptScript:
    """The prompt at 0 s and the later switches, ``(seconds, prompt)`` with increasing times.

    A switch to an empty prompt is refused (a typo, more likely than a wish for unconditional
    video); the prompt at 0 s is taken as it is, as without switches."""

    first: str
    switches: tuple[tuple[float, str], ...] = ()
    sources: tuple[str, ...] = ()  # how each switch was given, for error messages ("--prompt-at 3", "FILE line 2")

    def __post_init__(self):
        object.__setattr__(self, "switches", tuple((float(t), p) for t, p in self.switches))
        sources = self.sources or tuple(f"switch at {t:g} s" for t, _ in self.switches)
        object.__setattr__(self, "sources", sources)
        previous = 0.0
        for (t, prompt), where in zip(self.switches, sources):
            if not math.isfinite(t) or t <= 0:
                raise ValueError(f"{where}: a switch time must be a number of seconds after 0 (the first prompt "
                                 f"is the one at 0 s), got {t:g}")
            if t <= previous:
                raise ValueError(f"{where}: switch times must increase, got {t:g} s after {previous:g} s")
            if not prompt.strip():
                raise ValueError(f"{where}: the prompt is empty")
            previous = t

    @property
    def prompts(self) -> list[str]:
        return [self.first] + [p for _, p in self.switches]

    def schedule(self, num_frames: int, *, fps: float, temporal_factor: int, block_frames: int,
                 continuing: bool = False) -> PromptSchedule:
        """The first block of each prompt, for a video of ``num_frames`` generated frames."""
        starts = [0]
        for (t, _), where in zip(self.switches, self.sources):
            n = first_block_at(t, fps=fps, temporal_factor=temporal_factor, block_frames=block_frames,
                               continuing=continuing)
            start = block_start_frame(n, temporal_factor, block_frames, continuing)
            if start >= num_frames:
                raise ValueError(f"{where}: the video ends before {t:g} s ({num_frames} frames at {fps:g} frames/s, "
                                 f"the last block starting before), so that prompt would never be shown")
            if n == starts[-1]:
                raise ValueError(f"{where}: no block starts between the previous switch and {t:g} s (blocks start "
                                 f"every {block_frames * temporal_factor / fps:g} s), so the previous prompt would "
                                 f"never be shown")
            starts.append(n)
        return PromptSchedule(tuple(starts))


def block_start_frame(n: int, temporal_factor: int, block_frames: int, continuing: bool = False) -> int:
    """The first video frame of generated block ``n`` (counted from the first generated frame)."""
    latent = n * block_frames
    if temporal_factor == 1 or continuing:  # each latent frame is temporal_factor frames
        return latent * temporal_factor
    return 0 if latent == 0 else 1 + temporal_factor * (latent - 1)  # a causal VAE: frame 0 alone


def first_block_at(seconds: float, *, fps: float, temporal_factor: int, block_frames: int, continuing: bool = False) -> int:
    """The first block that starts at or after ``seconds``."""
    frame = seconds * fps - 1e-9  # a time given to the frame (0.5 s at 16 frames/s) is frame 8 exactly
    n = max(0, math.floor(frame / (block_frames * temporal_factor)))
    while block_start_frame(n, temporal_factor, block_frames, continuing) < frame:
        n += 1
    return n


def parse_seconds(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text.strip()!r} is not a number of seconds") from None
    return value


def read_prompt_script(path: str | Path, first: str) -> PromptScript:
    """A script file: ``seconds: prompt`` lines (blank lines and ``#`` comments skipped); ``first``
    is the prompt at 0 s."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt script not found: {path} (--prompt-script)")
    switches, sources = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path} line {i}"
        if ":" not in text:
            raise ValueError(f"{where}: expected 'seconds: prompt', got {text!r}")
        seconds, prompt = text.split(":", 1)
        switches.append((parse_seconds(seconds, where), prompt.strip()))
        sources.append(where)
    if not switches:
        raise ValueError(f"{path}: no 'seconds: prompt' line (--prompt-script)")
    return PromptScript(first, tuple(switches), tuple(sources))


def prompt_at_script(first: str, pairs: list[tuple[str, str]]) -> PromptScript:
    """A script from ``--prompt-at SECONDS PROMPT`` pairs."""
    switches, sources = [], []
    for seconds, prompt in pairs:
        where = f"--prompt-at {seconds}"
        switches.append((parse_seconds(seconds, where), prompt.strip()))
        sources.append(where)
    return PromptScript(first, tuple(switches), tuple(sources))
