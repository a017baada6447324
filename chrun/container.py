"""Build the container described by a :class:`chrun.plan.Plan`, then exec.

The set-up is a straight sequence of named steps, each a function below:

1. :func:`check_image`      — NEWROOT is a directory with the mount points we need
2. :func:`enter_namespaces` — new user + mount namespaces, ID maps, setgroups denied
3. :func:`stage_root`       — a private tmpfs becomes ``/``, the host moves to ``/oldroot``
4. :func:`mount_image`      — the image on ``/newroot``, read-only unless ``-w``
5. :func:`apply_mounts`     — /dev, /proc, /sys, passwd/group, hosts, /tmp, home, binds
6. :func:`enter_root`       — drop the host and the staging tmpfs, ``/newroot`` is ``/``
7. :func:`exec_command`     — no new privileges, cwd, environment, ``execvpe``

Peers of a ``--join`` group that join an existing container run step 7 only.
"""

from __future__ import annotations

import errno
import os
import stat
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Dict

from . import errors, syscalls as sc
from .errors import ChError, EXIT_EXEC, info
from .plan import Mount, Plan

STAGE = "/tmp"          # where the staging tmpfs is mounted (in our namespace only)
NEWROOT = "/newroot"    # the image, inside the staging tmpfs
OLDROOT = "/oldroot"    # the host's root, inside the staging tmpfs
FILES = "/files"        # generated files (passwd, group), inside the staging tmpfs

#: Mount points the image must have (missing → error naming them).
REQUIRED_DIRS = ("/dev", "/proc", "/sys")


def check_image(newroot: str) -> str:
    """Resolve NEWROOT on the host and check it is a usable image; return its real path."""
    try:
        st = os.stat(newroot)
    except OSError as x:
        raise ChError(f"can't find image: {newroot}: {os.strerror(x.errno)}")
    if not stat.S_ISDIR(st.st_mode):
        raise ChError(f"can't use image: {newroot}: not a directory")
    real = os.path.realpath(newroot)
    if not os.access(real, os.R_OK | os.X_OK):
        raise ChError(f"can't use image: {newroot}: {os.strerror(errno.EACCES)}")
    for d in REQUIRED_DIRS:
        if not os.path.isdir(real + d):
            raise ChError(f"can't use image: {newroot}: no directory {d} (mount point for host {d})")
    return real


def resolve_sources(plan: Plan) -> Dict[str, str]:
    """Real host path of every bind source, checked before any namespace exists."""
    out = {}
    for m in plan.mounts:
        if m.kind != "bind" or m.src is None:
            continue
        try:
            os.stat(m.src)
            out[m.src] = os.path.realpath(m.src)
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
    sc.bind(OLDROOT + real_image, NEWROOT, f"can't bind image {real_image}")
    if not writable:
        sc.remount_readonly(NEWROOT, f"can't make image read-only: {real_image}")
    info(f"image {real_image} mounted {'read-write' if writable else 'read-only'}", 2)


def inside(dst: str) -> str:
    """Where container path ``dst`` is now, refusing one that leaves the image."""
    path = os.path.realpath(NEWROOT + dst)
    if path != NEWROOT and not path.startswith(NEWROOT + "/"):
        raise ChError(f"can't mount on {dst}: resolves outside the image")
    return path


def in_image(dst: str) -> str:
    """Where container path ``dst`` is now, following symlinks as the container will.

    Absolute links start again at the image's root and ``..`` stops there (as
    in a chroot), so the result is always inside the image.  Images link e.g.
    /etc/resolv.conf to /run/systemd/resolve/stub-resolv.conf.
    """
    todo = [p for p in dst.split("/") if p not in ("", ".")]
    done: list = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
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


def apply_mount(m: Mount, sources: Dict[str, str]) -> None:
    dst = inside(m.dst) if m.user else in_image(m.dst)
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
        raise ChError(f"can't mount {m.why}: {m.dst} not found in image")
    if m.kind == "tmpfs":
        mode = "1777" if m.dst == "/tmp" else "0755"
        sc.mount("tmpfs", dst, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, f"mode={mode}",
                 f"can't mount tmpfs on {m.dst}")
    elif m.kind == "file":
        src = FILES + "/" + m.dst.strip("/").replace("/", "-")
        with open(src, "w") as f:
            f.write(m.content or "")
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


def apply_mounts(plan: Plan, sources: Dict[str, str]) -> None:
    for m in plan.mounts:
        apply_mount(m, sources)


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


def create(plan: Plan, real_image: str, sources: Dict[str, str]) -> None:
    """Steps 2–6: after this, the process is inside a new container."""
    enter_namespaces(plan)
    stage_root()
    mount_image(real_image, plan.writable)
    apply_mounts(plan, sources)
    enter_root()
    info(f"container ready: user ns {sc.ns_inode('/proc/self/ns/user')}, "
         f"mnt ns {sc.ns_inode('/proc/self/ns/mnt')}")


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
