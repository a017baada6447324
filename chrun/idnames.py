"""The host's names for the IDs of a generated /etc/passwd and /etc/group.

The one place ch-run asks the host's user and group databases (NSS: files,
LDAP, sssd...) about IDs.  Only the process that builds a container calls it,
and before it leaves the host's root: peers joining an existing container
never do, and after ``pivot_root`` the host's NSS configuration is gone.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Iterable

from .plan import IdNames


def lookup(uids: Iterable[int], gids: Iterable[int]) -> IdNames:
    """What the host calls each of ``uids`` (name, gecos) and ``gids`` (name)."""
    import grp
    import pwd
    users, groups = {}, {}
    for uid in uids:
        try:
            pw = pwd.getpwuid(uid)
            users[uid] = (pw.pw_name, pw.pw_gecos)
        except (KeyError, OverflowError):  # unknown to the host
            pass
    for gid in gids:
        try:
            groups[gid] = grp.getgrgid(gid).gr_name
        except (KeyError, OverflowError):
            pass
    return IdNames(users=users, groups=groups)
