#!/bin/bash
#SBATCH --job-name=hither-42-ab12
#SBATCH --cpus-per-task=1
#SBATCH --time=4
#SBATCH --array=0-0
#SBATCH --output="/shared/hither work/h-1/a00002/%A_%a.log"
#SBATCH --open-mode=append

export OMP_NUM_THREADS=1
export MKL_NUM_THREADS=1
export NUMEXPR_NUM_THREADS=1
export NUM_WORKERS=1
export HITHER_SIF_DIR='/shared/sif dir'
exec /opt/py/bin/python3.11 -s -c 'import sys; sys.path.insert(0, sys.argv[1]); from hither.handlers.slurm_node import main; sys.exit(main(sys.argv[2:]))' /home/u/src/hither array '/shared/hither work/h-1' a00002
