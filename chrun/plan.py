"""A pure description of the container to build: no system calls here.

:func:`make_plan` turns the parsed options, the environment and a few facts
about the invoking user into a :class:`Plan`: the ID maps, the ordered list of
mounts, the environment and working directory of the command.  Everything in
this module is a function of its arguments, so it is unit-tested without
creating any namespace.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing would slow every ch-run down
    from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import UsageError

#: Largest valid UID/GID (2**32 - 1 is the kernel's "no ID").
ID_MAX = 2**32 - 2

#: Value ch-run sets ``CH_RUNNING`` to inside the container, as Charliecloud does.
CH_RUNNING = "Weird Al Yankovic"


def record(name: str, fields: tuple, doc: str, /, **defaults) -> type:
    """An immutable record class: ``fields``, then those with ``defaults``.

    What :func:`collections.namedtuple` gives (positional or keyword construction,
    equality, hashing, ``repr``, ``_replace``) without importing collections, let
    alone ``typing`` or ``dataclasses``: ch-run starts once per MPI rank, and those
    imports cost more than building the container.
    """
    names = tuple(fields) + tuple(defaults)

    def __init__(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{name}() takes at most {len(names)} arguments")
        values = dict(defaults)
        values.update(zip(names, args))
        for key, value in kwargs.items():
            if key not in names or names.index(key) < len(args):
                raise TypeError(f"{name}() got an unexpected or repeated argument {key!r}")
            values[key] = value
        missing = [f for f in fields if f not in values]
        if missing:
            raise TypeError(f"{name}() missing {', '.join(missing)}")
        for key in names:
            object.__setattr__(self, key, values[key])

    def __setattr__(self, key, value):
        raise AttributeError(f"{name} is immutable: use _replace()")

    def values(self) -> tuple:
        return tuple(getattr(self, key) for key in names)

    def __eq__(self, other):
        return type(other) is type(self) and values(other) == values(self)

    def __hash__(self):
        return hash(values(self))

    def __repr__(self):
        return f"{name}({', '.join(f'{k}={getattr(self, k)!r}' for k in names)})"

    def _replace(self, **changes):
        return type(self)(**{**dict(zip(names, values(self))), **changes})

    return type(name, (), {"__slots__": names, "__doc__": doc, "_fields": names,
                           "__init__": __init__, "__setattr__": __setattr__,
                           "__eq__": __eq__, "__hash__": __hash__, "__repr__": __repr__,
                           "_replace": _replace})


Options = record(
    "Options", ("newroot", "command"),
    """ch-run's command line after parsing, before any decision is made.

    ``newroot`` (str), ``command`` (tuple of str), ``binds`` (tuple of ``SRC[:DST]``),
    ``cd``, ``join_ct``, ``join_tag`` (str or None), ``uid``, ``gid``, ``join_pid`` (int or
    None), ``join_timeout`` (float or None), ``join``, ``no_home``, ``private_tmp``,
    ``write`` (bool), ``verbose`` (int); ``env_ops`` (``--set-env``/``--unset-env`` in
    order: tuple of ``("set", ARG or None)`` / ``("unset", GLOB)``, see chrun.environ),
    ``env_expand`` (bool), ``storage`` (str or None), ``no_passwd`` (bool), ``mount``
    (``-m``: SquashFS mount point, or None).  ``join_ct_from``, ``join_tag_from``: where a
    program that fills in ``join_ct``/``join_tag`` itself (ch-mpirun) got them, for ``-v``
    (None: from the command line).""",
    binds=(), cd=None, uid=None, gid=None, join=False, join_ct=None, join_tag=None,
    join_pid=None, join_timeout=None, no_home=False, private_tmp=False, write=False,
    verbose=0, env_ops=(), env_expand=True, storage=None, no_passwd=False,
    mount=None, join_ct_from=None, join_tag_from=None)

Mount = record(
    "Mount", ("kind", "dst"),
    """One step of the mount sequence, inside the new root ``dst``.

    ``kind`` is ``bind`` (host ``src`` onto ``dst``), ``tmpfs`` (fresh tmpfs on
    ``dst``), ``file`` (``content`` written to a private file that is bound on
    ``dst``; ``content`` is text, or an :class:`IdFile` whose text needs the
    host's names for its IDs) or ``mkdir`` (make directory ``dst`` on a tmpfs
    made earlier).
    ``required`` says whether a missing ``dst`` is an error or a skip.
    Symlinks in ``dst`` resolve the way the container will see them (absolute
    ones from the image's root); ``user`` marks a ``--bind``, for which a ``..``
    above the image's root is an error.  ``why`` is for messages.""",
    src=None, content=None, required=True, why="", user=False)


