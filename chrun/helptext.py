"""``--help`` and the man pages, both generated from the option tables.

Each program (ch-run here, ch-mpirun in ``launch/mpirun.py``) is a :data:`Program`: its
usage, a description, its option rows (:class:`chrun.args.Opt`, each with its ``help``
text), and the sections only a man page has (environment, exit status, examples, see
also).  :func:`help_text` makes ``--help`` from it and :func:`man_page` the roff source of
the ``NAME(1)`` page, so the two cannot disagree; a new row in
:data:`chrun.args.RUN_OPTIONS` needs only its help text to appear in both.

``python -m chrun.helptext DIR`` writes ``ch-run.1`` and ``ch-mpirun.1`` into DIR (the
build does it, see ``setup.py``; the wheel installs them in ``share/man/man1``).  No click
and nothing outside the standard library here: ``setup.py`` imports this module from the
source tree.
"""

from __future__ import annotations

import sys
import textwrap

from . import __version__
from .args import INFO_OPTIONS, RUN_OPTIONS, Opt
from .plan import record

WIDTH = 78     # of --help lines
COLUMN = 25    # where an option's text starts in --help

Program = record(
    "Program", ("name", "summary", "usage", "description", "options"),
    """One command's documentation.

    ``name``; ``summary`` (the man page's NAME line); ``usage`` (synopsis lines, without
    "Usage: "); ``description`` (paragraphs; the first one is also in --help); ``options``
    (a tuple of :class:`chrun.args.Opt` rows, in order).  Optional: ``more_options`` (a title
    and rows listed after the options, e.g. ch-run options that ch-mpirun passes on; --help
    shows only their names), ``more_note`` (--help's one paragraph about those),
    ``help_notes`` (further --help paragraphs, e.g. the exit status), ``environment``
    ((NAME, text) pairs), ``exit_status``, ``examples`` ((explanation, command) pairs),
    ``see_also``.""",
    more_options=None, more_note="", help_notes=(), environment=(), exit_status=(),
    examples=(), see_also=())


def option_label(o: Opt) -> str:
    """``-b, --bind=SRC[:DST]`` or ``    --no-home`` (short form column kept)."""
    short = f"{o.short}, " if o.short else "    "
    if o.metavar and o.kind == "optional":   # a value only as --opt=VALUE, and optional
        return short + o.long + f"[={o.metavar}]"
    return short + o.long + (f"={o.metavar}" if o.metavar else "")


def option_rows(options) -> str:
    lines = []
    for o in options:
        label = "  " + option_label(o)
        text = textwrap.wrap(o.help or "", WIDTH - COLUMN, break_on_hyphens=False) or [""]
        if len(label) > COLUMN - 2:
            lines.append(label)
        else:
            lines.append(label.ljust(COLUMN) + text.pop(0))
        lines.extend(" " * COLUMN + t for t in text)
    return "\n".join(line.rstrip() for line in lines)


def fill(text: str) -> str:
    return textwrap.fill(text, WIDTH, break_on_hyphens=False)


def help_text(p: Program) -> str:
    """What ``NAME --help`` prints."""
    parts = ["\n".join(("Usage: " if i == 0 else "       ") + u for i, u in enumerate(p.usage)),
             fill(p.description[0]), option_rows(p.options)]
    if p.more_note:
        parts.append(fill(p.more_note))
    parts.extend(fill(n) for n in p.help_notes)
    return "\n\n".join(parts) + "\n"


def usage_text(p: Program) -> str:
    """What ``NAME --usage`` prints."""
    return "\n".join(("Usage: " if i == 0 else "       ") + u for i, u in enumerate(p.usage)) + "\n"


# ---- roff -----------------------------------------------------------------------------------

