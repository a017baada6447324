#!/usr/bin/env python3
"""Allreduce smoke test for chrun's MPI tests (mpi4py).

Prints one line per rank:
  rank R size S localsize L sum OK|BAD user:<inode> mnt:<inode> host:<hostname>
L is the size of the COMM_TYPE_SHARED split (ranks on this node); the inodes are those of
/proc/self/ns/user and /proc/self/ns/mnt, so joined containers show equal numbers.
Exit status 1 if the allreduce gave a wrong sum.
"""
import os
import socket
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
total = comm.allreduce(rank, op=MPI.SUM)
ok = total == size * (size - 1) // 2
ns = {n: os.stat('/proc/self/ns/' + n).st_ino for n in ('user', 'mnt')}
sys.stdout.write('rank %d size %d localsize %d sum %s user:%d mnt:%d host:%s\n'
                 % (rank, size, local.Get_size(), 'OK' if ok else 'BAD',
                    ns['user'], ns['mnt'], socket.gethostname()))
sys.stdout.flush()
local.Free()
sys.exit(0 if ok else 1)
