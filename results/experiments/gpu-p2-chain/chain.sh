#!/usr/bin/env bash
# GPU job 4: the patch-2 recipe end to end (docs/training.md's command), every stage time-boxed;
# brings back each stage's model (float16) as soon as it exists, and a tar of the logs and configs.
# TS, TT, TO, TD: max_seconds of teacher_short, teacher, ode_init, each DMD stage. TOTAL: hard deadline.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HIAR_CODE_COMMIT=${HIAR_CODE_COMMIT:-unknown} OMP_NUM_THREADS=2
export HIAR=$PWD/.gpu/hiar PY=${PY:-python3}
T0=$(date +%s); TOTAL=${TOTAL:-560}; O=${OUT:-/tmp/out}; mkdir -p $O; R=${RUNS:-runs/p2}
DEV=${DEV:-cuda}; W=${WORKERS:-4}; INIT=${INIT:-results/experiments/gpu-sweep-p2/teacher-short-p2-l8-cpu1f.safetensors}
el() { echo $(( $(date +%s) - T0 )); }
rm -rf $R; mkdir -p $R
[ $DEV = cuda ] && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
pack() {  # the logs, configs and log.jsonl of every stage, and each finished model in float16
  for s in teacher_short teacher ode_init; do
    [ -f $R/$s/model.safetensors ] && [ ! -f $O/$s.safetensors ] && $PY .gpu/fp16.py $R/$s/model.safetensors $O/$s.safetensors
  done
  for a in shapes-teacher shapes-hiar shapes-self-forcing shapes-causvid; do
    [ -f src/hiar/assets/$a.safetensors ] && [ src/hiar/assets/$a.safetensors -nt .gpu/chain.sh ] && cp src/hiar/assets/$a.safetensors $O/
  done
  tar czf $O/logs.tgz $R/*.log $R/*/config.yaml $R/*/log.jsonl $R/trajectories/manifest.json 2>/dev/null
}
( DEVICE=$DEV OUT=$R PARALLEL_DMD=1 HIAR=$HIAR PY=$PY \
  ARGS_teacher_short="--set model.preset=null --set model.checkpoint=$INIT --set batch_size=128 --set optimizer.lr=2e-3 --set optimizer.warmup_steps=20 --set data.seed=11 --set data.workers=$W --set max_seconds=${TS:-120} --set log_every=50 ${XS:-}" \
  ARGS_teacher="--set batch_size=16 --set data.workers=$W --set max_seconds=${TT:-120} --set log_every=50 ${XT:-}" \
  ARGS_trajectories="${XJ:-}" \
  ARGS_ode_init="--set max_seconds=${TO:-50} --set log_every=50" \
  ARGS_dmd_hiar="--set max_seconds=${TD:-140} --set log_every=20" ARGS_dmd_self_forcing="--set max_seconds=${TD:-140} --set log_every=20" \
  ARGS_dmd_causvid="--set max_seconds=${TD:-140} --set log_every=20" \
  bash scripts/train_shapes_bundle.sh ${STAGES:-} > $R/chain.log 2>&1 ) &
P=$!
while kill -0 $P 2>/dev/null && [ $(el) -lt $((TOTAL - 15)) ]; do sleep 3; done
if kill -0 $P 2>/dev/null; then echo "deadline at $(el) s: stopping"; pkill -TERM -f "hiar.cli.main" ; sleep 5; fi
pack
grep -h '"sec_per_step"' $R/*/log.jsonl | tail -n 0
for s in teacher_short teacher trajectories ode_init dmd_hiar dmd_self_forcing dmd_causvid; do
  [ -f $R/$s/log.jsonl ] && echo "$s: $(tail -1 $R/$s/log.jsonl | cut -c1-300)"
done
tail -25 $R/chain.log; for f in $R/dmd_*.log; do echo "== $f"; tail -3 $f; done
ls -la $O; echo "done at $(el) s"
