"""docs/results.md is exactly what scripts/results_page.py makes from the committed JSON; the page's
tables and the targets' met/missed arithmetic on a small hand-made JSON set."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


rp = load_script("results_page")

SLOTS = ("quality_musiq", "quality_clipiqa", "coherence_dinov2", "coherence_lpips", "saturation", "sharpness", "colour_shift")


def result(label: str, kind: str, frames: int, scores: dict[str, tuple[float, float]], drift: tuple[float, float] | None,
           method: str | None = None) -> dict:
    """A minimal evaluation JSON of the schema evaluate_shapes.py writes."""
    prompts = ["a fast red circle on a dark background", "a slow blue square on a gray background"]
    path = None if kind == "real" else f"models/{label}.safetensors"
    return {
        "schema": rp.SCHEMA, "label": label, "kind": kind, "model_path": path,
        "model_sha256": None if path is None else "0123456789abcdef" * 4, "method": method, "frames": frames,
        "prompts": prompts, "seeds": None if kind == "real" else [0, 1], "num_prompts": 2,
        "model_metadata": None if path is None else {"stage": "dmd", "steps": "400", "commit": "feedbeef"},
        "code": {"commit": "c0ffee" * 6, "dirty": False},
        "scores": {k: {"mean": m, "std": s} for k, (m, s) in scores.items()},
        "segments": {k: [m] * 5 for k, (m, _) in scores.items()},
        "drift": ({"score": None, "segments": 5, "backends": {s: "b" for s in SLOTS}, "note": "too short"} if drift is None else
                  {"score": {"mean": drift[0], "std": drift[1]}, "segments": 5, "backends": {s: f"{s}-backend" for s in SLOTS},
                   "normalised": {s: 0.5 * i - 1 for i, s in enumerate(SLOTS)}, "segment_values": {s: [0.0] * 5 for s in SLOTS}}),
    }


def scores(semantic, dynamic, quality) -> dict:
    return {"semantic": (semantic, 0.01), "dynamic": (dynamic, 0.02), "quality": (quality, 0.03),
            "total": ((semantic + dynamic + quality) / 3, 0.04)}


def tiny_set() -> list[dict]:
    return [
        result("real", "real", 84, scores(0.9, 1.0, 0.95), (0.05, 0.01)),
        result("hiar", "student", 84, scores(0.75, 0.7, 0.8), (0.12, 0.02), "hiar"),
        result("self-forcing", "student", 84, scores(0.7, 0.8, 0.7), (0.2, 0.03), "self-forcing"),
        result("hiar", "student", 336, scores(0.5, 0.6, 0.7), (0.3, 0.1), "hiar"),
        result("teacher", "teacher", 21, scores(0.8, 0.9, 0.9), (0.01, 0.005)),
        result("real", "real", 21, scores(0.95, 0.97, 0.98), None),
    ]


def write(folder: Path, results: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for d in results:
        (folder / f"{d['label']}-f{d['frames']}.json").write_text(json.dumps(d))
    return folder


def test_committed_page_is_what_the_committed_json_gives():
    """With results/eval/*.json committed the page must match them exactly; without any, the page
    committed is the empty-state page (either way: regenerate with scripts/results_page.py)."""
    folder = ROOT / "results" / "eval"
    page = rp.render_folder(folder)
    committed = (ROOT / "docs" / "results.md").read_text()
    assert committed == page, "docs/results.md is stale: run `python scripts/results_page.py` and commit it"
    if not rp.load_results(folder):
        assert "No evaluation results yet" in committed


def test_tables_and_target_arithmetic(tmp_path):
    page = rp.render_folder(write(tmp_path / "results" / "eval", tiny_set()))
    # one table per length, rows in a fixed order, mean ± std with 3 decimals
    assert page.index("## 21 frames (the teacher's own length)") < page.index("## 84 frames") < page.index("## 336 frames")
    sec84 = page[page.index("## 84 frames"):page.index("## 336 frames")]
    assert sec84.index("| real |") < sec84.index("| hiar |") < sec84.index("| self-forcing |")
    assert "| hiar | student, method hiar | 0.750 ± 0.010 | 0.700 ± 0.020 | 0.800 ± 0.030 | 0.750 ± 0.040 | 0.120 ± 0.020 |" in sec84
    assert "| real | real clips (reference) | 0.900 ± 0.010 | 1.000 ± 0.020 | 0.950 ± 0.030 |" in sec84
    assert "see the 21-frame table" in sec84
    assert "(results/contact-f84.png)" in sec84 and "(results/drift-f84.png)" in sec84 and "(results/shapes-f84.png)" in sec84
    assert "| hiar | -1.00 | -0.50 | +0.00 | +0.50 | +1.00 | +1.50 | +2.00 |" in sec84
    sec21 = page[page.index("## 21 frames"):page.index("## 84 frames")]
    assert "| teacher | teacher (bidirectional" in sec21 and "| real | real clips (reference) | 0.950 ± 0.010 |" in sec21
    assert "| – |" in sec21  # no drift for the real 21-frame row: a dash, not a number
    # targets: 0.8 x real; drift no higher than self-forcing's
    targets = page[page.index("## Targets"):page.index("## Provenance")]
    assert "| semantic ≥ 0.8 × real clips' | 0.750 | 0.720 (0.8 × 0.900) | met (by 0.030) |" in targets
    assert "| dynamic ≥ 0.8 × real clips' | 0.700 | 0.800 (0.8 × 1.000) | missed (by 0.100) |" in targets
    assert "| quality ≥ 0.8 × real clips' | 0.800 | 0.760 (0.8 × 0.950) | met (by 0.040) |" in targets
    assert "| Drift Score ≤ Self-Forcing's | 0.120 | 0.200 | met (by 0.080) |" in targets
    assert "3 of 4 targets met." in targets
    # provenance, the reproduce command from the rows, the marked claims section
    assert "| hiar | 84 | `models/hiar.safetensors` | 0123456789ab | dmd | 400 | feedbeef | c0ffeec0ffee |" in page
    assert "--model hiar=models/hiar.safetensors:hiar" in page and "--teacher models/teacher.safetensors" in page
    assert "--prompts 2" in page and "--frames" not in page
    claims = page[page.index("## Paper claims"):]
    assert rp.CLAIMS_START in claims and rp.CLAIMS_END in claims and "Not filled yet" in claims
    assert "Generated by scripts/results_page.py" in page


def test_page_is_deterministic_and_order_free(tmp_path):
    results = tiny_set()
    page = rp.render(results)
    shuffled = results[:]
    random.Random(0).shuffle(shuffled)
    assert rp.render(shuffled) == page == rp.render(tiny_set())


def test_missed_drift_and_missing_rows(tmp_path):
    results = [result("real", "real", 84, scores(0.9, 0.9, 0.9), (0.0, 0.0)),
               result("hiar", "student", 84, scores(0.1, 0.9, 0.9), (0.3, 0.0), "hiar"),
               result("self-forcing", "student", 84, scores(0.5, 0.5, 0.5), (0.25, 0.0), "self-forcing")]
    page = rp.render(results)
    assert "| Drift Score ≤ Self-Forcing's | 0.300 | 0.250 | missed (by 0.050) |" in page
    assert "| semantic ≥ 0.8 × real clips' | 0.100 | 0.720 (0.8 × 0.900) | missed (by 0.620) |" in page
    assert "2 of 4 targets met." in page
    partial = rp.render(results[:2])
    assert "| Drift Score ≤ Self-Forcing's | – | – | not evaluated |" in partial
    assert "missing: Self-Forcing student" in partial and "2 of 3 evaluated targets met" in partial
    empty = rp.render([])
    assert "No evaluation results yet" in empty and empty.count("not evaluated") == 4
    assert ".venv/bin/python scripts/evaluate_shapes.py   #" in empty  # the default command, no arguments


def test_claims_file_fills_the_marked_section_and_check_mode(tmp_path, capsys):
    folder = write(tmp_path / "results" / "eval", tiny_set())
    (tmp_path / "results" / rp.CLAIMS_FILE).write_text("| claim | ours |\n| --- | --- |\n| x | y |\n")
    page = rp.render_folder(folder)
    start, end = page.index(rp.CLAIMS_START), page.index(rp.CLAIMS_END)
    assert page[start:end].strip().endswith("| x | y |") and "Not filled yet" not in page
    out = tmp_path / "results.md"
    assert rp.main(["--results", str(folder), "--out", str(out)]) == 0 and out.read_text() == page
    assert rp.main(["--results", str(folder), "--out", str(out), "--check"]) == 0
    out.write_text(page + "edited by hand\n")
    assert rp.main(["--results", str(folder), "--out", str(out), "--check"]) == 1


def test_experiments_are_listed_from_their_folders(tmp_path):
    folder = write(tmp_path / "results" / "eval", tiny_set())
    assert "Toward the missed targets" not in rp.render_folder(folder)  # no experiments folder: no section
    exp = write(tmp_path / "results" / rp.EXPERIMENTS / "longer-teacher",
                [result("hiar-t2", "student", 84, scores(0.6, 0.7, 0.5), (0.4, 0.1), "hiar")])
    (exp / "about.txt").write_text("teacher trained twice as long\n")
    write(tmp_path / "results" / rp.EXPERIMENTS / "no-about", [result("x", "teacher", 21, scores(0.1, 0.2, 0.3), None)])
    page = rp.render_folder(folder)
    assert "| longer-teacher | teacher trained twice as long | hiar-t2 (student) | 84 | 2 | 0.600 | 0.700 | 0.500 | 0.600 | 0.400 |" in page
    assert "| no-about | (no about.txt) | x (teacher) | 21 | 2 | 0.100 | 0.200 | 0.300 | 0.200 | – |" in page
    assert page.index("Toward the missed targets") < page.index("## Paper claims")
    other = result("val", "student", 84, scores(0.1, 0.2, 0.3), None, "hiar") | {"prompt_specs": [[777, 0], [777, 1]]}
    assert rp.experiment_rows({"validation": ("other prompts", [other])})[-1].startswith(
        "| validation | other prompts | val (student) | 84 | 2 (seed 777) | 0.100 |")


def test_the_pages_copies_of_the_evaluations_settings_agree_with_it():
    """results_page reads the JSON without importing the evaluator (and torch): its copies must match."""
    ev = load_script("evaluate_shapes")
    assert (rp.SCHEMA, rp.SCORE_KEYS, rp.PROMPT_SEED, rp.DEFAULT_PROMPTS) == \
        (ev.SCHEMA, ev.SCORE_KEYS, ev.PROMPT_SEED, ev.DEFAULT_PROMPTS)
