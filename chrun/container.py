"""Build the container described by a :class:`chrun.plan.Plan`, then exec.

The set-up is a straight sequence of named steps, each a function below:

1. :func:`check_image`      — NEWROOT is a directory with the mount points we need,
                               or a SquashFS archive (:func:`chrun.squash.check`)
   :func:`generated_files`  — text of /etc/passwd and /etc/group (host names: NSS)
2. :func:`enter_namespaces` — new user + mount namespaces, ID maps, setgroups denied
3. :func:`stage_root`       — a private tmpfs becomes ``/``, the host moves to ``/oldroot``
4. :func:`mount_image`      — the image on ``/newroot``, read-only unless ``-w``; a
                               SquashFS archive is mounted by :class:`chrun.squash.Server`
                               instead, whose server is forked before step 2
5. :func:`apply_mounts`     — /dev, /proc, /sys, passwd/group, hosts, /tmp, home, binds
6. :func:`enter_root`       — drop the host and the staging tmpfs, ``/newroot`` is ``/``
7. :func:`exec_command`     — no new privileges, cwd, environment, ``execvpe``

Peers of a ``--join`` group that join an existing container run step 7 only.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Dict, Optional, Union

    from .squash import Archive, Server

from . import errors, syscalls as sc
from .errors import ChError, EXIT_EXEC, info
from .plan import IdFile, Mount, Plan, id_file_ids, id_file_text

STAGE = "/tmp"          # where the staging tmpfs is mounted (in our namespace only)
NEWROOT = "/newroot"    # the image, inside the staging tmpfs
OLDROOT = "/oldroot"    # the host's root, inside the staging tmpfs
FILES = "/files"        # generated files (passwd, group), inside the staging tmpfs

#: Mount points the image must have (missing → error naming them).
REQUIRED_DIRS = ("/dev", "/proc", "/sys")


def find_image(newroot: str) -> None:
    """NEWROOT exists as a directory or a file (SquashFS): all a joiner checks, with
    one ``stat``; the creator checks the rest (:func:`check_image`) and mounts."""
    try:
        st = os.stat(newroot)
    except OSError as x:
        raise ChError(f"can't find image: {newroot}: {os.strerror(x.errno)}")
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise ChError(f"can't use image: {newroot}: neither a directory nor a SquashFS archive")


def check_image(newroot: str, writable: bool = False, mount_dir: Optional[str] = None):
    """Resolve NEWROOT on the host and check it is a usable image.

    Returns a directory image's real path (str), or a :class:`chrun.squash.Archive`
    for a SquashFS file.  ``mount_dir`` (``-m``) only means something for the latter.
    """
    try:
        st = os.stat(newroot)
    except OSError as x:
        raise ChError(f"can't find image: {newroot}: {os.strerror(x.errno)}")
    if stat.S_ISREG(st.st_mode):
        from . import squash  # only SquashFS users pay for this import
        return squash.check(newroot, writable, mount_dir)
    if not stat.S_ISDIR(st.st_mode):
        raise ChError(f"can't use image: {newroot}: neither a directory nor a SquashFS archive")
    if mount_dir is not None:
        errors.warning(f"--mount ignored: {newroot} is a directory image, not SquashFS")
    real = os.path.realpath(newroot)
    if not os.access(real, os.R_OK | os.X_OK):
        raise ChError(f"can't use image: {newroot}: {os.strerror(errno.EACCES)}")
    for d in REQUIRED_DIRS:
        if not os.path.isdir(real + d):
            raise ChError(f"can't use image: {newroot}: no directory {d} (mount point for host {d})")
    return real


def _existing_real_path(path: str) -> str:
    """The real path of ``path``, which must exist (OSError if not): one lstat a
    component (``realpath(strict=True)``, Python >= 3.10), no separate stat."""
    if sys.version_info >= (3, 10):
        return os.path.realpath(path, strict=True)
    os.stat(path)
    return os.path.realpath(path)


def resolve_sources(plan: Plan) -> Dict[str, str]:
    """Real host path of every bind source, checked before any namespace exists."""
    out = {}
    for m in plan.mounts:
        if m.kind != "bind" or m.src is None:
            continue
        try:
            out[m.src] = _existing_real_path(m.src)
        except OSError as x:
            if m.required:
                raise ChError(f"can't bind: source not found: {m.src}: {os.strerror(x.errno)}")
            errors.warning(f"not mounting {m.why}: {m.src}: {os.strerror(x.errno)}")
    return out


def enter_namespaces(plan: Plan) -> None:
    sc.assert_single_threaded("can't create namespaces")
    sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
    sc.write_proc("/proc/self/setgroups", "deny")
    sc.write_proc("/proc/self/uid_map", plan.uid_map)
    sc.write_proc("/proc/self/gid_map", plan.gid_map)
    info(f"user namespace: uid_map {plan.uid_map.strip()!r}, gid_map {plan.gid_map.strip()!r}", 2)


def stage_root() -> None:
    """Make a private tmpfs the root, with the host's root at /oldroot in it."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None, "can't make / private")
    sc.mount("tmpfs", STAGE, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755",
             f"can't mount staging tmpfs on {STAGE}")
    for d in (NEWROOT, OLDROOT, FILES):
        os.mkdir(STAGE + d, 0o755)
    os.chdir(STAGE)
    sc.pivot_root(".", "." + OLDROOT)
    os.chdir("/")


