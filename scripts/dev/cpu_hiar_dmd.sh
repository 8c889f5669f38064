#!/usr/bin/env bash
# Continue the bundled HiAR student's DMD on the CPU, over as many sittings as it takes: every call
# resumes where the last one stopped (finished trajectory shards are kept, DMD resumes from its last
# checkpoint), and stops cleanly after SECONDS_LEFT seconds.
#
#   RUN=/path/outside/git SECONDS_LEFT=3600 bash scripts/dev/cpu_hiar_dmd.sh
#
# 1. The forward-KL trajectories: 32 of 21 frames from the bundled teacher, in shards of 8 (about
#    19 min a shard on 2 cores: the patch-2 teacher's attention, which runs at the CPU's float32 peak).
# 2. DMD from the bundled raw weights with a fresh critic (a copy of the teacher, so at real_guidance 0
#    the DMD gradient starts near zero, not wrong, until the critic has learnt the student; the
#    forward-KL term acts from the start), STEPS iterations (default 240, 48 generator updates; about
#    40 s an iteration), a checkpoint every 20.
# Then compare checkpoints block by block (results/experiments/ode-init-perturbed-context/per_block.py)
# and bundle the better weights: python scripts/bundle_model.py $RUN/dmd shapes-hiar --raw
# First sitting (results/experiments/dmd-hiar-fresh-critic/): 86 iterations, every checkpoint worse than
# the start. Second (results/experiments/dmd-hiar-low-lr/, run by hand): that run's critic kept, the
# generator's lr at 2e-5: better after 10 iterations, worse again from 20.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:?set RUN to a folder outside the repository}
SECONDS_LEFT=${SECONDS_LEFT:-3600}
HIAR=${HIAR:-.venv/bin/hiar}
deadline=$(( $(date +%s) + SECONDS_LEFT ))
left() { echo $(( deadline - $(date +%s) )); }

if [ ! -f "$RUN/trajectories/manifest.json" ]; then
  timeout "$(left)" $HIAR train configs/shapes/trajectories.yaml \
    --set model.checkpoint=src/hiar/assets/shapes-teacher.safetensors --set device=cpu \
    --set num_samples=32 --set samples_per_shard=8 --set batch_size=8 --set output_dir="$RUN/trajectories" || exit 0
fi
if [ "$(left)" -gt 120 ]; then
  $HIAR train configs/shapes/dmd_hiar.yaml --set device=cpu \
    --set model.checkpoint=src/hiar/assets/shapes-hiar.safetensors \
    --set teacher.checkpoint=src/hiar/assets/shapes-teacher.safetensors \
    --set fkl.trajectories="$RUN/trajectories" --set output_dir="$RUN/dmd" \
    --set steps="${STEPS:-240}" --set checkpoint_every=20 --set keep_checkpoints=12 \
    --set max_seconds="$(( $(left) - 60 ))"
fi
