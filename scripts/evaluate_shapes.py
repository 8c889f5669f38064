"""Held-out quality measurement of the shapes models: one JSON per (model, video length).

    python scripts/evaluate_shapes.py                      # bundled students + teacher + real clips
    python scripts/evaluate_shapes.py --model mine=runs/x/model.safetensors:hiar --frames 84
    python scripts/results_page.py                          # docs/results.md from the JSON

What is measured, for a fixed set of held-out prompts (``--prompts`` N, default 32: the world's spec
``sample_spec((12345, i))`` for i < N, a seed space disjoint from the training data's ``[seed, index]``
draws with seeds 0-4) and each video length (``--frames``, default 84 and 336):

* every student (``--model LABEL=PATH:METHOD``; default: the bundled HiAR, Self-Forcing and CausVid
  students that are present), sampled as ``hiar generate`` does: the method's sampler config, a KV
  window of 21 latent frames, one seed per prompt (seed ``--seed + i``), all prompts in one batched
  sampler run (``--batch-size`` to split it);
* the bidirectional teacher (``--teacher PATH``; default the bundled one when present) at its own 21
  frames only: a 30-step Euler ODE on the shift-5 grid with classifier-free guidance 3 against the
  all-zero null prompt (:func:`sample_teacher`);
* the real clips: the world's own rendering of the same specs (the reference row), at every length
  (and at the teacher's 21 frames when the teacher is evaluated).

Per (model, length): mean and std over prompts of the shapes scores (semantic, dynamic, quality,
total; :class:`hiar.eval.shapes_scores.ShapesScorer`), their mean per-segment curves, and the drift
suite's score (mean and std over videos) with the slopes of the averaged per-segment statistics
(weight-free stand-in metrics; the backends are recorded). Every video is quantised to uint8 (what a
lossless file would hold) before it is scored, so all rows are treated alike.

Outputs: ``OUT/<label>-f<frames>.json`` (default OUT = results/eval), the first prompt's video of each
row as ``OUT/frames/<label>-f<frames>.npz`` (uint8, for the contact sheets), and PNGs in ``--figures``
(default docs/results): ``contact-f<frames>.png`` (one row per model, prompt 0 and its seed),
``drift-f<frames>.png`` (per-segment drift statistics per model) and ``shapes-f<frames>.png``
(per-segment shapes scores). A (model, length) whose JSON exists with the same settings is skipped
(so an interrupted run resumes); ``--force`` recomputes it.

Parts: ``--first-prompt A --prompts N`` evaluates held-out prompts A .. A+N-1 only (each with its own
spec and seed, as in the whole run), into a folder of its own; ``--merge PART.json ...`` then writes
the (model, length) JSON of all their prompts, equal to what one run over them writes
(:func:`merge_parts`), and the figures. A 336-frame row of the HiAR student takes two hours on a
2-core CPU: parts let it be made in sittings.

Moved models: a row names its model by path and sha256. When the file is copied elsewhere unchanged
(a candidate that becomes the bundled model), ``--moved-to PATH ROW.json ...`` points the rows at the
new path after checking it holds the model evaluated: the same bytes, or the same weights and config
with other metadata (:func:`move_rows`); where the row was evaluated is kept as ``moved_from``.
Nothing is sampled again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "hiar-shapes-eval/1"
DEFAULT_FRAMES = (84, 336)
DEFAULT_PROMPTS = 32
PROMPT_SEED = 12345  # held-out specs: world.sample_spec((PROMPT_SEED, i)); training data uses [seed, index], seeds 0-4
KV_WINDOW = 21  # latent frames, as `hiar generate`
TEACHER_FRAMES = 21
TEACHER_STEPS = 30
TEACHER_SHIFT = 5.0
TEACHER_GUIDANCE = 3.0
SCORE_KEYS = ("semantic", "dynamic", "quality", "total")
REAL_LABEL = "real"
TEACHER_LABEL = "teacher"
STUDENT_LABELS = {"hiar": "hiar", "self-forcing": "self-forcing", "causvid": "causvid"}
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Entry:
    """One row of the evaluation: real clips, the teacher, or a student with its method."""

    label: str
    kind: str  # "real" | "teacher" | "student"
    path: str | None = None
    method: str | None = None


# ---------------------------------------------------------------------------------------- inputs
def held_out_specs(world, n: int, prompt_seed: int = PROMPT_SEED, first: int = 0) -> list:
    """The evaluation specs: ``world.sample_spec((prompt_seed, i))`` for ``first <= i < first + n``."""
    return [world.sample_spec((prompt_seed, i)) for i in range(first, first + n)]


def parse_model_arg(text: str) -> Entry:
    """``LABEL=PATH:METHOD`` -> a student entry (the method is after the last colon)."""
    from hiar.generate import METHODS

    if "=" not in text or ":" not in text.split("=", 1)[1]:
        raise ValueError(f"--model {text!r}: expected LABEL=PATH:METHOD (method one of {', '.join(METHODS)})")
    label, rest = text.split("=", 1)
    path, method = rest.rsplit(":", 1)
    check_label(label)
    if method not in METHODS:
        raise ValueError(f"--model {text!r}: unknown method '{method}'; choose from {', '.join(METHODS)}")
    if label in (REAL_LABEL, TEACHER_LABEL):
        raise ValueError(f"--model {text!r}: the label '{label}' is reserved")
    if not Path(path).exists():
        raise FileNotFoundError(f"--model {text!r}: model file not found: {path}")
    return Entry(label, "student", path, method)


def check_label(label: str) -> str:
    if not LABEL_RE.match(label):
        raise ValueError(f"label {label!r}: use letters, digits, '.', '_' and '-' (it names the JSON file)")
    return label


def default_entries() -> tuple[list[Entry], Entry | None]:
    """The bundled students that are present, and the bundled teacher if present."""
    from hiar.generate import BUNDLED_MODELS, bundled_checkpoint

    students = []
    for method, name in BUNDLED_MODELS.items():
        path = bundled_checkpoint(name)
        if path is not None:
            students.append(Entry(STUDENT_LABELS.get(method, method), "student", str(path), method))
    teacher = bundled_checkpoint("shapes-teacher")
    return students, (Entry(TEACHER_LABEL, "teacher", str(teacher)) if teacher is not None else None)


def display_path(path: str | None) -> str | None:
    """A path relative to the repository when it is inside it (so JSON does not depend on the checkout)."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def code_commit() -> dict:
    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", "src", "scripts")
    return {"commit": sha or "unknown", "dirty": bool(status) if status is not None else None}