def mount_image(real_image: str, writable: bool) -> None:
    """Step 4 for a directory image (see :meth:`chrun.squash.Server.mount` for SquashFS)."""
    sc.bind(OLDROOT + real_image, NEWROOT, f"can't bind image {real_image}")
    if not writable:
        sc.remount_readonly(NEWROOT, f"can't make image read-only: {real_image}")
    info(f"image {real_image} mounted {'read-write' if writable else 'read-only'}", 2)


def in_image(dst: str, strict: bool = False) -> str:
    """Where container path ``dst`` is now, following symlinks as the container will.

    Absolute links start again at the image's root, never at the staging
    root: a link to ``/newroot/etc``, ``/oldroot/...`` or ``/files`` means
    those paths *in the image* (which has none of them), not ch-run's staging
    directories.  Images link e.g. /etc/resolv.conf to
    /run/systemd/resolve/stub-resolv.conf.  ``..`` at the root stays there (as
    in a chroot), except with ``strict`` (a ``--bind`` destination): then a
    ``..`` above the root, written or through a link, means ``dst`` resolves
    outside the image, an error.  The result is always inside the image.
    """
    todo = [p for p in dst.split("/") if p not in ("", ".")]
    done: list = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            elif strict:
                raise ChError(f"can't mount on {dst}: resolves outside the image "
                              "('..' above its root)")
            continue
        try:
            target = os.readlink("/".join([NEWROOT, *done, part]))
        except OSError:  # not a symlink, or missing
            done.append(part)
            continue
        links += 1
        if links > 40:
            raise ChError(f"can't mount on {dst}: {os.strerror(errno.ELOOP)}")
        if target.startswith("/"):
            done = []
        todo[:0] = [p for p in target.split("/") if p not in ("", ".")]
    return "/".join([NEWROOT, *done])


def _kind_matches(src: str, dst: str) -> bool:
    return os.path.isdir(src) == os.path.isdir(dst)


def generated_files(plan: Plan) -> Dict[str, str]:
    """Text of every generated file (``file`` mounts), by destination.

    The host's names for the IDs of /etc/passwd and /etc/group are looked up
    here (:mod:`chrun.idnames`), once, by the process that builds the
    container, while it still sees the host's root (NSS configuration, files).
    """
    files, names = {}, None
    for m in plan.mounts:
        if m.kind != "file":
            continue
        if isinstance(m.content, IdFile):
            if names is None:
                from . import idnames
                uids, gids = set(), set()
                for f in plan.mounts:
                    if f.kind == "file" and isinstance(f.content, IdFile):
                        u, g = id_file_ids(f.content)
                        uids.update(u)
                        gids.update(g)
                names = idnames.lookup(sorted(uids), sorted(gids))
            files[m.dst] = id_file_text(m.content, names)
        else:
            files[m.dst] = m.content or ""
    return files


