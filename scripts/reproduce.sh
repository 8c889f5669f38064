#!/usr/bin/env bash
# The paper's claims on the shapes world (Tables 1-3), at one DMD budget for every variant, several seeds.
#
# Every variant starts from the same teacher, trajectories and ODE init (runs/shapes/, made by
# scripts/train_shapes_bundle.sh) and trains with its configs/shapes/dmd_*.yaml budget (400
# iterations, batch 4, lr 1e-4 / 2e-4: about 14 min on 2 CPU cores), changing only what the variant
# tests. Each finished run is evaluated on 32 held-out prompts at 84 and 336 frames
# (scripts/evaluate_shapes.py -> results/repro/<variant>-s<seed>-f<frames>.json); then the sampling
# throughput is measured (benchmarks/sampling.py) and docs/results.md is rebuilt from the JSON
# (scripts/paper_claims.py -> results/paper-claims.md, figures in docs/results/repro/).
#
# Resumes after any interruption (a stopped run continues from its last checkpoint; a finished run or
# an existing JSON is skipped in seconds). COMMIT=1 commits each run's JSON as soon as it exists;
# CLAIMS=0 stops after the runs (e.g. while other runs still train elsewhere); EVAL=0 trains only
# (on a GPU machine, say: copy each run's folder back and evaluate here).
# Usage: bash scripts/reproduce.sh [VARIANT-sSEED ...]   (default: every run below, in this order)
set -euo pipefail
cd "$(dirname "$0")/.."
HIAR=${HIAR:-.venv/bin/hiar}
PY=${PY:-.venv/bin/python}
BASE=${BASE:-runs/shapes}        # teacher, trajectories, ode_init (the bundled students live there too, at the recipe's guidance)
RUNS=${RUNS:-runs/repro}         # the other runs (their weights are not kept in git)
RESULTS=${RESULTS:-results/repro}
COMMIT=${COMMIT:-0}
CLAIMS=${CLAIMS:-1}               # 0: stop after the runs (no throughput, no claims page)
EVAL=${EVAL:-1}                   # 0: train only (e.g. on a GPU machine; evaluate here later)
GUIDANCE=${GUIDANCE:-2.0}         # DMD real_guidance of every run: the published claims ran at 2.0 (the recipe's
                                  # value then; the recipe now uses 0.0), so they stay comparable and reproducible

# variant | config | sampling method | what changes (hiar train --set KEY=VALUE, comma-separated)
# (hiar-discrete-noise: the released code's DMD/critic noise draw, the A/B that picks score_noise's default)
VARIANTS="
self-forcing       dmd_self_forcing self-forcing       -
causvid            dmd_causvid      causvid            -
hiar               dmd_hiar         hiar               -
hiar-input-context dmd_hiar         hiar-input-context method=hiar_input_context
hiar-no-fkl        dmd_hiar         hiar               fkl.weight=0
hiar-causal-fkl    dmd_hiar         hiar               fkl.attention=causal
hiar-discrete-noise dmd_hiar        hiar               score_noise.kind=discrete,score_noise.min_t=0,score_noise.max_t=1,score_noise.min_sigma=0.02,score_noise.max_sigma=0.98
"
# Cheapest information first: the bundled seed-0 runs, one run per ablation, then more seeds.
DEFAULT_RUNS="self-forcing-s0 causvid-s0 hiar-s0 hiar-discrete-noise-s0 hiar-no-fkl-s0 hiar-input-context-s0
hiar-causal-fkl-s0 hiar-s1 self-forcing-s1 causvid-s1 hiar-s2 self-forcing-s2 causvid-s2"
RUN_LIST=${*:-$DEFAULT_RUNS}

field() { echo "$VARIANTS" | awk -v v="$1" -v i="$2" '$1 == v { print $i }'; }

commit() {  # commit what a finished step wrote under results/ (COMMIT=1)
  if [ "$COMMIT" = 1 ] && [ -n "$(git status --porcelain -- "$RESULTS")" ]; then
    git add -- "$RESULTS" && git commit -q -m "results: $1" -- "$RESULTS" && echo "   committed: results: $1"
  fi
}

