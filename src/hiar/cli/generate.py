"""``hiar generate``: text to video with any method, order and length."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import torch

from hiar.generate import (
    METHODS, generate, load_shapes_model, method_config, num_blocks_for, shapes_world, wan_world, write_blocks,
)
from hiar.sampling import ContextRule, InitContext, Order, Transition


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt",
                       description="Generate a video from a prompt. Blocks are written to the mp4 as they finish.")
    p.add_argument("prompt", help="the text prompt (shapes world: e.g. 'a fast red circle on a dark background')")
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
                   help="given frames enter the context clean (default, as the released code) or at each step's level")
    p.add_argument("--checkpoint", default=None, help="model weights (hiar, Wan, diffusers or Self-Forcing format; "
                   "shapes default: the bundled student of --method)")
    p.add_argument("--world", choices=["shapes", "wan"], default="shapes")
    p.add_argument("--vae", default=None, help="Wan: local folder of the VAE (diffusers layout)")
    p.add_argument("--text-encoder", default=None, help="Wan: local folder of umT5 and its tokenizer")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hiar.video import VideoWriter

    if args.world == "shapes":
        model, source = load_shapes_model(args.checkpoint, args.method, device=args.device)
        world = shapes_world(model)
    else:
        if not (args.checkpoint and args.vae and args.text_encoder):
            raise ValueError("--world wan needs --checkpoint, --vae and --text-encoder (local paths; nothing is downloaded)")
        from hiar.checkpoint import load_model

        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        model, source = load_model(args.checkpoint, device=args.device, dtype=dtype).eval(), args.checkpoint
        world = wan_world(args.vae, args.text_encoder, device=args.device)
    frames = args.frames if args.frames is not None else round(args.seconds * world.fps) if args.seconds else 84
    if frames < 1:
        raise ValueError(f"need at least one frame, got {frames}")
    config = method_config(
        args.method,
        order=Order(args.order) if args.order else None,
        context=ContextRule(args.context) if args.context else None,
        transition=Transition(args.transition) if args.transition else None,
        window=args.window if args.window is not None else 21,
        sink=args.sink,
        fused=False if args.no_fuse else None,
        batched=True if args.batched else None,
        init_context=InitContext(args.init_context) if args.init_context else None,
        first_blocks=args.first_blocks,
        first_steps=args.first_steps,
    )
    given = _given_frames(args, world, config.block_frames)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"model: {source}", file=sys.stderr)
    print(f"{args.method}: context {config.context.name}, order {config.order.value}, {config.num_steps} steps, "
          f"{frames} frames -> {out}" + (f" after {given.num_frames} given" if given else ""), file=sys.stderr)
    if args.pipeline:
        return _run_pipelined(args, model, world, config, frames, out, given)
    with VideoWriter(out, fps=world.fps) as writer:
        try:
            _, report = generate(model, world, args.prompt, num_frames=frames, config=config, seed=args.seed,
                                 writer=writer, progress=not args.quiet, init_frames=given)
        except KeyboardInterrupt:
            writer.close()
            print(f"interrupted: {writer.frames_written} frames saved to {out}", file=sys.stderr)
            return 130
    print(f"wrote {out}: {frames} frames, {report.frames_per_s:.1f} frames/s, first block after "
          f"{report.first_block_latency_s:.3f} s, {report.model_calls} model calls", file=sys.stderr)
    return 0


def _given_frames(args, world, block_frames: int):
    """The frames of --init-image / --init-video, encoded (None without them)."""
    from hiar.conditioning import encode_given, read_clip, read_image

    if args.init_frames is not None and not args.init_video:
        raise ValueError("--init-frames picks frames of --init-video; give --init-video too")
    if args.init_image:
        pixels = read_image(args.init_image, (world.height, world.width))
    elif args.init_video:
        pixels = read_clip(args.init_video, (world.height, world.width), args.init_frames)
    else:
        return None
    return encode_given(pixels, world.codec, block_frames)


def _run_pipelined(args, model, world, config, frames, out, given) -> int:
    """Under torchrun: be one rank. Otherwise spawn one rank per step."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _run_as_torchrun_rank(args, model, world, config, frames, out, given)
    return _spawn_ranks(args, model, world, config, frames, out, given)


def _run_as_torchrun_rank(args, model, world, config, frames, out, given) -> int:
    """``torchrun --nproc-per-node S -m hiar.cli.main generate ... --pipeline``: the last rank writes."""
    import torch.distributed as dist

    from hiar.pipeline import pipeline_stream
    from hiar.video import VideoWriter

    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        model = model.to(f"cuda:{torch.cuda.current_device()}")
    try:
        text = world.text_encoder.encode([args.prompt]).to(model.device, model.dtype)
        n_blocks = num_blocks_for(frames, world.codec, config.block_frames, continuing=given is not None)
        blocks = pipeline_stream(model, config, text, seeds=[args.seed], latent_shape=world.latent_shape, num_blocks=n_blocks,
                                 initial_latents=None if given is None else given.latents)
        if rank != world_size - 1:
            for _ in blocks:  # the other ranks yield nothing
                pass
            return 0
        with VideoWriter(out, fps=world.fps) as writer:
            write_blocks(blocks, world, frames, writer=writer, progress=not args.quiet, given=given)
        print(f"rank {rank}: wrote {out}: {writer.frames_written} frames", file=sys.stderr)
        return 0
    finally:
        dist.destroy_process_group()


def _spawn_ranks(args, model, world, config, frames, out, given) -> int:
    """Spawn one rank per step; the video is written when the ranks are done."""
    from hiar.checkpoint import save_model
    from hiar.pipeline import PipelineJob, spawn_pipeline_timed
    from hiar.video import VideoWriter
    import tempfile

    text = world.text_encoder.encode([args.prompt])
    n_blocks = num_blocks_for(frames, world.codec, config.block_frames, continuing=given is not None)
    with tempfile.TemporaryDirectory(prefix="hiar-gen-") as tmp:
        weights = save_model(model.float().cpu(), Path(tmp) / "model.safetensors")
        job = PipelineJob(functools.partial(_load_for_rank, str(weights)), config, text, [args.seed],
                          world.latent_shape, n_blocks, threads_per_rank=max(1, torch.get_num_threads() // config.num_steps),
                          initial_latents=None if given is None else given.latents)
        result = spawn_pipeline_timed(job)
    with VideoWriter(out, fps=world.fps) as writer:
        write_blocks([(0, result.video)], world, frames, writer=writer, progress=False, given=given)
    print(f"wrote {out}: {frames} frames over {config.num_steps} processes, "
          f"{frames / result.wall_s:.1f} frames/s, first block after {result.first_block_latency_s:.3f} s", file=sys.stderr)
    return 0


def _load_for_rank(path: str):
    from hiar.checkpoint import load_model

    return load_model(path).eval()
