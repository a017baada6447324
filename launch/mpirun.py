"""ch-mpirun: every MPI rank of a node in one joined container, each rank exec'ing CMD.

``LAUNCHER … ch-mpirun [--mode=M] [ch-run options] NEWROOT -- CMD [ARG...]``

Each rank finds out how many ranks share its node and a tag that names this
job on this node, then calls :func:`chrun.core.run` as
``ch-run --join-ct=COUNT --join-tag=TAG``: the first rank of the node builds
the container, the others join its namespaces, every rank execs CMD.

Two ways to find COUNT and TAG (``--mode``):

``env``
    From the launcher's variables (:mod:`launch.launchers`): no MPI at all,
    so it works with every MPI, including those that cannot initialise twice
    (Open MPI 4, MPICH with PMI-1 over ``PMI_FD``), and costs nothing.
``mpi4py``
    From MPI itself (:mod:`launch.viampi`): ``COMM_TYPE_SHARED`` split and a
    broadcast tag, in a forked child that finalises before the rank execs.
    Works under launchers whose variables we do not know; only for MPI
    libraries that allow a rank to initialise again (Open MPI >= 5, MPICH >= 4.2).
``auto`` (default, or ``$CH_MPIRUN_MODE``)
    ``env`` when the launcher is recognised (its variables are exact and free,
    and the job then starts as fast as under ``ch-run --join``); ``mpi4py`` for
    an MPI rank of an unrecognised launcher when the library allows it; one
    container per rank outside any launcher.
"""

from __future__ import annotations

import os
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import List, Mapping, Optional

from chrun import args, errors
from chrun.errors import ChError, UsageError, info
from chrun.main import run_cli
from chrun.plan import Options

from . import launchers

MODES = ("auto", "mpi4py", "env")
MODE_VAR = "CH_MPIRUN_MODE"
#: Variables that show an MPI rank even where :mod:`launch.launchers` knows no local size.
RANK_VARS = ("PMIX_RANK", "PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK")

USAGE = "Usage: LAUNCHER ... ch-mpirun [OPTION...] NEWROOT -- CMD [ARG...]"

HELP = f"""{USAGE}

Run each MPI rank as CMD in one container per node made from the image
directory NEWROOT: all ranks of a node share one user and mount namespace
(so cross-memory attach and ptrace work between them).

\b
      --mode=MODE        how to find the ranks of this node: auto (default, or
                         $CH_MPIRUN_MODE), env (launcher variables: Open MPI,
                         MPICH hydra, Slurm) or mpi4py (MPI_Init, split
                         COMM_TYPE_SHARED, MPI_Finalize, then exec; needs an
                         MPI that can initialise again, e.g. Open MPI >= 5,
                         MPICH >= 4.2)
      --join-timeout=S   seconds the ranks of a node may take to meet
                         (default 30, or $CH_RUN_JOIN_TIMEOUT)
  -v, --verbose          say which mode ran and what the container is
\b
ch-run options (see ch-run --help): -b/--bind, -c/--cd, -g/--gid, -u/--uid,
--no-home, -t/--private-tmp, -w/--write. The --join options other than
--join-timeout are ch-mpirun's own business and refused.
\b
  -?, --help             print help and exit
  -V, --version          print version and exit

Exit status: CMD's own; 31 if ch-mpirun fails; 49 if CMD cannot be executed;
64 for usage errors.
"""


#: ch-mpirun's own option, next to ch-run's (chrun.args.RUN_OPTIONS).
MODE_OPTION = args.Opt(None, "--mode", "mode", "value", "MODE")
#: ch-run options that ch-mpirun decides itself.
GROUP_OPTIONS = (("join", "--join"), ("join_ct", "--join-ct"),
                 ("join_tag", "--join-tag"), ("join_pid", "--join-pid"))


def _make(mode: Optional[str], **kw) -> tuple:
    """(mode option, :class:`Options`) from option values, refusing the group options."""
    for name, flag in GROUP_OPTIONS:
        if kw[name]:
            raise UsageError(f"{flag}: ch-mpirun decides the peer group itself")
    return mode, args.make_options(**kw)


