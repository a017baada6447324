"""ch-mpirun: every MPI rank of a node in one joined container, each rank exec'ing CMD.

``LAUNCHER … ch-mpirun [--mode=M] [ch-run options] NEWROOT -- CMD [ARG...]``

Each rank finds out how many ranks share its node and a tag that names this
job on this node, then calls :func:`chrun.core.run` as
``ch-run --join-ct=COUNT --join-tag=TAG``: the first rank of the node builds
the container, the others join its namespaces, every rank execs CMD.

Two ways to find COUNT and TAG (``--mode``):

``env``
    From the launcher's variables (:mod:`chrun_launch.launchers`): no MPI at all,
    so it works with every MPI, including those that cannot initialise twice
    (Open MPI 4, MPICH with PMI-1 over ``PMI_FD``), and costs nothing.
``mpi4py``
    From MPI itself (:mod:`chrun_launch.viampi`): ``COMM_TYPE_SHARED`` split and a
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
#: Variables that show an MPI rank even where :mod:`chrun_launch.launchers` knows no local size.
RANK_VARS = ("PMIX_RANK", "PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_RANK")

#: ch-mpirun's own option, next to ch-run's (chrun.args.RUN_OPTIONS).
MODE_OPTION = args.Opt(
    None, "--mode", "mode", "value", "MODE",
    "how to find the ranks of this node: auto (default, or $CH_MPIRUN_MODE), env (launcher "
    "variables: Open MPI, MPICH hydra, Slurm) or mpi4py (MPI_Init, split COMM_TYPE_SHARED, "
    "MPI_Finalize, then exec; needs an MPI that can initialise again, e.g. Open MPI >= 5, "
    "MPICH >= 4.2)")
#: ch-run options that ch-mpirun decides itself.
GROUP_OPTIONS = (("join", "--join"), ("join_ct", "--join-ct"),
                 ("join_tag", "--join-tag"), ("join_pid", "--join-pid"))
#: ch-run options whose meaning ch-mpirun words its own way in its help.
OWN_WORDING = {
    "join_timeout": "seconds the ranks of a node may take to meet (default 30, or "
                    "$CH_RUN_JOIN_TIMEOUT)",
    "verbose": "say which mode ran, where the rank count and tag came from, and what the "
               "container is (debug if repeated)",
}


def _help_tables() -> tuple:
    """(ch-mpirun's option rows, the ch-run options it passes on unchanged)."""
    group = {name for name, _ in GROUP_OPTIONS}
    own = tuple(o._replace(help=OWN_WORDING[o.dest]) for o in args.RUN_OPTIONS
                if o.dest in OWN_WORDING)
    passed = tuple(o for o in args.RUN_OPTIONS if o.dest not in group and o.dest not in OWN_WORDING)
    return (MODE_OPTION,) + own + args.INFO_OPTIONS, passed


def program():
    """ch-mpirun's documentation: --help, --usage and the man page (see chrun.helptext)."""
    from chrun import helptext
    rows, passed = _help_tables()
    names = ", ".join("/".join(n for n in (o.short, o.long) if n) for o in passed)
    return helptext.Program(
        name="ch-mpirun",
        summary="run each MPI rank in one container per node",
        usage=("LAUNCHER ... ch-mpirun [OPTION...] NEWROOT -- CMD [ARG...]",),
        description=(
            "Run each MPI rank as CMD in one container per node made from the image directory "
            "NEWROOT: all ranks of a node share one user and mount namespace (so cross-memory "
            "attach and ptrace work between them).",
            "LAUNCHER is any MPI launcher (mpirun, mpiexec, srun --mpi=...) on the host. Each "
            "rank finds how many ranks share its node and a tag naming this job on this node "
            "(--mode), then runs as ch-run --join-ct=COUNT --join-tag=TAG: the first rank of "
            "the node builds the container, the others join it, and every rank execs CMD, "
            "whose own MPI_Init then works as on the host.",
            "Dynamic processes (MPI_Comm_spawn) are started by the host launcher's daemon, on "
            "the host and outside any container. To put them in the parent's container, "
            "spawn ch-run --join-pid=PARENT_PID NEWROOT -- TARGET [ARG...]; or run the "
            "launcher itself inside one container (ch-run NEWROOT -- mpirun ...) on one "
            "node; or spawn a target that exists on the host.",
        ),
        options=rows,
        more_options=("ch-run options", passed),
        more_note=f"ch-run options passed on to each rank's ch-run (see ch-run --help): "
                  f"{names}. The --join options other than --join-timeout are ch-mpirun's "
                  f"own business and refused.",
        help_notes=("Exit status: CMD's own; 31 if ch-mpirun fails; 49 if CMD cannot be "
                    "executed; 64 for usage errors.",),
        environment=(
            ("CH_MPIRUN_MODE", "The mode when --mode is not given (default auto)."),
            ("OMPI_COMM_WORLD_LOCAL_SIZE, PMIX_NAMESPACE",
             "Open MPI's rank count on this node and job name (mode env)."),
            ("MPI_LOCALNRANKS, PMI_FD",
             "MPICH hydra's rank count on this node, and the connection to its proxy, whose "
             "PID names the job (mode env)."),
            ("SLURM_STEP_TASKS_PER_NODE, SLURM_NODEID, SLURM_JOB_ID, SLURM_STEP_ID",
             "Slurm's tasks per node, this node's index, job and step (mode env under srun)."),
            ("CH_RUN_JOIN_TIMEOUT", "Seconds the ranks of a node may take to meet (default "
             "30; --join-timeout wins)."),
        ),
        exit_status=(
            "CMD's own: each rank execs CMD.",
            "31: ch-mpirun failed (no launcher found with --mode=env, the ranks did not "
            "meet, the container could not be built).",
            "49: CMD cannot be executed.",
            "64: usage error, including a --join option other than --join-timeout.",
            "Every error is one line on standard error, \"ch-mpirun[PID]: error: WHAT\".",
        ),
        examples=(
            ("Four ranks of Debian's Open MPI 4 in one container, saying what happened:",
             "mpirun --oversubscribe -n 4 ch-mpirun -v /var/tmp/chrun-images/mpi -- "
             "/opt/mpi-tests/allreduce-ompi4"),
            ("MPICH's hydra launcher:",
             "mpiexec.mpich -n 3 ch-mpirun /var/tmp/chrun-images/mpi -- "
             "/opt/mpi-tests/allreduce-mpich4"),
            ("Under Slurm, one container per node of each step:",
             "srun --mpi=pmix -N 2 -n 4 ch-mpirun IMG -- app"),
        ),
        see_also=(("ch-run", 1), ("mpirun", 1), ("mpiexec", 1), ("srun", 1)),
    )


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

    from chrun import helptext
    program_ = program()

    @click.command(cls=cli.fixed_help(helptext.help_text(program_)), add_help_option=False,
                   context_settings={"allow_interspersed_args": False})
    @click.help_option("-?", "--help")
    @cli.usage_option(helptext.usage_text(program_).rstrip("\n"))
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
        return _joined(opts, found.local_size, found.tag or "", found.size_from,
                       found.tag_from)
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
    return _joined(opts, group.local_size, group.tag, "COMM_TYPE_SHARED split",
                   "the node's leader")


def _joined(opts: Options, count: int, tag: str, count_from: str, tag_from: str) -> Options:
    return opts._replace(join_ct=str(count), join_tag=tag, join_ct_from=count_from,
                         join_tag_from=tag_from)


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
