#!/usr/bin/env bash
# Redo the three shapes students from the bundled teacher on one GPU, time-boxed, and put what a later
# CPU session commits into one folder. Written for the project's own short GPU leases (a call of at most
# 10 minutes, 8 files of at most 16 MiB brought back; docs/training.md, "The bundled models"), where
# nothing outside the repo is installed but PyTorch, safetensors, PyYAML and tqdm.
#
#   HIAR_CODE_COMMIT=$(git rev-parse HEAD) TOTAL=540 BACK=/path/to/folder bash scripts/dev/gpu_students.sh
#
# Every stage resumes (runs/p2 stays on a machine that is still warm), so a second call with
# STAGES="dmd_hiar dmd_self_forcing dmd_causvid" continues the DMD runs, and one with STAGES="" EVAL=1
# only evaluates. The students are evaluated from runs/p2/students/, where each DMD run's bundled copy is
# kept: a call re-sends the repository, whose src/hiar/assets/ holds the committed students again.
# Settings (environment):
#   STAGES        default (when unset): trajectories ode_init dmd_hiar dmd_self_forcing dmd_causvid
#   TOTAL         the seconds this call may take; the DMD runs get what is left after the earlier stages,
#                 RESERVE seconds (default 45: exports, archives) and the evaluation's (default: no limit)
#   SAMPLES       trajectories to make (default 320; the bundled models had 160)
#   ODE_STEPS     ODE-init steps at most (default 2000), ODE_SECONDS its time box (default 150)
#   DMD_SECONDS   each DMD stage's time box at most (default 250; the three run side by side)
#   EVAL=1        then evaluate the bundled students at EVAL_FRAMES (default: 84, then 336) frames
#                 (scripts/evaluate_shapes.py), EVAL_SECONDS kept for it out of TOTAL (default 150),
#                 EVAL_ARGS more of its arguments
#   ARGS_trajectories, ARGS_ode_init, ARGS_dmd   more `--set` arguments (the last of a key wins)
#   BACK          the folder for the results, at most 7 files: the three students, the ODE-init model,
#                 and archives of the critics (float16), the logs and the evaluation (default: runs/p2/back)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=runs/p2
BACK=$(mkdir -p "${BACK:-$OUT/back}" && cd "${BACK:-$OUT/back}" && pwd)
STAGES=${STAGES-trajectories ode_init dmd_hiar dmd_self_forcing dmd_causvid}
STUDENTS=$OUT/students
TOTAL=${TOTAL:-0}
EVAL=${EVAL:-0}
RESERVE=$(( ${RESERVE:-45} + (EVAL == 1 ? ${EVAL_SECONDS:-150} : 0) ))
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"

# The bundle script with this lease's settings; DMD_ARGS is set before the DMD stages run.
bundle() {
  HIAR="$PY -m hiar.cli.main" PY=$PY DEVICE=${DEVICE:-cuda} OUT=$OUT PARALLEL_DMD=1 \
    TEACHER=src/hiar/assets/shapes-teacher.safetensors \
    ARGS_trajectories="--set num_samples=${SAMPLES:-320} --set batch_size=32 ${ARGS_trajectories:-}" \
    ARGS_ode_init="--set steps=${ODE_STEPS:-2000} --set batch_size=16 --set max_seconds=${ODE_SECONDS:-150} ${ARGS_ode_init:-}" \
    ARGS_dmd_hiar="$DMD_ARGS" ARGS_dmd_self_forcing="$DMD_ARGS" ARGS_dmd_causvid="$DMD_ARGS" \
    bash scripts/train_shapes_bundle.sh "$@"
}

earlier=() dmd=()
for stage in $STAGES; do
  if [[ $stage == dmd_* ]]; then dmd+=("$stage"); else earlier+=("$stage"); fi
done
DMD_ARGS=""
if [ ${#earlier[@]} -gt 0 ]; then bundle "${earlier[@]}"; fi
if [ ${#dmd[@]} -gt 0 ]; then
  seconds=${DMD_SECONDS:-250}
  if [ "$TOTAL" -gt 0 ]; then
    left=$(( TOTAL - SECONDS - RESERVE - 30 ))  # 30: a DMD run's start (model loads, CUDA) and export
    seconds=$(( left < seconds ? left : seconds ))
  fi
  if [ "$seconds" -gt 0 ]; then
    DMD_ARGS="--set max_seconds=$seconds ${ARGS_dmd:-}"
    echo "== DMD time box: $seconds s each"
    bundle "${dmd[@]}"
    mkdir -p $STUDENTS
    for stage in "${dmd[@]}"; do
      name=${stage#dmd_}
      cp src/hiar/assets/shapes-${name//_/-}.safetensors $STUDENTS/
    done
  else
    echo "== no time left for DMD (TOTAL=$TOTAL, $SECONDS s spent)"
  fi
fi

# What comes back: the bundled students (train_shapes_bundle.sh wrote them), the critics and the
# ODE-init model in float16 (a later session can continue DMD from them), one archive of logs.
$PY - "$OUT" "$BACK" <<'EOF'
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

out, back = Path(sys.argv[1]), Path(sys.argv[2])
def half(src: Path, dst: Path) -> None:
    if src.is_file():
        with safe_open(src, "pt") as f:
            meta = f.metadata()  # the model's config: hiar.checkpoint.load_model reads it back
        save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(src).items()}, dst,
                  metadata=meta)
        print(f"{dst}: {dst.stat().st_size / 2**20:.1f} MiB")
half(out / "ode_init/model.safetensors", back / "ode-init.safetensors")
for stage in ("dmd_hiar", "dmd_self_forcing", "dmd_causvid"):
    half(out / stage / "critic.safetensors", out / f"critic-{stage}.safetensors")
EOF
(cd $OUT && ls critic-*.safetensors >/dev/null 2>&1 && tar czf "$BACK/critics.tgz" critic-*.safetensors) || true
cp $STUDENTS/shapes-{hiar,self-forcing,causvid}.safetensors "$BACK"/ 2>/dev/null || true
logs() {
  tar czf "$BACK/logs.tgz" -C $OUT --exclude='*.safetensors' --exclude='*.pt' --exclude='*.distcp' \
      --exclude='trajectories' --exclude='back' --exclude='eval' .
}
logs

# 84 frames first, archived at once, so a call cut short at 336 still brings the 84-frame table back.
# The three students only (not the hybrid samplings of the HiAR student): on one H200, 84 frames took
# 88 s for five rows, 12.8 s of it HiAR's sampling (2231 s on 2 CPU cores).
if [ "$EVAL" = 1 ]; then
  for frames in ${EVAL_FRAMES:-84 336}; do
    echo "== evaluation at $frames frames ($SECONDS s spent)"
    $PY scripts/evaluate_shapes.py --no-real --no-teacher --device ${DEVICE:-cuda} --no-figures --no-progress \
        --model hiar=$STUDENTS/shapes-hiar.safetensors:hiar \
        --model self-forcing=$STUDENTS/shapes-self-forcing.safetensors:self-forcing \
        --model causvid=$STUDENTS/shapes-causvid.safetensors:causvid \
        --frames $frames --out $OUT/eval --force ${EVAL_ARGS:-}
    tar czf "$BACK/eval.tgz" -C $OUT eval
  done
  logs
fi
echo "== done in $SECONDS s"
ls -la "$BACK"
