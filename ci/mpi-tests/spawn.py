#!/usr/bin/env python3
"""MPI_Comm_spawn demo (docs): the parent spawns 2 children of the same interpreter and
prints the user namespace of each, so you can see whether they run in its container."""
import os
import sys

from mpi4py import MPI

if sys.argv[1:] == ["child"]:
    parent = MPI.Comm.Get_parent()
    parent.gather(os.readlink("/proc/self/ns/user"), root=0)
    parent.Disconnect()
else:
    children = MPI.COMM_SELF.Spawn(sys.executable, [os.path.abspath(__file__), "child"],
                                   maxprocs=2)
    ns = children.gather(None, root=MPI.ROOT)
    print(f"parent {os.readlink('/proc/self/ns/user')} children {' '.join(ns)}", flush=True)
    children.Disconnect()
