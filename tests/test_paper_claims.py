"""scripts/paper_claims.py: verdicts from known numbers, and the committed page is what the committed JSON gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
pc = load_script("paper_claims")


def write_run(folder: Path, label: str, frames: int, drift: list[float], dynamic: float = 0.5, quality: float = 0.5) -> None:
    """An evaluation JSON whose per-prompt drift values are ``drift`` (the other scores constant)."""
    per_video = [{"prompt": f"p{i}", "semantic": 0.5, "dynamic": dynamic, "quality": quality, "total": 0.5, "drift": d}
                 for i, d in enumerate(drift)]
    payload = {"schema": pc.SCHEMA, "label": label, "kind": "student", "frames": frames, "per_video": per_video,
               "segments": {}, "drift": {"segment_values": {"sat": [0.1, 0.2, 0.3, 0.4, 0.5]}}}
    (folder / f"{label}-f{frames}.json").write_text(json.dumps(payload))


def claim(text: str) -> pc.Claim:
    return next(c for c in pc.CLAIMS if c.text == text)


def test_verdicts_follow_the_seed_spread(tmp_path):
    # HiAR: seeds at drift 0.20, 0.22, 0.24 (mean 0.22, std 0.02); Self-Forcing at 0.40, 0.42, 0.44.
    for s, d in enumerate((0.20, 0.22, 0.24)):
        write_run(tmp_path, f"hiar-s{s}", 84, [d - 0.01, d + 0.01])
    for s, d in enumerate((0.40, 0.42, 0.44)):
        write_run(tmp_path, f"self-forcing-s{s}", 84, [d, d])
    runs = pc.load_runs(tmp_path)
    r = pc.verdict(claim("HiAR drifts less than Self-Forcing"), runs, 84)
    assert r["verdict"] == "holds" and r["diff"] == pytest.approx(0.20)
    assert r["spread"] == pytest.approx(np.hypot(0.02, 0.02)) and r["basis"] == "seeds"
    assert r["better"]["seeds"] == 3 and r["better"]["seed_std"] == pytest.approx(0.02)


def test_the_opposite_direction_does_not_hold_and_a_small_gap_is_inconclusive(tmp_path):
    for s, d in enumerate((0.30, 0.34)):
        write_run(tmp_path, f"hiar-s{s}", 84, [d, d])
    write_run(tmp_path, "hiar-no-fkl-s0", 84, [0.33, 0.33])  # one seed: borrows HiAR's spread (0.028)
    write_run(tmp_path, "hiar-input-context-s0", 84, [0.60, 0.60])
    runs = pc.load_runs(tmp_path)
    small = pc.verdict(claim("without forward-KL, drift is lower"), runs, 84)
    assert small["verdict"] == "inconclusive" and "lent by hiar" in small["basis"]
    assert small["spread"] == pytest.approx(np.hypot(np.std([0.30, 0.34], ddof=1), np.std([0.30, 0.34], ddof=1)))
    wrong = pc.verdict(claim("context at t_j drifts less than t_{j+1}"), runs, 84)
    assert wrong["verdict"] == "does not hold" and wrong["diff"] == pytest.approx(-0.28)
    assert pc.verdict(claim("HiAR drifts less than CausVid"), runs, 84) is None  # no CausVid run


def test_single_seed_pairs_use_the_per_prompt_standard_error(tmp_path):
    write_run(tmp_path, "causvid-s0", 336, [0.5, 0.7])
    write_run(tmp_path, "hiar-s0", 336, [0.1, 0.3])
    r = pc.verdict(claim("HiAR drifts less than CausVid"), pc.load_runs(tmp_path), 336)
    se = np.std([0.1, 0.3], ddof=1) / np.sqrt(2)
    assert r["basis"] == "prompts" and r["spread"] == pytest.approx(np.hypot(se, se)) and r["verdict"] == "holds"


def test_page_and_figures_from_a_folder(tmp_path):
    folder = tmp_path / "repro"
    folder.mkdir()
    for s in (0, 1):
        write_run(folder, f"hiar-s{s}", 84, [0.2 + 0.01 * s] * 2, dynamic=0.7)
        write_run(folder, f"hiar-no-fkl-s{s}", 84, [0.2] * 2, dynamic=0.3)
    out, figs = tmp_path / "claims.md", tmp_path / "figs"
    assert pc.main(["--results", str(folder), "--out", str(out), "--figures", str(figs)]) == 0
    page = out.read_text()
    row = next(line for line in page.splitlines() if line.startswith("| forward-KL keeps motion"))
    assert "0.686 vs 0.445" in row and "**holds**" in row
    assert sorted(p.name for p in figs.glob("*.png")) == ["drift-f84.png", "scores-f84.png"]
    assert pc.main(["--results", str(folder), "--out", str(out), "--figures", str(figs), "--check"]) == 0
    out.write_text(page + "edited\n")
    assert pc.main(["--results", str(folder), "--out", str(out), "--figures", str(figs), "--check"]) == 1


def test_the_committed_claims_page_is_what_the_committed_json_gives():
    assert list((ROOT / "results" / "repro").glob("*.json")), "no committed results/repro/*.json"
    assert pc.main(["--check"]) == 0, "run: python scripts/paper_claims.py && python scripts/results_page.py"


def test_throughput_section_names_the_reference_row_and_both_verdicts():
    run = {"steps": 4, "procs": 1, "frames_per_s": 10.0, "first_block_latency_s": 0.1}
    tp = {"preset": "toy", "device": "cpu", "dtype": "float32", "latent": [3, 32, 32], "blocks": 28,
          "runs": [{**run, "method": "block-first (Self-Forcing)", "speedup_vs_block_first": 1.0},
                   {**run, "method": "block-first (Self-Forcing)", "steps": 2},
                   {**run, "method": "hierarchical pipelined", "steps": 2, "procs": 2, "frames_per_s": 8.0,
                    "speedup_vs_block_first": 0.8}],
          "simulated": [{"devices": 4, "speedup_vs_block_first": 2.0}]}
    text = "\n".join(pc.throughput_section(tp))
    assert "| block-first (Self-Forcing) | 2 | 1 | 10.00 | 0.100 | reference of the pipelined row |" in text
    assert "nan" not in text
    assert "2.00x block-first (paper ~1.8x): **holds** (faster), above the paper's factor" in text
    assert "0.80x: **does not hold** on this machine" in text