def roff(text: str) -> str:
    """Plain text as roff: backslashes, hyphens (minus signs, so options can be searched and
    copied), and control characters at the start of a line escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def _roff_words(text: str) -> str:
    """Synopsis words: upper-case placeholders in italics, the rest as is."""
    out = []
    for word in text.split(" "):
        core = word.strip("[].")
        if core and core.replace("_", "").isupper() and core.isascii():
            out.append(roff(word).replace(core, f"\\fI{core}\\fR", 1))
        else:
            out.append(roff(word))
    return " ".join(out)


def _roff_option(o: Opt) -> str:
    names = [f"\\fB{roff(n)}\\fR" for n in (o.short, o.long) if n]
    label = ", ".join(names)
    if o.metavar and o.kind == "optional":
        label += f"[=\\fI{roff(o.metavar)}\\fR]"
    elif o.metavar:
        label += f"=\\fI{roff(o.metavar)}\\fR"
    return f".TP\n{label}\n{roff(o.help or '')}"


def man_page(p: Program) -> str:
    """The roff source of ``NAME(1)``."""
    out = [f'.TH {p.name.upper()} 1 "" "chrun {__version__}" "User Commands"', ".nh", ".ad l",
           ".SH NAME", f"{roff(p.name)} \\- {roff(p.summary)}",
           ".SH SYNOPSIS", ".nf"]
    for u in p.usage:
        first, _, rest = u.partition(" ")
        if first == p.name:
            out.append(f"\\fB{roff(first)}\\fR {_roff_words(rest)}")
        else:   # "LAUNCHER ... ch-mpirun ..."
            out.append(_roff_words(u).replace(roff(p.name), f"\\fB{roff(p.name)}\\fR", 1))
    out += [".fi", ".SH DESCRIPTION"]
    for i, para in enumerate(p.description):
        if i:
            out.append(".PP")
        out.append(roff(para))
    out.append(".SH OPTIONS")
    out.extend(_roff_option(o) for o in p.options)
    if p.more_options:
        title, rows = p.more_options
        out.append(f".SS {roff(title)}")
        if p.more_note:
            out.append(roff(p.more_note))
        out.extend(_roff_option(o) for o in rows)
    if p.environment:
        out.append(".SH ENVIRONMENT")
        for name, text in p.environment:
            out += [".TP", f"\\fB{roff(name)}\\fR", roff(text)]
    if p.exit_status:
        out.append(".SH EXIT STATUS")
        for i, para in enumerate(p.exit_status):
            if i:
                out.append(".PP")
            out.append(roff(para))
    if p.examples:
        out.append(".SH EXAMPLES")
        for text, command in p.examples:
            out += [".PP", roff(text), ".PP", ".RS 4", ".nf", roff(command), ".fi", ".RE"]
    if p.see_also:
        out += [".SH SEE ALSO", ",\n".join(f"\\fB{roff(n)}\\fR({s})" for n, s in p.see_also)]
    return "\n".join(out) + "\n"


# ---- ch-run ---------------------------------------------------------------------------------

EXIT_STATUS = (
    "The command's own: ch-run execs it, so no process stays in between.",
    "31: ch-run itself failed (e.g. the image is missing, a bind source does not exist, a "
    "peer group failed).",
    "49: the command cannot be executed (not found, not executable).",
    "64: usage error (unknown option, bad value).",
    "Every error is one line on standard error, \"ch-run[PID]: error: WHAT\", naming the path "
    "or value.",
)

CH_RUN = Program(
    name="ch-run",
    summary="run a command in an unprivileged container",
    usage=("ch-run [OPTION...] NEWROOT CMD [ARG...]",),
    description=(
        "Run a command in a container made from the unpacked image directory NEWROOT, the "
        "SquashFS archive NEWROOT (mounted with squashfuse), or the image named NEWROOT in "
        "ch-image storage. Also NEWROOT -- CMD [ARG...].",
        "The container is a new user namespace (your UID and GID mapped, or those of -u/-g; "
        "setgroups denied; no new privileges) and a new mount namespace with NEWROOT as its "
        "root, read-only unless -w, and the host's /dev, /proc, /sys, /etc/hosts, "
        "/etc/resolv.conf, your home directory (unless --no-home) and /tmp (unless -t) "
        "bound into it. ch-run then execs CMD: CMD's PID, signals and exit status are "
        "ch-run's.",
        "With --join, peer ch-run invocations (e.g. the MPI ranks of one node) share one "
        "container, so cross-memory attach and ptrace work between them; --join-pid runs "
        "CMD in the container of a running process, e.g. a debugger.",
    ),
    options=RUN_OPTIONS + INFO_OPTIONS,
    help_notes=("Exit status: the command's own; 31 if ch-run fails; 49 if the command "
                "cannot be executed; 64 for usage errors.",),
    environment=(
        ("OMPI_COMM_WORLD_LOCAL_SIZE, SLURM_STEP_TASKS_PER_NODE, SLURM_CPUS_ON_NODE",
         "The peer count of --join without --join-ct: the first of these that is set "
         "(SLURM_STEP_TASKS_PER_NODE: this node's entry, picked by SLURM_NODEID)."),
        ("SLURM_STEP_ID", "The tag of --join without --join-tag (else the parent's PID)."),
        ("SLURM_JOB_ID, SLURM_NODEID",
         "Part of a peer group's identity, with your UID, the host name and the tag: groups "
         "of different jobs or nodes never meet."),
        ("CH_RUN_JOIN_TIMEOUT", "Seconds a peer group may take to fill (default 30; "
         "--join-timeout wins)."),
        ("CH_IMAGE_STORAGE", "The ch-image storage directory for images given by name "
         "(default /var/tmp/$USER.ch; -s wins)."),
        ("CH_RUNNING", "Set to \"Weird Al Yankovic\" inside the container."),
        ("TMPDIR", "Unset inside the container."),
        ("PATH", "Inside the container, /bin is appended if missing."),
    ),
    exit_status=EXIT_STATUS,
    examples=(
        ("Run a shell command in an image, as yourself:",
         "ch-run /var/tmp/chrun-images/tiny -- sh -c 'id; echo $CH_RUNNING'"),
        ("Four MPI ranks in one container (Open MPI sets the peer count):",
         "mpirun --oversubscribe -n 4 ch-run --join /var/tmp/chrun-images/mpi -- "
         "/opt/mpi-tests/allreduce-ompi4"),
        ("Each Slurm step gets one container per node:",
         "srun -N 2 -n 6 ch-run --join IMG -- app"),
        ("Attach gdb, from the image, to rank PID of a running joined job:",
         "ch-run --join-pid=PID IMG -- gdb -p PID -batch -ex bt"),
    ),
    see_also=(("ch-mpirun", 1), ("mpirun", 1), ("srun", 1), ("user_namespaces", 7),
              ("mount_namespaces", 7)),
)


def programs() -> tuple:
    """Every program with a man page (ch-mpirun's description lives with its code)."""
    try:
        from chrun_launch import mpirun
    except ImportError:   # the source tree (setup.py): the folder's own name
        from launch import mpirun  # type: ignore[no-redef]
    return (CH_RUN, mpirun.program())


def write_man_pages(directory: str) -> list:
    import os
    os.makedirs(directory, exist_ok=True)
    written = []
    for p in programs():
        path = os.path.join(directory, f"{p.name}.1")
        with open(path, "w", encoding="utf-8") as f:
            f.write(man_page(p))
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m chrun.helptext DIR   (writes DIR/ch-run.1, DIR/ch-mpirun.1)")
    print("\n".join(write_man_pages(sys.argv[1])))