def model_metadata(path: str) -> dict:
    """The hiar checkpoint metadata (stage, steps, commit, ...) of a model file, normalised."""
    from hiar.checkpoint import read_checkpoint

    meta = dict(read_checkpoint(path).metadata)
    meta.pop("config", None)  # the model config is recorded separately
    return {
        "stage": meta.get("stage"),
        "steps": meta.get("steps", meta.get("step")),
        "commit": meta.get("trained_by_commit", meta.get("commit")),
        "seed": meta.get("seed"),
        "raw": dict(sorted(meta.items())),
    }


# ---------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_teacher(model, text: torch.Tensor, seeds: list[int], latent_shape: tuple[int, int, int], *,
                   num_frames: int = TEACHER_FRAMES, steps: int = TEACHER_STEPS, shift: float = TEACHER_SHIFT,
                   guidance: float = TEACHER_GUIDANCE, transition: str = "euler") -> torch.Tensor:
    """The bidirectional teacher's samples ``[B, C, num_frames, H, W]``: Euler on the probability-flow ODE
    over ``uniform_levels(steps, shift)``, classifier-free guided ``uncond + g (cond - uncond)`` with the
    all-zero null prompt as the unconditional text. The noise of sample ``b`` is the sampler's
    :class:`~hiar.sampling.NoiseBank` draw for its seed (block 0, step 0, all frames at once).

    ``transition="renoise"`` replaces each Euler step by the students' transition: the clean estimate
    ``x - sigma v`` noised afresh to the next level (NoiseBank block 0, step j + 1), a stochastic sampler."""
    if transition not in ("euler", "renoise"):
        raise ValueError(f"transition must be euler or renoise, got {transition!r}")
    from hiar import schedule
    from hiar.sampling import NoiseBank

    C, H, W = latent_shape
    device, dtype = model.device, model.dtype
    bank = NoiseBank(seeds, (C, num_frames, H, W), device=device, dtype=torch.float32)
    x = bank(0, 0)
    cond = text.to(device, dtype)
    both_text = torch.cat([cond, torch.zeros_like(cond)])
    levels = [float(s) for s in schedule.uniform_levels(steps, shift=shift)]
    B = x.shape[0]
    for j, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        t = torch.full((2 * B,), schedule.timestep(sigma), device=device, dtype=torch.float32)
        v = model(torch.cat([x, x]).to(dtype), t, both_text).float()
        v_cond, v_uncond = v.chunk(2)
        v = v_uncond + guidance * (v_cond - v_uncond)
        if transition == "euler":
            x = schedule.euler(x, v, sigma, sigma_next)
        else:
            x = schedule.renoise(x - sigma * v, bank(0, j + 1), sigma_next)
    return x


