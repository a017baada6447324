"""``ch-run --feature=FEAT``: exit 0 if FEAT is available, 1 if not (scripts test this).

The names are Charliecloud's (0.31 knows ``extglob``; later versions add
``seccomp``, ``squash``, ``overlayfs`` and ``tmpfs-xattrs``).  Each answer is
a small check of this ch-run on this machine; an unknown name is a usage error.
"""

from __future__ import annotations

from .errors import ChError, UsageError


class FeatureAnswer(ChError):
    """Not an error: ends ch-run with exit 0 or 1 and no message."""

    def __init__(self, available: bool):
        super().__init__("", 0 if available else 1)


def _extglob() -> bool:
    from .environ import extglob_available  # --unset-env uses fnmatch(3) FNM_EXTMATCH
    return extglob_available()


def _squash() -> bool:
    from . import squash  # SquashFS images: squashfuse in PATH and a usable /dev/fuse
    return squash.available()


#: Feature name → check.  seccomp (Charliecloud's --seccomp root emulation) and
#: overlayfs / tmpfs-xattrs (its --write-fake overlay) are not implemented here.
FEATURES = {
    "extglob": _extglob,
    "seccomp": lambda: False,
    "squash": _squash,
    "overlayfs": lambda: False,
    "tmpfs-xattrs": lambda: False,
}


def answer(name: str) -> FeatureAnswer:
    """The answer to ``--feature=name`` (to raise), or a usage error for an unknown name."""
    check = FEATURES.get(name)
    if check is None:
        raise UsageError(f"--feature: unknown feature: {name!r} "
                         f"(known: {', '.join(sorted(FEATURES))})")
    return FeatureAnswer(check())
