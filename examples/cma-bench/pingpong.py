"""Ping-pong bandwidth between ranks 0 and 1 (mpi4py, plain bytearray buffers).

    mpirun -n 2 python pingpong.py [--iters N] [--warmup N] SIZE...

Rank 0 prints one line per size: ``SIZE MB_PER_S`` (MB = 10**6 bytes; one-way
bandwidth = 2 * SIZE * iters / round-trip time).  Before each size every rank
calls ``chdir("/cma-bench-size/SIZE")``, which fails harmlessly but shows up in
an ``strace -e trace=chdir,...`` log as a marker, so the process_vm_readv calls
that follow can be attributed to that size.  An MPI error aborts the whole job
at once (instead of leaving the peer waiting for the launcher's timeout).
"""

import argparse
import os
import sys

from mpi4py import MPI


def mark(size):
    try:
        os.chdir(f"/cma-bench-size/{size}")
    except OSError:
        pass


def pingpong(comm, size, iters, warmup):
    buf = bytearray(size)
    rank = comm.Get_rank()
    msg = [buf, MPI.BYTE]
    t0 = 0.0
    for i in range(warmup + iters):
        if i == warmup:
            comm.Barrier()
            t0 = MPI.Wtime()
        if rank == 0:
            comm.Send(msg, dest=1, tag=1)
            comm.Recv(msg, source=1, tag=2)
        elif rank == 1:
            comm.Recv(msg, source=0, tag=1)
            comm.Send(msg, dest=0, tag=2)
    return MPI.Wtime() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("sizes", type=int, nargs="+")
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    if comm.Get_size() < 2:
        sys.exit("pingpong.py: needs 2 ranks")
    for size in a.sizes:
        mark(size)
        comm.Barrier()
        dt = pingpong(comm, size, a.iters, a.warmup)
        if comm.Get_rank() == 0:
            print(f"{size} {2 * size * a.iters / dt / 1e6:.1f}", flush=True)
    mark(0)
    comm.Barrier()


if __name__ == "__main__":
    try:
        main()
    except MPI.Exception as x:   # e.g. MPICH's "process_vm_readv failed (errno 1)"
        print(f"pingpong.py: rank {MPI.COMM_WORLD.Get_rank()}: {x}", file=sys.stderr, flush=True)
        MPI.COMM_WORLD.Abort(1)  # end the whole job now, not when the launcher times out
