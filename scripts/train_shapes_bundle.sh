#!/usr/bin/env bash
# A shortened shapes recipe that writes the models `hiar generate` uses by default into
# src/hiar/assets/. It keeps the recipe's teacher (3000 steps: 900 were not enough for shapes), and cuts
# the trajectories, ODE init and DMD runs; about 2 h on a 2-core CPU, minutes on a GPU. Every stage
# resumes, so it can be run again after an interruption. The full recipe is in docs/training.md.
# Usage: bash scripts/train_shapes_bundle.sh   (OUT=... to choose the runs folder)
set -euo pipefail
cd "$(dirname "$0")/.."
HIAR=${HIAR:-.venv/bin/hiar}
OUT=${OUT:-runs/bundle}

$HIAR train configs/shapes/teacher.yaml --set steps=3000 --set output_dir=$OUT/teacher
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
