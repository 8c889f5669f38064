#!/usr/bin/env bash
# The shapes recipe end to end, and the bundled models: every stage of configs/shapes/ in order, each
# finished stage copied to src/hiar/assets/ (float16, with its config and commit in the metadata).
# About 2 h on a 2-core CPU (benchmarks/training.py prints the recipe total), minutes on a GPU.
# Every stage resumes from its last checkpoint and a finished one is skipped in seconds, so running
# this again after an interruption continues where it stopped.
# Usage: bash scripts/train_shapes_bundle.sh [STAGE ...]   (default: all; OUT=runs/shapes to move the runs)
set -euo pipefail
cd "$(dirname "$0")/.."
HIAR=${HIAR:-.venv/bin/hiar}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/shapes}
STAGES=${*:-teacher_short teacher trajectories ode_init dmd_hiar dmd_self_forcing dmd_causvid}

# Where each stage reads its inputs, relative to $OUT (the configs say runs/shapes/...).
paths() {
  case $1 in
    teacher) echo --set model.checkpoint=$OUT/teacher_short/model.safetensors ;;
    trajectories) echo --set model.checkpoint=$OUT/teacher/model.safetensors ;;
    ode_init) echo --set model.checkpoint=$OUT/teacher/model.safetensors --set trajectories=$OUT/trajectories ;;
    dmd_hiar) echo --set model.checkpoint=$OUT/ode_init/model.safetensors --set teacher.checkpoint=$OUT/teacher/model.safetensors \
                   --set fkl.trajectories=$OUT/trajectories ;;
    dmd_*) echo --set model.checkpoint=$OUT/ode_init/model.safetensors --set teacher.checkpoint=$OUT/teacher/model.safetensors ;;
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

for stage in $STAGES; do
  echo "== $stage ($(date +%H:%M:%S))"
  $HIAR train configs/shapes/$stage.yaml --set output_dir=$OUT/$stage --set progress=false $(paths $stage)
  name=$(bundle_name $stage)
  if [ -n "$name" ]; then $PY scripts/bundle_model.py $OUT/$stage $name; fi
done
echo "== done ($(date +%H:%M:%S)); bundled: $(ls src/hiar/assets/*.safetensors 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
