"""``ch-run``'s entry point: parse, then build or join the container and exec.

Well-formed command lines are read by :func:`chrun.args.scan` without
importing click; anything else (help, usage errors) goes to the click command
in :mod:`chrun.cli`.  Every failure ends here as one message and an exit code.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from . import args, errors
from .errors import ChError


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        values = args.scan(argv)
        if values is None:
            from . import cli
            opts = cli.parse(argv)
            if opts is None:  # --help, --usage, --version
                return 0
        else:
            opts = args.make_options(**values)
        from .core import run
        run(opts)
        raise AssertionError("run() returned")  # pragma: no cover
    except ChError as x:
        errors.error(x.message)
        return x.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
