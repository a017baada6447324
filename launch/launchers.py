"""Which MPI launcher started this rank, read from its environment (pure functions).

Each launcher tells its ranks how many ranks share their node and names the job
in variables of its own:

==========================  ===============================  ==========================
launcher                    ranks on this node               job (tag)
==========================  ===============================  ==========================
Open MPI 5 (prterun)        ``OMPI_COMM_WORLD_LOCAL_SIZE``   ``PMIX_NAMESPACE``
Open MPI 4 (orterun)        ``OMPI_COMM_WORLD_LOCAL_SIZE``   ``PMIX_NAMESPACE``
MPICH hydra (any version)   ``MPI_LOCALNRANKS``              PID of the PMI proxy
Slurm ``srun``              ``SLURM_STEP_TASKS_PER_NODE``    ``SLURM_JOB_ID.SLURM_STEP_ID``
                            (entry ``SLURM_NODEID``)
==========================  ===============================  ==========================

Open MPI sets ``OMPI_VERSION`` from 5.0 on (4.1 does not).  The hydra proxy is
found as the peer of the rank's ``PMI_FD`` socket (``SO_PEERCRED``), so a shell
between proxy and rank does not split the group; the parent PID is the fallback.
The MPI launcher wins over Slurm: ``mpirun`` inside an allocation inherits
Slurm variables that describe the allocation, not this job.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Callable, Mapping, Optional

from chrun.joinconf import count_from_slurm_tasks, count_from_variable, env_number, leading_digits
from chrun.plan import record


class Launcher(record("Launcher", ("name", "family", "version", "local_size",
                                   "size_from", "tag", "tag_from"), "")):
    """What the environment says about the launcher of this rank.

    ``name`` for -v ("Open MPI 5", "MPICH hydra", "Slurm srun", "none"); ``family``
    ("ompi", "hydra", "slurm" or "none"); ``version``: major version where the
    environment tells it, else None; ``local_size``: ranks on this node (1 outside
    any launcher) and ``size_from`` where it came from; ``tag`` names this job on
    this node (None outside any launcher) and ``tag_from`` where it came from.
    (A :func:`chrun.plan.record`, not a dataclass: every rank imports this.)
    """

    __slots__ = ()

    @property
    def reinit_ok(self) -> bool:
        """Known to let a rank initialise MPI, finalise, exec and initialise again.

        Open MPI 5 (PRRTE/PMIx) does; Open MPI 4 refuses a second ``MPI_Init``.
        For hydra it depends on the MPI library (MPICH >= 4.2 keeps ``PMI_FD``
        open across exec; 4.0 closes it), which the environment does not show:
        :mod:`chrun_launch.viampi` checks the library itself.
        """
        if self.family == "ompi":
            return (self.version or 0) >= 5
        return self.family == "hydra"


#: Largest descriptor number PMI_FD may name (the kernel's fd numbers are C ints).
FD_MAX = 2**31 - 1


def _major(text: Optional[str]) -> Optional[int]:
    """Major version from ``5.0.3``-like text (ASCII digits; absurd values are ignored)."""
    digits = leading_digits(text or "")
    return int(digits) if digits and len(digits) <= 6 else None


def detect(env: Mapping[str, str], parent_pid: int,
           pmi_peer: Callable[[str], Optional[int]] = lambda fd: None) -> Launcher:
    """The launcher of this rank.  ``pmi_peer(PMI_FD)`` is the PID at the other end."""
    if "OMPI_COMM_WORLD_LOCAL_SIZE" in env:
        version = _major(env.get("OMPI_VERSION")) or 4
        size = count_from_variable("OMPI_COMM_WORLD_LOCAL_SIZE",
                                   env["OMPI_COMM_WORLD_LOCAL_SIZE"])
        if env.get("PMIX_NAMESPACE"):
            tag, tag_from = "ompi:" + env["PMIX_NAMESPACE"], "$PMIX_NAMESPACE"
        else:
            tag, tag_from = f"ompi-ppid:{parent_pid}", "parent PID"
        return Launcher(f"Open MPI {version}", "ompi", version, size,
                        "$OMPI_COMM_WORLD_LOCAL_SIZE", tag, tag_from)
    if "MPI_LOCALNRANKS" in env:
        size = count_from_variable("MPI_LOCALNRANKS", env["MPI_LOCALNRANKS"])
        if "PMI_FD" in env:
            env_number("PMI_FD", env["PMI_FD"], FD_MAX)   # usage error if not a number
        proxy = pmi_peer(env["PMI_FD"]) if "PMI_FD" in env else None
        if proxy:
            tag, tag_from = f"hydra:{proxy}", "PMI proxy PID (peer of $PMI_FD)"
        else:
            tag, tag_from = f"hydra-ppid:{parent_pid}", "parent PID"
        return Launcher("MPICH hydra", "hydra", None, size, "$MPI_LOCALNRANKS", tag, tag_from)
    if "SLURM_STEP_TASKS_PER_NODE" in env and "SLURM_STEP_ID" in env:
        size = count_from_slurm_tasks(env["SLURM_STEP_TASKS_PER_NODE"], env)
        tag = f"slurm:{env.get('SLURM_JOB_ID', '')}.{env['SLURM_STEP_ID']}"
        return Launcher("Slurm srun", "slurm", None, size,
                        "$SLURM_STEP_TASKS_PER_NODE", tag, "$SLURM_JOB_ID.$SLURM_STEP_ID")
    return Launcher("none", "none", None, 1, "no launcher", None, "no launcher")


def pmi_peer_pid(fd_text: str) -> Optional[int]:
    """PID of the process at the other end of socket ``fd_text`` (hydra's PMI proxy)."""
    import socket

    from chrun.syscalls import peer_credentials
    fd_text = fd_text.strip(" \t")
    if not (fd_text.isascii() and fd_text.isdigit()) or len(fd_text) > 10 \
            or int(fd_text) > FD_MAX:
        return None
    try:
        s = socket.socket(fileno=int(fd_text))
    except (OSError, ValueError, OverflowError):
        return None
    try:
        pid = peer_credentials(s)[0]
    except Exception:  # not a Unix socket, closed, ...: fall back to the parent PID
        pid = 0
    finally:
        s.detach()  # the fd is the rank's: never close it
    return pid or None
