"""Render docs/results.md from the evaluation JSON (scripts/evaluate_shapes.py) and nothing else.

    python scripts/results_page.py                 # results/eval/*.json -> docs/results.md
    python scripts/results_page.py --check         # exit 1 when docs/results.md is not what the JSON gives

The page is a pure function of the JSON files (sorted, fixed float formatting, no timestamps), so it
can be checked in CI (tests/test_results_page.py). It holds: a table per video length (mean ± std
over prompts of the shapes scores, and the Drift Score), the normalised drift slopes, the targets of
the HiAR student at 84 frames (semantic, dynamic and quality each at least 0.8 x the real clips',
Drift Score no worse than Self-Forcing's) with met / missed and the margin, links to the PNGs, the
provenance of every row and the commands that reproduce it. "Toward the missed targets" lists the
experiments under ``results/experiments/<name>/`` (each folder: the evaluation JSON of the models it
changed and ``about.txt``, one line saying what changed). The section "Paper claims" is filled from
``results/paper-claims.md`` when that file exists (a later script writes it), else left marked empty.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "hiar-shapes-eval/1"
SCORE_KEYS = ("semantic", "dynamic", "quality", "total")
TARGET_FRAMES = 84
TARGET_RATIO = 0.8
TARGET_KEYS = ("semantic", "dynamic", "quality")
DEFAULT_FRAMES = (84, 336)
DEFAULT_PROMPTS = 32
PROMPT_SEED = 12345  # evaluate_shapes.PROMPT_SEED: the held-out specs are sample_spec((PROMPT_SEED, i))
DEFAULT_LABELS = {"hiar": "hiar", "self-forcing": "self-forcing", "causvid": "causvid"}
CLAIMS_START = "<!-- paper-claims:start -->"
CLAIMS_END = "<!-- paper-claims:end -->"
CLAIMS_FILE = "paper-claims.md"
EXPERIMENTS = "experiments"
SLOT_SHORT = {"quality_musiq": "musiq", "quality_clipiqa": "clipiqa", "coherence_dinov2": "dino",
              "coherence_lpips": "lpips", "saturation": "sat", "sharpness": "sharp", "colour_shift": "colour"}


def load_results(folder: Path) -> list[dict]:
    """Every evaluation JSON in ``folder`` (other JSON files are ignored), sorted by file name."""
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        data = json.loads(p.read_text())
        if isinstance(data, dict) and data.get("schema") == SCHEMA:
            out.append(data)
    return out


def f3(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def pm(stat: dict | None) -> str:
    return "–" if stat is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def ordered(rows: list[dict]) -> list[dict]:
    rank = {"real": 0, "teacher": 1, "student": 2}
    return sorted(rows, key=lambda d: (rank.get(d["kind"], 3), d["label"]))


def describe(d: dict) -> str:
    if d["kind"] == "real":
        return "real clips (reference)"
    if d["kind"] == "teacher":
        return "teacher (bidirectional, 30-step ODE, CFG 3)"
    return f"student, method {d['method']}"


def pick(rows: list[dict], method: str) -> dict | None:
    """The student of ``method``: the one labelled like the method if there is one, else the first by label."""
    found = [d for d in rows if d["kind"] == "student" and d.get("method") == method]
    for d in found:
        if d["label"] == DEFAULT_LABELS.get(method, method):
            return d
    return sorted(found, key=lambda d: d["label"])[0] if found else None


# ---------------------------------------------------------------------------------------- sections
def length_section(frames: int, rows: list[dict], lengths_with_students: list[int], teacher_frames: list[int]) -> list[str]:
    title = f"## {frames} frames" + (" (the teacher's own length)" if any(d["kind"] == "teacher" for d in rows)
                                      and frames not in lengths_with_students else "")
    prompts = sorted({d["num_prompts"] for d in rows})
    lines = [title, "", f"Mean ± std over {', '.join(map(str, prompts))} held-out prompts; scores in [0, 1], higher "
             "is better; Drift Score (weight-free stand-ins), lower is better.", "",
             "| model | what | semantic | dynamic | quality | total | drift |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for d in ordered(rows):
        drift = d["drift"].get("score")
        lines.append(f"| {d['label']} | {describe(d)} | " + " | ".join(pm(d["scores"][k]) for k in SCORE_KEYS)
                     + f" | {pm(drift)} |")
    if frames in lengths_with_students and teacher_frames and frames not in teacher_frames:
        lines += ["", "The teacher is bidirectional and samples its training length only: see the "
                  + " and ".join(f"{f}-frame" for f in teacher_frames) + " table."]
    figs = [f"[contact sheet](results/contact-f{frames}.png)"]
    if any(d["drift"].get("score") is not None for d in rows):
        figs.append(f"[drift statistics per segment](results/drift-f{frames}.png)")
    if any(d.get("segments") for d in rows):
        figs.append(f"[shapes scores per segment](results/shapes-f{frames}.png)")
    lines += ["", "Figures: " + " · ".join(figs) + "."]
    with_drift = [d for d in ordered(rows) if d["drift"].get("score") is not None]
    if with_drift:
        slots = list(with_drift[0]["drift"]["normalised"])
        lines += ["", "Normalised drift slopes (slope per segment / scale, of the per-segment values averaged over "
                  "prompts; the score is the mean of the videos' own scores):", "",
                  "| model | " + " | ".join(SLOT_SHORT.get(s, s) for s in slots) + " |",
                  "| --- | " + " | ".join("---:" for _ in slots) + " |"]
        for d in with_drift:
            lines.append(f"| {d['label']} | " + " | ".join(f"{d['drift']['normalised'][s]:+.2f}" for s in slots) + " |")
    return lines + [""]


def target_rows(results: list[dict]) -> tuple[list[str], str]:
    """The targets of the HiAR student at TARGET_FRAMES: table lines and a one-line verdict."""
    at = [d for d in results if d["frames"] == TARGET_FRAMES]
    real = next((d for d in at if d["kind"] == "real"), None)
    hiar, sf = pick(at, "hiar"), pick(at, "self-forcing")
    missing = [name for name, d in (("real clips", real), ("HiAR student", hiar), ("Self-Forcing student", sf)) if d is None]
    lines = ["| target | HiAR student | threshold | result |", "| --- | ---: | ---: | --- |"]
    met = total = 0
    for k in TARGET_KEYS:
        if hiar is None or real is None:
            lines.append(f"| {k} ≥ {TARGET_RATIO} × real clips' | – | – | not evaluated |")
            continue
        value, ref = hiar["scores"][k]["mean"], real["scores"][k]["mean"]
        threshold = TARGET_RATIO * ref
        ok = value >= threshold
        met += ok
        total += 1
        verdict = f"met (by {value - threshold:.3f})" if ok else f"missed (by {threshold - value:.3f})"
        lines.append(f"| {k} ≥ {TARGET_RATIO} × real clips' | {value:.3f} | {threshold:.3f} "
                     f"({TARGET_RATIO} × {ref:.3f}) | {verdict} |")
    hd = hiar["drift"].get("score") if hiar else None
    sd = sf["drift"].get("score") if sf else None
    if hd is None or sd is None:
        lines.append("| Drift Score ≤ Self-Forcing's | – | – | not evaluated |")
    else:
        ok = hd["mean"] <= sd["mean"]
        met += ok
        total += 1
        verdict = f"met (by {sd['mean'] - hd['mean']:.3f})" if ok else f"missed (by {hd['mean'] - sd['mean']:.3f})"
        lines.append(f"| Drift Score ≤ Self-Forcing's | {hd['mean']:.3f} | {sd['mean']:.3f} | {verdict} |")
    notes = []
    for name, d in (("real clips", real), ("Self-Forcing student", sf)):
        if hiar is not None and d is not None and d["prompts"] != hiar["prompts"]:
            notes.append(f"the {name} were scored on other prompts than the HiAR student: not comparable")
    if missing:
        verdict = f"Not all evaluated yet at {TARGET_FRAMES} frames (missing: {', '.join(missing)}); " \
                  f"{met} of {total} evaluated targets met."
    else:
        verdict = f"{met} of {total} targets met" + (" (all)." if met == total else ".")
    if notes:
        verdict += " Warning: " + "; ".join(notes) + "."
    if hiar is not None:
        verdict += f" HiAR student: `{hiar['label']}`" + (f", Self-Forcing: `{sf['label']}`." if sf else ".")
    return lines, verdict


def provenance(results: list[dict]) -> list[str]:
    lines = ["| model | frames | file | sha256 | stage | steps | trained at | evaluated at |",
             "| --- | ---: | --- | --- | --- | ---: | --- | --- |"]
    for d in sorted(ordered(results), key=lambda d: d["frames"]):
        meta = d.get("model_metadata") or {}
        sha = (d.get("model_sha256") or "")[:12] or "–"
        code = d.get("code") or {}
        commit = (code.get("commit") or "unknown")[:12] + (" (dirty)" if code.get("dirty") else "")
        trained = meta.get("commit")
        lines.append(f"| {d['label']} | {d['frames']} | {('`' + d['model_path'] + '`') if d.get('model_path') else 'rendered by the world'} "
                     f"| {sha} | {meta.get('stage') or '–'} | {meta.get('steps') or '–'} | "
                     f"{str(trained)[:40] if trained else '–'} | {commit} |")
    return lines


def reproduce(results: list[dict]) -> list[str]:
    """The command lines that give these JSON (the defaults when the rows are the default ones)."""
    args = []
    students = sorted({(d["label"], d["model_path"], d["method"]) for d in results if d["kind"] == "student"})
    bundled = all(path == f"src/hiar/assets/shapes-{method}.safetensors" and label == DEFAULT_LABELS.get(method)
                  for label, path, method in students)
    if students and not bundled:
        args += [f"--model {label}={path}:{method}" for label, path, method in students]
    teacher = sorted({d["model_path"] for d in results if d["kind"] == "teacher"})
    if teacher and teacher != ["src/hiar/assets/shapes-teacher.safetensors"]:
        args.append(f"--teacher {teacher[0]}")
    lengths = sorted({d["frames"] for d in results if d["kind"] == "student"} or
                     {d["frames"] for d in results if d["kind"] == "real"} - {21})
    if lengths and tuple(lengths) != DEFAULT_FRAMES:
        args.append("--frames " + " ".join(map(str, lengths)))
    prompts = sorted({d["num_prompts"] for d in results})
    if prompts and prompts != [DEFAULT_PROMPTS]:
        args.append(f"--prompts {prompts[0]}")
    cmd = " ".join([".venv/bin/python scripts/evaluate_shapes.py", *args])
    return ["```bash", f"{cmd}   # resumes: finished (model, length) pairs are skipped", 
            ".venv/bin/python scripts/results_page.py", "```"]


def render(results: list[dict], claims: str | None = None, experiments: dict | None = None) -> str:
    """The page (Markdown) for these evaluation results; ``claims`` fills the "Paper claims" section."""
    lines = ["# Results: the shapes models, measured", "",
             "<!-- Generated by scripts/results_page.py from results/eval/*.json: edit those, not this page. -->", "",
             "Every number here comes from the JSON that `scripts/evaluate_shapes.py` writes: held-out prompts "
             f"(the world's specs `sample_spec(({PROMPT_SEED}, i))`, a seed space disjoint from the training data's), "
             "one sampler seed per prompt, students sampled as `hiar generate` does (their method's sampler, a KV "
             "window of 21 latent frames), the teacher at its own 21 frames, and the world's own rendering of "
             "the same prompts as the reference row. Scores: [docs/metrics.md](metrics.md).", ""]
    lines += ["## Reproduce", "", *reproduce(results), ""]
    if not results:
        lines += ["## Results", "", "No evaluation results yet (no `results/eval/*.json`): run the commands above "
                  "once the bundled models exist.", ""]
    student_lengths = sorted({d["frames"] for d in results if d["kind"] == "student"})
    teacher_lengths = sorted({d["frames"] for d in results if d["kind"] == "teacher"})
    for frames in sorted({d["frames"] for d in results}):
        lines += length_section(frames, [d for d in results if d["frames"] == frames], student_lengths, teacher_lengths)
    table, verdict = target_rows(results)
    lines += [f"## Targets: the HiAR student at {TARGET_FRAMES} frames", "",
              f"Semantic, dynamic and quality each at least {TARGET_RATIO} × the real clips' score; a Drift Score "
              "no worse (no higher) than the Self-Forcing student's. Means over prompts.", "", *table, "", verdict, ""]
    if results:
        backends = sorted({tuple(d["drift"]["backends"].items()) for d in results})
        lines += ["## Provenance", "", *provenance(results), ""]
        for b in backends:
            lines.append("Drift backends: " + ", ".join(f"{SLOT_SHORT.get(k, k)} = {v}" for k, v in b) + ".")
        lines.append("")
    if experiments:
        lines += ["## Toward the missed targets", "",
                  "Each row changes one thing of the recipe (the folder's `about.txt`; JSON under "
                  f"`results/{EXPERIMENTS}/`) and is evaluated like the bundled models above; compare with the rows of the "
                  "models whose recipe it changed (`patch4-models`: the patch-4 recipe, which every row before the "
                  "patch-2 models changed). A row of n prompts holds the first n held-out prompts of the tables "
                  "above (other prompt seeds are named): compare an 8-prompt row with a model's first 8 videos, "
                  "not with its 32-prompt mean.",
                  "", *experiment_rows(experiments), ""]
    body = claims.strip() if claims and claims.strip() else \
        "_Not filled yet._ A later script compares the paper's claims with the numbers above and writes " \
        f"`results/{CLAIMS_FILE}`, which this page includes here."
    lines += ["## Paper claims", "", CLAIMS_START, body, CLAIMS_END, ""]
    return "\n".join(lines)


def load_experiments(folder: Path) -> dict[str, tuple[str, list[dict]]]:
    """``{name: (what changed, evaluation JSON)}`` of every experiment folder under ``folder``."""
    out = {}
    for sub in sorted(p for p in Path(folder).glob("*") if p.is_dir()):
        about = sub / "about.txt"
        out[sub.name] = (about.read_text().strip() if about.is_file() else "(no about.txt)", load_results(sub))
    return out


def prompt_count(d: dict) -> str:
    """How many held-out prompts a row has, with its prompt seed where that is not the tables' own."""
    seeds = sorted({spec[0] for spec in d.get("prompt_specs") or []} - {PROMPT_SEED})
    return f"{len(d['prompts'])}" + (f" (seed {', '.join(map(str, seeds))})" if seeds else "")


