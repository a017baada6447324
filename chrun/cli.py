"""ch-run's command line: parse with click, hand :class:`Options` to the core.

This layer only parses.  Options stop at NEWROOT: everything after it is the
command and its arguments, whatever they look like.  Every way of failing ends
here, as one ``ch-run[PID]: error: …`` line and the documented exit code.
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence

import click

from . import __version__, errors
from .errors import ChError, EXIT_USAGE, UsageError
from .plan import Options, parse_command, parse_id

USAGE = "Usage: ch-run [OPTION...] NEWROOT CMD [ARG...]"

HELP = f"""{USAGE}

Run a command in a container made from the unpacked image directory NEWROOT.
Also NEWROOT -- CMD [ARG...].

\b
  -b, --bind=SRC[:DST]   mount SRC at guest DST (default /mnt/0, /mnt/1, etc.)
  -c, --cd=DIR           initial working directory in container
  -g, --gid=GID          run as group GID within container
  -j, --join             use the same container (namespaces) as peer ch-run
                         invocations
      --join-ct=N        number of ch-run peers (implies --join; default: the
                         first of $OMPI_COMM_WORLD_LOCAL_SIZE,
                         $SLURM_STEP_TASKS_PER_NODE, $SLURM_CPUS_ON_NODE)
      --join-tag=TAG     label for ch-run peer group (implies --join; default:
                         $SLURM_STEP_ID, else the parent's PID)
      --join-timeout=S   seconds a peer group may take to fill (default 30,
                         or $CH_RUN_JOIN_TIMEOUT)
      --join-pid=PID     run in the container of running process PID (e.g. to
                         attach a debugger to it)
      --no-home          do not bind-mount your home directory (by default,
                         your home directory is mounted at /home/$USER)
  -t, --private-tmp      use container-private /tmp (by default, /tmp is
                         shared with the host)
  -u, --uid=UID          run as user UID within container
  -v, --verbose          be more verbose (debug if repeated)
  -w, --write            mount image read-write (by default, the image is
                         mounted read-only)
  -?, --help             print help and exit
      --usage            print a short usage message and exit
  -V, --version          print version and exit

Exit status: the command's own; 31 if ch-run fails; 49 if the command cannot
be executed; 64 for usage errors.
"""


class _Command(click.Command):
    def get_help(self, ctx: click.Context) -> str:
        return HELP.replace("\b\n", "").rstrip("\n")


def _print_usage(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(USAGE)
        ctx.exit(0)


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(__version__)
        ctx.exit(0)


#: The options ch-run shares with ch-mpirun (launch/mpirun.py), informational ones aside.
RUN_OPTIONS = (
    click.option("-b", "--bind", "binds", multiple=True, metavar="SRC[:DST]"),
    click.option("-c", "--cd", metavar="DIR"),
    click.option("-g", "--gid", metavar="GID"),
    click.option("-u", "--uid", metavar="UID"),
    click.option("-j", "--join", is_flag=True),
    click.option("--join-ct", metavar="N"),
    click.option("--join-tag", metavar="TAG"),
    click.option("--join-timeout", metavar="SECONDS"),
    click.option("--join-pid", metavar="PID"),
    click.option("--no-home", is_flag=True),
    click.option("-t", "--private-tmp", is_flag=True),
    click.option("-v", "--verbose", count=True),
    click.option("-w", "--write", is_flag=True),
    click.argument("args", nargs=-1, type=click.UNPROCESSED),
)


def run_options(f):
    """Decorate a click command with :data:`RUN_OPTIONS` (in their listed order)."""
    for deco in reversed(RUN_OPTIONS):
        f = deco(f)
    return f


def make_options(args, binds, cd, gid, uid, join, join_ct, join_tag, join_timeout, join_pid,
                 no_home, private_tmp, verbose, write) -> Options:
    """:class:`Options` from the values of :data:`RUN_OPTIONS`."""
    newroot, cmd = parse_command(args)
    if cd is not None and not cd.startswith("/"):
        raise UsageError(f"--cd: {cd!r}: must be an absolute path")
    return Options(
        newroot=newroot, command=cmd, binds=tuple(binds), cd=cd,
        uid=None if uid is None else parse_id(uid, "UID"),
        gid=None if gid is None else parse_id(gid, "GID"),
        join=join, join_ct=join_ct, join_tag=join_tag,
        join_timeout=None if join_timeout is None else _parse_seconds(join_timeout),
        join_pid=None if join_pid is None else _parse_pid(join_pid),
        no_home=no_home, private_tmp=private_tmp, write=write, verbose=verbose)


@click.command(cls=_Command, add_help_option=False,
               context_settings={"allow_interspersed_args": False,
                                 "help_option_names": ["-?", "--help"]})
@click.help_option("-?", "--help")
@click.option("--usage", is_flag=True, expose_value=False, is_eager=True, callback=_print_usage)
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version)
@run_options
def command(**kw) -> Options:
    return make_options(**kw)


def _parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid --join-timeout: {text!r}: not a number of seconds")
    if not (0 < value <= 86400):
        raise UsageError(f"invalid --join-timeout: {text!r}: must be in (0, 86400]")
    return value


def _parse_pid(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not (0 < int(text) < 2**22 + 1):
        raise UsageError(f"invalid --join-pid: {text!r}: not a process ID")
    return int(text)


def parse(argv: Sequence[str], prog: str = "ch-run", cmd: Optional[click.Command] = None):
    """What ``cmd`` (default: ch-run's) returns for ``argv``: :class:`Options` for ch-run,
    or None if an informational option (--help...) ran."""
    cmd = command if cmd is None else cmd
    try:
        result = cmd.main(list(argv), prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as x:
        if x.exit_code:
            raise ChError("exit", x.exit_code)
        return None
    except click.UsageError as x:
        raise UsageError(f"{x.format_message()} (try --help)")
    except click.Abort:
        raise ChError("aborted")
    if isinstance(result, int):  # --help, --usage, --version (click returns 0)
        return None
    return result


def main(argv: Optional[List[str]] = None) -> int:
    try:
        opts = parse(sys.argv[1:] if argv is None else argv)
        if opts is None:
            return 0
        from .core import run
        run(opts)
        raise AssertionError("run() returned")  # pragma: no cover
    except ChError as x:
        errors.error(x.message)
        return x.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
