"""Video files: H.264 mp4 written frame by frame with PyAV, read back, and contact sheets for reports.

Writing goes to a temporary file of its own beside the final path, ``<name>.<pid>-<random>.partial.mp4``,
renamed to the final path when the writer closes. **On an exception or Ctrl-C inside the ``with``
block the encoder is flushed, the container closed (so the file has its index and plays) and the file
is still renamed to the final path**: a stopped run leaves a playable video of what was made, under
the name the user asked for; the exception then propagates, so the caller knows the video is short.
A writer that got no frame removes its partial file and leaves nothing.

The mp4 is *fragmented* (a fragment per second, flushed as it is made), so even a file that could
not be closed plays up to its last whole second: one cut short by a full disk (kept under the final
name, and the error says how many frames it holds) or by a hard kill (SIGKILL, power loss: the
``.partial.mp4`` stays behind). While it writes, a writer holds the lock file ``.<name>.lock`` beside
the video (:mod:`hiar.lockfile`): a second writer to the same path is refused at once, naming the
first one's PID, so no run can report a file that another run wrote.

Small frames are upscaled for viewing by an integer nearest-neighbour factor (to at least
``min_size`` pixels on the shorter side); the factor is stored in the file's ``comment`` metadata
(``hiar-upscale=N``) so :func:`read_video` can undo it (``native=True``).
"""

from __future__ import annotations

import math
import os
import secrets
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from hiar.errors import UserError, check_output_path

UPSCALE_TAG = "hiar-upscale="


