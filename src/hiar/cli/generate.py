"""``hiar generate``: text to video with any method, order and length."""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from hiar.errors import one_line
from hiar.generate import (
    METHODS, SHAPES_FPS, WAN_FPS, WAN_SIZE, NonFiniteOutputError, check_cache_fits, check_device, fit_attention,
    generate, load_shapes_model, method_config, num_blocks_for, shapes_world, wan_world, write_blocks,
)
from hiar.pipeline import PipelineError
from hiar.prompts import PromptScript, prompt_at_script, read_prompt_script
from hiar.sampling import ContextRule, InitContext, Order, SwitchPolicy, Transition, check_pipelinable
from hiar.signals import exit_code, signals_deferred


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt",
                       description="Generate a video from a prompt. Blocks are written to the mp4 as they finish.")
    p.add_argument("prompt", help="the text prompt (shapes world: e.g. 'a fast red circle on a dark background'); "
                   "with a prompt script, the one at 0 s")
    script = p.add_mutually_exclusive_group()
    script.add_argument("--prompt-script", default=None, metavar="FILE",
                        help="switch prompts mid-stream: a file of 'seconds: prompt' lines (seconds from the first "
                             "generated frame; each switch at the first block starting at or after it)")
    script.add_argument("--prompt-at", nargs=2, action="append", default=None, metavar=("SECONDS", "PROMPT"),
                        help="switch to PROMPT at SECONDS (repeatable)")
    p.add_argument("--switch", choices=[c.value for c in SwitchPolicy], default=None,
                   help="at a prompt switch, re-run the KV caches under the new prompt (kv-recache, default; "
                        "LongLive) or keep them (kv-keep)")
    p.add_argument("-o", "--output", default="outputs/video.mp4", help="mp4 path (default: %(default)s)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--frames", type=int, default=None, help="video frames to generate, after any given ones (default: 84)")
    length.add_argument("--seconds", type=float, default=None, help="video length in seconds at the world's fps")
    p.add_argument("--method", default="hiar", choices=list(METHODS), help="inference method (default: %(default)s)")
    p.add_argument("--first-blocks", type=int, default=None, help="hybrid-blocks: leading blocks run block-first (default 1)")
    p.add_argument("--first-steps", type=int, default=None, help="hybrid-steps: leading steps of each block run block-first (default 2)")
    p.add_argument("--order", choices=[o.value for o in Order], default=None, help="execution order (default: the method's)")
    p.add_argument("--context", choices=[c.value for c in ContextRule], default=None, help="override the method's context rule")
    p.add_argument("--transition", choices=[t.value for t in Transition], default=None)
    p.add_argument("--window", type=int, default=None, help="KV window in latent frames (default: 21, the paper's 5 s)")
    p.add_argument("--sink", type=int, default=None, help="attention-sink frames kept forever")
    p.add_argument("--no-fuse", action="store_true", help="separate context-write and denoise calls (for comparison)")
    p.add_argument("--batched", action="store_true", help="run each anti-diagonal as one batched call")
    p.add_argument("--pipeline", action="store_true", help="one process per denoising step (torch.distributed)")
    p.add_argument("--seed", type=int, default=0)
    given = p.add_mutually_exclusive_group()
    given.add_argument("--init-image", default=None, help="image-to-video: the video starts from this image")
    given.add_argument("--init-video", default=None, help="video extension: the video continues this clip")
    p.add_argument("--init-frames", type=int, default=None, help="use the first N frames of --init-video (default: all)")
    p.add_argument("--init-context", choices=[c.value for c in InitContext], default=None,
                   help="given frames enter the context at each step's level (default: measured to continue clips "
                   "better) or clean (as the released code)")
    p.add_argument("--checkpoint", default=None, help="model weights (hiar, Wan, diffusers or Self-Forcing format; "
                   "shapes default: the bundled student of --method)")
    p.add_argument("--world", choices=["shapes", "wan"], default="shapes")
    p.add_argument("--vae", default=None, help="Wan: local folder of the VAE (diffusers layout)")
    p.add_argument("--text-encoder", default=None, help="Wan: local folder of umT5 and its tokenizer")
    p.add_argument("--height", type=int, default=None, help=f"Wan: frame height in pixels (default: {WAN_SIZE[0]})")
    p.add_argument("--width", type=int, default=None, help=f"Wan: frame width in pixels (default: {WAN_SIZE[1]})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, stop_signals=True)


def run(args: argparse.Namespace) -> int:
    """Check every input first, then open the video (taking its lock), then load the model and run."""
    from hiar.video import VideoWriter, check_video_path

    _check_numbers(args)
    script = _prompt_script(args)
    device = check_device(args.device)
    if args.world == "wan" and not (args.checkpoint and args.vae and args.text_encoder):
        raise ValueError("--world wan needs --checkpoint, --vae and --text-encoder (local paths; nothing is downloaded)")
    _check_paths_exist(args)
    out = check_video_path(args.output)
    fps = SHAPES_FPS if args.world == "shapes" else WAN_FPS
    frames = _frames(args, fps)
    _check_switch_times(script, frames, fps)
    writer = None
    if _writes_video():
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = VideoWriter(out, fps=fps)
    with writer if writer is not None else contextlib.nullcontext():
        model, source, world = _load(args, device)
        config = _method_config(args)
        given = _given_frames(args, world, config.block_frames)
        config = _fit_to_run(args, config, model, world, frames, given, device)
        schedule = script.schedule(frames, fps=world.fps, temporal_factor=world.codec.temporal_factor,
                                   block_frames=config.block_frames, continuing=given is not None)
        print(f"model: {source}", file=sys.stderr)
        print(f"{args.method}: context {config.context.name}, order {config.order.value}, {config.num_steps} steps, "
              f"{frames} frames -> {out}" + (f" after {given.num_frames} given" if given else ""), file=sys.stderr)
        for i, (start, prompt) in enumerate(zip(schedule.starts[1:], script.prompts[1:]), start=2):
            print(f"prompt {i} from block {start}: {prompt!r} (caches at the switch: {config.switch.value})", file=sys.stderr)
        if args.pipeline:
            return _run_pipelined(args, model, world, config, frames, writer, source, given, script, schedule)
        report = None

        def produce():
            nonlocal report
            _, report = generate(model, world, script, num_frames=frames, config=config, seed=args.seed,
                                 writer=writer, progress=not args.quiet, init_frames=given)

        stopped = _write_guarded(produce, writer, source)
        if stopped is not None:
            return stopped
    print(f"wrote {out}: {frames} frames, {report.frames_per_s:.1f} frames/s, first block after "
          f"{report.first_block_latency_s:.3f} s, {report.model_calls} model calls", file=sys.stderr)
    if script.switches:
        print(_switch_cost(report, config), file=sys.stderr)
    return 0


def _prompt_script(args: argparse.Namespace) -> PromptScript:
    """The positional prompt, with the switches of --prompt-script or --prompt-at (checked before any work)."""
    if args.prompt_script is not None:
        return read_prompt_script(args.prompt_script, args.prompt)
    return prompt_at_script(args.prompt, args.prompt_at or [])


def _check_switch_times(script: PromptScript, frames: int, fps: int) -> None:
    """A switch at or after the end of the video is refused before any work (the exact block comes later)."""
    for (t, _), where in zip(script.switches, script.sources):
        if t * fps >= frames:
            raise ValueError(f"{where}: the video is {frames / fps:g} s long ({frames} frames at {fps} frames/s), "
                             f"so that prompt would never be shown")


def _switch_cost(report, config) -> str:
    """What the prompt switches cost: the KV re-cache's tokens run again (fused, they ride along with
    the new block's calls; unfused, each block run again is a call of its own)."""
    if config.switch is SwitchPolicy.KV_KEEP:
        return "prompt switches: caches kept (kv-keep): no extra model calls or tokens"
    share = report.recache_tokens / report.query_tokens if report.query_tokens else 0.0
    return (f"prompt switches: KV re-cache emptied {report.recache_calls} caches and ran {report.recache_tokens} query "
            f"tokens again ({share:.1%} of the run's {report.query_tokens})"
            + ("" if config.fused else ", one model call per block run again (--no-fuse)"))


def _planned_switch_cost(model, world, config, schedule, n_blocks: int, given) -> str:
    """:func:`_switch_cost` of a pipelined run, from its plan (the ranks send blocks, not reports)."""
    from hiar.sampling import planned_recache

    if config.switch is SwitchPolicy.KV_KEEP:
        return "prompt switches: caches kept (kv-keep): no extra model calls or tokens"
    k = config.block_frames
    emptied, blocks = planned_recache(config, n_blocks, schedule, 0 if given is None else given.latents.shape[2] // k)
    _, h, w = world.latent_shape
    _, ph, pw = model.cfg.patch_size
    return (f"prompt switches: KV re-cache emptied {emptied} caches (one per rank and switch) and ran "
            f"{blocks * k * (h // ph) * (w // pw)} query tokens again")


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse bad numbers before any work, naming the flag."""
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ValueError(f"--seconds must be a positive number of seconds, got {args.seconds}")
    if args.window is not None and args.window < 3:
        raise ValueError(f"--window must be at least 3 latent frames (one block), got {args.window}")
    if args.sink is not None and args.sink < 0:
        raise ValueError(f"--sink must be 0 or more latent frames, got {args.sink}")
    if args.seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {args.seed}")
    for flag in ("first_blocks", "first_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be 0 or more, got {getattr(args, flag)}")
    if args.init_frames is not None and not args.init_video:
        raise ValueError("--init-frames picks frames of --init-video; give --init-video too")
    if args.init_frames is not None and args.init_frames < 1:
        raise ValueError(f"--init-frames must be at least 1, got {args.init_frames}")
    for flag in ("height", "width"):
        value = getattr(args, flag)
        if value is not None and args.world != "wan":
            raise ValueError(f"--{flag} sets the Wan world's frame size; the {args.world} world's frames have one size")
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be a positive number of pixels, got {value}")


def _check_paths_exist(args: argparse.Namespace) -> None:
    """Every input path must exist before a model is loaded (a Wan checkpoint takes a while)."""
    what = {"checkpoint": "checkpoint", "vae": "VAE folder", "text_encoder": "text encoder folder",
            "prompt_script": "prompt script",
            "init_image": "image", "init_video": "video"}
    for flag, name in what.items():
        path = getattr(args, flag)
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{name} not found: {path} (--{flag.replace('_', '-')})")


def _frames(args: argparse.Namespace, fps: int) -> int:
    """Video frames asked for: --frames, or --seconds at the world's fps (default 84)."""
    if args.frames is not None:
        return args.frames
    if args.seconds is None:
        return 84
    frames = round(args.seconds * fps)
    if frames < 1:
        raise ValueError(f"--seconds {args.seconds} is less than one frame at {fps} frames/s")
    return frames


def _writes_video() -> bool:
    """Every run writes the video, except the ranks of a torchrun pipeline other than the last."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1
    return True


def _load(args: argparse.Namespace, device: torch.device):
    """(model, where it came from, world)."""
    if args.world == "shapes":
        model, source = load_shapes_model(args.checkpoint, args.method, device=str(device))
        return model, source, shapes_world(model)
    from hiar.checkpoint import load_model

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_model(args.checkpoint, device=str(device), dtype=dtype).eval()
    world = wan_world(args.vae, args.text_encoder, args.height or WAN_SIZE[0], args.width or WAN_SIZE[1],
                      device=str(device))
    _check_wan_fits(model, world)
    return model, args.checkpoint, world


def _check_wan_fits(model, world) -> None:
    """The checkpoint's model must take the VAE's latents, the text encoder's states and the frame
    size (in whole patches of latents); else one line naming the flags on both sides."""
    cfg, codec, text = model.cfg, world.codec, world.text_encoder
    if (cfg.in_dim, cfg.out_dim) != (codec.latent_channels,) * 2:
        raise ValueError(f"the model (--checkpoint) takes {cfg.in_dim} latent channels, but the VAE (--vae) has "
                         f"{codec.latent_channels}: they are not from the same Wan model")
    if cfg.text_dim != text.dim or cfg.text_len < text.max_len:
        raise ValueError(f"the model (--checkpoint) takes {cfg.text_len} text states of {cfg.text_dim}, but the text "
                         f"encoder (--text-encoder) gives {text.max_len} of {text.dim}: "
                         f"they are not from the same Wan model")
    for flag, pixels, patch in (("height", world.height, cfg.patch_size[1]), ("width", world.width, cfg.patch_size[2])):
        step = codec.spatial_factor * patch
        if pixels % step:
            raise ValueError(f"--{flag} {pixels}: Wan frames must be a multiple of {step} pixels "
                             f"(the VAE's {codec.spatial_factor} x the model's patch of {patch})")


def _method_config(args: argparse.Namespace):
    """The method's sampler config with the flags; combinations that cannot run are refused naming them."""
    config = method_config(
        args.method,
        order=Order(args.order) if args.order else None,
        context=ContextRule(args.context) if args.context else None,
        transition=Transition(args.transition) if args.transition else None,
        window=args.window if args.window is not None else 21,
        sink=args.sink,
        fused=False if args.no_fuse else None,
        init_context=InitContext(args.init_context) if args.init_context else None,
        switch=SwitchPolicy(args.switch) if args.switch else None,
        first_blocks=args.first_blocks,
        first_steps=args.first_steps,
    )
    if args.batched and config.order is not Order.DIAGONAL:
        raise ValueError(f"--batched runs whole anti-diagonals: it needs --order diagonal, and --method {args.method}"
                         f"{f' --order {args.order}' if args.order else ''} runs {config.order.value}")
    if args.pipeline:
        try:
            check_pipelinable(config.context, config.num_steps)
        except ValueError as err:
            raise ValueError(f"--pipeline with --method {args.method}"
                             f"{f' --context {args.context}' if args.context else ''}: {err}") from None
    return replace(config, batched=args.batched)


def _fit_to_run(args, config, model, world, frames: int, given, device: torch.device):
    """Window and sink cut to the video (a note for the flags given), and the caches checked against
    the free memory, before anything is allocated."""
    k = config.block_frames
    blocks = num_blocks_for(frames, world.codec, k, continuing=given is not None)
    blocks += 0 if given is None else given.latents.shape[2] // k
    config, notes = fit_attention(config, blocks)
    for flag, note in notes.items():
        if getattr(args, flag) is not None:  # the default window is cut silently
            print(f"note: {note}", file=sys.stderr)
    check_cache_fits(model, config, world.latent_shape, device)
    return config


def _given_frames(args, world, block_frames: int):
    """The frames of --init-image / --init-video, encoded (None without them)."""
    from hiar.conditioning import encode_given, read_clip, read_image

    if args.init_image:
        pixels = read_image(args.init_image, (world.height, world.width))
    elif args.init_video:
        pixels = read_clip(args.init_video, (world.height, world.width), args.init_frames)
    else:
        return None
    return encode_given(pixels, world.codec, block_frames)


def _saved(writer) -> str:
    if writer is None:
        return "this rank writes no video"
    if writer.frames_written == 0:
        return "no frame was made, so no video was written"
    return f"{writer.frames_written} frames saved to {writer.path}"


def _write_guarded(produce, writer, source: str, who: str = "") -> int | None:
    """Run ``produce`` (which writes blocks to ``writer``); on a stop or a failure close the video
    first, so it plays, and say how much of it there is (``who``: a torchrun rank). Returns the exit
    code of a stop, else None."""
    try:
        produce()
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, SIGHUP
        if writer is not None:
            writer.close()
        print(f"{who}interrupted: {_saved(writer)}", file=sys.stderr)
        return exit_code(err)
    except NonFiniteOutputError as err:
        with signals_deferred():  # a stop signal now (torchrun's SIGTERM) must not hide what was kept
            if writer is not None:
                writer.close()
            raise NonFiniteOutputError(f"model {source}: {err} (broken weights?); stopped: {_saved(writer)}") from None
    except PipelineError as err:
        with signals_deferred():
            if writer is not None:
                writer.close()
            raise PipelineError(f"{err} ({_saved(writer)})") from None
    return None


def _run_pipelined(args, model, world, config, frames, writer, source, given, script, schedule) -> int:
    """Under torchrun: be one rank. Otherwise spawn one rank per step."""
    texts = [world.text_encoder.encode([p]) for p in script.prompts]
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _run_as_torchrun_rank(args, model, world, config, frames, writer, source, given, texts, schedule)
    return _spawn_ranks(args, model, world, config, frames, writer, source, given, texts, schedule)


def _run_as_torchrun_rank(args, model, world, config, frames, writer, source, given, texts, schedule) -> int:
    """``torchrun --nproc-per-node S -m hiar.cli.main generate ... --pipeline``: the last rank writes.

    A rank whose peer dies (or that torchrun stops with SIGTERM) ends with one line naming it; the
    writing rank closes its video first, so it plays.
    """
    import torch.distributed as dist

    from hiar.pipeline import pipeline_stream

    backend = "nccl" if model.device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    rank = dist.get_rank()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        model = model.to(f"cuda:{torch.cuda.current_device()}")

    def produce():
        text = [t.to(model.device, model.dtype) for t in texts]
        n_blocks = num_blocks_for(frames, world.codec, config.block_frames, continuing=given is not None)
        blocks = pipeline_stream(model, config, text, seeds=[args.seed], latent_shape=world.latent_shape, num_blocks=n_blocks,
                                 initial_latents=None if given is None else given.latents, prompts=schedule)
        try:
            if writer is None:
                for _ in blocks:  # the other ranks yield nothing
                    pass
            else:
                write_blocks(blocks, world, frames, writer=writer, progress=not args.quiet, given=given)
        except RuntimeError as err:  # a peer died: gloo / NCCL report a closed connection or a timeout
            raise PipelineError(f"pipelined inference stopped on rank {rank}: {one_line(err)[:300]}") from None

    try:
        stopped = _write_guarded(produce, writer, source, who=f"rank {rank}: ")
    finally:
        # When a peer dies torchrun SIGTERMs the others; one landing here must not replace the
        # error (and the count of frames kept) this rank is already reporting.
        with contextlib.suppress(KeyboardInterrupt):
            dist.destroy_process_group()
    if stopped is not None:
        return stopped
    if writer is not None:
        writer.close()
        print(f"rank {rank}: wrote {writer.path}: {writer.frames_written} frames", file=sys.stderr)
    return 0


def _spawn_ranks(args, model, world, config, frames, writer, source, given, texts, schedule) -> int:
    """Spawn one rank per step; each block is written as soon as the last rank has it."""
    from hiar.checkpoint import save_model
    from hiar.pipeline import PipelineJob, SpawnedPipeline

    n_blocks = num_blocks_for(frames, world.codec, config.block_frames, continuing=given is not None)
    with tempfile.TemporaryDirectory(prefix="hiar-gen-") as tmp:
        weights = save_model(model.float().cpu(), Path(tmp) / "model.safetensors")
        job = PipelineJob(functools.partial(_load_for_rank, str(weights)), config, texts, [args.seed],
                          world.latent_shape, n_blocks, threads_per_rank=max(1, torch.get_num_threads() // config.num_steps),
                          initial_latents=None if given is None else given.latents, prompts=schedule)
        with SpawnedPipeline(job) as run:  # the ranks end with this block, also on Ctrl-C or an error
            stopped = _write_guarded(lambda: write_blocks(run, world, frames, writer=writer, progress=not args.quiet,
                                                          given=given), writer, source)
    if stopped is not None:
        return stopped
    writer.close()
    wall = run.block_done_s[-1] if run.block_done_s else float("nan")
    print(f"wrote {writer.path}: {frames} frames over {config.num_steps} processes, "
          f"{frames / wall:.1f} frames/s, first block after {run.block_done_s[0]:.3f} s", file=sys.stderr)
    if schedule.num_prompts > 1:
        print(_planned_switch_cost(model, world, config, schedule, n_blocks, given), file=sys.stderr)
    return 0


def _load_for_rank(path: str):
    from hiar.checkpoint import load_model

    return load_model(path).eval()
