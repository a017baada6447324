"""The click-free scanner (chrun.args.scan) must read argv exactly as click does.

Whatever scan accepts must give the same Options (or the same usage error) as
the click command; whatever it is unsure of it must hand to click (None).
"""

import random
import re

import pytest

from chrun import args, cli
from chrun.errors import UsageError

TOKENS = ["-b", "/a", "-b/x", "--bind", "--bind=/y:/mnt/3", "-c", "/d", "--cd=/e", "--cd",
          "-u", "5", "-g7", "-g", "-j", "--join", "--join-ct", "3", "--join-ct=2",
          "--join-ct=x", "--join-tag=t", "--join-tag", "--no-home", "-t", "-v", "-vv", "-w",
          "-wt", "-tvb/z", "--", "/img", "true", "echo", "-x", "--weird", "-", "",
          "--join-timeout=5", "--join-pid=12", "--verbose", "--write", "-?", "--help",
          "--usage", "-V", "--private-tmp", "--no-home=1", "-ux", "-m", "/m", "--mount=/n",
          "-m/o", "--mount"]


def outcome(f, argv):
    try:
        return ("ok", f(argv))
    except UsageError as x:
        return ("usage", x.message)


def fast(argv):
    values = args.scan(argv)
    assert values is not None
    return args.make_options(**values)


def slow(argv):
    return cli.parse(argv)


@pytest.mark.parametrize("argv", [
    ["/img", "true"],
    ["/img", "--", "echo", "-v"],
    ["--", "/img", "ls", "-l"],
    ["-wt", "-vv", "-b", "/a", "-b/b:/c", "--bind=/d", "/img", "--", "sh", "-c", "x"],
    ["--join-ct", "4", "--join-tag=x y", "-j", "/img", "true"],
    ["-u", "0", "-g0", "--no-home", "/img", "-w"],
    ["-c", "/x", "--cd=/y", "/img", "pwd"],
    ["--join-ct=", "/img", "true"],
    ["/img"],
    [],
    ["-", "true"],
])
def test_examples_agree(argv):
    assert args.scan(argv) is not None
    assert outcome(fast, argv) == outcome(slow, argv)


@pytest.mark.parametrize("argv", [
    ["--help"], ["-?"], ["--usage"], ["-V"], ["--bogus", "/img", "true"], ["-x", "/img"],
    ["-b"], ["--bind"], ["-c", "-w", "/img", "true"], ["--no-home=1", "/img", "true"],
    ["-j?", "/img"],
])
def test_unsure_goes_to_click(argv):
    assert args.scan(argv) is None


def test_random_command_lines_agree():
    rng = random.Random(20261123)
    checked = 0
    for _ in range(3000):
        argv = [rng.choice(TOKENS) for _ in range(rng.randint(0, 9))]
        if args.scan(argv) is None:
            continue
        assert outcome(fast, argv) == outcome(slow, argv), argv
        checked += 1
    assert checked > 500  # the scanner must actually take most well-formed lines


def test_option_table_matches_click_command():
    names = {n for p in cli.command.params for n in getattr(p, "opts", [])}
    for o in args.RUN_OPTIONS:
        assert o.long in names and (o.short is None or o.short in names)


def test_ch_mpirun_scanner_agrees_with_its_click_command():
    """ch-mpirun scans ch-run's options plus --mode; the same agreement must hold."""
    from chrun_launch import mpirun
    tokens = TOKENS + ["--mode", "env", "--mode=mpi4py", "--mode=", "--join-pid=3"]
    command = mpirun.click_command()
    rng = random.Random(7)
    checked = 0
    for _ in range(2000):
        argv = [rng.choice(tokens) for _ in range(rng.randint(0, 9))]
        values = args.scan(argv, args.RUN_OPTIONS + (mpirun.MODE_OPTION,))
        if values is None:
            continue
        fast_out = outcome(lambda a: mpirun._make(**values), argv)
        slow_out = outcome(lambda a: cli.parse(a, "ch-mpirun", command), argv)
        assert fast_out == slow_out, argv
        checked += 1
    assert checked > 300


def test_unexpected_oserror_is_one_line_exit_31(capfd):
    """A failing call that chrun.syscalls does not wrap still ends as one error line."""
    from chrun.main import run_cli

    def parse():
        raise FileNotFoundError(2, "No such file or directory", "/x/y")

    assert run_cli(parse) == 31
    err = capfd.readouterr().err
    assert re.fullmatch(r"ch-run\[\d+\]: error: /x/y: No such file or directory\n", err), err
