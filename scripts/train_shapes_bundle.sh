#!/usr/bin/env bash
# The shapes recipe end to end, and the bundled models: every stage of configs/shapes/ in order, each
# finished stage copied to src/hiar/assets/ (float16, with its config and commit in the metadata).
# About 2 h on a 2-core CPU (benchmarks/training.py prints the recipe total), minutes on a GPU.
# Every stage resumes from its last checkpoint and a finished one is skipped in seconds, so running
# this again after an interruption continues where it stopped.
# Usage: bash scripts/train_shapes_bundle.sh [STAGE ...]   (default: all; OUT=runs/shapes to move the runs)
#   DEVICE=cuda          every stage's device (default: the configs' auto);
#   ARGS_<stage>="..."   more arguments for one stage, e.g. the patch-2 model (docs/training.md):
#                        ARGS_teacher_short="--set model.preset=toy-p2 --set batch_size=128 --set optimizer.lr=2e-3"
#   PARALLEL_DMD=1       the DMD stages side by side (a GPU has room for all three; each logs to OUT/<stage>.log).
#   TEACHER=PATH         the teacher the later stages read (default: OUT/teacher/model.safetensors), e.g. the
#                        bundled one to redo the students alone: TEACHER=src/hiar/assets/shapes-teacher.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."
HIAR=${HIAR:-.venv/bin/hiar}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/shapes}
STAGES=${*:-teacher_short teacher trajectories ode_init dmd_hiar dmd_self_forcing dmd_causvid}
TEACHER=${TEACHER:-$OUT/teacher/model.safetensors}

# Where each stage reads its inputs, relative to $OUT (the configs say runs/shapes/...).
paths() {
  case $1 in
    teacher) echo --set model.checkpoint=$OUT/teacher_short/model.safetensors ;;
    trajectories) echo --set model.checkpoint=$TEACHER ;;
    ode_init) echo --set model.checkpoint=$TEACHER --set trajectories=$OUT/trajectories ;;
    dmd_hiar) echo --set model.checkpoint=$OUT/ode_init/model.safetensors --set teacher.checkpoint=$TEACHER \
                   --set fkl.trajectories=$OUT/trajectories ;;
    dmd_*) echo --set model.checkpoint=$OUT/ode_init/model.safetensors --set teacher.checkpoint=$TEACHER ;;
  esac
}
# The bundled name of each stage's model (stages not listed are not bundled).
bundle_name() {
  case $1 in
    teacher) echo shapes-teacher ;;
    dmd_hiar) echo shapes-hiar ;;
    dmd_self_forcing) echo shapes-self-forcing ;;
    dmd_causvid) echo shapes-causvid ;;
  esac
}

run_stage() {
  local stage=$1 extra
  extra=$(eval echo "\${ARGS_$stage:-}")
  $HIAR train configs/shapes/$stage.yaml --set output_dir=$OUT/$stage --set progress=false \
      ${DEVICE:+--set device=$DEVICE} $(paths $stage) $extra
  name=$(bundle_name $stage)
  if [ -n "$name" ]; then $PY scripts/bundle_model.py $OUT/$stage $name; fi
}

pids=()
for stage in $STAGES; do
  echo "== $stage ($(date +%H:%M:%S))"
  if [ "${PARALLEL_DMD:-0}" = 1 ] && [[ $stage == dmd_* ]]; then
    mkdir -p $OUT; run_stage $stage > $OUT/$stage.log 2>&1 &
    pids+=($!)
  else
    run_stage $stage
  fi
done
for pid in "${pids[@]}"; do wait $pid; done  # set -e: a failed DMD stage fails the script
echo "== done ($(date +%H:%M:%S)); bundled: $(ls src/hiar/assets/*.safetensors 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
