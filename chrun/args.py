"""ch-run's option table, and a click-free scanner for the exec path.

:data:`RUN_OPTIONS` is the one description of ch-run's options:
:mod:`chrun.cli` builds its click command from it, and :func:`scan` reads the
common, well-formed command lines with the same grammar click applies
(``-wt``, ``-b SRC``, ``-bSRC``, ``--bind SRC``, ``--bind=SRC``, ``-vv``,
options stop at the first operand or ``--``).  Anything :func:`scan` does not
fully understand — help, an unknown option, a missing value, a value that
looks like an option — makes it return None, and click parses instead, so
every message and exit code comes from one place.  Importing click costs more
than the rest of ch-run put together, so the exec path avoids it; a test
checks that both parsers agree.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Dict, Optional, Sequence, Tuple

from .errors import UsageError
from .plan import Options, record, parse_command, parse_id


Opt = record(
    "Opt", ("short", "long", "dest", "kind"),
    """One option: ``short`` (e.g. ``-b``, or None), ``long`` (``--bind``), ``dest`` (keyword
    of :func:`make_options`), ``kind``: ``value``, ``multi`` (repeatable), ``flag``,
    ``count``, ``ordered`` (repeatable, order kept across all ``ordered``/``optional``
    options), ``optional`` (long only, like ``ordered``; a value only as ``--opt=VALUE``:
    ``--opt`` alone takes none, whatever follows) or ``info`` (--help and the like: click's
    business, never the scanner's).  ``metavar`` names the value; ``help`` is the option's
    one description, shown by ``--help`` and the man page alike (:mod:`chrun.helptext`
    generates both: a new row needs only its help text).""",
    metavar=None, help=None)


RUN_OPTIONS = (
    Opt("-b", "--bind", "binds", "multi", "SRC[:DST]",
        "mount SRC at guest DST (default /mnt/0, /mnt/1, etc.)"),
    Opt("-c", "--cd", "cd", "value", "DIR", "initial working directory in container"),
    Opt(None, "--env-no-expand", "env_no_expand", "flag", None,
        "don't expand $VAR in --set-env values"),
    Opt(None, "--feature", "feature", "value", "FEAT",
        "exit 0 if FEAT is available, else 1 (extglob, seccomp, squash, overlayfs, "
        "tmpfs-xattrs)"),
    Opt("-g", "--gid", "gid", "value", "GID", "run as group GID within container"),
    Opt("-j", "--join", "join", "flag", None,
        "use the same container (namespaces) as peer ch-run invocations"),
    Opt(None, "--join-ct", "join_ct", "value", "N",
        "number of ch-run peers (implies --join; default: the first of "
        "$OMPI_COMM_WORLD_LOCAL_SIZE, $SLURM_STEP_TASKS_PER_NODE, $SLURM_CPUS_ON_NODE)"),
    Opt(None, "--join-tag", "join_tag", "value", "TAG",
        "label for ch-run peer group (implies --join; default: $SLURM_STEP_ID, else the "
        "parent's PID)"),
    Opt(None, "--join-timeout", "join_timeout", "value", "S",
        "seconds a peer group may take to fill (default 30, or $CH_RUN_JOIN_TIMEOUT)"),
    Opt(None, "--join-pid", "join_pid", "value", "PID",
        "run in the container of running process PID (e.g. to attach a debugger to it)"),
    Opt("-m", "--mount", "mount", "value", "DIR",
        "SquashFS image: mount it at DIR (must exist) in the container's private mount "
        "namespace (default: on a private tmpfs; nothing appears on the host either way)"),
    Opt(None, "--no-home", "no_home", "flag", None,
        "do not bind-mount your home directory (by default, your home directory is "
        "mounted at /home/$USER)"),
    Opt(None, "--no-passwd", "no_passwd", "flag", None,
        "don't bind-mount generated /etc/passwd and /etc/group (the image's files are used)"),
    Opt("-s", "--storage", "storage", "value", "DIR",
        "ch-image storage directory, for images given by name (default $CH_IMAGE_STORAGE, "
        "else /var/tmp/$USER.ch)"),
    Opt(None, "--set-env", "set_env", "optional", "ARG",
        "set variables: --set-env alone, those in the image's /ch/environment; "
        "--set-env=FILE, those in host file FILE (NAME=VALUE lines); --set-env=NAME=VALUE, "
        "variable NAME (repeatable; with --unset-env, applied in command-line order)"),
    Opt("-t", "--private-tmp", "private_tmp", "flag", None,
        "use container-private /tmp (by default, /tmp is shared with the host)"),
    Opt("-u", "--uid", "uid", "value", "UID", "run as user UID within container"),
    Opt(None, "--unset-env", "unset_env", "ordered", "GLOB",
        "unset the variables whose names match GLOB (with extended globs such as "
        "'!(A*|B*)')"),
    Opt("-v", "--verbose", "verbose", "count", None, "be more verbose (debug if repeated)"),
    Opt("-w", "--write", "write", "flag", None,
        "mount image read-write (by default, the image is mounted read-only)"),
)

#: --help, --usage, --version: in every program's help and man page; click handles them.
INFO_OPTIONS = (
    Opt("-?", "--help", "help", "info", None, "print help and exit"),
    Opt(None, "--usage", "usage", "info", None, "print a short usage message and exit"),
    Opt("-V", "--version", "version", "info", None, "print version and exit"),
)

#: Kinds whose values keep their order across options (--set-env, --unset-env).
ORDERED_KINDS = ("ordered", "optional")


def tag(seq: int, value: Optional[str]) -> str:
    """An ``ordered``/``optional`` value with its position among such values.

    Both parsers store these; NUL cannot occur in a real argument.  None (no
    value) and "" (empty value) stay different.
    """
    return f"{seq}\0" if value is None else f"{seq}\0={value}"


def untag(text: str) -> Tuple[int, Optional[str]]:
    seq, _, rest = text.partition("\0")
    return int(seq), (rest[1:] if rest else None)


def defaults(options: tuple = RUN_OPTIONS) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for o in options:
        out[o.dest] = {"value": None, "multi": (), "flag": False, "count": 0,
                       "ordered": (), "optional": ()}[o.kind]
    return out


def _store(values: Dict[str, object], opt: Opt, value: Optional[str]) -> None:
    if opt.kind in ORDERED_KINDS:
        seq = values.pop("_seq", 0)
        values[opt.dest] = values[opt.dest] + (tag(seq, value),)  # type: ignore[operator]
        values["_seq"] = seq + 1
    elif opt.kind == "multi":
        values[opt.dest] = values[opt.dest] + (value,)  # type: ignore[operator]
    elif opt.kind == "count":
        values[opt.dest] = values[opt.dest] + 1  # type: ignore[operator]
    elif opt.kind == "flag":
        values[opt.dest] = True
    else:
        values[opt.dest] = value


def scan(argv: Sequence[str], options: tuple = RUN_OPTIONS) -> Optional[Dict[str, object]]:
    """Keywords of ``options`` for ``argv`` (default: make_options'), or None to let click decide."""
    short = {o.short: o for o in options if o.short}
    long = {o.long: o for o in options}
    values = defaults(options)
    i, n = 0, len(argv)
    while i < n:
        a = argv[i]
        if a == "--":
            i += 1
            break
        if a.startswith("--"):
            name, eq, attached = a.partition("=")
            opt = long.get(name)
            if opt is None:
                return None
            if opt.kind in ("flag", "count"):
                if eq:
                    return None
                _store(values, opt, None)
            elif opt.kind == "optional":
                _store(values, opt, attached if eq else None)
            elif eq:
                _store(values, opt, attached)
            else:
                if i + 1 >= n or argv[i + 1].startswith("-"):
                    return None
                i += 1
                _store(values, opt, argv[i])
            i += 1
            continue
        if a.startswith("-") and a != "-":
            j = 1
            while j < len(a):
                opt = short.get("-" + a[j])
                if opt is None:
                    return None
                if opt.kind in ("flag", "count"):
                    _store(values, opt, None)
                    j += 1
                    continue
                if j + 1 < len(a):
                    _store(values, opt, a[j + 1:])
                else:
                    if i + 1 >= n or argv[i + 1].startswith("-"):
                        return None
                    i += 1
                    _store(values, opt, argv[i])
                break
            i += 1
            continue
        break
    values.pop("_seq", None)
    values["args"] = tuple(argv[i:])
    return values


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid --join-timeout: {text!r}: not a number of seconds")
    if not (0 < value <= 86400):
        raise UsageError(f"invalid --join-timeout: {text!r}: must be in (0, 86400]")
    return value


def parse_pid(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not (0 < int(text) < 2**22 + 1):
        raise UsageError(f"invalid --join-pid: {text!r}: not a process ID")
    return int(text)


def env_ops(set_env: Sequence[str], unset_env: Sequence[str]) -> tuple:
    """The ``--set-env``/``--unset-env`` operations in command-line order."""
    ops = [(untag(t), "set") for t in set_env] + [(untag(t), "unset") for t in unset_env]
    ops.sort(key=lambda o: o[0][0])
    return tuple((kind, value) for (_seq, value), kind in ops)


def make_options(args, binds, cd, gid, uid, join, join_ct, join_tag, join_timeout, join_pid,
                 no_home, private_tmp, verbose, write, set_env=(), unset_env=(),
                 env_no_expand=False, storage=None, no_passwd=False, feature=None,
                 mount=None) -> Options:
    """:class:`Options` from the values of :data:`RUN_OPTIONS` (click's or :func:`scan`'s)."""
    if feature is not None:  # answered at once, like --help
        from .features import answer
        raise answer(feature)
    newroot, cmd = parse_command(args)
    if cd is not None and not cd.startswith("/"):
        raise UsageError(f"--cd: {cd!r}: must be an absolute path")
    if storage == "":
        raise UsageError("--storage: empty directory name")
    ops = env_ops(set_env, unset_env)
    if ops:
        from .environ import check_ops
        check_ops(ops)
    return Options(
        newroot=newroot, command=cmd, binds=tuple(binds), cd=cd,
        uid=None if uid is None else parse_id(uid, "UID"),
        gid=None if gid is None else parse_id(gid, "GID"),
        join=join, join_ct=join_ct, join_tag=join_tag,
        join_timeout=None if join_timeout is None else parse_seconds(join_timeout),
        join_pid=None if join_pid is None else parse_pid(join_pid),
        no_home=no_home, private_tmp=private_tmp, write=write, verbose=verbose,
        env_ops=ops, env_expand=not env_no_expand, storage=storage, no_passwd=no_passwd,
        mount=mount)
