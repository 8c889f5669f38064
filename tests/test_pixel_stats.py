"""scripts/pixel_stats.py: known answers on a hand-made video, and a missing file named in one line."""

from __future__ import annotations

import numpy as np

from tests.helpers import load_script

ps = load_script("pixel_stats")


def test_known_shares_and_background_colour(tmp_path, capsys):
    video = np.zeros((2, 4, 4, 3), np.uint8)  # 32 pixels: 16 black
    video[:, :2] = (20, 30, 40)  # 16 dark, not black: max channel 40/255 = 0.157
    video[0, 0, 0] = (255, 0, 0)  # one bright pixel (it replaces a dark one)
    s = ps.stats(video)
    assert s["black"] == 16 / 32 and s["bright"] == 1 / 32
    assert np.allclose(s["dark_rgb"], (15 * np.array([20, 30, 40]) / 255) / 31)
    np.savez(tmp_path / "v.npz", video=video)
    assert ps.main([str(tmp_path / "v.npz")]) == 0
    assert "0.50    0.03" in capsys.readouterr().out
    assert ps.main([str(tmp_path / "missing.npz")]) == 1
    assert capsys.readouterr().err.strip() == f"pixel_stats: {tmp_path / 'missing.npz'}: no such file"