class Plan(record("Plan", ("newroot", "command", "host_uid", "host_gid", "uid", "gid",
                          "writable", "mounts", "env", "cwd"), "", fallback_cwd="/")):
    """Everything the container needs: ID maps, mounts (tuple of :class:`Mount`),
    the command's environment (dict) and working directory (``cwd``, else
    ``fallback_cwd``)."""

    __slots__ = ()

    @property
    def uid_map(self) -> str:
        return f"{self.uid} {self.host_uid} 1\n"

    @property
    def gid_map(self) -> str:
        return f"{self.gid} {self.host_gid} 1\n"


User = record(
    "User", ("uid", "gid", "name", "home"),
    """The invoking user: host ``uid`` and ``gid``, login ``name`` (``$USER``, else the
    password database's) and host ``home`` directory (None if unknown).""")

IdFile = record(
    "IdFile", ("kind", "uid", "gid", "host_uid", "host_gid", "login", "home"),
    """A generated ``/etc/passwd`` (``kind`` ``passwd``) or ``/etc/group`` (``group``)
    before the host's names for its IDs are known.

    ``uid``/``gid`` are the container's IDs, ``host_uid``/``host_gid`` the invoking
    user's, ``login`` the user's name and ``home`` the home directory inside.  Only
    the process that builds a container renders it (:func:`id_file_text`, with
    names from :func:`chrun.idnames.lookup`): peers joining a container never
    look names up.""")

IdNames = record(
    "IdNames", ("users", "groups"),
    """The names the host gives some IDs: ``users`` maps UID → (name, gecos), ``groups``
    GID → name.  An ID missing from them is unknown to the host.""")

#: Names of the IDs every generated file has, when the host does not name them.
DEFAULT_USERS = {0: "root", 65534: "nobody"}
DEFAULT_GROUPS = {0: "root", 65534: "nogroup"}