def student_config(method: str, *, window: int, sink: int, transition: str | None):
    """The sampler settings a student is evaluated with: its method's, with these overrides."""
    from hiar.generate import method_config
    from hiar.sampling import Transition

    return method_config(method, window=window, sink=sink, transition=Transition(transition) if transition else None)


@torch.no_grad()
def sample_students(model, world, prompts: list[str], seeds: list[int], num_frames: int, method: str, *,
                    window: int = KV_WINDOW, sink: int = 0, transition: str | None = None,
                    batch_size: int | None = None, progress: bool = False,
                    initial_latents: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels ``[B, 3, num_frames, H, W]`` in [-1, 1] of a causal student, as ``hiar generate`` makes
    them, all prompts of a batch in one sampler run (each with its own seed). ``transition`` (None: the
    method's own) is the step between levels. ``progress``: a bar over the blocks (a 336-frame job of
    32 prompts runs for an hour or more on a CPU). ``initial_latents`` ``[B, C, G k, H, W]``: given
    frames (whole blocks) each video continues, context only (the generated frames are returned)."""
    from tqdm import tqdm

    from hiar.generate import num_blocks_for
    from hiar.sampling import GridSampler

    config = student_config(method, window=window, sink=sink, transition=transition)
    n_blocks = num_blocks_for(num_frames, world.codec, config.block_frames)
    step = batch_size or len(prompts)
    starts = range(0, len(prompts), step)
    out = []
    with tqdm(total=n_blocks * len(starts), desc=f"{method} blocks", unit="block", leave=False,
              disable=not progress, file=sys.stderr) as bar:
        for a in starts:
            text = world.text_encoder.encode(prompts[a:a + step]).to(model.device, model.dtype)
            given = None if initial_latents is None else initial_latents[a:a + step]
            sampler = GridSampler(model, config, text, seeds=seeds[a:a + step], latent_shape=world.latent_shape,
                                  initial_latents=given)
            blocks = []
            for _, block in sampler.stream(n_blocks):
                blocks.append(block)
                bar.update()
            pixels = world.codec.decode(torch.cat(blocks, dim=2).float()).clamp(-1, 1).cpu()
            out.append(pixels[:, :, :num_frames])
    return torch.cat(out)


def as_uint8(videos: torch.Tensor) -> np.ndarray:
    """``[B, 3, F, H, W]`` in [-1, 1] -> uint8 ``[B, F, H, W, 3]``."""
    from hiar.video import to_uint8_frames

    return np.stack([to_uint8_frames(v) for v in videos])


def real_clips(world, specs: list, num_frames: int) -> np.ndarray:
    """The world's own rendering of the specs, uint8 ``[B, F, H, W, 3]``."""
    return np.stack([np.clip(np.round(world.render_numpy(s, num_frames)[0]), 0, 255).astype(np.uint8) for s in specs])


# ---------------------------------------------------------------------------------------- scoring
def _mean_std(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std())}


def score_videos(videos: np.ndarray, prompts: list[str], scorer, suite) -> dict:
    """Shapes scores and drift of uint8 videos ``[B, F, H, W, 3]`` against their prompts."""
    per_video = []
    for b, (video, prompt) in enumerate(zip(videos, prompts)):
        s = scorer.score(video, prompt)
        entry = {"prompt": prompt, **{k: getattr(s, k) for k in SCORE_KEYS},
                 "details": s.details, "segments": s.segments}
        if video.shape[0] >= 2 * suite.segments:
            r = suite.evaluate(video, name=f"video {b}")
            entry["drift"], entry["drift_slopes"], entry["drift_segment_values"] = r.score, r.slopes, r.segment_values
        else:
            entry["drift"], entry["drift_slopes"] = None, None
        per_video.append(entry)
    return summarise(per_video, suite, num_frames=videos.shape[1])


def summarise(per_video: list[dict], suite, num_frames: int) -> dict:
    """The means over videos of what :func:`score_videos` measured per video (also what merges parts)."""
    scores = {k: _mean_std([e[k] for e in per_video]) for k in SCORE_KEYS}
    segs = [e["segments"] for e in per_video if e["segments"].get("total")]
    segments = {k: np.mean([s[k] for s in segs], axis=0).tolist() for k in SCORE_KEYS} if segs else {}
    drifting = [e for e in per_video if e["drift"] is not None]
    if drifting:
        agg = suite.aggregate_values([e["drift_segment_values"] for e in drifting], [e["drift"] for e in drifting],
                                     name="mean", num_frames=num_frames)
        drift = {
            "score": _mean_std([e["drift"] for e in drifting]),
            "segments": suite.segments,
            "backends": suite.backends,
            "weights": suite.weights,
            "slopes": agg.slopes,  # of the averaged per-segment values
            "normalised": agg.normalised,
            "contributions": agg.contributions,
            "segment_values": agg.segment_values,
        }
    else:
        drift = {"score": None, "segments": suite.segments, "backends": suite.backends,
                 "note": f"videos of {num_frames} frames are too short for {suite.segments} drift segments"}
    return {"scores": scores, "segments": segments, "drift": drift, "per_video": per_video}