def apply_mount(m: Mount, sources: Dict[str, str], files: Dict[str, str]) -> None:
    dst = in_image(m.dst, strict=m.user)
    if m.kind == "mkdir":
        os.makedirs(dst, 0o755, exist_ok=True)
        return
    if not os.path.lexists(dst):
        if not m.required:
            info(f"skipping {m.why}: image has no {m.dst}")
            if m.dst == "/etc/hosts":
                errors.warning(f"image has no {m.dst}: host names resolve without the host's "
                               "/etc/hosts (localhost lookups may wait for DNS)")
            elif m.dst == "/etc/resolv.conf":
                errors.warning(f"image has no {m.dst}: host names resolve without the host's "
                               "/etc/resolv.conf (DNS lookups may fail)")
            return
        shown = dst[len(NEWROOT):] or "/"
        where = m.dst if shown == m.dst else f"{m.dst} (links to {shown})"
        raise ChError(f"can't mount {m.why}: {where} not found in image")
    if m.kind == "tmpfs":
        mode = "1777" if m.dst == "/tmp" else "0755"
        sc.mount("tmpfs", dst, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode={mode}",
                 f"can't mount tmpfs on {m.dst}")
    elif m.kind == "file":
        src = FILES + "/" + m.dst.strip("/").replace("/", "-")
        with open(src, "w") as f:
            f.write(files[m.dst])
        os.chmod(src, 0o644)
        sc.bind(src, dst, f"can't bind {m.why} on {m.dst}", recursive=False)
    elif m.kind == "bind":
        real_src = sources.get(m.src or "")
        if real_src is None:  # optional source missing on the host
            return
        host = OLDROOT + real_src
        if not _kind_matches(host, dst):
            what = "directory" if os.path.isdir(host) else "file"
            raise ChError(f"can't bind {m.src} on {m.dst}: source is a {what}, destination is not")
        sc.bind(host, dst, f"can't bind {m.src} on {m.dst}")
    else:  # pragma: no cover - plan only makes the kinds above
        raise AssertionError(m.kind)
    info(f"mounted {m.why} on {m.dst}", 2)


def apply_mounts(plan: Plan, sources: Dict[str, str], files: Dict[str, str]) -> None:
    for m in plan.mounts:
        apply_mount(m, sources, files)


def enter_root() -> None:
    """Forget the host and the staging tmpfs: /newroot becomes /."""
    sc.umount_detach(OLDROOT, "can't detach the host's root")
    old = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(NEWROOT)
        sc.pivot_root(".", ".")
        os.fchdir(old)
        sc.umount_detach(".", "can't detach the staging tmpfs")
    finally:
        os.close(old)
    os.chdir("/")


def create(plan: Plan, image: Union[str, Archive], sources: Dict[str, str],
           keep_ns: bool = False):
    """Steps 2–6: after this, the process is inside a new container.

    ``image`` is what :func:`check_image` returned: a directory's real path, or
    a SquashFS archive, whose FUSE server is started before the namespaces.
    With ``keep_ns``, returns file descriptors of the new user and mount
    namespaces (for a --join group's holder), opened before any mount: a
    --bind on /proc hides /proc/self in the container.
    """
    files = generated_files(plan)
    server: Optional[Server] = None
    if not isinstance(image, str):
        from . import squash
        server = squash.Server(image)
        server.start()
    fds = None
    try:
        enter_namespaces(plan)
        fds = [os.open(f"/proc/self/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
               for ns in ("user", "mnt")] if keep_ns else None
        # Facts for -v only, and now, for the same reason.
        ns = (f"user ns {sc.ns_inode('/proc/self/ns/user')}, "
              f"mnt ns {sc.ns_inode('/proc/self/ns/mnt')}") if errors.verbosity else ""
        stage_root()
        if server is None:
            mount_image(image, plan.writable)
        else:
            server.mount(NEWROOT, plan.uid, plan.gid, OLDROOT)
        apply_mounts(plan, sources, files)
        enter_root()
    except BaseException:
        for fd in fds or ():
            os.close(fd)
        if server is not None:
            server.abort()  # no server and no mount outlive a failed ch-run
        raise
    if server is not None:
        server.done()
    info(f"container ready: {ns}")
    return fds


def change_dir(plan: Plan, explicit: bool) -> None:
    if plan.cwd is not None:
        try:
            os.chdir(plan.cwd)
            return
        except OSError as x:
            if explicit:
                raise ChError(f"can't cd to {plan.cwd}: {os.strerror(x.errno)}")
            info(f"host working directory {plan.cwd} not in container; using {plan.fallback_cwd}")
    os.chdir(plan.fallback_cwd)


def exec_command(plan: Plan, explicit_cd: bool) -> None:
    """Step 7: become the command.  Returns only by raising."""
    sc.no_new_privs()
    change_dir(plan, explicit_cd)
    sc.default_signals()
    info(f"executing: {' '.join(plan.command)}")
    errors.flush_std()
    try:
        sc.execvpe(plan.command[0], list(plan.command), plan.env)
    except OSError as x:
        raise ChError(f"can't execve(2): {plan.command[0]}: {os.strerror(x.errno)}", EXIT_EXEC)