def to_uint8_frames(frames) -> np.ndarray:
    """Any of ``[3, F, H, W]``, ``[F, H, W, 3]``, ``[1, 3, F, H, W]``, ``[3, H, W]`` or ``[H, W, 3]``,
    torch or numpy, float in [-1, 1] or uint8 -> uint8 ``[F, H, W, 3]``. A float array whose last
    and first axes are both 3 is read as ``[F, H, W, 3]``."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = frames.numpy() if frames.dtype != torch.bfloat16 else frames.float().numpy()
    x = np.asarray(frames)
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise ValueError(f"a batch of {x.shape[0]} videos was given; write one video at a time")
        x = x[0]
    if x.ndim == 3:  # a single frame
        x = x[:, None] if x.shape[0] == 3 and x.shape[-1] != 3 else x[None]
    if x.ndim != 4:
        raise ValueError(f"expected frames [3, F, H, W] or [F, H, W, 3], got shape {x.shape}")
    if x.shape[-1] != 3:
        if x.shape[0] != 3:
            raise ValueError(f"expected frames [3, F, H, W] or [F, H, W, 3], got shape {x.shape}")
        x = np.moveaxis(x, 0, -1)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [-1, 1], got {x.dtype}")
    return np.ascontiguousarray(np.clip(np.round((x.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8))


def viewing_factor(height: int, width: int, min_size: int = 256) -> int:
    """The integer nearest-neighbour factor that brings the shorter side to at least ``min_size``."""
    return max(1, math.ceil(min_size / max(1, min(height, width))))


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale of uint8 ``[F, H, W, 3]`` by an integer factor."""
    if factor == 1:
        return frames
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def downscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks of uint8 ``[F, H, W, 3]`` (undoes :func:`upscale`)."""
    if factor == 1:
        return frames
    F, H, W, C = frames.shape
    h, w = H // factor, W // factor
    if h == 0 or w == 0:
        raise ValueError(f"cannot downscale {H}x{W} frames by {factor}")
    x = frames[:, : h * factor, : w * factor].reshape(F, h, factor, w, factor, C).astype(np.float32).mean(axis=(2, 4))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


class VideoBusyError(UserError):
    """Another writer (another run) is writing the same video path."""


class VideoWriteError(UserError):
    """Writing the video failed (a full disk, a removed folder); the message says what was kept."""


# Container options: a fragment per keyframe, with the header first and every packet flushed to the
# file at once, so that a file that is never closed still plays up to its last whole fragment.
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


def check_video_path(path: str | os.PathLike) -> Path:
    """Refuse an output path that cannot become a video, before any work is done."""
    given = os.fspath(path)
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"video path must end in .mp4, got {given or repr(given)}")
    return check_output_path(path, "the video")


class VideoWriter:
    """Stream frames into an H.264 (yuv420p) mp4.

    >>> with VideoWriter("out.mp4", fps=16) as video:
    ...     for block in blocks:
    ...         video.write(block)  # [3, F, H, W] in [-1, 1] (or [F, H, W, 3], or uint8)

    ``upscale``: an integer factor, or None for the smallest one that makes the shorter side at
    least ``min_size`` pixels. The lock on the path is taken here, so a busy path is refused before
    the caller does any work. See the module docstring for what happens on Ctrl-C, a full disk and
    a hard kill.
    """

    def __init__(self, path: str | os.PathLike, fps: int = 16, upscale: int | None = None,
                 min_size: int = 256, crf: int = 18):
        from hiar.lockfile import LockFile, LockHeld, describe_holder

        self.path = check_video_path(path)
        if not self.path.parent.exists():
            raise FileNotFoundError(f"folder for the video does not exist: {self.path.parent}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if upscale is not None and upscale < 1:
            raise ValueError(f"upscale must be >= 1, got {upscale}")
        self.partial_path = self.path.with_name(f"{self.path.stem}.{os.getpid()}-{secrets.token_hex(3)}.partial.mp4")
        self.fps, self.factor, self.min_size, self.crf = fps, upscale, min_size, crf
        self.frames_written = 0
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None  # (H, W) of the frames given
        self._error: OSError | None = None  # the first write that failed
        self.closed = False
        self._lock = LockFile(self.path.with_name(f".{self.path.name}.lock"))
        try:
            self._lock.acquire()
        except LockHeld as err:
            raise VideoBusyError(f"{self.path} is being written by another run ({describe_holder(err.holder)}): "
                                 f"wait for it, stop it, or choose another output path") from None
        except OSError as err:  # the folder is not writable: say so for the video, not for the lock file
            raise VideoWriteError(f"cannot write {self.path}: {err.strerror or err}") from None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self):  # a writer dropped without close() must not keep its path locked
        lock = getattr(self, "_lock", None)
        if lock is not None and not getattr(self, "closed", True):
            lock.release()

    def _open(self, height: int, width: int) -> None:
        import av

        if self.factor is None:
            self.factor = viewing_factor(height, width, self.min_size)
        self._size = (height, width)
        out_h, out_w = height * self.factor, width * self.factor
        self._container = av.open(str(self.partial_path), mode="w", format="mp4", options=FRAGMENTED_MP4)
        self._container.metadata["comment"] = f"{UPSCALE_TAG}{self.factor}"
        stream = self._container.add_stream("libx264", rate=Fraction(self.fps))
        stream.width, stream.height = out_w + out_w % 2, out_h + out_h % 2  # yuv420p wants even sizes
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(self.crf), "preset": "medium", "g": str(self.fps)}  # a keyframe a second
        self._stream = stream

    def write(self, frames) -> None:
        """Encode frames now (``[3, F, H, W]``/``[F, H, W, 3]``/one frame; float [-1, 1] or uint8)."""
        import av

        if self.closed:
            raise ValueError(f"{self.path}: writer is closed")
        if self._error is not None:
            raise VideoWriteError(self._failure_message(None))
        x = to_uint8_frames(frames)
        if self._container is None:
            self._open(x.shape[1], x.shape[2])
        if x.shape[1:3] != self._size:
            raise ValueError(f"{self.path}: frame size changed from {self._size} to {x.shape[1:3]}")
        x = upscale(x, self.factor)
        pad_h, pad_w = self._stream.height - x.shape[1], self._stream.width - x.shape[2]
        if pad_h or pad_w:
            x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        from hiar.signals import signals_deferred

        try:
            # A stop signal that lands while PyAV calls back into Python (its file writes) can be
            # swallowed there: hold it until the frames are muxed, then raise it.
            with signals_deferred():
                for frame in x:
                    video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                    for packet in self._stream.encode(video_frame):
                        self._container.mux(packet)
                    self.frames_written += 1
        except OSError as err:  # a full disk, a removed folder: what was flushed still plays
            self._error = err
            raise VideoWriteError(self._failure_message(None)) from None

    def close(self) -> Path | None:
        """Flush, close and rename to the final path; returns it (None when no frame was written).

        A stop signal during the close waits until it is done (:func:`hiar.signals.signals_deferred`).
        When a write failed, the frames that made it to the file are kept under the final name and
        :class:`VideoWriteError` says how many.
        """
        from hiar.signals import signals_deferred

        if self.closed:
            return self.path if self.path.exists() else None
        self.closed = True
        try:
            with signals_deferred():
                return self._finish()
        finally:
            self._lock.release()

    def _finish(self) -> Path | None:
        if self._container is None:
            return None
        try:
            if self._error is None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        except OSError as err:
            self._error = err
        finally:
            try:
                self._container.close()
            except OSError as err:
                self._error = self._error or err
        if self._error is None and self.frames_written:
            os.replace(self.partial_path, self.path)
            return self.path
        kept = 0
        if self.frames_written and self.partial_path.exists():
            trim_to_whole_fragments(self.partial_path)
            kept = playable_frames(self.partial_path)
        if kept:
            os.replace(self.partial_path, self.path)
        else:
            self.partial_path.unlink(missing_ok=True)
        if self._error is None:
            return None
        raise VideoWriteError(self._failure_message(kept))

    def _failure_message(self, kept: int | None) -> str:
        err = self._error
        reason = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
        if kept is None:
            return f"writing {self.path} failed: {reason}"
        saved = (f"{self.path} keeps the first {kept} of the {self.frames_written} frames encoded" if kept else
                 f"no frame could be saved; the partial file was removed")
        return f"writing {self.path} failed: {reason}; {saved}"


def trim_to_whole_fragments(path: str | os.PathLike) -> int:
    """Cut a fragmented mp4 that was never closed after its last whole fragment; returns the new size.

    Walks the top-level boxes (32-bit size and type, or a 64-bit size): the header (``ftyp``,
    ``moov``) and every ``moof`` + ``mdat`` pair that is all there are kept; a fragment cut short by
    a full disk or a kill is dropped, so that what remains decodes to the end.
    """
    import struct

    path = Path(path)
    size = path.stat().st_size
    good = pos = 0
    seen_moov = False
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            box_size, kind = struct.unpack(">I4s", f.read(8))
            if box_size == 1:
                box_size = struct.unpack(">Q", f.read(8))[0] if pos + 16 <= size else 0
            if box_size < 8 or pos + box_size > size:
                break
            pos += box_size
            seen_moov = seen_moov or kind == b"moov"
            if seen_moov and kind in (b"moov", b"mdat"):  # the header, or a fragment's data: a safe end
                good = pos
    if good < size:
        os.truncate(path, good)
    return good


def playable_frames(path: str | os.PathLike) -> int:
    """Video frames a player can read from ``path`` (0 when it does not open): counts packets, no decoding."""
    import av

    try:
        with av.open(str(path), mode="r") as container:
            return sum(1 for packet in container.demux(video=0) if packet.size)
    except (av.error.FFmpegError, OSError, IndexError):
        return 0


def write_video(path: str | os.PathLike, frames, fps: int = 16, upscale: int | None = None, min_size: int = 256) -> Path:
    """Write a whole video at once (see :class:`VideoWriter`)."""
    with VideoWriter(path, fps=fps, upscale=upscale, min_size=min_size) as video:
        video.write(frames)
    return Path(path)


def video_upscale_factor(path: str | os.PathLike) -> int:
    """The viewing upscale factor stored by :class:`VideoWriter` (1 for other files)."""
    with _open_for_reading(path) as container:
        return _factor_from_metadata(container)


def _factor_from_metadata(container) -> int:
    comment = container.metadata.get("comment", "")
    if comment.startswith(UPSCALE_TAG):
        try:
            return max(1, int(comment[len(UPSCALE_TAG):]))
        except ValueError:
            return 1
    return 1


def _open_for_reading(path):
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as err:
        raise ValueError(f"{path}: not a readable video ({err})") from None


def read_video(path: str | os.PathLike, native: bool = False, factor: int | None = None,
               size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a video to uint8 ``[F, H, W, 3]``.

    ``native=True`` undoes the viewing upscale stored by :class:`VideoWriter`; ``factor`` downscales
    by a given integer; ``size=(H, W)`` downscales to that size when the frames are an integer
    multiple of it (the usual case: a video written upscaled for viewing), else raises ValueError.
    """
    import av

    with _open_for_reading(path) as container:
        stored = _factor_from_metadata(container)
        try:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except av.error.FFmpegError as err:
            raise ValueError(f"{path}: could not decode ({err})") from None
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    x = np.stack(frames)
    if native:
        h, w = x.shape[1] // stored, x.shape[2] // stored
        x = downscale(x, stored)[:, :h, :w]
    if factor is not None:
        x = downscale(x, factor)
    if size is not None:
        x = resize_to(x, size, path)
    return x


