"""Cluster handlers (issue 12): the Dask and the Slurm benchmarks from one entry point.

    python benchmarks/cluster.py [dask|slurm|all] [--quick] [--repeats N] [--scheduler-file F]

``dask`` runs ``cluster_dask.py`` (2000 tiny jobs, DaskJobHandler vs raw ``client.submit``
on the same cluster; ~3 min), ``slurm`` runs ``cluster_slurm.py`` (sbatch and accounting
calls for 1000 misses, end to end vs submitit; ~25 min on the CI Slurm), ``all`` (the
default) both in turn; each prints its own table and targets. ``--scheduler-file`` goes to
the Dask part (a CLI-started cluster instead of a LocalCluster). The two scripts also run
on their own: they need different services and differ tenfold in run time.
"""

from __future__ import annotations

import sys

import cluster_dask
import cluster_slurm


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    which = argv[0] if argv and argv[0] in ("dask", "slurm", "all") else "all"
    rest = argv[1:] if argv and argv[0] == which else argv
    if which in ("dask", "all"):
        cluster_dask.main(rest)
    if which in ("slurm", "all"):
        # the Slurm part takes no --scheduler-file
        slurm_args = [a for i, a in enumerate(rest) if a != "--scheduler-file"
                      and not (i and rest[i - 1] == "--scheduler-file")
                      and not a.startswith("--scheduler-file=")]
        cluster_slurm.main(slurm_args)


if __name__ == "__main__":
    main(sys.argv[1:])
