#!/usr/bin/env bash
# One nncme run over 2 nodes x 4 GPUs with torchrun under SLURM: each rank draws batch / 8
# states per iteration and all ranks make the same optimiser step (nncme.parallel). Rank 0
# writes results/, its log and checkpoints; resume with the same --nodes and --gpus-per-node
# (the checkpoint holds every rank's random stream).
#
#   sbatch examples/slurm_torchrun.sh                 # a fresh run
#   RESUME=--resume sbatch examples/slurm_torchrun.sh # continue it from its last checkpoint
#
#SBATCH --job-name=nncme
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=4

# --rdzv-backend c10d: the ranks meet at the first node; the output directory must be on a
# file system every node sees (non-zero ranks read the checkpoint when they resume).
srun torchrun \
    --nnodes "$SLURM_NNODES" --nproc-per-node 4 \
    --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$head_node:29500" \
    "$(which nncme)" run reaction_diffusion:shape=8x8 \
    --device cuda --batch 32000 --out results/schlogl_8x8 ${RESUME:-}