def experiment_rows(experiments: dict[str, tuple[str, list[dict]]]) -> list[str]:
    # Rows of 8 and of 32 prompts share this table: the count says which rows compare with which.
    lines = ["| experiment | what changed | model | frames | prompts | semantic | dynamic | quality | total | drift |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, (about, rows) in experiments.items():
        for d in ordered(rows):
            drift = (d["drift"].get("score") or {}).get("mean")
            lines.append(f"| {name} | {about} | {d['label']} ({d['kind']}) | {d['frames']} | {prompt_count(d)} | "
                         + " | ".join(f3(d["scores"][k]["mean"]) for k in SCORE_KEYS) + f" | {f3(drift)} |")
    return lines


def render_folder(folder: Path) -> str:
    folder = Path(folder)
    claims_file = folder.parent / CLAIMS_FILE
    claims = claims_file.read_text() if claims_file.is_file() else None
    return render(load_results(folder), claims, load_experiments(folder.parent / EXPERIMENTS))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(ROOT / "results" / "eval"), help="JSON folder (default: results/eval)")
    p.add_argument("--out", default=str(ROOT / "docs" / "results.md"), help="page (default: docs/results.md)")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 when the page differs")
    args = p.parse_args(argv)
    page = render_folder(Path(args.results))
    return write_page(Path(args.out), page, args.check, f"{len(load_results(Path(args.results)))} result files")


def write_page(out: Path, page: str, check: bool, what: str) -> int:
    """Write ``page`` to ``out``; with ``check``, only compare (exit 1 when they differ)."""
    if check:
        same = out.is_file() and out.read_text() == page
        print(f"{out}: {'up to date' if same else 'differs from what the JSON gives'}")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    print(f"wrote {out} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
