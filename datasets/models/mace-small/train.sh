#!/usr/bin/env bash
# Train the small distilled MACE (ScaleShiftMACE) on CHGNet-labelled near-equilibrium data with mace's own
# training entry point; resumable (--restart_latest). Run from a work folder:
#   OMP_NUM_THREADS=1 python datasets/models/mace-small/make_data.py --out train.extxyz
#   OMP_NUM_THREADS=1 nohup bash datasets/models/mace-small/train.sh train.extxyz > train.log 2>&1 &
# The model lands in ./mace-small.model (float64 copy: ./mace-small_compiled.model is not used by calib).
set -euo pipefail
TRAIN=${1:-train.extxyz}
EPOCHS=${EPOCHS:-40}
mace_run_train \
  --name mace-small --seed 0 --device cpu --default_dtype float32 \
  --train_file "$TRAIN" --valid_fraction 0.05 \
  --energy_key REF_energy --forces_key REF_forces --stress_key REF_stress \
  --model ScaleShiftMACE --num_channels 16 --max_L 0 --num_interactions 2 --correlation 2 \
  --r_max 5.0 --num_radial_basis 8 --MLP_irreps 16x0e \
  --E0s average --scaling rms_forces_scaling \
  --loss weighted --energy_weight 1.0 --forces_weight 10.0 \
  --batch_size 16 --valid_batch_size 32 --lr 0.01 --max_num_epochs "$EPOCHS" --patience 10 --eval_interval 1 \
  --ema --ema_decay 0.99 \
  --restart_latest --save_cpu \
  --model_dir . --checkpoints_dir checkpoints --results_dir results --log_dir logs
