"""``ch-run``'s entry point: parse, then build or join the container and exec.

Well-formed command lines are read by :func:`chrun.args.scan` without
importing click; anything else (help, usage errors) goes to the click command
in :mod:`chrun.cli`.  Every failure ends here as one message and an exit code.
"""

from __future__ import annotations

import sys

from . import args, errors
from .errors import ChError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Callable, Optional, Sequence

    from .plan import Options


def run_cli(parse: Callable[[], Optional["Options"]]) -> int:
    """Parse with ``parse`` (None: an informational option ran), then run; ch-mpirun shares this.

    Every :class:`ChError` becomes its one line on stderr and its exit code here.
    """
    try:
        from .core import refuse_setid
        refuse_setid()  # before parsing: --help and --version too
        opts = parse()
        if opts is None:  # --help, --usage, --version
            return 0
        from .core import run
        run(opts)
        raise AssertionError("run() returned")  # pragma: no cover
    except ChError as x:
        if x.message:  # --feature answers with an exit code only
            errors.error(x.message)
        return x.code
    except OSError as x:  # a call chrun.syscalls does not wrap: still one line, exit 31
        where = f"{x.filename}: " if x.filename is not None else ""
        errors.error(f"{where}{x.strerror or x}")
        return errors.EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def parse_run_args(argv: Sequence[str]) -> Optional["Options"]:
    """ch-run's options from ``argv``: the scanner for well-formed lines, else click."""
    values = args.scan(argv)
    if values is None:
        from . import cli
        return cli.parse(argv)
    return args.make_options(**values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(lambda: parse_run_args(argv))


if __name__ == "__main__":
    sys.exit(main())