# ---------------------------------------------------------------------------------------- one job
@dataclass
class Settings:
    num_prompts: int = DEFAULT_PROMPTS
    first_prompt: int = 0  # evaluate prompts first_prompt .. first_prompt + num_prompts - 1 (a part; see --merge)
    prompt_seed: int = PROMPT_SEED
    seed: int = 0
    window: int = KV_WINDOW
    sink: int = 0
    transition: str | None = None  # the students' step between levels (None: each method's own)
    reference_clips: int = 8
    drift_segments: int = 5
    teacher_frames: int = TEACHER_FRAMES
    teacher_steps: int = TEACHER_STEPS
    teacher_shift: float = TEACHER_SHIFT
    teacher_guidance: float = TEACHER_GUIDANCE
    batch_size: int | None = None
    device: str = "cpu"
    progress: bool = False  # a bar over a student's blocks (not part of a result's identity)

    def prompt_indices(self) -> range:
        return range(self.first_prompt, self.first_prompt + self.num_prompts)

    def seeds(self) -> list[int]:
        """The sampler seed of held-out prompt i is ``seed + i``, whichever part evaluates it."""
        return [self.seed + i for i in self.prompt_indices()]


def device_name(device: str) -> str:
    """Where the videos were sampled, e.g. ``cuda (NVIDIA H200)``: float results differ slightly by device
    (the noise does not: it is drawn on the CPU), so a JSON says which one made it, as it says how long."""
    d = torch.device(device)
    if d.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(d)})"
    return device


def job_path(out: Path, label: str, frames: int) -> Path:
    return out / f"{label}-f{frames}.json"


def frames_path(out: Path, label: str, frames: int) -> Path:
    return out / "frames" / f"{label}-f{frames}.npz"


def file_sha256(path: str | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def identity(entry: Entry, frames: int, settings: Settings, prompts: list[str], seeds: list[int] | None) -> dict:
    """What must match for an existing JSON to stand for this job (a retrained model file does not)."""
    return {"label": entry.label, "kind": entry.kind, "model_path": display_path(entry.path),
            "model_sha256": file_sha256(entry.path), "method": entry.method, "frames": frames,
            "prompts": prompts, "seeds": seeds}


def run_job(entry: Entry, frames: int, settings: Settings, world, specs: list, scorer, suite, models: dict,
            longest: int | None = None, generated: dict | None = None) -> tuple[dict, np.ndarray]:
    """Generate (or render) and score one (model, length); returns the JSON payload and the videos.

    A student is sampled once at ``longest`` frames and shorter lengths are its first frames
    (``generated`` keeps the videos): the sampler is causal, so the first F frames of a longer run
    are exactly an F-frame run (tested), and the 84-frame row costs no extra sampling."""
    from hiar.generate import shapes_world

    prompts = [world.prompt(s) for s in specs]
    seeds = None if entry.kind == "real" else settings.seeds()
    t0 = time.perf_counter()
    sampler: dict | None = None
    meta, model_config = None, None
    if entry.kind == "real":
        videos = real_clips(world, specs, frames)
    else:
        from hiar.checkpoint import load_model
        from hiar.config import to_dict

        if entry.path not in models:
            models[entry.path] = load_model(entry.path, device=settings.device).eval()
        model = models[entry.path]
        meta, model_config = model_metadata(entry.path), to_dict(model.cfg)
        gen_world = shapes_world(model)
        if entry.kind == "teacher":
            text = gen_world.text_encoder.encode(prompts)
            latents = []
            step = settings.batch_size or len(prompts)
            for a in range(0, len(prompts), step):
                latents.append(sample_teacher(model, text[a:a + step], seeds[a:a + step], gen_world.latent_shape,
                                              num_frames=frames, steps=settings.teacher_steps,
                                              shift=settings.teacher_shift, guidance=settings.teacher_guidance).cpu())
            videos = as_uint8(gen_world.codec.decode(torch.cat(latents)).clamp(-1, 1))
            sampler = {"kind": "teacher-ode", "steps": settings.teacher_steps, "shift": settings.teacher_shift,
                       "guidance": settings.teacher_guidance, "null_prompt": "all-zero text states",
                       "attention": "bidirectional"}
        else:
            key = (entry.path, entry.method)
            generated = {} if generated is None else generated
            if key not in generated or generated[key].shape[1] < frames:
                generated[key] = as_uint8(sample_students(model, gen_world, prompts, seeds, max(frames, longest or 0),
                                                          entry.method, window=settings.window, sink=settings.sink,
                                                          transition=settings.transition,
                                                          batch_size=settings.batch_size,
                                                          progress=settings.progress))
            videos = generated[key][:, :frames]
            cfg = student_config(entry.method, window=settings.window, sink=settings.sink,
                                 transition=settings.transition)
            sampler = {"kind": "grid", "method": entry.method, "context": cfg.context.value, "order": cfg.order.value,
                       "transition": cfg.transition.value, "levels": [float(v) for v in cfg.levels],
                       "block_frames": cfg.block_frames, "window": cfg.window, "sink": cfg.sink}
    generate_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scored = score_videos(videos, prompts, scorer, suite)
    payload = {
        "schema": SCHEMA,
        **identity(entry, frames, settings, prompts, seeds),
        "model_metadata": meta,
        "model_config": model_config,
        "sampler": sampler,
        "prompt_specs": [[settings.prompt_seed, i] for i in settings.prompt_indices()],
        "num_prompts": len(specs),
        "world": {"height": world.config.height, "width": world.config.width},
        "scorer": {"reference_clips": settings.reference_clips, "segments": scorer.segments},
        "code": code_commit(),
        **scored,
        "timing_s": {"generate": round(generate_s, 3), "score": round(time.perf_counter() - t1, 3)},
        "device": device_name(settings.device),
    }
    return payload, videos


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def existing_matches(path: Path, expected: dict) -> bool:
    """Whether the JSON at ``path`` was made for this job (same model, prompts, seeds, frames)."""
    data = json.loads(path.read_text())
    return all(data.get(k) == v for k, v in expected.items())


# ---------------------------------------------------------------------------------------- parts
SAME_IN_EVERY_PART = ("label", "kind", "model_path", "model_sha256", "method", "frames", "model_config",
                      "sampler", "world", "scorer")


def read_row(path: Path, option: str) -> dict:
    """A result JSON that ``option`` (``--merge``, ``--moved-to``) was given; one line naming it if it
    cannot be read or is not a result of this script."""
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"evaluate_shapes: {option}: cannot read {path}: {err}") from None
    if row.get("schema") != SCHEMA:
        raise SystemExit(f"evaluate_shapes: {option}: {path} is not a {SCHEMA} result")
    return row


