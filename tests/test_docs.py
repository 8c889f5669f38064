"""Every code snippet in README.md and docs/*.md works as written (issue 10, item 16).

How each fenced block is checked:

* ``python``: executed, in a fresh namespace, from an empty temporary folder.
* ``bash`` / ``sh``: ``bash -n`` (syntax), then each command by what it is, without running the
  heavy ones (they train for hours or render long videos):

  - ``hiar ...`` and ``torchrun ... -m hiar.cli.main ...``: parsed by hiar's own argument parser, so
    every flag and choice exists; a ``hiar train CONFIG`` must name a config file that loads;
  - ``python scripts/X.py`` (also ``.venv/bin/python``): the script exists and ``--help`` works;
  - ``make TARGET``: the Makefile has the target;
  - ``python3 -m venv`` / ``pip install``: syntax only (they would install packages).

* ``text``: output or a synopsis, not run. A block without a language fails the test: label it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)


def snippets(kind: set[str] | None = None) -> list[tuple[str, str, str]]:
    """(where, language, code) of every fenced block of the docs."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            line = text[: m.start()].count("\n") + 1
            if kind is None or m.group(1) in kind:
                found.append((f"{doc.relative_to(ROOT)}:{line}", m.group(1), m.group(2)))
    return found


def commands(code: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, comments dropped, split at && and ;."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        current: list[str] = []
        for word in words + ["&&"]:
            if word in ("&&", ";", "||"):
                if current:
                    out.append(shlex.join(current))
                current = []
            else:
                current.append(word)
    return out


def test_every_block_says_its_language():
    unlabelled = [where for where, lang, _ in snippets() if not lang]
    assert not unlabelled, f"label these code blocks (python, bash, sh or text): {unlabelled}"
    assert {lang for _, lang, _ in snippets()} <= {"python", "bash", "sh", "text"}


@pytest.mark.parametrize("where, code", [(w, c) for w, _, c in snippets({"python"})], ids=lambda v: v if ":" in v else "")
def test_python_snippets_run_as_written(where, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__snippet__"})  # noqa: S102 - our own docs


def check_hiar(argv: list[str], where: str) -> None:
    from hiar.cli.main import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"{where}: `hiar {shlex.join(argv)}` does not parse (exit {err.code})")
    if args.command == "train":
        from hiar.training import load_stage_config

        overrides = dict(item.split("=", 1) for item in args.set or [])
        load_stage_config(ROOT / args.config, overrides)  # the config file exists and is valid


def check_script(argv: list[str], where: str) -> None:
    script = ROOT / argv[0]
    assert script.is_file(), f"{where}: no script {argv[0]}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{where}: `{argv[0]} --help` failed: {done.stderr[-2000:]}"


def check_command(command: str, where: str) -> str:
    """Check one command; returns how it was checked (or fails)."""
    argv = shlex.split(command)
    while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0], re.S):  # leading VAR=value settings
        argv = argv[1:]
    exe = Path(argv[0]).name
    if exe == "hiar":
        check_hiar(argv[1:], where)
        return "parsed"
    if exe == "torchrun":
        assert "-m" in argv and argv[argv.index("-m") + 1] == "hiar.cli.main", f"{where}: {command}"
        check_hiar(argv[argv.index("-m") + 2:], where)
        return "parsed"
    if exe in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
        check_script(argv[1:], where)
        return "--help"
    if exe == "bash" and len(argv) > 1 and argv[1].endswith(".sh"):
        script = ROOT / argv[1]
        assert script.is_file(), f"{where}: no script {argv[1]}"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, f"{where}: {argv[1]} does not parse"
        return "bash -n (it trains for hours)"
    if exe == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert argv[1] in targets, f"{where}: the Makefile has no target {argv[1]}"
        return "make target"
    if exe in ("python", "python3") and argv[1:3] == ["-m", "venv"] or exe == "pip":
        return "syntax only (installs packages)"
    pytest.fail(f"{where}: no rule to check `{command}`: add one to tests/test_docs.py")


@pytest.mark.parametrize("where, code", [(w, c) for w, _, c in snippets({"bash", "sh"})], ids=lambda v: v if ":" in v else "")
def test_shell_snippets_parse_and_name_real_things(where, code):
    syntax = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
    assert syntax.returncode == 0, f"{where}: {syntax.stderr}"
    for command in commands(code):
        check_command(command, where)
