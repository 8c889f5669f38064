#!/usr/bin/env bash
# The short shapes recipe that produced the bundled models in src/hiar/assets/ (about an hour on a
# 2-core CPU). The full recipe (configs/shapes/*.yaml at their own step counts, docs/training.md)
# trains longer; this one is cut to fit a single working session. Usage: bash scripts/train_shapes_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HIAR=${HIAR:-.venv/bin/hiar}
OUT=${OUT:-runs/bundle}

$HIAR train configs/shapes/teacher.yaml --set steps=900 --set output_dir=$OUT/teacher
$HIAR train configs/shapes/trajectories.yaml --set num_samples=96 --set ode_steps=30 \
    --set model.checkpoint=$OUT/teacher/model.safetensors --set output_dir=$OUT/trajectories
$HIAR train configs/shapes/ode_init.yaml --set steps=500 --set model.checkpoint=$OUT/teacher/model.safetensors \
    --set trajectories=$OUT/trajectories --set output_dir=$OUT/ode_init
for method in hiar self_forcing; do
  $HIAR train configs/shapes/dmd_$method.yaml --set steps=250 --set checkpoint_every=125 \
      --set model.checkpoint=$OUT/ode_init/model.safetensors --set teacher.checkpoint=$OUT/teacher/model.safetensors \
      --set output_dir=$OUT/dmd_$method $( [ $method = hiar ] && echo --set fkl.trajectories=$OUT/trajectories )
done
mkdir -p src/hiar/assets
cp $OUT/dmd_hiar/model.safetensors src/hiar/assets/shapes-hiar.safetensors
cp $OUT/dmd_self_forcing/model.safetensors src/hiar/assets/shapes-self-forcing.safetensors
echo "bundled: src/hiar/assets/shapes-{hiar,self-forcing}.safetensors"
