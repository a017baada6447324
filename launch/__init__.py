"""ch-mpirun: start MPI ranks in one joined container per node."""