for input in teacher/model.safetensors trajectories/manifest.json ode_init/model.safetensors; do
  [ -e "$BASE/$input" ] || { echo "reproduce: $BASE/$input is missing; run: bash scripts/train_shapes_bundle.sh teacher_short teacher trajectories ode_init" >&2; exit 2; }
done

if [ "$EVAL" = 1 ]; then
  echo "== real clips ($(date +%H:%M:%S))"
  $PY scripts/evaluate_shapes.py --no-students --no-teacher --frames 84 336 --out "$RESULTS" --no-figures --no-progress
  commit "real clips"
fi

for run in $RUN_LIST; do
  variant=${run%-s*}; seed=${run##*-s}
  config=$(field "$variant" 2); method=$(field "$variant" 3); change=$(field "$variant" 4)
  [ -n "$config" ] && [[ "$seed" =~ ^[0-9]+$ ]] || { echo "reproduce: unknown run '$run' (VARIANT-sSEED; variants: $(echo "$VARIANTS" | awk 'NF {printf "%s ", $1}'))" >&2; exit 2; }
  out=$RUNS/$run
  sets=(--set "output_dir=$out" --set "seed=$seed" --set progress=false --set "real_guidance=$GUIDANCE"
        --set "model.checkpoint=$BASE/ode_init/model.safetensors" --set "teacher.checkpoint=$BASE/teacher/model.safetensors")
  [ "$config" = dmd_hiar ] && sets+=(--set "fkl.trajectories=$BASE/trajectories")
  if [ "$change" != - ]; then IFS=, read -ra kv <<< "$change"; for c in "${kv[@]}"; do sets+=(--set "$c"); done; fi
  if [ "$EVAL" = 1 ] && [ -e "$RESULTS/$run-f84.json" ] && [ -e "$RESULTS/$run-f336.json" ]; then
    echo "== $run: evaluated already ($RESULTS/$run-f{84,336}.json)"; continue
  fi
  echo "== $run: $config ${change/-/(as configured)} ($(date +%H:%M:%S))"
  if [ -e "$out/model.safetensors" ] && [ ! -d "$out/checkpoints" ]; then
    echo "   $out holds a model trained elsewhere (no checkpoints): evaluated as it is"
  else
    $HIAR train "configs/shapes/$config.yaml" "${sets[@]}"
  fi
  [ "$EVAL" = 1 ] || continue
  $PY scripts/evaluate_shapes.py --model "$run=$out/model.safetensors:$method" --no-teacher --no-real \
      --frames 84 336 --out "$RESULTS" --no-figures --no-progress
  if [ "$variant" = self-forcing ] && [ "$seed" = 0 ]; then  # Table 3's "w/o re-training": hierarchical sampling only
    $PY scripts/evaluate_shapes.py --model "self-forcing-sampled-as-hiar-s0=$out/model.safetensors:hiar" --no-teacher \
        --no-real --frames 84 336 --out "$RESULTS" --no-figures --no-progress
  fi
  # Keep the first video (for the contact sheets) of seed 0 at the longest length only: git stays small.
  rm -f "$RESULTS/frames/$run-f84.npz" "$RESULTS/frames/self-forcing-sampled-as-hiar-s0-f84.npz"
  [ "$seed" = 0 ] || rm -f "$RESULTS/frames/$run-f336.npz"
  commit "$run"
done

[ "$CLAIMS" = 1 ] || exit 0

# Table 1: throughput and first-block latency, one run on this machine (random weights: speed does
# not depend on them), with the simulator's 4-device figure.
if [ ! -e "$RESULTS/throughput.json" ]; then
  echo "== throughput ($(date +%H:%M:%S))"
  $PY benchmarks/sampling.py --json "$RESULTS/throughput.json"
  commit "sampling throughput"
fi

echo "== claims ($(date +%H:%M:%S))"
$PY scripts/paper_claims.py --results "$RESULTS"
$PY scripts/results_page.py
echo "== done ($(date +%H:%M:%S)): see docs/results.md"