def merge_parts(paths: list[Path]) -> tuple[dict, Path]:
    """One JSON from parts that evaluated disjoint prompt ranges of one (model, length) (``--first-prompt``):
    the per-video entries in prompt order and the means recomputed from them, as one run over all the
    prompts would have written them. Returns the payload and the frames file of the part holding the
    first prompt. A 336-frame row takes two hours on a 2-core CPU; parts let it be made in pieces."""
    parts = [(path, read_row(path, "--merge")) for path in paths]
    first_path, first = parts[0]
    for path, d in parts:
        differ = [k for k in SAME_IN_EVERY_PART if d.get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"evaluate_shapes: --merge: {path} differs from {first_path} in {', '.join(differ)}")
        if any(e["drift"] is not None and "drift_segment_values" not in e for e in d["per_video"]):
            raise SystemExit(f"evaluate_shapes: --merge: {path} has no per-video drift segment values "
                             f"(written before they were stored): evaluate that part again")
    from hiar.eval.drift import DriftSuite

    suite = DriftSuite(segments=first["drift"]["segments"])
    rows, seen = [], {}
    for path, d in parts:
        seeds = d["seeds"] or [None] * d["num_prompts"]
        for spec, prompt, seed, entry in zip(d["prompt_specs"], d["prompts"], seeds, d["per_video"]):
            if tuple(spec) in seen:
                raise SystemExit(f"evaluate_shapes: --merge: prompt {spec} is in both {seen[tuple(spec)]} and {path}")
            seen[tuple(spec)] = path
            rows.append((tuple(spec), prompt, seed, entry))
    rows.sort(key=lambda r: r[0])
    per_video = [r[3] for r in rows]
    payload = dict(first)
    payload.update({
        "prompts": [r[1] for r in rows],
        "seeds": None if first["seeds"] is None else [r[2] for r in rows],
        "prompt_specs": [list(r[0]) for r in rows],
        "num_prompts": len(rows),
        **summarise(per_video, suite, num_frames=first["frames"]),
        "timing_s": {k: round(sum(d["timing_s"][k] for _, d in parts), 3) for k in first["timing_s"]},
        "device": ", ".join(sorted({str(d.get("device")) for _, d in parts})),
        "parts": [{"file": display_path(str(path)), "prompt_specs": [d["prompt_specs"][0], d["prompt_specs"][-1]],
                   "code": d["code"], "device": d.get("device"), "timing_s": d["timing_s"]} for path, d in parts],
    })
    holder = seen[rows[0][0]]
    return payload, frames_path(holder.parent, first["label"], first["frames"])


