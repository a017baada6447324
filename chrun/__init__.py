"""chrun: run a command in an unpacked container image, unprivileged.

A re-implementation of Charliecloud's ``ch-run`` with peer groups (``--join``)
that cannot leak, hang or split.  The CLI lives in :mod:`chrun.cli`; the
container is described by :mod:`chrun.plan` and built by
:mod:`chrun.container`; every system call goes through :mod:`chrun.syscalls`.
"""

__version__ = "0.1.0"
