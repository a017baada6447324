"""ch-run's command line: parse with click, hand :class:`Options` to the core.

This layer only parses.  Options stop at NEWROOT: everything after it is the
command and its arguments, whatever they look like.  Every way of failing ends
here, as one ``ch-run[PID]: error: …`` line and the documented exit code.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import click

from . import __version__, args, helptext
from .args import Opt
from .errors import ChError, UsageError
from .plan import Options

#: --help and --usage, generated from the option table (see chrun.helptext, which also
#: writes the man page from the same data).
HELP = helptext.help_text(helptext.CH_RUN)
USAGE = helptext.usage_text(helptext.CH_RUN).rstrip("\n")


def fixed_help(text: str) -> type:
    """A click command class whose ``--help`` prints ``text`` as written."""
    class FixedHelpCommand(click.Command):
        def get_help(self, ctx: click.Context) -> str:
            return text.replace("\b\n", "").rstrip("\n")
    return FixedHelpCommand


def usage_option(usage: str):
    """A ``--usage`` option that prints ``usage`` and exits 0 (ch-run's and ch-mpirun's)."""
    def callback(ctx: click.Context, _param, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(usage)
            ctx.exit(0)
    return click.option("--usage", is_flag=True, expose_value=False, is_eager=True,
                        callback=callback)


def print_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(__version__)
        ctx.exit(0)


def _click_param(o: Opt):
    names = [n for n in (o.short, o.long) if n]
    if o.kind in args.ORDERED_KINDS:  # values tagged by tag_argv (order, no value)
        return click.option(*names, o.dest, multiple=True, metavar=o.metavar)
    if o.kind == "multi":
        return click.option(*names, o.dest, multiple=True, metavar=o.metavar)
    if o.kind == "flag":
        return click.option(*names, o.dest, is_flag=True)
    if o.kind == "count":
        return click.option(*names, o.dest, count=True)
    return click.option(*names, o.dest, metavar=o.metavar)


#: The options ch-run shares with ch-mpirun (launch/mpirun.py), informational ones aside,
#: as click parameters built from :data:`chrun.args.RUN_OPTIONS`.
RUN_OPTIONS = tuple(_click_param(o) for o in args.RUN_OPTIONS) + (
    click.argument("args", nargs=-1, type=click.UNPROCESSED),
)


def run_options(f):
    """Decorate a click command with :data:`RUN_OPTIONS` (in their listed order)."""
    for deco in reversed(RUN_OPTIONS):
        f = deco(f)
    return f


make_options = args.make_options


@click.command(cls=fixed_help(HELP), add_help_option=False,
               context_settings={"allow_interspersed_args": False,
                                 "help_option_names": ["-?", "--help"]})
@click.help_option("-?", "--help")
@usage_option(USAGE)
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=print_version)
@run_options
def command(**kw) -> Options:
    return make_options(**kw)


def tag_argv(argv: Sequence[str], cmd: click.Command) -> list:
    """``argv`` with every ``ordered``/``optional`` option's value tagged (see args.tag).

    click keeps no order across options and has no option whose value may only
    follow ``=``, so this walks the options the way click's parser does (a
    value-taking option takes the next word, whatever it is; options stop at
    the first operand or ``--``) and rewrites ``--set-env`` to
    ``--set-env=TAGGED``.  Where the walk meets something it does not know,
    click reports the usage error, so the rest is left as it is.
    """
    takes = {}
    for p in cmd.params:
        if isinstance(p, click.Option):
            for name in p.opts + p.secondary_opts:
                takes[name] = not (p.is_flag or p.count)
    special = {o.long: o.kind for o in args.RUN_OPTIONS if o.kind in args.ORDERED_KINDS}
    out: list = []
    seq, i, n = 0, 0, len(argv)
    while i < n:
        a = argv[i]
        if a == "--" or not a.startswith("-") or a == "-":
            break
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            kind = special.get(name)
            if kind is not None:
                if kind == "optional" or eq:
                    out.append(f"{name}={args.tag(seq, value if eq else None)}")
                elif i + 1 < n:
                    out.append(f"{name}={args.tag(seq, argv[i + 1])}")
                    i += 1
                else:
                    break
                seq += 1
                i += 1
                continue
            if name not in takes:
                break
            out.append(a)
            if takes[name] and not eq and i + 1 < n:
                out.append(argv[i + 1])
                i += 1
            i += 1
            continue
        out.append(a)  # a cluster of short options
        for j in range(1, len(a)):
            t = takes.get("-" + a[j])
            if t is None:
                return out + list(argv[i + 1:])
            if t:
                if j + 1 == len(a) and i + 1 < n:
                    out.append(argv[i + 1])
                    i += 1
                break
        i += 1
    return out + list(argv[i:])


def parse(argv: Sequence[str], prog: str = "ch-run", cmd: Optional[click.Command] = None):
    """What ``cmd`` (default: ch-run's) returns for ``argv``: :class:`Options` for ch-run,
    or None if an informational option (--help...) ran."""
    cmd = command if cmd is None else cmd
    try:
        result = cmd.main(tag_argv(argv, cmd), prog_name=prog, standalone_mode=False)
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


# The entry point: tries the click-free scanner first (see chrun.args).
from .main import main  # noqa: E402


if __name__ == "__main__":
    sys.exit(main())