def same_model(a: Path, b: Path) -> bool:
    """Whether two model files hold the same model: equal model configs and bit-identical tensors
    (their metadata, and so their sha256, may differ)."""
    from hiar.checkpoint import read_checkpoint

    ca, cb = read_checkpoint(a), read_checkpoint(b)
    if ca.config != cb.config or ca.state_dict.keys() != cb.state_dict.keys():
        return False
    return all(x.dtype == cb.state_dict[k].dtype and torch.equal(x, cb.state_dict[k]) for k, x in ca.state_dict.items())


def move_rows(paths: list[Path], new_model: Path) -> list[dict]:
    """The rows at ``paths`` pointed at ``new_model``: the very file they evaluated (same sha256), or a
    copy whose metadata alone differs (:func:`same_model` against the row's file, which must still
    have the row's sha256; the row then takes the new file's sha256 and metadata). Where the row was
    first evaluated is kept as ``moved_from``. A row evaluates a model, not a place: bundling it, or
    stating provenance its file lacked, need not cost the hours of sampling again."""
    if not new_model.is_file():
        raise SystemExit(f"evaluate_shapes: --moved-to: model file not found: {new_model}")
    sha = file_sha256(str(new_model))
    moved = []
    for path in paths:
        row = read_row(path, "--moved-to")
        if row.get("kind") not in ("student", "teacher"):
            raise SystemExit(f"evaluate_shapes: --moved-to: {path} is not a {SCHEMA} row of a model")
        old_sha, old_path = row.get("model_sha256"), ROOT / row["model_path"]
        if old_sha != sha:
            if not old_path.is_file() or file_sha256(str(old_path)) != old_sha:
                raise SystemExit(f"evaluate_shapes: --moved-to: {path} evaluated a file with sha256 {str(old_sha)[:12]}, "
                                 f"{new_model} has {sha[:12]}, and {row['model_path']} (the row's file) is gone or "
                                 f"changed, so the weights cannot be compared")
            if not same_model(old_path, new_model):
                raise SystemExit(f"evaluate_shapes: --moved-to: {path} evaluated a file with sha256 {old_sha[:12]}, "
                                 f"{new_model} has {sha[:12]} and other weights or another model config")
            row["model_metadata"] = model_metadata(str(new_model))
        row.setdefault("moved_from", {"model_path": row["model_path"], "model_sha256": old_sha})
        row["model_path"], row["model_sha256"] = display_path(str(new_model)), sha
        moved.append(row)
    return moved


# ---------------------------------------------------------------------------------------- figures
def load_results(out: Path) -> list[dict]:
    found = []
    for p in sorted(out.glob("*.json")):
        data = json.loads(p.read_text())
        if data.get("schema") == SCHEMA:
            found.append(data)
    return found


def row_order(results: list[dict]) -> list[dict]:
    rank = {"real": 0, "teacher": 1, "student": 2}
    return sorted(results, key=lambda d: (rank.get(d["kind"], 3), d["label"]))


def write_figures(out: Path, figures: Path, lengths: list[int]) -> list[Path]:
    """Contact sheets and per-segment curves for each length, from the JSON and stored first videos."""
    from hiar.eval.plots import plot_segment_curves
    from hiar.video import contact_sheet

    results = row_order(load_results(out))
    written = []
    figures.mkdir(parents=True, exist_ok=True)
    teacher_rows = [d for d in results if d["kind"] == "teacher"]
    for frames in sorted(set(lengths) | {d["frames"] for d in results}):
        rows = [d for d in results if d["frames"] == frames]
        if not rows:
            continue
        students_here = any(d["kind"] == "student" for d in rows)
        sheet_rows = rows + ([d for d in teacher_rows if d["frames"] != frames] if students_here else [])
        videos = {}
        for d in sheet_rows:
            f = frames_path(out, d["label"], d["frames"])
            if f.is_file():
                name = d["label"] if d["frames"] == frames else f"{d['label']} ({d['frames']} frames)"
                videos[name] = np.load(f)["video"]
        if videos:
            seed = next((d["seeds"][0] for d in rows if d.get("seeds")), None)
            title = f"{frames} frames, prompt 0: {rows[0]['prompts'][0]}" + (f" (seed {seed})" if seed is not None else "")
            written.append(contact_sheet(videos, figures / f"contact-f{frames}.png", columns=8, cell=64, title=title))
        drift = {d["label"]: d["drift"]["segment_values"] for d in rows if d["drift"].get("score") is not None}
        if drift:
            backends = next(d["drift"]["backends"] for d in rows if d["drift"].get("score") is not None)
            written.append(plot_segment_curves(
                drift, figures / f"drift-f{frames}.png",
                title=f"Drift statistics per segment, {frames} frames (mean over prompts)",
                subtitles={s: b.split(" (")[0] for s, b in backends.items()}))
        shapes = {d["label"]: d["segments"] for d in rows if d["segments"]}
        if shapes:
            written.append(plot_segment_curves(shapes, figures / f"shapes-f{frames}.png",
                                               title=f"Shapes scores per segment, {frames} frames (higher is better)",
                                               metrics=list(SCORE_KEYS)))
    return written


