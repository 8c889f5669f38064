"""Weight-free frame statistics shared by the drift suite and the shapes scores.

Frames here are torch ``[N, 3, H, W]`` float in [0, 1] (see :func:`as_unit_frames`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)


def as_unit_frames(frames) -> torch.Tensor:
    """Video in any layout :func:`hiar.video.to_uint8_frames` accepts -> ``[F, 3, H, W]`` float32 in
    [0, 1]. Floats are read as [-1, 1] (the library's pixel convention), uint8 as 0..255."""
    if isinstance(frames, torch.Tensor):
        x = frames.detach().cpu()
    else:
        x = torch.from_numpy(np.ascontiguousarray(frames))
    if x.dim() == 5:
        if x.shape[0] != 1:
            raise ValueError(f"expected one video, got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 4:
        raise ValueError(f"expected frames [3, F, H, W] or [F, H, W, 3], got shape {tuple(x.shape)}")
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    elif x.shape[0] == 3:
        x = x.permute(1, 0, 2, 3)
    else:
        raise ValueError(f"expected frames [3, F, H, W] or [F, H, W, 3], got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0).contiguous()
    if not x.dtype.is_floating_point:
        raise ValueError(f"frames must be uint8 or float in [-1, 1], got {x.dtype}")
    return ((x.float() + 1.0) / 2.0).clamp_(0.0, 1.0).contiguous()


def luma(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` Rec. 601 luma in [0, 1]."""
    w = torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1)


def hsv_saturation(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` HSV saturation ``(max - min) / max`` (0 where max is 0)."""
    mx, mn = x.max(dim=1).values, x.min(dim=1).values
    return torch.where(mx > 1e-6, (mx - mn) / mx.clamp_min(1e-6), torch.zeros_like(mx))


def mean_saturation(x: torch.Tensor) -> torch.Tensor:
    """``[N]`` mean HSV saturation per frame, in [0, 1]."""
    return hsv_saturation(x).mean(dim=(1, 2))


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def laplacian(y: torch.Tensor) -> torch.Tensor:
    """Valid 3x3 Laplacian of ``[N, H, W]`` images -> ``[N, H - 2, W - 2]``."""
    return F.conv2d(y[:, None], _LAPLACIAN.to(y.dtype))[:, 0]


def laplacian_variance(x: torch.Tensor) -> torch.Tensor:
    """``[N]`` variance of the Laplacian of the luma on the 0..255 scale (OpenCV's usual sharpness
    number: ``cv2.Laplacian(gray, CV_64F).var()`` without the border)."""
    return laplacian(luma(x) * 255.0).flatten(1).var(dim=1)


def gradient_magnitude(y: torch.Tensor) -> torch.Tensor:
    """``[N, H - 2, W - 2]`` central-difference gradient magnitude of ``[N, H, W]`` images."""
    gx = (y[:, 1:-1, 2:] - y[:, 1:-1, :-2]) / 2
    gy = (y[:, 2:, 1:-1] - y[:, :-2, 1:-1]) / 2
    return torch.sqrt(gx * gx + gy * gy)


def edge_sharpness(x: torch.Tensor) -> torch.Tensor:
    """``[N]`` sum |Laplacian| / sum |gradient| of the luma: the edge profile's steepness, which does
    not depend on contrast or on how much edge the frame has (blur lowers it like 1/width)."""
    y = luma(x)
    return laplacian(y).abs().sum(dim=(1, 2)) / (gradient_magnitude(y).sum(dim=(1, 2)) + 1e-6)


def rms_contrast(x: torch.Tensor) -> torch.Tensor:
    """``[N]`` standard deviation of the luma (RMS contrast), in [0, 0.5]."""
    return luma(x).flatten(1).std(dim=1)


def opponent(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hasler-Suesstrunk opponent channels ``rg = R - G`` and ``yb = (R + G) / 2 - B``: ``[N, H, W]``."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return r - g, 0.5 * (r + g) - b


def colourfulness(x: torch.Tensor) -> torch.Tensor:
    """``[N]`` Hasler-Suesstrunk colourfulness ``sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mu_rg^2 + mu_yb^2)``
    on [0, 1] pixels."""
    rg, yb = opponent(x)
    rg, yb = rg.flatten(1), yb.flatten(1)
    return torch.sqrt(rg.var(dim=1) + yb.var(dim=1)) + 0.3 * torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)


def mean_chroma(x: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` mean opponent chroma (rg, yb) per frame: the frame's overall colour cast."""
    rg, yb = opponent(x)
    return torch.stack([rg.mean(dim=(1, 2)), yb.mean(dim=(1, 2))], dim=1)


def consecutive_pixel_cosine(x: torch.Tensor) -> torch.Tensor:
    """``[N - 1]`` cosine similarity of consecutive frames after removing each frame's mean colour."""
    v = x.flatten(2)
    v = (v - v.mean(dim=2, keepdim=True)).flatten(1)
    return F.cosine_similarity(v[:-1], v[1:], dim=1, eps=1e-8)


def consecutive_abs_difference(x: torch.Tensor) -> torch.Tensor:
    """``[N - 1]`` mean absolute pixel difference of consecutive frames, in [0, 1]."""
    return (x[1:] - x[:-1]).abs().mean(dim=(1, 2, 3))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` (radius 3 sigma, reflect padding; used by tests and
    corruptions). Done in numpy: many tiny torch convolutions are slow when threads are contended."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, int(round(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    a = x.detach().cpu().double().numpy()
    for axis in (-1, -2):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(a, pad, mode="reflect")
        n = a.shape[axis]
        a = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return torch.from_numpy(a).to(x.dtype)


def segment_bounds(num_frames: int, segments: int) -> list[tuple[int, int]]:
    """``segments`` contiguous ``[start, end)`` ranges covering all frames, lengths differing by at most 1."""
    if num_frames < 2 * segments:
        raise ValueError(f"a video of {num_frames} frames is too short for {segments} segments (need at least {2 * segments} frames)")
    edges = np.linspace(0, num_frames, segments + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def least_squares_slope(values) -> float:
    """Slope of the least-squares line through ``(i, values[i])``, i = 0 .. n - 1 (per segment)."""
    y = np.asarray(values, dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64)
    x -= x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` RGB in [0, 1] -> HSV with H, S, V in [0, 1]."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    mx, mn = x.max(dim=1).values, x.min(dim=1).values
    d = mx - mn
    safe = torch.where(d > 1e-8, d, torch.ones_like(d))
    h = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(d > 1e-8, h / 6.0, torch.zeros_like(h))
    s = torch.where(mx > 1e-8, d / mx.clamp_min(1e-8), torch.zeros_like(mx))
    return torch.stack([h, s, mx], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x[:, 0] * 6.0, x[:, 1], x[:, 2]
    i = torch.floor(h) % 6
    f = h - torch.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        out[:, 0] = torch.where(m, r, out[:, 0])
        out[:, 1] = torch.where(m, g, out[:, 1])
        out[:, 2] = torch.where(m, b, out[:, 2])
    return out


def chroma_samples(x: torch.Tensor, max_samples: int = 65536) -> torch.Tensor:
    """``[M, 2]`` opponent chroma (rg, yb) of the pixels of ``[N, 3, H, W]`` frames, evenly
    subsampled (deterministically) to at most ``max_samples``."""
    rg, yb = opponent(x)
    c = torch.stack([rg.flatten(), yb.flatten()], dim=1)
    if c.shape[0] > max_samples:
        idx = torch.linspace(0, c.shape[0] - 1, max_samples).round().long()
        c = c[idx]
    return c


def projected_quantiles(points: torch.Tensor, directions: int = 16, quantiles: int = 129) -> np.ndarray:
    """``[directions, quantiles]``: quantiles (linear interpolation) of the projections of ``[M, 2]``
    points on ``directions`` evenly spaced unit vectors (the ingredients of :func:`sliced_wasserstein`)."""
    angles = np.arange(directions) * (np.pi / directions)
    u = np.stack([np.cos(angles), np.sin(angles)], axis=0)  # [2, D]
    p = np.sort(np.ascontiguousarray((points.double().numpy() @ u).T), axis=1)  # [D, M]
    pos = np.linspace(0.0, 1.0, quantiles) * (p.shape[1] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, p.shape[1] - 1)
    w = pos - lo
    return p[:, lo] * (1 - w) + p[:, hi] * w


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int = 16, quantiles: int = 129) -> float:
    """Sliced 1-Wasserstein distance between two 2-D point clouds ``[M, 2]`` and ``[K, 2]``: the mean,
    over ``directions`` evenly spaced unit vectors, of the 1-D W1 distance of the projections (from
    ``quantiles`` quantiles). Moving every point by ``d`` moves it by at most ``d``."""
    qa = projected_quantiles(a, directions, quantiles)
    qb = projected_quantiles(b, directions, quantiles)
    return float(np.abs(qa - qb).mean())


