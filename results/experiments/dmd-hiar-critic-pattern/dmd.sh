#!/bin/bash
# usage: dmd.sh NAME [--set ...]: DMD for HiAR from the bundled student (+10) and its critic, lr 2e-5, one thread
cd /work/main
C=/work/exp/s33/dmd-lowlr/checkpoints/step-0000010
NAME=$1; shift
OMP_NUM_THREADS=${THREADS:-1} exec .venv/bin/hiar train configs/shapes/dmd_hiar.yaml --set device=cpu \
 --set model.checkpoint=$C/generator.safetensors \
 --set teacher.checkpoint=src/hiar/assets/shapes-teacher.safetensors \
 --set critic.checkpoint=$C/critic.safetensors \
 --set optimizer.lr=2.0e-5 --set fkl.trajectories=/work/exp/hiar-cont/trajectories --set output_dir=/work/exp/s35/$NAME \
 --set steps=240 --set checkpoint_every=5 --set keep_checkpoints=40 --set max_seconds=${SECS:-3000} "$@"