def id_file_ids(spec: IdFile) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The UIDs and GIDs whose host names :func:`id_file_text` wants for ``spec``."""
    if spec.kind == "passwd":
        return tuple(sorted({0, 65534, spec.uid, spec.host_uid})), ()
    return (), tuple(sorted({0, 65534, spec.gid, spec.host_gid}))


# --- parsing helpers ----------------------------------------------------------

def parse_id(text: str, what: str) -> int:
    """A UID or GID from the command line: a decimal in 0..2**32-2."""
    if not text.isdigit() or not text.isascii():
        raise UsageError(f"invalid {what}: {text!r}: not a non-negative integer")
    value = int(text)
    if value > ID_MAX:
        raise UsageError(f"invalid {what}: {text}: larger than {ID_MAX}")
    return value


def parse_bind(spec: str, index: int) -> Tuple[str, str]:
    """``SRC[:DST]`` → (SRC, DST); DST defaults to ``/mnt/INDEX``."""
    if spec == "":
        raise UsageError("--bind: empty argument")
    src, sep, dst = spec.partition(":")
    if src == "":
        raise UsageError(f"--bind: {spec!r}: no source")
    if sep and dst == "":
        raise UsageError(f"--bind: {spec!r}: empty destination")
    if not sep:
        dst = f"/mnt/{index}"
    if not dst.startswith("/"):
        raise UsageError(f"--bind: {spec!r}: destination must be an absolute path")
    if "\0" in spec:
        raise UsageError("--bind: argument contains NUL")
    if normalize_dst(dst) == "/":
        raise UsageError(f"--bind: {spec!r}: can't bind over the container's root "
                         "(NEWROOT is the root; bind on a directory in it)")
    return src, dst


def normalize_dst(dst: str) -> str:
    """``/a//b/./c/`` → ``/a/b/c`` (``..`` is left for the resolver to refuse)."""
    parts = [p for p in dst.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


# --- home ------------------------------------------------------------------------

#: Longest file name (bytes) on Linux file systems.
NAME_MAX = 255


def login_name(host_env: Mapping[str, str], user: User) -> str:
    """The name of the home directory inside, ``/home/NAME``: ``$USER`` as Charliecloud
    does, else (unset or empty) the user's name; one that is not a plain file name
    (``/``, ``.``, ``..``, ``:`` or a control character) is a usage error."""
    name = host_env.get("USER") or user.name
    if (name in (".", "..") or "/" in name or ":" in name or not name.isprintable()
            or len(os.fsencode(name)) > NAME_MAX):
        raise UsageError(f"invalid $USER {name[:64]!r}{'...' if len(name) > 64 else ''}: "
                         "it names the home directory /home/$USER and must be a plain file "
                         f"name (no '/', ':' or control characters; not '.' or '..'; at most "
                         f"{NAME_MAX} bytes)")
    return name


# --- passwd and group ---------------------------------------------------------

def _field(text: str) -> str:
    """``text`` fit for one field of /etc/passwd or /etc/group (no ':' or newline)."""
    return "".join(c if c.isprintable() and c != ":" else "_" for c in text)


def _unique(entries: list) -> list:
    """``entries`` (ID, name, ...) without a repeated ID or name, the first one winning."""
    ids, names, out = set(), set(), []
    for e in entries:
        if e[0] not in ids and e[1] not in names:
            ids.add(e[0])
            names.add(e[1])
            out.append(e)
    return sorted(out)


def passwd_text(spec: IdFile, names: IdNames) -> str:
    """/etc/passwd: the container's UID, root, nobody and the invoking user, named as
    the host names them (an ID the host does not know: ``uUID``, or the user's own
    name for the user's own UID)."""
    def entry(uid, gid, home, shell, default):
        name, gecos = names.users.get(uid, (None, ""))
        return (uid, _field(name or DEFAULT_USERS.get(uid) or default), gid, _field(gecos),
                home, shell)
    own = spec.login if spec.uid == spec.host_uid else f"u{spec.uid}"
    rows = _unique([
        entry(spec.uid, spec.gid, spec.home, "/bin/sh", own),      # who runs the command
        entry(0, 0, "/root", "/bin/sh", "root"),
        entry(65534, 65534, "/", "/bin/false", "nobody"),
        entry(spec.host_uid, spec.host_gid, spec.home, "/bin/sh", spec.login),  # the user
    ])
    return "".join(f"{n}:x:{u}:{g}:{c}:{h}:{sh}\n" for u, n, g, c, h, sh in rows)


def group_text(spec: IdFile, names: IdNames) -> str:
    """/etc/group: the container's GID, root, nogroup and the invoking user's group,
    named as the host names them (a GID the host does not know: ``gGID``)."""
    def entry(gid):
        return (gid, _field(names.groups.get(gid) or DEFAULT_GROUPS.get(gid) or f"g{gid}"))
    rows = _unique([entry(spec.gid), entry(0), entry(65534), entry(spec.host_gid)])
    return "".join(f"{n}:x:{g}:\n" for g, n in rows)


def id_file_text(spec: IdFile, names: IdNames) -> str:
    return (passwd_text if spec.kind == "passwd" else group_text)(spec, names)


# --- environment --------------------------------------------------------------

def container_env(host_env: Mapping[str, str], home: Optional[str]) -> Dict[str, str]:
    """The command's environment: the host's, adjusted as Charliecloud does
    (``HOME`` is ``home``, the bound home directory, unless None)."""
    env = dict(host_env)
    env.pop("TMPDIR", None)
    env["CH_RUNNING"] = CH_RUNNING
    path = env.get("PATH")
    if path is None:
        env["PATH"] = "/bin:/usr/bin:/sbin:/usr/sbin:/usr/local/bin"
    elif "/bin" not in path.split(":"):
        env["PATH"] = (path + ":/bin") if path else "/bin"
    if home is not None:
        env["HOME"] = home
    return env


# --- the plan -----------------------------------------------------------------

def make_plan(opts: Options, host_env: Mapping[str, str], user: User,
              host_cwd: Optional[str]) -> Plan:
    """Decide every map, mount, variable and directory of the container."""
    uid = opts.uid if opts.uid is not None else user.uid
    gid = opts.gid if opts.gid is not None else user.gid
    if opts.no_home:  # $USER names no directory: the passwd home is one that exists
        login, home = host_env.get("USER") or user.name, "/"
    else:
        login = login_name(host_env, user)
        home = f"/home/{login}"
    ids = IdFile("passwd", uid, gid, user.uid, user.gid, login, home)
    mounts: List[Mount] = [
        Mount("bind", "/dev", "/dev", why="host /dev"),
        Mount("bind", "/proc", "/proc", why="host /proc"),
        Mount("bind", "/sys", "/sys", why="host /sys"),
        Mount("file", "/etc/passwd", content=ids, why="generated /etc/passwd"),
        Mount("file", "/etc/group", content=ids._replace(kind="group"),
              why="generated /etc/group"),
        Mount("bind", "/etc/hosts", "/etc/hosts", required=False, why="host /etc/hosts"),
        Mount("bind", "/etc/resolv.conf", "/etc/resolv.conf", required=False,
              why="host /etc/resolv.conf"),
    ]
    if opts.no_passwd:  # --no-passwd: the image's own /etc/passwd and /etc/group
        mounts = [m for m in mounts if m.dst not in ("/etc/passwd", "/etc/group")]
    if opts.private_tmp:
        mounts.append(Mount("tmpfs", "/tmp", why="private /tmp"))
    else:
        mounts.append(Mount("bind", "/tmp", "/tmp", why="host /tmp"))
    if not opts.no_home:
        if not user.home:
            raise UsageError("can't bind home: $HOME not set (use --no-home)")
        mounts.append(Mount("tmpfs", "/home", why="tmpfs for /home"))
        mounts.append(Mount("mkdir", home, why="home mount point"))
        mounts.append(Mount("bind", home, user.home, required=False, why="host home"))
    for i, spec in enumerate(opts.binds):
        src, dst = parse_bind(spec, i)
        mounts.append(Mount("bind", normalize_dst(dst), src, why=f"--bind {spec}", user=True))
    env = container_env(host_env, None if opts.no_home else home)
    return Plan(newroot=opts.newroot, command=tuple(opts.command),
                host_uid=user.uid, host_gid=user.gid, uid=uid, gid=gid,
                writable=opts.write, mounts=tuple(mounts), env=env,
                cwd=opts.cd if opts.cd is not None else host_cwd)


def current_user(env: Mapping[str, str]) -> User:
    """The invoking user: IDs from the kernel, name and home from ``$USER`` and ``$HOME``;
    the password database only for what those do not say."""
    uid, gid = os.geteuid(), os.getegid()
    name, home = env.get("USER") or None, env.get("HOME") or None
    if name is None or home is None:
        import pwd
        try:
            pw = pwd.getpwuid(uid)
            name, home = name or pw.pw_name, home or pw.pw_dir
        except KeyError:
            name = name or f"u{uid}"
    return User(uid=uid, gid=gid, name=name, home=home)


def parse_command(args: Sequence[str]) -> Tuple[str, Tuple[str, ...]]:
    """``NEWROOT CMD [ARG...]`` or ``NEWROOT -- CMD [ARG...]`` → (NEWROOT, CMD...)."""
    args = list(args)
    if args and args[0] == "--":
        args.pop(0)
    if not args:
        raise UsageError("NEWROOT not specified")
    newroot = args.pop(0)
    if args and args[0] == "--":
        args.pop(0)
    if not args:
        raise UsageError("no command specified")
    if newroot == "":
        raise UsageError("NEWROOT is empty")
    return newroot, tuple(args)
