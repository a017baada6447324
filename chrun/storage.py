"""Images by name from ``ch-image``'s storage directory (``-s``, ``$CH_IMAGE_STORAGE``).

Facts from Charliecloud 0.31 (our own code): the storage directory is ``-s DIR``,
else ``$CH_IMAGE_STORAGE``, else ``/var/tmp/$USER.ch``; ``ch-image`` unpacks
image NAME into ``STORAGE/img/MANGLED`` where MANGLED is NAME with every ``/``
replaced by ``%`` and every ``:`` by ``+`` (``example.com:5050/foo:1.0`` →
``example.com+5050%foo+1.0``); no default tag or registry is added.  ``ch-run``
takes IMAGE as a name whenever that entry exists in storage, even if a
directory of the same (relative) path exists, and as a path otherwise.  A name
is never written to: ``-w`` with an image by name is refused.

Our rules on top (documented in the README): IMAGE starting with ``/``, ``./``
or ``../`` (or ``.``, ``..``) is always a path and costs no look-up in storage;
a reference that is neither an existing path nor a name in storage gets one
error naming both places; ``-w`` on a path inside the storage directory is
refused too (read-only runs of such paths are allowed).

Threat model: ``/var/tmp/$USER.ch`` is a predictable name in a world-writable
directory, so another user can create it first and fill it with images named
like the directories you run by relative path.  A storage directory (and its
``img``) is therefore used for names only if it is owned by you or root and
not writable by others, and the storage path is not another user's symlink
(followed where ``fs.protected_symlinks`` is off); else ch-run warns and takes
IMAGE as a path.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Mapping, Optional

from .errors import ChError, info, warning

ENV_VAR = "CH_IMAGE_STORAGE"


def storage_dir(option: Optional[str], env: Mapping[str, str], user_name: str) -> str:
    """The storage directory, absolute (relative ones are taken from the working directory)."""
    path = option if option is not None else env.get(ENV_VAR) or f"/var/tmp/{user_name}.ch"
    return os.path.abspath(path)


def mangle(name: str) -> str:
    """ch-image's file name for image ``name``."""
    return name.replace("/", "%").replace(":", "+")


def is_path_only(ref: str) -> bool:
    """True if ``ref`` cannot be an image name (so no look-up in storage)."""
    return ref.startswith(("/", "./", "../")) or ref in (".", "..")


def name_path(ref: str, storage: str) -> str:
    return f"{storage}/img/{mangle(ref)}"


def _untrusted_why(path: str) -> Optional[str]:
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except OSError as x:
        return os.strerror(x.errno)
    # A symlink squatted in /var/tmp may point at a directory of yours or root's
    # (followed where fs.protected_symlinks is off): its owner counts too.
    if link.st_uid not in (os.geteuid(), 0):
        return f"a symlink owned by UID {link.st_uid}, not by you or root"
    if st.st_uid not in (os.geteuid(), 0):
        return f"owned by UID {st.st_uid}, not by you or root"
    if st.st_mode & 0o002:
        return "writable by every user"
    return None


def trusted(storage: str) -> bool:
    """True if names may be looked up in ``storage`` (see the threat model above)."""
    for path in (storage, f"{storage}/img"):
        why = _untrusted_why(path)
        if why is not None:
            warning(f"not using storage {storage} for image names: {path}: {why}")
            return False
    return True


def resolve(ref: str, option: Optional[str], env: Mapping[str, str], user_name: str,
            write: bool) -> str:
    """The image directory for IMAGE ``ref``: itself, or its entry in storage.

    Raises :class:`ChError` (exit 31) for an unknown name and for ``-w`` on storage.
    """
    storage = storage_dir(option, env, user_name)
    if option is not None and not os.path.isdir(storage):
        warning(f"storage directory not found: {storage}")
    if not is_path_only(ref):
        candidate = name_path(ref, storage)
        found = os.path.lexists(candidate)
        if found and trusted(storage):
            if write:
                raise ChError(f"--write: refusing to write image {ref!r} in storage "
                              f"{storage}: images run by name are read-only")
            info(f"image {ref!r} by name: {candidate}")
            return candidate
        if not os.path.lexists(ref):
            if found:  # there is one, but trusted() said why it is not used
                raise ChError(f"can't find image: {ref}: no such directory, and storage "
                              f"{storage} is not used for image names")
            raise ChError(f"can't find image: {ref}: no such directory, and no image of that "
                          f"name in storage {storage}")
    if write:
        real = os.path.realpath(ref)
        top = os.path.realpath(storage)
        if real == top or real.startswith(top + "/"):
            raise ChError(f"--write: refusing to write {ref}: it is inside storage {storage} "
                          "(run it by name, read-only, or copy it out)")
    return ref
