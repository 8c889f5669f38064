"""Per-segment curves as a PNG, drawn with Pillow (no plotting library needed).

One panel per metric; x = segment (1..S), one line per video or method, a shared legend below.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from hiar.video import label_font, text_width

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _fmt(v: float) -> str:
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{v:.2e}"
    return f"{v:.4g}"


def plot_segment_curves(series: dict[str, dict[str, list[float]]], path: str | Path, title: str = "",
                        metrics: list[str] | None = None, columns: int = 4, panel: tuple[int, int] = (260, 180),
                        subtitles: dict[str, str] | None = None) -> Path:
    """``series[label][metric]`` = per-segment values. Writes a PNG grid of panels to ``path``."""
    metrics = metrics or list(next(iter(series.values()), {}))
    img, draw, font, top = _canvas(series, metrics, columns, panel, title)
    pw, ph = panel
    for m_i, metric in enumerate(metrics):
        ox = 8 + (m_i % columns) * pw
        oy = top + (m_i // columns) * ph
        left, right, upper, lower = ox + 58, ox + pw - 10, oy + 34, oy + ph - 26
        name = metric if not subtitles or metric not in subtitles else f"{metric} [{subtitles[metric]}]"
        draw.text((ox + 4, oy + 4), name[:44], fill=(0, 0, 0), font=font)
        values = [v for s in series.values() for v in s.get(metric, []) if v == v]
        if not values:
            draw.text((left, (upper + lower) // 2), "no data", fill=(120, 120, 120), font=font)
            continue
        lo, hi = min(values), max(values)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5 * (abs(lo) + 1e-3), hi + 0.5 * (abs(hi) + 1e-3)
        pad = 0.08 * (hi - lo)
        lo, hi = lo - pad, hi + pad
        draw.rectangle((left, upper, right, lower), outline=(160, 160, 160))
        draw.text((ox + 2, upper - 6), _fmt(hi), fill=(90, 90, 90), font=font)
        draw.text((ox + 2, lower - 8), _fmt(lo), fill=(90, 90, 90), font=font)
        n = max(len(s.get(metric, [])) for s in series.values())
        for i in range(n):
            x = left + (right - left) * (i / max(n - 1, 1))
            draw.line((x, lower, x, lower + 3), fill=(120, 120, 120))
            draw.text((x - 3, lower + 5), str(i + 1), fill=(90, 90, 90), font=font)
        draw.text(((left + right) // 2 - 20, lower + 12), "segment", fill=(120, 120, 120), font=font)
        for s_i, (label, s) in enumerate(series.items()):
            vals = s.get(metric, [])
            colour = COLOURS[s_i % len(COLOURS)]
            pts = [(left + (right - left) * (i / max(len(vals) - 1, 1)), lower - (lower - upper) * (v - lo) / (hi - lo))
                   for i, v in enumerate(vals) if v == v]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for x, y in pts:
                draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=colour)
    return _finish(img, draw, font, series, top + ((len(metrics) + columns - 1) // columns) * ph + 6, path)


def _canvas(series: dict, metrics: list[str], columns: int, panel: tuple[int, int], title: str):
    """A white image with room for the panels, a title and a legend of three labels per row."""
    if not series:
        raise ValueError("nothing to plot")
    font = label_font()
    pw, ph = panel
    rows = (len(metrics) + columns - 1) // columns
    top = 30 if title else 8
    width = min(columns, len(metrics)) * pw + 16
    img = Image.new("RGB", (width, top + rows * ph + 16 + (len(series) + 2) // 3 * 18), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 8), title, fill=(0, 0, 0), font=font)
    return img, draw, font, top


def _finish(img, draw, font, series: dict, legend_y: int, path: str | Path) -> Path:
    """Draw the legend (a colour swatch per label, shortened to fit) and save the PNG."""
    width = img.width
    for s_i, label in enumerate(series):
        x = 12 + (s_i % 3) * (width // 3)
        y = legend_y + (s_i // 3) * 18
        draw.rectangle((x, y + 3, x + 14, y + 11), fill=COLOURS[s_i % len(COLOURS)])
        text = str(label)
        while len(text) > 4 and text_width(font, text) > width // 3 - 30:
            text = text[:-2]
        draw.text((x + 20, y), text if text == str(label) else text + "...", fill=(0, 0, 0), font=font)
    path = Path(path)
    img.save(path)
    return path


def plot_score_bars(series: dict[str, dict[str, tuple[float, float]]], path: str | Path, title: str = "",
                    metrics: list[str] | None = None, columns: int = 5, panel: tuple[int, int] = (220, 200)) -> Path:
    """``series[label][metric]`` = (mean, spread): one panel per metric, one bar per label with a
    +- spread whisker, the axis from 0 (scores are non-negative)."""
    metrics = metrics or list(next(iter(series.values()), {}))
    img, draw, font, top = _canvas(series, metrics, columns, panel, title)
    pw, ph = panel
    for m_i, metric in enumerate(metrics):
        ox, oy = 8 + (m_i % columns) * pw, top + (m_i // columns) * ph
        left, right, upper, lower = ox + 46, ox + pw - 10, oy + 24, oy + ph - 12
        draw.text((ox + 4, oy + 4), metric[:30], fill=(0, 0, 0), font=font)
        bars = [(i, *s[metric]) for i, s in enumerate(series.values()) if metric in s]
        if not bars:
            draw.text((left, (upper + lower) // 2), "no data", fill=(120, 120, 120), font=font)
            continue
        hi = max(m + e for _, m, e in bars) * 1.1 or 1.0
        draw.rectangle((left, upper, right, lower), outline=(160, 160, 160))
        draw.text((ox + 2, upper - 6), _fmt(hi), fill=(90, 90, 90), font=font)
        draw.text((ox + 2, lower - 8), "0", fill=(90, 90, 90), font=font)
        slot = (right - left) / len(series)
        y = lambda v: lower - (lower - upper) * max(v, 0.0) / hi
        for i, mean, spread in bars:
            x0 = left + i * slot + 0.15 * slot
            x1 = left + (i + 1) * slot - 0.15 * slot
            draw.rectangle((x0, y(mean), x1, lower), fill=COLOURS[i % len(COLOURS)])
            if spread > 0:
                xc = (x0 + x1) / 2
                draw.line((xc, y(mean - spread), xc, y(mean + spread)), fill=(0, 0, 0), width=1)
                for v in (mean - spread, mean + spread):
                    draw.line((xc - 3, y(v), xc + 3, y(v)), fill=(0, 0, 0))
    return _finish(img, draw, font, series, top + ((len(metrics) + columns - 1) // columns) * ph + 6, path)
