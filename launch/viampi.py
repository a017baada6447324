"""The mpi4py path: ask MPI itself which ranks share this node.

A forked child does all the MPI work, so the rank itself never loads the MPI
library and stays single-threaded (``unshare``/``setns`` of a user namespace
fail in a multithreaded process; MPI starts threads).  The child:

1. imports ``mpi4py.MPI`` and, before initialising anything, reads the library
   version: only a library known to let a rank initialise again after
   ``MPI_Finalize`` + ``exec`` goes on (Open MPI >= 5; MPICH >= 4.2, whose PMI
   finalize runs from ``atexit``, which ``exec`` and ``_exit`` skip);
2. ``MPI_Init``, splits ``COMM_WORLD`` by ``COMM_TYPE_SHARED``; the node's
   leader draws a fresh random tag and broadcasts it;
3. ``MPI_Finalize`` and ``_exit``; the rank receives (local size, tag) on a pipe.

The rank then joins its node's group through :mod:`chrun.join` with that
count and tag: one creator per node, the others get its namespace handles.

Under MPICH the rank has told hydra it initialised PMI, so CMD must be an MPI
program (it initialises and finalises again): a rank that exits without that
(``-- true``) makes hydra kill the job.  Measured here, this path also costs
a second MPI start-up (+0.2 s for 8 ranks with MPICH 5, +1.3 s with Open MPI 5),
which is why ``--mode=auto`` takes the launcher's variables where it knows them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Optional

from chrun.errors import ChError


@dataclass(frozen=True)
class NodeGroup:
    local_size: int
    tag: str
    library: str  # first line of MPI_Get_library_version


class Unsupported(Exception):
    """This MPI library cannot be initialised twice by a rank (or mpi4py is missing)."""


def library_reinit_ok(version: str) -> bool:
    """Does the MPI library named by ``MPI_Get_library_version`` survive re-init?"""
    m = re.match(r"Open MPI v([0-9]+)", version)
    if m:
        return int(m.group(1)) >= 5
    m = re.match(r"MPICH Version:\s*([0-9]+)\.([0-9]+)", version)
    if m:
        return (int(m.group(1)), int(m.group(2))) >= (4, 2)
    return False


def library_family(version: str) -> str:
    if version.startswith("Open MPI"):
        return "ompi"
    if version.startswith("MPICH"):
        return "hydra"
    return "other"


def node_group(check_family: Optional[str], force: bool) -> NodeGroup:
    """Local size and a fresh tag from MPI, in a forked child.

    Raises :class:`Unsupported` before any ``MPI_Init`` if the library (or its
    family, when ``check_family`` names the launcher's) is not known to allow
    re-initialisation, unless ``force``; :class:`ChError` if MPI fails.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(r)
        try:
            reply = _child(check_family, force)
        except BaseException as x:  # noqa: BLE001 - everything goes to the parent
            reply = {"error": " ".join(f"{type(x).__name__}: {x}".split()),
                     "unsupported": isinstance(x, (Unsupported, ImportError))}
        try:
            os.write(w, json.dumps(reply).encode())
        finally:
            os._exit(0)  # skip atexit: MPICH's PMI finalize must not close PMI_FD
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    try:
        reply = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        reply = {}
    if "error" in reply:
        if reply.get("unsupported"):
            raise Unsupported(reply["error"])
        raise ChError(f"mpi4py: {reply['error']}")
    if "size" not in reply:
        raise ChError(f"mpi4py: MPI child died ({_status_text(status)})")
    return NodeGroup(int(reply["size"]), str(reply["tag"]), str(reply["library"]))


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _child(check_family: Optional[str], force: bool) -> dict:
    import secrets

    import mpi4py
    mpi4py.rc.initialize = False   # import only: check the library before MPI_Init
    mpi4py.rc.threads = False      # MPI_Init, not MPI_Init_thread(MULTIPLE)
    mpi4py.rc.finalize = False     # we finalise ourselves, then _exit
    from mpi4py import MPI

    library = MPI.Get_library_version().rstrip("\0").splitlines()[0].split(",")[0].strip()
    if not force:
        if not library_reinit_ok(library):
            raise Unsupported(f"{library}: a rank cannot initialise it again after exec")
        if check_family is not None and library_family(library) != check_family:
            raise Unsupported(f"{library}: does not match the launcher ({check_family})")
    MPI.Init()
    world = MPI.COMM_WORLD
    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    tag = local.bcast(secrets.token_hex(12) if local.Get_rank() == 0 else None, root=0)
    size = local.Get_size()
    local.Free()
    MPI.Finalize()
    return {"size": size, "tag": "mpi4py:" + tag, "library": library}