def resize_to(frames: np.ndarray, size: tuple[int, int], what: object = "video") -> np.ndarray:
    """Block-average uint8 ``[F, H, W, 3]`` down to ``size`` when H and W are integer multiples of it
    (a one-pixel even-size pad from the encoder is tolerated)."""
    H, W = frames.shape[1:3]
    h, w = size
    if (H, W) == (h, w):
        return frames
    for fh, fw in ((H // h, W // w),):
        if fh == fw and fh >= 1 and H - fh * h <= 1 and W - fw * w <= 1:
            return downscale(frames[:, : fh * h, : fw * w], fh)
    raise ValueError(f"{what}: frames are {H}x{W}, not an integer multiple of the expected {h}x{w}")


# --------------------------------------------------------------------------------- contact sheet
def contact_sheet(videos: dict[str, object], path: str | os.PathLike, columns: int = 8, cell: int = 96,
                  title: str | None = None, column_label: str = "t=") -> Path:
    """A labelled PNG: one row per video, ``columns`` frames sampled evenly over time (first and
    last included), each cell ``cell`` pixels high (nearest-neighbour), ``column_label`` + the frame
    index on top (a row of stills, not a video: e.g. ``"#"``)."""
    from PIL import Image, ImageDraw

    if not videos:
        raise ValueError("contact_sheet needs at least one video")
    rows = {label: to_uint8_frames(v) for label, v in videos.items()}
    font = label_font()
    label_w = max(8 + int(text_width(font, str(label))) for label in rows) + 8
    aspect = max(v.shape[2] / v.shape[1] for v in rows.values())
    cw = int(round(cell * aspect))
    header = 18 + (22 if title else 0)
    row_h = cell + 18
    sheet = Image.new("RGB", (label_w + columns * (cw + 4) + 4, header + len(rows) * row_h + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((8, 4), title, fill=(0, 0, 0), font=font)
    for r, (label, frames) in enumerate(rows.items()):
        y = header + r * row_h
        F = frames.shape[0]
        idx = np.unique(np.linspace(0, F - 1, num=min(columns, F)).round().astype(int))
        draw.text((8, y + cell // 2), str(label), fill=(0, 0, 0), font=font)
        for c, i in enumerate(idx):
            img = Image.fromarray(frames[i]).resize((int(round(cell * frames.shape[2] / frames.shape[1])), cell), Image.NEAREST)
            x = label_w + c * (cw + 4)
            sheet.paste(img, (x, y + 14))
            draw.text((x, y), f"{column_label}{i}", fill=(90, 90, 90), font=font)
    path = Path(path)
    sheet.save(path)
    return path


def label_font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def text_width(font, text: str) -> float:
    try:
        return font.getlength(text)
    except AttributeError:
        return 7 * len(text)
