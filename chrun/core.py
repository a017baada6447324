"""The whole of ch-run after parsing: plan, create or join, exec.

:func:`run` is what the CLI (and ``ch-mpirun``) call with parsed
:class:`chrun.plan.Options`; it returns only by raising
:class:`chrun.errors.ChError`.
"""

from __future__ import annotations

import os
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Mapping, Optional

from . import container, errors, syscalls as sc
from .errors import ChError, info
from .plan import Options, Plan, current_user, make_plan


def refuse_setid() -> None:
    """Installed setuid or setgid: refuse everything (run_cli calls this before parsing)."""
    if os.getuid() != os.geteuid() or os.getgid() != os.getegid():
        raise ChError("refusing to run setuid or setgid: run ch-run as yourself")


def host_cwd() -> Optional[str]:
    try:
        return os.getcwd()
    except OSError:
        return None


def join_config(opts: Options, env: Mapping[str, str]):
    """The peer group's count, tag and timeout (a :class:`chrun.joinconf.JoinConfig`)."""
    from . import joinconf  # only peers of a group pay for this import
    cfg = joinconf.resolve(opts.join_ct, opts.join_tag, opts.join_timeout, env,
                           uid=os.geteuid(), parent_pid=os.getppid(),
                           hostname=os.uname().nodename)
    if opts.join_ct_from or opts.join_tag_from:   # ch-mpirun found them: say where
        cfg = cfg._replace(count_from=opts.join_ct_from or cfg.count_from,
                           tag_from=opts.join_tag_from or cfg.tag_from)
    return cfg


def run(opts: Options, env: Optional[Mapping[str, str]] = None) -> None:
    """Build or join the container for ``opts`` and exec its command.

    What a peer does depends on its role, decided as late as possible: the checks
    that only building a container needs (the image's mount points and real path,
    bind sources; chrun.container renders /etc/passwd and /etc/group, the NSS
    lookups, in the creator only) are made by the peer that builds it, never by a
    joiner (see :func:`join_group`): at 64 ranks a node, each costs 63 times over.
    """
    env = os.environ if env is None else env
    errors.verbosity = opts.verbose
    refuse_setid()
    user = current_user(env)
    plan = make_plan(opts, env, user, host_cwd())
    joining = opts.join or opts.join_ct is not None or opts.join_tag is not None
    cfg = join_config(opts, env) if joining else None  # usage errors before anything else
    env_steps = None
    if opts.env_ops:  # host files now, before any namespace (chrun.environ)
        from . import environ
        env_steps = environ.prepare(opts.env_ops)
    if opts.storage is not None or opts.write or not opts.newroot.startswith("/"):
        from . import storage  # image names (chrun.storage); absolute paths skip this
        plan = plan._replace(newroot=storage.resolve(
            opts.newroot, opts.storage, env, env.get("USER") or user.name, opts.write))

    if opts.join_pid is not None:
        creator_checks(plan, opts)
        from . import join
        join.attach(opts.join_pid)
    elif cfg is None or cfg.count == 1:
        container.create(plan, *creator_checks(plan, opts))
    else:
        join_group(plan, opts, cfg, env)
    info(f"this process: PID {os.getpid()} (others can join it with --join-pid={os.getpid()})")
    if env_steps is not None:  # inside now: the image's /ch/environment is at its place
        plan = plan._replace(env=environ.apply(plan.env, env_steps, opts.env_expand,
                                               environ.image_vars))
    container.exec_command(plan, explicit_cd=opts.cd is not None)


def creator_checks(plan: Plan, opts: Options) -> tuple:
    """(image, real bind sources) for building the container: the image checked (its
    real path, or a SquashFS archive), every bind source resolved on the host."""
    image = container.check_image(plan.newroot, plan.writable, opts.mount)
    info(f"image: {image}; uid {plan.uid} gid {plan.gid}; "
         f"{'read-write' if plan.writable else 'read-only'}")
    return image, container.resolve_sources(plan)


def join_group(plan: Plan, opts: Options, cfg, env: Mapping[str, str]) -> None:
    """Meet the group: its first peer builds the container, the others enter it.

    Before the rendezvous every peer checks only that the image exists (one stat: a
    wrong path fails in every peer with the same line); the creator then checks the
    rest before it forks the holder (a failure there makes the peers already waiting
    fail with "creator failed", later ones find it themselves).
    """
    from . import join
    container.find_image(plan.newroot)
    info(f"join: group {cfg.tag!r} of {cfg.count} peers; image {plan.newroot}; "
         f"uid {plan.uid} gid {plan.gid}")
    # What the peers must agree on, the same cheap way in every peer (it is not known
    # yet who creates): the image's and the shared bind sources' real paths.
    facts = join.container_facts(plan, os.path.realpath(plan.newroot), fact_sources(plan))
    peer = join.rendezvous(cfg, os.geteuid(), facts, env)
    if isinstance(peer, join.Creator):
        image, sources = creator_checks(plan, opts)
        sc.load_libc()           # before the fork: the holder needs it too
        peer.start_holder()
        peer.hand_over(container.create(plan, image, sources, keep_ns=True))
    else:
        peer.enter(time.monotonic() + cfg.timeout)


def fact_sources(plan: Plan) -> dict:
    """Real paths of the bind sources a group compares (home, ``-b``): no checks, no
    errors (the creator checks them all, :func:`chrun.container.resolve_sources`)."""
    return {m.src: os.path.realpath(m.src) for m in plan.mounts
            if m.kind == "bind" and m.src is not None
            and (m.user or m.why == "host home" or m.dst.startswith("/home/"))}
