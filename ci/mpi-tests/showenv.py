#!/usr/bin/env python3
"""Print the launcher-related environment of this rank, one VAR=value per line, sorted.
Does not initialise MPI. Used to document what each launcher sets (ci/mpi-stacks.md)."""
import os
import re

PAT = re.compile(r'^(OMPI_|PMIX|PRTE|PMI_|MPI_|MPIR_|HYDRA|HYDI|OPAL_|ORTE_|I_MPI|SLURM_|FI_|UCX_)')
for k in sorted(os.environ):
    if PAT.match(k):
        print('%s=%s' % (k, os.environ[k]))
