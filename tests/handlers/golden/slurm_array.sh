#!/bin/bash
#SBATCH --job-name=hither-42-ab12
#SBATCH --cpus-per-task=4
#SBATCH --array=0-999%28
#SBATCH --output="/shared/hither work/h-1/a00001/%A_%a.log"
#SBATCH --open-mode=append
#SBATCH --partition=debug
#SBATCH --mem=4G

export OMP_NUM_THREADS=4
export MKL_NUM_THREADS=4
export NUMEXPR_NUM_THREADS=4
export NUM_WORKERS=4
export HITHER_SIF_DIR='/shared/sif dir'
exec /opt/py/bin/python3.11 -s -c 'import sys; sys.path.insert(0, sys.argv[1]); from hither.handlers.slurm_node import main; sys.exit(main(sys.argv[2:]))' /home/u/src/hither array '/shared/hither work/h-1' a00001
