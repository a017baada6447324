#!/usr/bin/env python3
"""MPI_Comm_spawn demo (docs): the parent spawns 2 children and prints the user namespace of
itself and of each child, so one sees whether the children run in the parent's container.

    spawn.py                  spawn this interpreter running this script
    spawn.py --via-ch-run IMG spawn "ch-run --join-pid=PARENT IMG -- <this interpreter>
                              <this script>": the launcher's daemon starts ch-run on the host,
                              which puts the child in the parent's container
"""
import os
import sys

from mpi4py import MPI

if sys.argv[1:] == ["child"]:
    parent = MPI.Comm.Get_parent()
    parent.gather(os.readlink("/proc/self/ns/user"), root=0)
    parent.Disconnect()
else:
    command = [sys.executable, os.path.abspath(__file__), "child"]
    if sys.argv[1:2] == ["--via-ch-run"]:
        command = ["ch-run", f"--join-pid={os.getpid()}", sys.argv[2], "--"] + command
    children = MPI.COMM_SELF.Spawn(command[0], command[1:], maxprocs=2)
    ns = children.gather(None, root=MPI.ROOT)
    print(f"parent {os.readlink('/proc/self/ns/user')} children {' '.join(ns)}", flush=True)
    children.Disconnect()