def summary_table(results: list[dict]) -> str:
    header = ["model", "frames", *SCORE_KEYS, "drift"]
    rows = []
    for d in sorted(row_order(results), key=lambda d: d["frames"]):
        drift = d["drift"]["score"]
        rows.append([d["label"], str(d["frames"]), *(f"{d['scores'][k]['mean']:.3f}" for k in SCORE_KEYS),
                     "-" if drift is None else f"{drift['mean']:.3f}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)] if rows else [len(h) for h in header]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), *map(line, rows)])


# ---------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from hiar.sampling import Transition

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Details: the module docstring of scripts/evaluate_shapes.py and docs/metrics.md.")
    p.add_argument("--model", action="append", default=None, metavar="LABEL=PATH:METHOD",
                   help="a student to evaluate (repeatable); default: the bundled hiar, self-forcing and causvid students present")
    p.add_argument("--no-students", action="store_true", help="evaluate no student (e.g. only the real clips)")
    p.add_argument("--teacher", default=None, metavar="PATH", help="the bidirectional teacher (default: the bundled shapes-teacher if present)")
    p.add_argument("--no-teacher", action="store_true", help="do not evaluate the teacher")
    p.add_argument("--no-real", action="store_true", help="do not evaluate the real clips (the reference row)")
    p.add_argument("--frames", type=int, nargs="+", default=list(DEFAULT_FRAMES), help="video lengths (default: 84 336)")
    p.add_argument("--prompts", type=int, default=DEFAULT_PROMPTS, help="held-out prompts (default: %(default)s)")
    p.add_argument("--first-prompt", type=int, default=0,
                   help="evaluate held-out prompts FIRST .. FIRST + PROMPTS - 1 only: a part, for --merge (default: 0)")
    p.add_argument("--merge", nargs="+", default=None, metavar="PART_JSON",
                   help="merge parts of one (model, length) made with --first-prompt into OUT/<label>-f<frames>.json, "
                        "then write the figures; nothing is sampled")
    p.add_argument("--moved-to", nargs="+", default=None, metavar=("MODEL", "ROW_JSON"),
                   help="point the rows ROW_JSON ... at the model file MODEL, which must hold the model they "
                        "evaluated (same sha256, or same weights and config with other metadata; e.g. a "
                        "candidate bundled); rewrites them in place")
    p.add_argument("--prompt-seed", type=int, default=PROMPT_SEED, help="specs are sample_spec((PROMPT_SEED, i)) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed of prompt i is SEED + i (default: %(default)s)")
    p.add_argument("--window", type=int, default=KV_WINDOW, help="students' KV window in latent frames (default: %(default)s)")
    p.add_argument("--sink", type=int, default=0,
                   help="students' KV sink: the first latent frames every block also reads (default: %(default)s)")
    p.add_argument("--transition", choices=[t.value for t in Transition], default=None,
                   help="students' step between levels (default: each method's own, renoise)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per sampler run (default: all at once)")
    p.add_argument("--reference-clips", type=int, default=8, help="real clips per prompt for the scorer's references")
    p.add_argument("--out", default=str(ROOT / "results" / "eval"), help="JSON folder (default: results/eval)")
    p.add_argument("--figures", default=str(ROOT / "docs" / "results"), help="PNG folder (default: docs/results)")
    p.add_argument("--no-figures", action="store_true", help="write no PNGs")
    p.add_argument("--force", action="store_true", help="recompute (model, length) pairs whose JSON exists")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from hiar.eval.drift import DriftSuite
    from hiar.eval.shapes_scores import ShapesScorer
    from hiar.world.shapes import default_world

    args = build_parser().parse_args(argv)
    if args.moved_to:
        if len(args.moved_to) < 2:
            raise SystemExit("evaluate_shapes: --moved-to: give the model file, then the row JSON files")
        rows = [Path(p) for p in args.moved_to[1:]]
        for path, row in zip(rows, move_rows(rows, Path(args.moved_to[0]))):
            write_json(path, row)
            print(f"evaluate_shapes: {path} now names {row['model_path']} (evaluated as "
                  f"{row['moved_from']['model_path']})", file=sys.stderr)
        return 0
    if args.merge:
        return merge_main([Path(p) for p in args.merge], Path(args.out), Path(args.figures), args.no_figures)
    if args.prompts < 1 or args.first_prompt < 0 or any(f < 3 for f in args.frames):
        raise SystemExit("evaluate_shapes: need --prompts >= 1, --first-prompt >= 0 and every --frames >= 3")
    settings = Settings(num_prompts=args.prompts, first_prompt=args.first_prompt, prompt_seed=args.prompt_seed,
                        seed=args.seed, window=args.window,
                        sink=args.sink, transition=args.transition,
                        reference_clips=args.reference_clips, batch_size=args.batch_size, device=args.device,
                        progress=not args.no_progress)
    students, teacher = default_entries()
    if args.model is not None:
        students = [parse_model_arg(m) for m in args.model]
    if args.no_students:
        students = []
    if args.teacher is not None:
        if not Path(args.teacher).exists():
            raise FileNotFoundError(f"--teacher: model file not found: {args.teacher}")
        teacher = Entry(TEACHER_LABEL, "teacher", args.teacher)
    if args.no_teacher:
        teacher = None
    labels = [e.label for e in students]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"evaluate_shapes: duplicate --model labels: {labels}")

    lengths = sorted(set(args.frames))
    jobs: list[tuple[Entry, int]] = []
    real = Entry(REAL_LABEL, "real")
    if not args.no_real:
        jobs += [(real, f) for f in lengths]
        if teacher is not None and settings.teacher_frames not in lengths:
            jobs.append((real, settings.teacher_frames))
    if teacher is not None:
        jobs.append((teacher, settings.teacher_frames))
    jobs += [(e, f) for f in lengths for e in students]
    if not students and not args.no_students:
        print("evaluate_shapes: no student models (none bundled yet and no --model); evaluating "
              + ("the teacher and " if teacher else "") + "the real clips only", file=sys.stderr)

    out, figures = Path(args.out), Path(args.figures)
    world = default_world()
    specs = held_out_specs(world, settings.num_prompts, settings.prompt_seed, settings.first_prompt)
    prompts = [world.prompt(s) for s in specs]
    scorer = ShapesScorer(world, reference_clips=settings.reference_clips)
    suite = DriftSuite(segments=settings.drift_segments)
    models: dict = {}
    generated: dict = {}  # (path, method) -> a student's videos at the longest length
    done, skipped = [], []
    bar = tqdm(jobs, desc="evaluate", unit="job", disable=args.no_progress, file=sys.stderr)
    for entry, frames in bar:
        bar.set_postfix_str(f"{entry.label} @ {frames} frames")
        path = job_path(out, entry.label, frames)
        seeds = None if entry.kind == "real" else settings.seeds()
        if path.exists() and not args.force:
            if not existing_matches(path, identity(entry, frames, settings, prompts, seeds)):
                raise SystemExit(f"evaluate_shapes: {path} exists but was made with other settings (model, prompts, "
                                 f"seeds or frames); use --force to replace it, or another --out")
            skipped.append(path)
            continue
        payload, videos = run_job(entry, frames, settings, world, specs, scorer, suite, models,
                                  longest=max(lengths), generated=generated)
        f = frames_path(out, entry.label, frames)
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(f, video=videos[0])
        write_json(path, payload)
        done.append(path)
    bar.close()
    results = [d for d in load_results(out)]
    if results:
        print(summary_table(results))
    print(f"evaluate_shapes: {len(done)} written, {len(skipped)} skipped (exist; --force to redo) in {out}", file=sys.stderr)
    if not args.no_figures and results:
        for p in write_figures(out, figures, lengths):
            print(f"wrote {p}", file=sys.stderr)
    return 0


def merge_main(parts: list[Path], out: Path, figures: Path, no_figures: bool) -> int:
    import shutil

    payload, frames_file = merge_parts(parts)
    path = job_path(out, payload["label"], payload["frames"])
    if frames_file.is_file():
        target = frames_path(out, payload["label"], payload["frames"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(frames_file, target)
    write_json(path, payload)
    print(summary_table([payload]))
    print(f"evaluate_shapes: merged {len(parts)} parts ({payload['num_prompts']} prompts) into {path}", file=sys.stderr)
    if not no_figures:
        for p in write_figures(out, figures, [payload["frames"]]):
            print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