def click_command():
    """The click command (help, usage errors): built only when the scanner defers to it."""
    import click

    from chrun import cli

    @click.command(cls=cli.fixed_help(HELP), add_help_option=False,
                   context_settings={"allow_interspersed_args": False})
    @click.help_option("-?", "--help")
    @click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
                  callback=cli.print_version)
    @click.option("--mode", metavar="MODE")
    @cli.run_options
    def command(mode: Optional[str], **kw) -> tuple:
        return _make(mode, **kw)

    return command


def parse(argv: List[str]) -> Optional[tuple]:
    """(mode option, :class:`Options`), or None after --help/--version."""
    values = args.scan(argv, args.RUN_OPTIONS + (MODE_OPTION,))
    if values is None:
        from chrun import cli
        return cli.parse(argv, "ch-mpirun", click_command())
    return _make(**values)


def choose_mode(option: Optional[str], env: Mapping[str, str]) -> str:
    mode = option if option is not None else env.get(MODE_VAR, "auto")
    if mode not in MODES:
        source = "--mode" if option is not None else f"${MODE_VAR}"
        raise UsageError(f"invalid {source}: {mode!r}: must be one of {', '.join(MODES)}")
    return mode


def decide(mode: str, opts: Options, env: Mapping[str, str]) -> Options:
    """``opts`` with the node's peer count and tag filled in (or unjoined)."""
    forced = mode == "mpi4py"
    found = launchers.detect(env, os.getppid(), launchers.pmi_peer_pid)
    is_rank = found.family != "none" or any(v in env for v in RANK_VARS)
    if mode == "auto":
        if found.family != "none":
            mode = "env"
        elif is_rank:
            mode = "mpi4py"
        else:
            info("mode none: no MPI launcher found; running one container, like ch-run")
            return opts
    if mode == "env":
        if found.family == "none":
            raise ChError("--mode=env: no launcher variables found (Open MPI's "
                          "OMPI_COMM_WORLD_LOCAL_SIZE, MPICH hydra's MPI_LOCALNRANKS, "
                          "Slurm's SLURM_STEP_TASKS_PER_NODE)")
        info(f"mode env: launcher {found.name}; {found.local_size} ranks on this node "
             f"(from {found.size_from}); tag {found.tag!r} (from {found.tag_from})")
        _warn_uid(found, opts)
        return _joined(opts, found.local_size, found.tag or "")
    # mpi4py
    # Forced: the user knows the library; auto: only a library known to survive.
    family = None if found.family in ("none", "slurm") else found.family
    from . import viampi  # MPI is imported only on this path
    try:
        group = viampi.node_group(family, force=forced)
    except viampi.Unsupported as x:
        raise ChError(f"mode mpi4py: {x} (use --mode=env)")
    info(f"mode mpi4py: {group.library}; {group.local_size} ranks on this node "
         f"(COMM_TYPE_SHARED split); tag {group.tag!r} (drawn by the node's leader)")
    _warn_uid(found, opts)
    return _joined(opts, group.local_size, group.tag)


def _joined(opts: Options, count: int, tag: str) -> Options:
    return opts._replace(join_ct=str(count), join_tag=tag)


def _warn_uid(found: launchers.Launcher, opts: Options) -> None:
    if found.family == "ompi" and opts.uid is not None and opts.uid != os.geteuid():
        errors.warning(f"--uid={opts.uid} differs from your UID {os.geteuid()}: Open MPI "
                       "may fail to initialise inside (seen with -u 0 and Open MPI 5)")


def main(argv: Optional[List[str]] = None) -> int:
    errors.set_program("ch-mpirun")
    argv = sys.argv[1:] if argv is None else argv

    def options() -> Optional[Options]:
        parsed = parse(argv)
        if parsed is None:
            return None
        mode_opt, opts = parsed
        errors.verbosity = opts.verbose
        return decide(choose_mode(mode_opt, os.environ), opts, os.environ)

    return run_cli(options)


if __name__ == "__main__":
    sys.exit(main())
