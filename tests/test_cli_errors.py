"""One line per user error (issue 10, items 14 and 15): a table of bad CLI inputs, each run through
`hiar`'s entry point; each must exit non-zero, print no traceback, and name the input at fault. YAML
numbers as people write them (`1e-5`) are numbers."""

from __future__ import annotations

import shlex
import traceback

import pytest
import torch
import yaml

from hiar.cli.main import main
from tests.helpers import save_toy_checkpoint
from tests.training_helpers import DATA, TINY

PROMPT = "a fast red circle on a dark background"


@pytest.fixture(scope="module")
def files(tmp_path_factory, toy_checkpoint):
    """The inputs the table refers to, as ``{name}`` placeholders."""
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "a-file").write_text("not a folder")
    (root / "a-folder.mp4").mkdir()
    (root / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (root / "truncated.safetensors").write_bytes(toy_checkpoint.read_bytes()[:1000])
    save_toy_checkpoint(root / "nan.safetensors", poison=float("nan"))
    (root / "bad.yaml").write_text("stage: teacher\nsteps: [1, 2\n")
    (root / "list.yaml").write_text("- stage\n- teacher\n")
    teacher = {"stage": "teacher", "model": TINY, "data": DATA, "batch_size": 2, "steps": 2, "checkpoint_every": 1,
               "optimizer": {"lr": 1e-3}, "progress": False, "tensorboard": False, "output_dir": str(root / "run")}
    (root / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    (root / "prompts.txt").write_text(f"{PROMPT}\n")
    (root / "two-prompts.txt").write_text(f"{PROMPT}\n{PROMPT}\n")
    (root / "mauve.txt").write_text("a mauve circle\n")
    (root / "bad-script.txt").write_text("# a prompt script\n0.5: a blue square\nabc: a red circle\n")
    assert main(["generate", PROMPT, "--frames", "12", "-o", str(root / "v.mp4"), "--quiet",
                 "--checkpoint", str(toy_checkpoint)]) == 0
    return {"root": root, "ckpt": toy_checkpoint, **{p.name.replace(".", "_").replace("-", "_"): p for p in root.iterdir()}}


G = f'generate "{PROMPT}" --quiet --frames 3 --checkpoint {{ckpt}}'
GO = G + " -o {root}/out.mp4"
T = "train {teacher_yaml}"

# (command line, a piece of the error line that names the input at fault)
BAD_INPUTS = [
    # hiar generate: numbers
    (f'generate "{PROMPT}" --quiet --checkpoint {{ckpt}} -o {{root}}/o.mp4 --seconds inf', "--seconds must be a positive"),
    (f'generate "{PROMPT}" --quiet --checkpoint {{ckpt}} -o {{root}}/o.mp4 --seconds nan', "--seconds must be a positive"),
    (f'generate "{PROMPT}" --quiet --checkpoint {{ckpt}} -o {{root}}/o.mp4 --seconds 0', "--seconds must be a positive"),
    (f'generate "{PROMPT}" --quiet --checkpoint {{ckpt}} -o {{root}}/o.mp4 --seconds -2', "--seconds must be a positive"),
    (f'generate "{PROMPT}" --quiet --checkpoint {{ckpt}} -o {{root}}/o.mp4 --seconds 0.01', "--seconds 0.01 is less than one frame"),
    (f'generate "{PROMPT}" --quiet --checkpoint {{ckpt}} -o {{root}}/o.mp4 --frames 0', "--frames must be at least 1"),
    (f'generate "{PROMPT}" --quiet --checkpoint {{ckpt}} -o {{root}}/o.mp4 --frames -5', "--frames must be at least 1"),
    (f'generate "{PROMPT}" --quiet --checkpoint {{ckpt}} -o {{root}}/o.mp4 --frames ten', "argument --frames"),
    (GO + " --window 2", "--window must be at least 3"),
    (GO + " --window -1", "--window must be at least 3"),
    (GO + " --sink -1", "--sink must be 0 or more"),
    (GO + " --seed -1", "--seed must be 0 or more"),
    (GO.replace("--frames 3", "--frames 999999999999") + " --window 1000000000", "--window 1000000000 with --sink 0 needs"),
    # hiar generate: output paths (refused before any work)
    (G + " -o {a_file}/x.mp4", "{a_file}: is a file"),
    (G + " -o {a_folder_mp4}", "{a_folder_mp4}: is a folder"),
    (G + " -o {root}/x.avi", "must end in .mp4, got {root}/x.avi"),
    (G + " -o ''", "must end in .mp4, got ''"),
    # hiar generate: device, model, method
    (GO + " --device cuda:99", "--device cuda:99"),
    (GO + " --device gpu0", "--device 'gpu0' is not a device"),
    (f'generate "{PROMPT}" --quiet -o {{root}}/o.mp4 --checkpoint {{root}}/missing.safetensors', "{root}/missing.safetensors"),
    (f'generate "{PROMPT}" --quiet -o {{root}}/o.mp4 --checkpoint {{garbage_safetensors}}', "{garbage_safetensors}"),
    (f'generate "{PROMPT}" --quiet -o {{root}}/o.mp4 --checkpoint {{truncated_safetensors}}', "{truncated_safetensors}"),
    (f'generate "{PROMPT}" --quiet -o {{root}}/o.mp4 --checkpoint {{a_file}}', "{a_file}"),
    (f'generate "{PROMPT}" --quiet -o {{root}}/o.mp4 --checkpoint {{nan_safetensors}}', "model {nan_safetensors}: the output is not finite"),
    (GO + " --method magic", "argument --method"),
    (GO.replace("--frames 3", "--frames 6") + " --method self-forcing --order step_first", "order 'step_first' is invalid"),
    (GO + " --method self-forcing --pipeline", "--pipeline with --method self-forcing: pipelined inference needs hierarchical"),
    (GO + " --method hybrid-blocks --pipeline", "--pipeline with --method hybrid-blocks: pipelined inference needs hierarchical"),
    (GO + " --method hybrid-blocks --first-blocks -1", "--first-blocks must be 0 or more"),
    (GO + " --method hybrid-steps --first-steps 9", "first_steps must be in 0..4"),
    (GO + " --first-steps 2", "--method hiar runs context OUTPUT"),
    (GO + " --init-video {v_mp4} --init-frames 0", "--init-frames must be at least 1"),
    (GO + " --init-frames 4", "give --init-video too"),
    (GO + " --init-image {a_file}", "{a_file}: not a readable image"),
    (GO + " --init-image {root}/missing.png", "image not found: {root}/missing.png (--init-image)"),
    (GO + " --world wan --vae {root} --text-encoder {root}/no-umt5", "text encoder folder not found: {root}/no-umt5"),
    (GO + " --init-video {garbage_safetensors}", "{garbage_safetensors}: not a readable video"),
    (GO + " --method self-forcing --batched", "--batched runs whole anti-diagonals: it needs --order diagonal, and --method self-forcing"),
    (GO.replace(PROMPT, "a fast mauve circle"), "mauve"),
    (GO + " --world wan", "--world wan needs --checkpoint, --vae and --text-encoder"),
    # hiar generate: prompt switching
    (GO + " --prompt-at ten 'a blue square'", "--prompt-at ten: 'ten' is not a number of seconds"),
    (GO + " --prompt-at -1 'a blue square'", "--prompt-at -1: a switch time must be a number of seconds after 0"),
    (GO + " --prompt-at 0 'a blue square'", "--prompt-at 0: a switch time must be a number of seconds after 0"),
    (GO + " --prompt-at 0.5 'a blue square' --prompt-at 0.2 'a red circle'", "--prompt-at 0.2: switch times must increase"),
    (GO + " --prompt-at 0.1 ' '", "--prompt-at 0.1: the prompt is empty"),
    (GO + " --prompt-at 1 'a blue square'", "--prompt-at 1: the video is 0.1875 s long"),
    (GO.replace("--frames 3", "--frames 12") + " --prompt-at 0.2 'a b' --prompt-at 0.21 'a c'", "--prompt-at 0.21: no block starts between"),
    (GO.replace("--frames 3", "--frames 12") + " --prompt-at 0.2 'a fast mauve circle'", "mauve"),
    (GO + " --prompt-script {root}/missing.txt", "prompt script not found: {root}/missing.txt (--prompt-script)"),
    (GO + " --prompt-script {bad_script_txt}", "{bad_script_txt} line 3: 'abc' is not a number of seconds"),
    (GO + " --prompt-script {a_file}", "{a_file} line 1: expected 'seconds: prompt'"),
    (GO + " --prompt-script {bad_script_txt} --prompt-at 1 'a b'", "argument --prompt-at: not allowed with argument --prompt-script"),
    (GO + " --switch keep", "argument --switch"),
    (GO + " --world wan --vae {root}/no-vae --text-encoder {root}/no-umt5", "{root}/no-vae"),
    # hiar train
    ("train {root}/missing.yaml", "{root}/missing.yaml"),
    ("train {root}", "{root}"),
    ("train {bad_yaml}", "{bad_yaml}: not valid YAML"),
    ("train {list_yaml}", "{list_yaml}"),
    (T + " --set steps.x=1", "--set steps.x: steps is 2, not a mapping"),
    (T + " --set model.preset.size=1", "--set model.preset.size: model.preset is 'tiny', not a mapping"),
    (T + " --set optimizer=3", "optimizer: expected a mapping"),
    (T + " --set steps", "--set expects key=value, got 'steps'"),
    (T + " --set optimizer.lr=fast", "optimizer.lr: expected a number, got 'fast'"),
    (T + " --set optimiser.lr=1e-5", "unknown config key 'optimiser'"),
    (T + " --set output_dir={a_file}/run", "{a_file}"),
    (T + " --set device=cuda:99", "device cuda:99"),
    (T + " --set device=gpu0", "device 'gpu0' is not a device"),
    (T + " --set model.preset=huge", "unknown model preset 'huge'"),
    (T + " --overwrite --resume", "--overwrite"),
    # hiar eval
    ("eval drift {root}/missing.mp4 --out {root}/ev", "{root}/missing.mp4"),
    ("eval drift {garbage_safetensors} --out {root}/ev", "{garbage_safetensors}: not a readable video"),
    ("eval drift {v_mp4} --out {a_file}", "{a_file}: is a file"),
    ("eval drift {v_mp4} --out {root}/ev --json {a_folder_mp4}", "{a_folder_mp4}: is a folder"),
    ("eval drift {v_mp4} --out {root}/ev --segments 1", "segments must be >= 2"),
    ("eval drift {v_mp4} --out {root}/ev --segments 100", "too short for 100 segments"),
    ("eval drift {v_mp4} --out {root}/ev --musiq {garbage_safetensors}", "{garbage_safetensors}: not a readable safetensors"),
    ("eval drift {v_mp4} --out {root}/ev --dinov2 {root}/no-dino", "{root}/no-dino"),
    ("eval drift {v_mp4} --out {root}/ev --device cuda:99", "--device cuda:99"),
    ("eval shapes {v_mp4} --out {root}/ev --prompts {root}/missing.txt", "{root}/missing.txt"),
    ("eval shapes {v_mp4} --out {root}/ev --prompts {two_prompts_txt}", "{two_prompts_txt} has 2 prompts for 1 videos"),
    ("eval shapes {v_mp4} --out {root}/ev --prompts {mauve_txt}", "{mauve_txt}, line 1"),
    ("eval shapes {v_mp4} --out {root}/ev --prompts {prompts_txt} --reference-clips 0", "--reference-clips must be >= 1"),
    # hiar demo
    ("demo --frames 2", "--frames must be at least 3"),
    ("demo -o {root}/demo.gif", "must end in .mp4, got {root}/demo.gif"),
    ("demo -o {a_file}/demo.mp4", "{a_file}: is a file"),
]
if not torch.cuda.is_available():
    BAD_INPUTS += [(GO + " --device cuda", "--device cuda: CUDA is not available"),
                   (T + " --set device=cuda", "device cuda: CUDA is not available")]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """`hiar ARGV` in this process: (exit code, everything printed; a traceback if one escaped)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    except BaseException:  # noqa: BLE001 - what a user would see: the traceback
        code, printed = 1, traceback.format_exc()
        captured = capsys.readouterr()
        return code, captured.out + captured.err + printed
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("command, names", BAD_INPUTS, ids=[c for c, _ in BAD_INPUTS])
def test_a_bad_input_is_one_line_naming_it(command, names, files, capsys, monkeypatch):
    monkeypatch.delenv("HIAR_DEBUG", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    argv = [a.format(**files) for a in shlex.split(command)]
    outputs = [files["root"] / "o.mp4", files["root"] / "out.mp4"]
    for out in outputs:
        out.unlink(missing_ok=True)
    code, printed = run_cli(argv, capsys)
    assert code not in (0, None), printed
    assert "Traceback" not in printed, printed
    errors = [line for line in printed.splitlines() if "error:" in line]
    assert len(errors) == 1, printed
    assert names.format(**files) in errors[0], printed
    assert not any(out.exists() for out in outputs)


def test_hiar_debug_keeps_the_traceback(files, capsys, monkeypatch):
    monkeypatch.setenv("HIAR_DEBUG", "1")
    with pytest.raises(ValueError, match="--seconds must be a positive"):
        main(["generate", PROMPT, "--seconds", "inf", "--checkpoint", str(files["ckpt"]), "-o", str(files["root"] / "o.mp4")])


def test_resuming_with_another_model_or_a_truncated_state_is_one_line(tmp_path, capsys, monkeypatch):
    """Run-folder faults of item 14: a resume with another model preset (even with
    --accept-config-changes) and a truncated state.pt."""
    monkeypatch.delenv("HIAR_DEBUG", raising=False)
    config = tmp_path / "teacher.yaml"
    config.write_text(yaml.safe_dump({"stage": "teacher", "model": TINY, "data": DATA, "batch_size": 2, "steps": 2,
                                      "checkpoint_every": 1, "optimizer": {"lr": 1e-3}, "progress": False,
                                      "tensorboard": False, "output_dir": str(tmp_path / "run")}))
    assert run_cli(["train", str(config)], capsys)[0] == 0
    code, printed = run_cli(["train", str(config), "--set", "model.preset=toy", "--set", "model.overrides={}",
                             "--set", "steps=3", "--accept-config-changes"], capsys)
    assert code == 2 and "Traceback" not in printed and printed.count("error:") == 1
    assert "its checkpoints do not fit the model of the new config (model.preset: tiny -> toy" in printed
    assert "config.previous" not in " ".join(p.name for p in (tmp_path / "run").iterdir())  # nothing was recorded
    for step in (tmp_path / "run/checkpoints").glob("step-*"):
        state = step / "state.pt"
        state.write_bytes(state.read_bytes()[:200])
    code, printed = run_cli(["train", str(config), "--set", "steps=3"], capsys)
    assert code == 2 and "Traceback" not in printed and printed.count("error:") == 1
    assert "state.pt is 200 bytes" in printed and str(tmp_path / "run") in printed


# -- 15: YAML numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [("1e-5", 1e-5), ("3e-4", 3e-4), ("3E-4", 3e-4), ("+1e3", 1000.0), ("-2.5e-3", -2.5e-3),
                                         ("1.0e5", 1e5), (".5e1", 5.0), ("1.e-2", 0.01), ("0.5", 0.5), (".5", 0.5),
                                         ("1_000.5", 1000.5), ("2", 2), ("1e", "1e"), ("e5", "e5"), ("1e-5x", "1e-5x")])
def test_yaml_reads_floats_as_people_write_them(text, value):
    from hiar.config import yaml_load

    got = yaml_load(f"lr: {text}")["lr"]
    assert got == value and type(got) is type(value)


def test_a_config_and_set_with_1e_notation_train(tmp_path):
    from hiar.cli.train import parse_overrides
    from hiar.training import load_stage_config

    config = tmp_path / "t.yaml"
    config.write_text(f"stage: teacher\noutput_dir: {tmp_path / 'run'}\noptimizer:\n  lr: 3e-4\n")
    assert load_stage_config(config).optimizer.lr == 3e-4
    overrides = parse_overrides(["optimizer.lr=1e-5", "steps=3"])  # the example in `hiar train --help`
    assert overrides == {"optimizer.lr": 1e-5, "steps": 3}
    assert load_stage_config(config, overrides).optimizer.lr == 1e-5
